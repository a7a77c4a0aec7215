"""Tuning beyond one dataset, on the tiny Llama: multitask mixing, augmentation and NEFTune, label smoothing,
the few-shot baseline, the forgetting guard, context extension with a passkey check, and sequential stages."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.trainer.errors import EXIT_REGRESSED
from tests.support import faults
from tests.support.cli import kubetune
from tests.trainer.conftest import DATA, ROOT, Runner, fast_job
from tests.trainer.test_runs import metrics

WORD_TASKS = ("How many letters", "Spell the word", "Give the opposite", "Write the word")


@pytest.fixture
def split_data(tmp_path: Path) -> Path:
    """instructions.jsonl as two tasks, words (80 rows) and arithmetic/facts (the rest), and a general set."""
    rows = [json.loads(line) for line in (DATA / "instructions.jsonl").read_text().splitlines()]
    words = [r for r in rows if r["instruction"].startswith(WORD_TASKS)]
    facts = [r for r in rows if not r["instruction"].startswith(WORD_TASKS)]
    for name, part in (("words.jsonl", words), ("facts.jsonl", facts)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in part))
    texts = [
        {"instruction": "Continue the text.", "output": f"{r['instruction']} {r.get('input', '')} {r['output']}"}
        for r in rows
    ]
    (tmp_path / "general.jsonl").write_text("".join(json.dumps(r) + "\n" for r in texts))
    noise = random.Random(0)
    hexes = [
        {"instruction": "Repeat.", "output": "".join(noise.choice("0123456789abcdef") for _ in range(24))}
        for _ in range(60)
    ]
    (tmp_path / "noise.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hexes))
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"text": t["output"]}) + "\n" for t in texts))
    return tmp_path


def two_tasks(name: str) -> Any:
    job = fast_job(name, "words.jsonl").set("spec.data.datasets[0].name", "words")
    return job.set("spec.data.datasets[1]", {"name": "facts", "pvc": {"claimName": "data", "path": "facts.jsonl"}})


def test_multitask_mixes_tasks_by_weight_and_reports_them_apart(run_job: Runner, split_data: Path) -> None:
    job = two_tasks("multi").set("spec.data.datasets[0].weight", 3.0).set("spec.data.mixing.strategy", "Weighted")
    job.set("spec.validation.everySteps", 4).set("spec.training.maxSteps", 8)
    assert run_job(job.build(), data=split_data) == 0
    out = split_data / "out"
    report, result = json.loads((out / "prep_report.json").read_text()), metrics(out)
    tasks = report["tasks"]["tasks"]
    assert set(tasks) == {"words", "facts"}
    assert tasks["words"]["sampledShare"] == 0.75 and tasks["facts"]["sampledShare"] == 0.25
    assert tasks["words"]["naturalShare"] < 0.5, "the smaller task is oversampled by its weight"
    assert report["tasks"]["imbalanceRatio"] > 1
    total = sum(t["rows"]["train"] for t in tasks.values())
    assert sum(t["rowsPerEpoch"] for t in tasks.values()) == total, "an epoch keeps its number of rows"
    assert set(result["tasks"]) == {"words", "facts"} and "exactMatch" in result["tasks"]["words"]
    assert set(result["history"]["validation"][0]["tasks"]) == {"words", "facts"}


def test_augmentation_adds_perturbed_rows_and_label_smoothing_trains(run_job: Runner, tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all((ROOT / "examples" / "classification.yaml").read_text()))
    config_map, job = docs[0], docs[1]
    job["spec"]["data"]["augmentation"] = {"copies": 2, "wordDropout": 0.2, "wordSwap": 0.2, "tokenNoise": 0.1}
    job["spec"]["training"].update(labelSmoothing=0.1, dropout=0.1, maxSteps=6)
    assert run_job(job, config_map) == 0
    report = json.loads((tmp_path / "out" / "prep_report.json").read_text())
    added = report["augmented"]["added"]
    assert 0 < added <= 2 * (report["splitSizes"]["train"] - added)
    assert metrics(tmp_path / "out")["test"]["accuracy"] >= 0


def test_few_shot_baseline_and_neftune(run_job: Runner, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = fast_job("shots").set("spec.evaluation.fewShot", {"k": 2}).set("spec.training.neftuneNoiseAlpha", 5.0)
    assert run_job(job.set("spec.training.maxSteps", 6).build()) == 0
    result = metrics(tmp_path / "out")
    assert result["fewShot"]["k"] == 2 and {"exactMatch", "rougeL", "intervals"} <= set(result["fewShot"])
    assert "loss" not in result["fewShot"], "a prompted model's loss is not compared"
    assert "2-shot" in capsys.readouterr().out


def guarded(name: str, general: str = "general.jsonl", **guard: Any) -> Any:
    job = fast_job(name, "words.jsonl")
    job.set(
        "spec.data.datasets[1]", {"name": "general", "pvc": {"claimName": "data", "path": general}, "usage": "General"}
    )
    return job.set("spec.forgettingGuard", {"replayRatio": 0.5, **guard}).set("spec.training.maxSteps", 6)


def test_forgetting_guard_replays_and_measures_retention(run_job: Runner, split_data: Path) -> None:
    assert run_job(guarded("keep", maxRegression=5.0).build(), data=split_data) == 0
    out = split_data / "out"
    report, result = json.loads((out / "prep_report.json").read_text()), metrics(out)
    assert report["splitSizes"]["retention"] > 0 and report["splitSizes"]["replay"] > 0
    assert report["tasks"]["replayRowsPerEpoch"] == round(0.5 * report["splitSizes"]["train"])
    retention = result["retention"]
    assert retention["regression"] == pytest.approx(
        (retention["after"] - retention["before"]) / retention["before"], abs=1e-5
    )
    assert retention["passed"] is True


def test_retention_threshold_fails_the_run_but_keeps_the_outputs(
    run_job: Runner, split_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A base model that knows the general data (hex strings), then tuned hard on something else.
    base = fast_job("base", "noise.jsonl").set("spec.method", {"type": "Full"}).set("spec.training.maxSteps", 20)
    assert run_job(base.set("spec.training.learningRate", 0.003).build(), data=split_data, out=split_data / "b") == 0
    job = guarded("regress", "noise.jsonl", maxRegression=0.0, onRegression="Fail", replayRatio=0.0)
    job.set("spec.model", {"pvc": {"claimName": "data", "path": "b/model"}}).set("spec.training.maxSteps", 10)
    assert run_job(job.set("spec.training.learningRate", 0.05).build(), data=split_data) == EXIT_REGRESSED
    assert "spec.forgettingGuard.maxRegression" in capsys.readouterr().err
    out = split_data / "out"
    assert metrics(out)["retention"]["passed"] is False and (out / "adapter").is_dir()


def test_context_extension_scales_rope_and_checks_passkeys_at_the_new_length(run_job: Runner, tmp_path: Path) -> None:
    job = fast_job("long").set(
        "spec.contextExtension", {"ropeScaling": "YaRN", "targetLength": 1024, "passkeySamples": 2}
    )
    job.set("spec.training.maxSteps", 4).set("spec.output", {"pvc": {"claimName": "out"}, "mergeAdapter": True})
    assert run_job(job.build()) == 0
    out = tmp_path / "out"
    config = json.loads((out / "merged" / "config.json").read_text())
    assert config["max_position_embeddings"] == 1024
    rope = config.get("rope_parameters") or config.get("rope_scaling")
    assert rope["rope_type"] == "yarn" and rope["factor"] == 2.0
    result = metrics(out)
    assert 0 <= result["test"]["passkeyAccuracy"] <= 1 and "passkeyAccuracy" in result["baseline"]
    assert 900 < result["test"]["passkeyPromptTokens"] <= 1024


@pytest.mark.slow
def test_stages_run_in_order_and_a_failed_stage_resumes_from_its_own_checkpoint(split_data: Path) -> None:
    job = fast_job("staged", "words.jsonl").set(
        "spec.data.datasets[1]", {"name": "corpus", "pvc": {"claimName": "data", "path": "corpus.jsonl"}}
    )
    short = {"learningRate": 0.01, "maxSteps": 3, "perDeviceBatchSize": 8, "maxSeqLength": 128}
    job.set(
        "spec.stages",
        [
            {"name": "domain", "datasets": ["corpus"], "format": "Completion", "training": short},
            {"name": "instruct", "datasets": ["rows"], "training": {**short, "maxSteps": 8}},
        ],
    ).set("spec.checkpointing", {"everySteps": 2})
    job.set("spec.data.datasets[0].name", "rows")
    manifest = split_data / "staged.yaml"
    manifest.write_text(yaml.safe_dump(job.build()))
    common = [str(manifest), f"--volume=data={split_data}", f"--output={split_data / 'o'}", "--metrics-port=0"]

    killed = kubetune("worker", *common, env=faults.kill_after(5))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (split_data / "o" / "stages" / "domain" / "manifest.json").exists(), "the first stage finished"
    resumed = kubetune("worker", *common)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert '"resumedFromStep": 4' in resumed.stderr, "the second stage resumed from its own checkpoint"

    result = metrics(split_data / "o")
    assert [(s["name"], s["phase"], s["steps"]) for s in result["stages"]] == [
        ("domain", "Succeeded", 3),
        ("instruct", "Succeeded", 8),
    ]
    assert (split_data / "o" / "adapter").is_dir() and (split_data / "o" / "merged" / "config.json").exists()
    card = (split_data / "o" / "README.md").read_text()
    assert "domain" in card and "instruct" in card


def test_summed_loss_over_targets_is_the_models_own_mean_loss(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubetune.trainer.batches import collate, tokenize
    from kubetune.trainer.formats import Example
    from kubetune.trainer.packing import collate_packed
    from kubetune.trainer.step import summed_loss, target_count
    from kubetune.trainer.tiny import build_tiny_llama

    path = build_tiny_llama(tmp_path / "tiny", seed=3)
    model, tokenizer = (
        AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
        AutoTokenizer.from_pretrained(path),
    )
    rows = tokenize(
        [Example.pair("Spell the word backwards: river\n", "revir"), Example.pair("", "A plain text row.")],
        tokenizer,
        64,
    )
    for batch in (collate(rows, tokenizer.pad_token_id), collate_packed(rows)):
        own, n = float(model(**batch).loss.detach()), target_count(batch, False)
        assert float(summed_loss(model, batch, 0.0, False).detach()) / n == pytest.approx(own, rel=1e-5)
        assert float(summed_loss(model, batch, 1e-9, False).detach()) / n == pytest.approx(own, rel=1e-5)
        assert float(summed_loss(model, batch, 0.3, False).detach()) / n != pytest.approx(own, rel=1e-3)


@pytest.mark.parametrize(("scaling", "rope_type"), [("Linear", "linear"), ("Dynamic", "dynamic"), ("YaRN", "yarn")])
def test_rope_scaling_rewrites_the_config(tmp_path: Path, scaling: str, rope_type: str) -> None:
    from kubetune.api.enums import RopeScaling
    from kubetune.api.tuning import ContextExtension
    from kubetune.trainer.longcontext import extended_config
    from kubetune.trainer.tiny import build_tiny_llama

    path = build_tiny_llama(tmp_path / "tiny")
    config = extended_config(path, ContextExtension(rope_scaling=RopeScaling(scaling), target_length=2048))
    assert config.max_position_embeddings == 2048
    rope = config.rope_parameters
    assert (rope["rope_type"], rope["factor"], rope["original_max_position_embeddings"]) == (rope_type, 4.0, 512)


def test_rope_scaling_of_a_model_without_rope_names_the_field(tmp_path: Path) -> None:
    from transformers import GPT2Config

    from kubetune.api.enums import RopeScaling
    from kubetune.api.tuning import ContextExtension
    from kubetune.trainer.errors import ConfigError
    from kubetune.trainer.longcontext import extended_config

    GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=128).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ConfigError, match=r"spec.contextExtension: the model \(gpt2\) has no rotary"):
        extended_config(tmp_path / "gpt2", ContextExtension(rope_scaling=RopeScaling.LINEAR, target_length=1024))


def test_neftune_noises_embeddings_only_while_training() -> None:
    import torch

    from kubetune.trainer.augment import add_neftune

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(10, 16)

        def get_input_embeddings(self) -> torch.nn.Module:
            return self.embed

    model, ids = Model(), torch.arange(8).unsqueeze(0)
    clean = model.embed(ids).detach()
    add_neftune(model, alpha=5.0)
    noisy = model.embed(ids).detach()
    bound = 5.0 / (8 * 16) ** 0.5
    assert not torch.equal(noisy, clean) and float((noisy - clean).abs().max()) <= bound + 1e-6
    model.eval()
    assert torch.equal(model.embed(ids).detach(), clean)


def test_continuous_tuning_starts_from_the_earlier_job_and_records_the_lineage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubetune.trainer.cli import main

    monkeypatch.chdir(tmp_path)  # local runs keep their outputs in runs/<name>, where fromJob finds them
    merged = {"pvc": {"claimName": "out"}, "mergeAdapter": True}
    for name, start, version in (("first", None, "v1"), ("second", "first", "v2"), ("third", "second", "v3")):
        job = fast_job(name).set("spec.training.maxSteps", 2).set("spec.output", merged)
        job.set("spec.data.datasets[0].version", version)
        if start:
            job.set("spec.model", {"fromJob": start})
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(job.build()))
        assert main(["run", str(tmp_path / f"{name}.yaml"), f"--volume=data={DATA}"]) == 0
    manifest = json.loads((tmp_path / "runs" / "third" / "manifest.json").read_text())
    assert [(a["job"], a["dataVersions"]) for a in manifest["lineage"]] == [
        ("first", {"rows": "v1"}),
        ("second", {"rows": "v2"}),
    ]
    assert manifest["dataVersions"] == {"rows": "v3"}
    card = (tmp_path / "runs" / "third" / "README.md").read_text()
    assert "## Lineage" in card and "`first`" in card and "`second`" in card and "Fine-tuned from `second`" in card
    (tmp_path / "orphan.yaml").write_text(
        yaml.safe_dump(fast_job("orphan").set("spec.model", {"fromJob": "nope"}).build())
    )
    assert main(["run", str(tmp_path / "orphan.yaml"), f"--volume=data={DATA}"]) == 78


def test_few_shot_prefix_cache_gives_the_uncached_answers(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubetune.trainer import baselines, evaluate
    from kubetune.trainer.formats import Example
    from kubetune.trainer.tiny import build_tiny_llama

    path = build_tiny_llama(tmp_path / "tiny", seed=4)
    model, tokenizer = (
        AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
        AutoTokenizer.from_pretrained(path),
    )
    solved = [Example.pair("Spell the word backwards: river\n", "revir"), Example.pair("Add 2 and 3\n", "5")]
    tests = [baselines.with_shots(Example.pair(p, "x"), solved) for p in ("Name a colour\n", "Say hi\n", "Count\n")]
    prefix = baselines.prefix(solved)
    cached = evaluate.generation(model, tokenizer, tests, 6, prefix=prefix)
    plain = []
    with torch.no_grad():
        for example in tests:
            ids = (
                evaluate.prompt_ids(tokenizer, prefix)
                + tokenizer(example.prompt[len(prefix) :], add_special_tokens=False)["input_ids"]
            )
            plain.append(
                tokenizer.decode(evaluate.generate(model, tokenizer, ids, 6), skip_special_tokens=True).strip()
            )
    assert [e["generated"] for e in cached["examples"]] == plain
