"""Whole runs on the tiny Llama: every method and task, merged output, resume after a kill, two ranks (DDP, FSDP)."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from kubetune.api.wire import TrainerSummary
from kubetune.trainer.errors import EXIT_CONFIG, EXIT_DIVERGED
from kubetune.trainer.report import ProgressEvent, Reporter
from tests.support import faults
from tests.support.cli import kubetune
from tests.trainer.conftest import DATA, ROOT, Runner, fast_job


def metrics(out: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("packing", [False, True])
def test_classification_reports_accuracy_f1_and_confusion_matrix_against_the_base_model(
    run_job: Runner, tmp_path: Path, packing: bool
) -> None:
    """Padded (the example's setting) and packed: both beat the base model."""
    docs = list(yaml.safe_load_all((ROOT / "examples" / "classification.yaml").read_text()))
    config_map, job = docs[0], docs[1]
    job["spec"]["validation"]["everySteps"] = 5
    job["spec"]["training"]["packing"] = packing
    assert run_job(job, config_map) == 0
    print(f"packing {packing}: test accuracy {metrics(tmp_path / 'out')['test']['accuracy']:.3f}")
    result = metrics(tmp_path / "out")
    test, base = result["test"], result["baseline"]
    assert test["accuracy"] > base["accuracy"] and test["f1"] > base["f1"]
    assert len(test["confusionMatrix"]) == 4 and sum(map(sum, test["confusionMatrix"])) == test["samples"]
    assert result["bestValidation"]["f1"] is not None
    assert (tmp_path / "out" / "best" / "adapter_model.safetensors").exists()


def test_chat_run_trains_on_assistant_turns(run_job: Runner, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (DATA / "instructions.jsonl").read_text().splitlines()]
    chats = [
        {"conversation": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]}
        for r in rows
        if r.get("instruction") and r.get("output")
    ]
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats))
    job = (
        fast_job("chat", "chats.jsonl").set("spec.data.format", "Chat").set("spec.data.fields.messages", "conversation")
    )
    assert run_job(job.set("spec.training.epochs", 3).build(), data=tmp_path) == 0
    result = metrics(tmp_path / "out")
    assert result["test"]["loss"] < result["baseline"]["loss"]
    assert {"exactMatch", "rougeL"} <= set(result["test"])


def test_full_fine_tuning_saves_a_whole_model(run_job: Runner, tmp_path: Path) -> None:
    job = fast_job("full").set("spec.method", {"type": "Full"}).set("spec.training.learningRate", 0.001)
    job.set("spec.training.gradientCheckpointing", True).set("spec.training.dropout", 0.0)
    assert run_job(job.set("spec.training.maxSteps", 12).build()) == 0
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "model")
    assert metrics(tmp_path / "out")["test"]["loss"] < metrics(tmp_path / "out")["baseline"]["loss"]


def test_qlora_trains_in_4_bit_and_merges_into_a_plain_model(run_job: Runner, tmp_path: Path) -> None:
    job = fast_job("qlora").set("spec.method", {"type": "QLoRA", "lora": {"rank": 8, "alpha": 16}})
    job.set("spec.method.quantization", {"computeDtype": "Float32"})
    job.set("spec.output", {"pvc": {"claimName": "data", "path": "unused"}, "mergeAdapter": True})
    assert run_job(job.set("spec.training.maxSteps", 10).build()) == 0
    out = tmp_path / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["versions"]["bitsandbytes"] and manifest["dataSha256"]["rows"]
    assert "| loss |" in (out / "README.md").read_text()
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert not any("lora" in name for name, _ in merged.named_parameters())


@pytest.mark.parametrize("restore_best", [True, False])
def test_an_overfitting_run_delivers_its_best_validation_step(
    run_job: Runner, tmp_path: Path, restore_best: bool
) -> None:
    """Validation and test are the same held-out rows, so the test loss shows which step's weights were
    delivered: the best validation's (restoreBest, the default), or the last one's. (LoRA on the tiny Llama
    barely moves, so it cannot overfit: the adapter path is the next test's.)"""
    rows = (DATA / "instructions.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "train.jsonl").write_text("".join(rows[:24]))
    for name in ("validation.jsonl", "test.jsonl"):
        (tmp_path / name).write_text("".join(rows[24:40]))
    job = fast_job("overfit", "train.jsonl").set("spec.data.datasets[0].usage", "Train")
    for index, usage in enumerate(("Validation", "Test"), start=1):
        source = {"claimName": "data", "path": f"{usage.lower()}.jsonl"}
        job.set(f"spec.data.datasets[{index}]", {"name": usage.lower(), "usage": usage, "pvc": source})
    job.set("spec.data.split", {"seed": 7}).set("spec.evaluation", {"maxNewTokens": 4, "baseline": False})
    job.set(
        "spec.training",
        {
            "learningRate": 0.003,
            "maxSteps": 40,
            "epochs": 30,
            "perDeviceBatchSize": 4,
            "maxSeqLength": 128,
            "scheduler": "Constant",
            "warmupSteps": 0,
        },
    )
    job.set("spec.method", {"type": "Full"}).set("spec.validation", {"everySteps": 4, "restoreBest": restore_best})
    assert run_job(job.build(), data=tmp_path) == 0
    result = metrics(tmp_path / "out")
    best, last = result["bestValidation"], result["lastValidation"]
    assert best["step"] < last["step"] == 40 and best["loss"] < last["loss"] - 0.05, "the run overfits"
    delivered = best if restore_best else last
    assert result["delivered"] == {"step": delivered["step"], "of": "BestValidation" if restore_best else "LastStep"}
    assert abs(result["test"]["loss"] - delivered["loss"]) < 1e-5
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"(step {delivered['step']}; the test set was evaluated on them)" in card


def test_restore_loads_a_saved_adapter_back_into_the_model(tmp_path: Path) -> None:
    import torch
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from kubetune.trainer import checkpoint, saving
    from kubetune.trainer.tiny import build_tiny_llama

    base = AutoModelForCausalLM.from_pretrained(build_tiny_llama(tmp_path / "tiny", seed=4), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    accelerator = Accelerator(cpu=True)
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    with torch.no_grad():
        for p in lora.values():
            p.normal_()
    saved = {n: p.detach().clone() for n, p in lora.items()}
    saving.save_weights(accelerator, model, tmp_path / "best")
    with torch.no_grad():
        for p in lora.values():
            p.add_(1.0)
    checkpoint.restore(tmp_path / "best", model, accelerator)
    assert all(torch.equal(p, saved[n]) for n, p in lora.items())


def test_a_four_row_file_trains_and_warns_of_its_empty_splits(
    run_job: Runner, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = (DATA / "instructions.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "tiny.jsonl").write_text("".join(rows[:4]))
    job = fast_job("tiny", "tiny.jsonl").set("spec.training.perDeviceBatchSize", 1)
    assert run_job(job.build(), data=tmp_path) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "prep_report.json").read_text())
    assert any(w.startswith("test split is empty") for w in report["warnings"])
    assert "warning: test split is empty: no test metrics" in out and "spec.data.split.testRatio" in out
    assert "warning: train split has" in out


def test_fp16_on_cpu_is_a_configuration_error(run_job: Runner, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_job(fast_job().set("spec.training.precision", "FP16").build()) == EXIT_CONFIG
    assert "spec.training.precision" in capsys.readouterr().err


def test_an_exploding_loss_stops_the_run_as_diverged(run_job: Runner, capsys: pytest.CaptureFixture[str]) -> None:
    job = fast_job("diverge").set("spec.method", {"type": "Full"}).set("spec.evaluation.baseline", False)
    job.set(
        "spec.training",
        {
            "learningRate": 1.0,
            "maxGradNorm": 0,
            "epochs": 1,
            "scheduler": "Constant",
            "warmupSteps": 0,
            "perDeviceBatchSize": 8,
            "maxSeqLength": 128,
        },
    )
    assert run_job(job.build()) == EXIT_DIVERGED
    err = capsys.readouterr().err
    assert "training diverged" in err and "spec.training.learningRate" in err


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_checkpoint_and_ends_like_an_uninterrupted_one(tmp_path: Path) -> None:
    job = fast_job("resume").set("spec.checkpointing", {"everySteps": 4, "keep": 2})
    job.set("spec.method.lora.dropout", 0.1)  # dropout draws random numbers: the RNG state must be restored too
    job.set("spec.training.maxSteps", 20).set("spec.validation.everySteps", 5)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job.build()))
    common = [str(tmp_path / "job.yaml"), f"--volume=data={DATA}"]

    straight = kubetune("worker", *common, f"--output={tmp_path / 'straight'}", "--metrics-port=0")
    assert straight.returncode == 0, straight.stderr[-2000:]

    killed = kubetune(
        "worker", *common, f"--output={tmp_path / 'killed'}", "--metrics-port=0", env=faults.kill_after(10)
    )
    assert killed.returncode == -signal.SIGKILL
    checkpoints = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir())
    assert checkpoints == ["step-00000004", "step-00000008"], "kept 2, none half-written"
    resumed = kubetune("worker", *common, f"--output={tmp_path / 'killed'}", "--metrics-port=0")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert '"resumedFromStep": 8' in resumed.stderr

    a, b = metrics(tmp_path / "straight"), metrics(tmp_path / "killed")
    assert [r["step"] for r in b["history"]["train"]] == list(range(1, 21))
    assert abs(a["history"]["train"][-1]["loss"] - b["history"]["train"][-1]["loss"]) < 1e-4
    assert abs(a["test"]["loss"] - b["test"]["loss"]) < 1e-4
    again = kubetune("worker", *common, f"--output={tmp_path / 'killed'}", "--metrics-port=0")
    assert again.returncode == 0 and "already holds the finished run" in again.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)  # six trainer processes: 42 s on a quiet 2-core machine, over 600 s under a load of 17
def test_a_resume_on_changed_data_fails_naming_the_dataset_or_restarts(tmp_path: Path) -> None:
    """Issue 39, item 4: a checkpoint records each dataset's SHA-256; a data file edited between a kill and the
    restart fails the resume (exit 78, DataChangedError naming the dataset), or with onDataChange: Restart trains
    again from step 0 on the new rows."""
    for action in ("Fail", "Restart"):
        data = tmp_path / action
        data.mkdir()
        (data / "instructions.jsonl").write_bytes((DATA / "instructions.jsonl").read_bytes())
        job = fast_job("changed").set("spec.checkpointing", {"everySteps": 2, "keep": 2, "onDataChange": action})
        job.set("spec.training.maxSteps", 6).set("spec.evaluation", {"enabled": False, "baseline": False})
        (data / "job.yaml").write_text(yaml.safe_dump(job.build()))
        common = [str(data / "job.yaml"), f"--volume=data={data}", f"--output={data / 'o'}", "--metrics-port=0"]
        assert kubetune("worker", *common, env=faults.kill_after(4)).returncode == -signal.SIGKILL
        with (data / "instructions.jsonl").open("a") as rows:
            rows.write(json.dumps({"instruction": "A row added after the crash", "output": "new"}) + "\n")
        again = kubetune("worker", *common, env={"KUBETUNE_TERMINATION_LOG": str(data / "termination")})
        if action == "Fail":
            assert again.returncode == EXIT_CONFIG, again.stderr[-2000:]
            assert "spec.data.datasets[0] (rows): the content changed since the checkpoint step-00000004" in (
                again.stderr
            )
            assert TrainerSummary.model_validate_json((data / "termination").read_text()).reason == "DataChangedError"
            continue
        assert again.returncode == 0, again.stderr[-2000:]
        assert "starting over (onDataChange: Restart)" in again.stderr and "resumedFromStep" not in again.stderr
        assert [r["step"] for r in metrics(data / "o")["history"]["train"]] == list(range(1, 7))


@pytest.mark.slow
def test_two_ranks_on_cpu_with_torchrun(tmp_path: Path) -> None:
    job = fast_job("ddp").set("spec.training.maxSteps", 6).set("spec.checkpointing.everySteps", 3)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job.build()))
    result = kubetune(
        "launch",
        str(tmp_path / "job.yaml"),
        f"--volume=data={DATA}",
        f"--output={tmp_path / 'o'}",
        "--metrics-port=0",
        env={"NPROC_PER_NODE": "2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--nproc-per-node=2" in result.stderr
    out = tmp_path / "o"
    assert metrics(out)["worldSize"] == 2
    assert sorted(p.name for p in (out / "checkpoints" / "step-00000006").glob("rng-*")) == ["rng-0.pt", "rng-1.pt"]
    assert json.loads((out / "manifest.json").read_text())["worldSize"] == 2
    # One rank prepared the data, the other waited on the file lock and mapped the same cache.
    assert result.stderr.count("reused the prepared data") == 1, result.stderr[-3000:]
    assert len([p for p in (out / ".prepared").iterdir() if p.is_dir()]) == 1


@pytest.mark.slow
def test_fsdp_on_two_cpu_ranks_shards_trains_like_ddp_and_resumes_after_a_kill(tmp_path: Path) -> None:
    """FSDP2 over gloo: each rank keeps half the optimizer state, the steps are DDP's to float precision, a run
    killed after its checkpoint resumes to the same end, and the saved model is whole."""
    job = fast_job("fsdp").set("spec.method", {"type": "Full"}).set("spec.training.learningRate", 0.001)
    job.set("spec.training.maxSteps", 6).set("spec.checkpointing", {"everySteps": 3, "keep": 2})
    job.set("spec.validation.everySteps", 3)
    for name, distributed in (("ddp", "DDP"), ("fsdp", "FSDP")):
        manifest = job.set("spec.training.distributed", distributed).build()
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(manifest))

    def launch(name: str, out: str, **env: str) -> subprocess.CompletedProcess[str]:
        manifest, output = tmp_path / f"{name}.yaml", tmp_path / out
        return kubetune(
            "launch",
            str(manifest),
            f"--volume=data={DATA}",
            f"--output={output}",
            "--metrics-port=0",
            env={"NPROC_PER_NODE": "2", **env},
        )

    ddp = launch("ddp", "ddp")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    killed = launch("fsdp", "fsdp", **faults.kill_after(4))
    assert killed.returncode != 0
    shards = tmp_path / "fsdp" / "checkpoints" / "step-00000003"
    whole = tmp_path / "ddp" / "checkpoints" / "step-00000003" / "optimizer-0.pt"
    assert sorted(p.name for p in shards.glob("optimizer-*")) == ["optimizer-0.pt", "optimizer-1.pt"]
    assert (shards / "optimizer-0.pt").stat().st_size < 0.6 * whole.stat().st_size, "FSDP shards the optimizer"
    resumed = launch("fsdp", "fsdp")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert '"resumedFromStep": 3' in resumed.stderr

    a, b = metrics(tmp_path / "ddp"), metrics(tmp_path / "fsdp")
    assert [r["step"] for r in b["history"]["train"]] == list(range(1, 7)) and b["worldSize"] == 2
    for x, y in zip(a["history"]["train"], b["history"]["train"], strict=True):
        assert abs(x["loss"] - y["loss"]) < 1e-4
    assert abs(a["test"]["loss"] - b["test"]["loss"]) < 1e-4 and b["test"]["samples"] == a["test"]["samples"]
    from safetensors.torch import load_file

    ours, theirs = (load_file(tmp_path / run / "model" / "model.safetensors") for run in ("fsdp", "ddp"))
    assert ours.keys() == theirs.keys()
    assert max(float((ours[k] - theirs[k]).abs().max()) for k in ours) < 1e-4


def test_reporter_serves_prometheus_metrics_and_progress_and_writes_the_termination_message(tmp_path: Path) -> None:
    reporter = Reporter(enabled=True)
    port = reporter.serve(0)
    try:
        reporter.progress(ProgressEvent(3, 10, 0, 1.5, 1e-3, 100.0, 7.0, validation_loss=1.7), tokens=64)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        assert "kubetune_trainer_step 3.0" in text and "kubetune_trainer_tokens_total 64.0" in text
        assert 'kubetune_trainer_eval_loss{split="validation"} 1.7' in text
        progress = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/progress").read())
        assert progress["step"] == 3 and progress["totalSteps"] == 10 and progress["phase"] == "Training"
    finally:
        reporter.close()
    reporter.finish(TrainerSummary(phase="Succeeded", test={"loss": 1.0}), tmp_path / "termination-log")
    assert json.loads((tmp_path / "termination-log").read_text())["phase"] == "Succeeded"
