"""The pydantic API: examples parse, bad manifests are rejected naming the field, defaults, CRD in sync."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from kubetune.api import FineTuneJob, MethodType, Scheduler, describe, parse_job, parse_spec
from kubetune.api.base import ApiModel
from kubetune.api.crd import render
from tests.api.cases import BAD, GOOD, parse
from tests.support.builders import JobBuilder, make_job
from tests.support.paths import ROOT

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def rejection(doc: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        parse(doc)
    return describe(info.value)


def _job_doc(path: Path) -> dict[str, Any]:
    """The FineTuneJob of an example file (which may also hold the ConfigMaps its datasets name)."""
    return next(d for d in yaml.safe_load_all(path.read_text()) if d.get("kind") == "FineTuneJob")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_parses_and_starts_with_its_command(path: Path) -> None:
    text = path.read_text()
    assert text.startswith("# "), "examples open with a comment giving the command that applies or runs them"
    job = parse_job(_job_doc(path))
    assert job.name == _job_doc(path)["metadata"]["name"]


def test_examples_cover_the_required_kinds_of_job() -> None:
    jobs = [parse_job(_job_doc(p)) for p in EXAMPLES]
    methods = {j.spec.method.type for j in jobs}
    assert methods >= {MethodType.FULL, MethodType.LORA, MethodType.QLORA}
    assert any(j.spec.task.type == "Classification" for j in jobs)
    assert any(j.spec.resources.workers > 1 for j in jobs)


@pytest.mark.parametrize(("case", "doc", "expected"), BAD, ids=[c[0] for c in BAD])
def test_bad_manifest_is_rejected_naming_the_field(case: str, doc: dict[str, Any], expected: str) -> None:
    message = rejection(doc)
    assert expected in message, message


@pytest.mark.parametrize(("case", "doc"), GOOD, ids=[c[0] for c in GOOD])
def test_good_manifest_is_accepted(case: str, doc: dict[str, Any]) -> None:
    parse(doc)


def test_defaults_are_documented_values() -> None:
    spec = parse_job(make_job()).spec
    assert spec.method.type == MethodType.LORA
    assert spec.training.scheduler == Scheduler.COSINE
    assert spec.training.learning_rate == pytest.approx(2e-4)
    assert spec.data.ratios() == (0.1, 0.1)
    assert spec.checkpointing.keep == 2
    assert spec.suspend is False


def test_explicit_files_turn_the_matching_ratio_off() -> None:
    doc = JobBuilder().set("spec.data.datasets[1]", {"name": "val", "uri": "s3://b/v", "usage": "Validation"}).build()
    assert parse_job(doc).spec.data.ratios() == (0.0, 0.1)


def test_no_type_coercion_strings_stay_strings() -> None:
    assert "spec.training.perDeviceBatchSize" in rejection(make_job(spec__training__perDeviceBatchSize="8"))
    assert "spec.training.packing" in rejection(make_job(spec__training__packing="true"))


def test_unknown_field_message_names_the_path() -> None:
    assert 'unknown field "spec.method.lora.rnak"' in rejection(make_job(spec__method__lora={"rnak": 8}))


def test_wire_round_trip_is_lossless() -> None:
    for path in EXAMPLES:
        job = parse_job(_job_doc(path))
        assert parse_job(job.to_wire()) == job


def test_parse_spec_accepts_a_spec_alone() -> None:
    assert parse_spec(make_job()["spec"]).model.cached == "kubetune/tiny-llama"


def all_models() -> list[type[BaseModel]]:
    found, pending = [], [ApiModel]
    while pending:
        for sub in pending.pop().__subclasses__():
            found.append(sub)
            pending.append(sub)
    return found


@pytest.mark.parametrize("model", all_models(), ids=lambda m: m.__name__)
def test_every_model_and_field_is_described(model: type[BaseModel]) -> None:
    assert model.__doc__, model
    missing = [name for name, field in model.model_fields.items() if not field.description]
    assert not missing, f"{model.__name__} fields without a description: {missing}"


@pytest.mark.parametrize(("kind", "file"), [("FineTuneJob", "finetunejobs"), ("FineTuneSweep", "finetunesweeps")])
def test_crd_file_is_generated_from_the_models(kind: str, file: str) -> None:
    on_disk = (ROOT / "crds" / f"kubetune.dev_{file}.yaml").read_text()
    assert on_disk == render(kind), "crds/ is stale: run `make crds`"


def test_crd_schema_is_closed_where_pydantic_is() -> None:
    schema = yaml.safe_load(render())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]
    assert set(spec["properties"]) == {
        f.alias for f in FineTuneJob.model_fields["spec"].annotation.model_fields.values()
    }  # type: ignore[union-attr]
    assert "x-kubernetes-preserve-unknown-fields" not in yaml.safe_dump(spec)
