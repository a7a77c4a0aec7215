"""The real-model tier: SmolLM2-135M-Instruct (real pretrained weights, its own tokenizer and chat template,
from the model cache; ``hack/model-cache.sh`` builds it) on the language-identification data of
``examples/language-id.yaml``. Select it with ``-m realmodel``; skipped when the cache entry is missing.

Each run is kept small (a few hundred rows, tens of steps) so the tier adds minutes, not tens of minutes, to
``make test``: LoRA on Instruction rows through the chat template beats the base model's test exact match;
a classification head beats the base model's accuracy; QLoRA trains in 4 bit and merges; a run killed by
SIGKILL resumes and matches an uninterrupted one; ``kubetune serve`` answers a chat request through the chat
template.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import cli, faults
from tests.support.builders import JobBuilder
from tests.trainer.conftest import DATA

MODEL = "smollm2-135m-instruct"
CACHE = Path(os.environ.get("KUBETUNE_REAL_MODEL_CACHE", Path.home() / ".cache" / "kubetune" / "models"))

pytestmark = [
    pytest.mark.realmodel,
    pytest.mark.slow,
    pytest.mark.timeout(1800),  # the LoRA fixture's run alone took 400 s on 2 cores; the suite's default is 600
    pytest.mark.skipif(not (CACHE / MODEL / "config.json").exists(), reason=f"run hack/model-cache.sh: no {MODEL}"),
]


def _rows(data: Path, count: int) -> list[dict[str, Any]]:
    """The first ``count`` language-ID conversations as (sentence, language, instruction)."""
    rows = []
    for line in (DATA / "languages.jsonl").read_text().splitlines()[:count]:
        _, user, assistant = json.loads(line)["messages"]
        rows.append(
            {
                "instruction": user["content"],
                "output": assistant["content"],
                "text": user["content"].rsplit("\n", 1)[-1],
                "label": assistant["content"],
            }
        )
    return rows


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("real-data")
    rows = _rows(DATA, 300)
    (folder / "instructions.jsonl").write_text(
        "".join(json.dumps({k: r[k] for k in ("instruction", "output")}) + "\n" for r in rows)
    )
    (folder / "labels.jsonl").write_text("".join(json.dumps({k: r[k] for k in ("text", "label")}) + "\n" for r in rows))
    return folder


def real_job(name: str, path: str = "instructions.jsonl") -> JobBuilder:
    """LoRA on the real model, Instruction rows through its chat template, a small test split."""
    return (
        JobBuilder(name)
        .set("spec.model", {"cached": MODEL})
        .set("spec.data.datasets[0]", {"name": "rows", "pvc": {"claimName": "data", "path": path}})
        .set("spec.data.useChatTemplate", True)
        .set("spec.data.split", {"validationRatio": 0.05, "testRatio": 0.1, "seed": 7})
        .set(
            "spec.method",
            {"type": "LoRA", "lora": {"rank": 8, "alpha": 16, "dropout": 0.0, "targetModules": ["q_proj", "v_proj"]}},
        )
        .set(
            "spec.training",
            {
                "learningRate": 0.002,
                "epochs": 1,
                "perDeviceBatchSize": 8,
                "maxSeqLength": 96,
                "maxSteps": 30,
                "warmupSteps": 2,
                "seed": 7,
            },
        )
        .set("spec.evaluation", {"maxSamples": 30, "maxNewTokens": 4})
    )


def kubetune(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return cli.kubetune(*args, env={"KUBETUNE_MODEL_CACHE": str(CACHE), **(env or {})}, timeout=1200)


def run(
    doc: dict[str, Any],
    tmp: Path,
    data: Path,
    out: str = "out",
    env: dict[str, str] | None = None,
    command: str = "run",
) -> subprocess.CompletedProcess[str]:
    (tmp / f"{doc['metadata']['name']}.yaml").write_text(yaml.safe_dump(doc))
    extra = ["--metrics-port=0"] if command == "worker" else []
    return kubetune(
        command,
        str(tmp / f"{doc['metadata']['name']}.yaml"),
        f"--output={tmp / out}",
        f"--volume=data={data}",
        *extra,
        env=env,
    )


def metrics(out: Path) -> dict[str, Any]:
    return dict(json.loads((out / "metrics.json").read_text()))


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory, data: Path) -> tuple[dict[str, Any], Path]:
    tmp = tmp_path_factory.mktemp("real-lora")
    doc = real_job("real-lora").build()
    done = run(doc, tmp, data)
    assert done.returncode == 0, done.stderr[-3000:]
    return doc, tmp / "out"


def test_lora_through_the_chat_template_beats_the_base_model(tuned: tuple[dict[str, Any], Path]) -> None:
    _, out = tuned
    m = metrics(out)
    assert m["test"]["exactMatch"] > m["baseline"]["exactMatch"] + 0.3, (m["test"], m["baseline"])
    assert m["test"]["loss"] < m["baseline"]["loss"]
    sample = m["test"]["examples"][0]
    assert "<|im_start|>user\n" in sample["prompt"] and sample["prompt"].endswith("<|im_start|>assistant\n")
    assert (out / "report.html").exists() and (out / "test_metrics.png").exists()
    low, high = m["test"]["intervals"]["exactMatch"]
    assert low <= m["test"]["exactMatch"] <= high


def test_serve_answers_a_chat_request_through_the_chat_template(tuned: tuple[dict[str, Any], Path], data: Path) -> None:
    from kubetune.api import parse_job
    from kubetune.trainer.local import Volumes
    from kubetune.trainer.serve import Model, serve
    from tests.trainer.test_serve import post

    doc, out = tuned
    model = Model(parse_job(doc), Volumes(claims={"data": data}, model_cache=CACHE), out, merged=False)
    server = serve(model, 0, limit=16, address="127.0.0.1")
    try:
        question = _rows(DATA, 300)[-1]  # the last rows: in the test split's pool, never trained on
        messages = [{"role": "user", "content": question["instruction"]}]
        prompt = model.chat_prompt(messages)
        assert prompt.startswith("<|im_start|>system") and prompt.endswith("<|im_start|>assistant\n")
        code, body = post(
            f"http://127.0.0.1:{server.server_address[1]}/v1/chat/completions", {"messages": messages, "max_tokens": 4}
        )
        assert code == 200, body
        answer = body["choices"][0]["message"]["content"].strip()
        languages = {
            "Dutch",
            "English",
            "French",
            "German",
            "Indonesian",
            "Italian",
            "Portuguese",
            "Spanish",
            "Swedish",
            "Turkish",
        }
        assert answer in languages, answer
    finally:
        server.shutdown()


def test_classification_head_beats_the_base_model(tmp_path: Path, data: Path) -> None:
    job = real_job("real-classes", "labels.jsonl").set("spec.data.format", "Classification")
    job.set("spec.data.useChatTemplate", False).set("spec.task", {"type": "Classification"})
    job.set("spec.validation", {"metric": "Accuracy"}).set("spec.training.learningRate", 0.003)
    job.set("spec.method.lora.targetModules", ["q_proj", "k_proj", "v_proj", "o_proj"])
    done = run(job.build(), tmp_path, data)
    assert done.returncode == 0, done.stderr[-3000:]
    m = metrics(tmp_path / "out")
    assert m["test"]["accuracy"] > m["baseline"]["accuracy"] + 0.2, (m["test"], m["baseline"])


def test_qlora_trains_in_4_bit_and_merges(tmp_path: Path, data: Path) -> None:
    job = real_job("real-qlora").set("spec.method.type", "QLoRA")
    job.set("spec.method.quantization", {"computeDtype": "Float32"}).set("spec.training.maxSteps", 6)
    job.set("spec.evaluation", {"maxSamples": 8, "maxNewTokens": 4, "baseline": False})
    job.set("spec.output", {"pvc": {"claimName": "data", "path": "unused"}, "mergeAdapter": True})
    done = run(job.build(), tmp_path, data)
    assert done.returncode == 0, done.stderr[-3000:]
    m = metrics(tmp_path / "out")
    assert m["history"]["train"][-1]["loss"] < m["history"]["train"][0]["loss"]
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "merged")
    assert merged.config.vocab_size == 49152 and not any("lora" in n for n, _ in merged.named_parameters())


def test_a_killed_run_resumes_and_matches_an_uninterrupted_one(tmp_path: Path, data: Path) -> None:
    job = real_job("real-resume").set("spec.training.maxSteps", 8).set("spec.checkpointing", {"everySteps": 3})
    job.set("spec.evaluation", {"maxSamples": 4, "maxNewTokens": 2, "baseline": False})
    doc = job.build()
    straight = run(doc, tmp_path, data, "straight", command="worker")
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = run(doc, tmp_path, data, "killed", env=faults.kill_after(5), command="worker")
    assert killed.returncode == -signal.SIGKILL
    resumed = run(doc, tmp_path, data, "killed", command="worker")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert '"resumedFromStep": 3' in resumed.stderr
    a, b = metrics(tmp_path / "straight"), metrics(tmp_path / "killed")
    assert [r["step"] for r in b["history"]["train"]] == list(range(1, 9))
    assert abs(a["history"]["train"][-1]["loss"] - b["history"]["train"][-1]["loss"]) < 1e-4
    assert abs(a["test"]["loss"] - b["test"]["loss"]) < 1e-4
