"""`kubetune run` end to end on the tiny Llama: loss falls below the base model's, outputs load back,
bad input exits with the configuration code naming the field or row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kubetune.trainer.cli import main
from kubetune.trainer.errors import EXIT_CONFIG
from tests.support.paths import ROOT

EXAMPLE = ROOT / "examples" / "lora-instruction.yaml"


def write_manifest(tmp_path: Path, **training: object) -> Path:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["training"].update(training)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.slow
def test_lora_run_beats_the_base_model_and_saves_a_loadable_adapter(tmp_path: Path, model_cache: Path) -> None:
    out = tmp_path / "out"
    manifest = write_manifest(tmp_path, epochs=4)
    assert main(["run", str(manifest), "--output", str(out), "--volume", f"kubetune-data={ROOT}"]) == 0

    metrics = json.loads((out / "metrics.json").read_text())
    losses = [row["loss"] for row in metrics["history"]["train"]]
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10
    assert metrics["test"]["loss"] < metrics["baseline"]["loss"]

    report = json.loads((out / "prep_report.json").read_text())
    assert report["dropped"]["emptyInstruction"] == 1
    assert report["dropped"]["emptyResponse"] == 1
    assert report["dropped"]["duplicate"] >= 2
    assert sum(report["splitSizes"].values()) == report["rowsRead"]["instructions"] - sum(report["dropped"].values())

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_cache / "kubetune" / "tiny-llama")
    tuned = PeftModel.from_pretrained(base, out / "adapter")
    assert any("lora_A" in name for name, _ in tuned.named_parameters())


def test_invalid_manifest_exits_with_config_code_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write_manifest(tmp_path, learningRate=-1)
    assert main(["run", str(manifest)]) == EXIT_CONFIG
    assert "spec.training.learningRate" in capsys.readouterr().err


def test_malformed_row_exits_with_config_code_naming_the_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "examples" / "data"
    data.mkdir(parents=True)
    (data / "instructions.jsonl").write_text('{"instruction": "a", "output": "b"}\n{not json}\n')
    manifest = write_manifest(tmp_path)
    assert main(["run", str(manifest), "--volume", f"kubetune-data={tmp_path}", "--output", str(tmp_path / "o")]) == 78
    err = capsys.readouterr().err
    assert "spec.data.datasets[0]" in err and "row 2" in err
