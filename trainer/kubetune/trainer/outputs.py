"""What a finished run leaves behind: the adapter or model with its tokenizer, an optional merged model,
``metrics.json``, ``prep_report.json``, ``manifest.json`` (spec hash, data hashes, package versions, seed) and a
model card ``README.md``; and the copy to ``spec.output.uri`` when the output is a URI.
"""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from kubetune.api import MethodType
from kubetune.api.spec import MUTABLE_FIELDS, FineTuneJob, FineTuneJobSpec
from kubetune.api.wire import HEADLINE

from . import hub
from .errors import OutputExistsError
from .plots import PLOTS
from .remote import errors, filesystem

PACKAGES = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "tokenizers", "safetensors", "pydantic")
COMPLETE = "manifest.json"
"""Written last: a directory with a manifest holds a finished run."""


def readable(directory: Path) -> Path:
    """Make the weights under ``directory`` readable by other users, as every other output file is: safetensors
    writes them 0600, so a model cache or outputs written by one user could not be read by a pod running as another
    (the images run as 65532)."""
    for path in directory.rglob("*"):
        if path.is_file() and path.stat().st_mode & 0o044 != 0o044:
            path.chmod(path.stat().st_mode | 0o044)
    return directory


def spec_hash(spec: FineTuneJobSpec) -> str:
    """SHA-256 of the spec's canonical JSON, without the fields that may change while a job runs."""
    wire = {k: v for k, v in spec.to_wire().items() if k not in MUTABLE_FIELDS}
    return hashlib.sha256(json.dumps(wire, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def weights_dir(out: Path, spec: FineTuneJobSpec) -> Path:
    return out / ("model" if spec.method.type == MethodType.FULL else "adapter")


def finished(out: Path, spec: FineTuneJobSpec) -> bool:
    """Whether ``out`` holds a finished run of exactly this spec."""
    manifest = out / COMPLETE
    return manifest.is_file() and json.loads(manifest.read_text()).get("specHash") == spec_hash(spec)


def refuse_overwrite(out: Path, job: FineTuneJob, options: dict[str, Any] | None = None) -> None:
    """Raise OutputExistsError when the job's output location (``out``, or its URI) holds the finished run of
    another spec and spec.output.overwrite is not set: a job re-created under an old name with a changed spec, or a
    copied manifest, never replaces an earlier model silently."""
    output = job.spec.output
    if output is None or output.overwrite:
        return
    found = _remote_manifest(output.uri, options) if output.uri else _local_manifest(out / COMPLETE)
    if found is None or found.get("specHash") == spec_hash(job.spec):
        return
    where = output.uri or str(out)
    raise OutputExistsError(
        f"spec.output: {where} holds the finished model of job {found.get('job', '?')} (finished "
        f"{found.get('finishedAt', '?')}, spec {str(found.get('specHash'))[:12]}, this job's "
        f"{spec_hash(job.spec)[:12]}); set spec.output.overwrite: true to replace it, or choose another path"
    )


def _local_manifest(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _remote_manifest(uri: str, options: dict[str, Any] | None) -> dict[str, Any] | None:
    fs, path = filesystem(uri, "spec.output.uri", options)
    target = f"{path.rstrip('/')}/{COMPLETE}"
    with errors("spec.output.uri", uri, "read"):
        try:
            return dict(json.loads(fs.cat_file(target)))
        except FileNotFoundError:
            return None


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def lineage(base: Path | None) -> list[dict[str, Any]]:
    """The jobs the model at ``base`` descends from, oldest first: when ``base`` is a finished job's output (its
    ``model/`` or ``merged/``), that job's own lineage and then the job itself."""
    manifest = base.parent / COMPLETE if base is not None else None
    if manifest is None or not manifest.is_file():
        return []
    earlier = json.loads(manifest.read_text())
    keep = ("job", "specHash", "dataSha256", "dataVersions", "finishedAt")
    return [*earlier.get("lineage", []), {k: earlier[k] for k in keep if k in earlier}]


def write_manifest(
    out: Path,
    job: FineTuneJob,
    data_sha256: dict[str, str],
    world_size: int,
    base: Path | None = None,
    hub_datasets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    manifest = {
        "job": job.name,
        "specHash": spec_hash(job.spec),
        "spec": job.spec.to_wire(),
        "dataSha256": data_sha256,
        "dataVersions": {d.name: d.version for d in job.spec.data.datasets if d.version},
        "lineage": lineage(base),
        "hub": hub.source_of(base) if base is not None else None,
        "hubDatasets": hub_datasets or {},
        "seed": job.spec.training.seed,
        "splitSeed": job.spec.data.split.seed,
        "worldSize": world_size,
        "versions": versions(),
        "finishedAt": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (out / COMPLETE).write_text(json.dumps(manifest, indent=2))
    return manifest


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "n/a"


def model_card(
    out: Path, job: FineTuneJob, metrics: dict[str, Any], report: dict[str, Any], base: Path | None = None
) -> None:
    """README.md: what was trained, on what, how, and how well, against the base model."""
    spec = job.spec
    start = (
        spec.model.cached or spec.model.uri or spec.model.from_job or (spec.model.pvc.path if spec.model.pvc else "")
    )
    if (origin := hub.source_of(base) if base is not None else None) is not None:
        start = f"{origin['repo']}@{origin['commit']} (Hugging Face Hub, revision {origin['revision']})"
    lines = [
        f"# {job.name}",
        "",
        f"Fine-tuned from `{start}` with kubetune ({spec.method.type}, task {spec.task.type}).",
        "",
        "## Data",
        "",
        f"Datasets: {', '.join(d.name for d in spec.data.datasets)} (format {spec.data.format}). "
        f"Rows per split: {report.get('splitSizes')}. Dropped: {report.get('dropped') or 'none'}.",
        "",
        *_training(spec, metrics),
        *_stages(metrics),
        *_test_set(metrics),
        *_lineage(spec, base),
    ]
    plots = [name for name in PLOTS if (out / name).exists()]
    if plots:
        lines += ["", "## Plots", "", "The whole run in one page: [report.html](report.html).", ""]
        lines += [f"![{name}]({name})" for name in plots]
    lines += ["", "## Use", ""]
    if spec.method.type == MethodType.FULL:
        lines.append("Load `model/` with `AutoModelForCausalLM.from_pretrained`.")
    else:
        lines.append("Load `adapter/` with `PeftModel.from_pretrained(base_model, 'adapter')`; `merged/` (when")
        lines.append("`output.mergeAdapter` is set) is the base model with the adapter merged in.")
    (out / "README.md").write_text("\n".join(lines) + "\n")


def _training(spec: FineTuneJobSpec, metrics: dict[str, Any]) -> list[str]:
    """The card's Training section: steps, settings, and which step's weights were delivered."""
    lines = [
        "## Training",
        "",
        f"{metrics.get('steps')} optimizer steps, learning rate {spec.training.learning_rate}, "
        f"batch {spec.training.per_device_batch_size} x {spec.training.gradient_accumulation_steps} accumulation "
        f"x {metrics.get('worldSize', 1)} processes, seed {spec.training.seed}"
        f"{', stopped early' if metrics.get('stoppedEarly') else ''}.",
        "",
    ]
    delivered, best, last = metrics.get("delivered"), metrics.get("bestValidation"), metrics.get("lastValidation")
    if delivered and best and last:
        metric = next(k for k in best if k != "step")
        what = "the best validation step's" if delivered["of"] == "BestValidation" else "the last step's"
        lines += [
            f"The weights are {what} (step {delivered['step']}; the test set was evaluated on them). "
            f"Validation {metric}: {best[metric]:.4f} at the best step {best['step']}, {last[metric]:.4f} "
            f"at the last validation (step {last['step']}).",
            "",
        ]
    return lines


def _stages(metrics: dict[str, Any]) -> list[str]:
    """The card's Stages section (sequential tuning), or nothing."""
    if not metrics.get("stages"):
        return []
    lines = ["## Stages", "", "Each stage started from the one before it, the first from the base model.", ""]
    lines += [
        f"{i}. `{s['name']}`: {s.get('steps')} steps, test {s.get('test')}"
        for i, s in enumerate(metrics["stages"], start=1)
    ]
    return [*lines, ""]


def _test_set(metrics: dict[str, Any]) -> list[str]:
    """The card's Test set section: the tuned model against the base model (and few-shot), per task, retention
    and the overfitting warning."""
    test, baseline = metrics.get("test", {}), metrics.get("baseline", {})
    few = metrics.get("fewShot") or {}
    shots = f" | base model, {few.get('k')}-shot" if few else ""
    lines = [
        "## Test set",
        "",
        f"| metric | fine-tuned | base model{shots} |",
        "|---|---|---" + ("|---|" if few else "|"),
    ]
    for key in HEADLINE:
        if key in test:
            extra = f" | {_cell(few.get(key))}" if few else ""
            lines.append(f"| {key} | {_cell(test[key])} | {_cell(baseline.get(key))}{extra} |")
    for task, values in (metrics.get("tasks") or {}).items():
        lines.append(f"\nTask `{task}`: " + ", ".join(f"{k} {_cell(values[k])}" for k in HEADLINE if k in values))
    if metrics.get("retention"):
        r = metrics["retention"]
        lines += [
            "",
            f"Retention (held-out general data): loss {r['before']:.4f} -> {r['after']:.4f} "
            f"({r['regression']:+.1%}; allowed: {r.get('maxRegression')}).",
        ]
    if (metrics.get("overfitting") or {}).get("detected"):
        lines += ["", f"Warning: validation loss rose while training loss fell: {metrics['overfitting']}."]
    return lines


def _lineage(spec: FineTuneJobSpec, base: Path | None) -> list[str]:
    """The card's Lineage section (continued from earlier jobs) and the datasets' versions, or nothing."""
    lines: list[str] = []
    ancestors = lineage(base)
    if ancestors:
        lines += ["", "## Lineage", "", "Continued from earlier jobs' outputs (oldest first):", ""]
        lines += [
            f"- `{a['job']}` (spec {a['specHash'][:12]}, data {a.get('dataVersions') or a.get('dataSha256')}, "
            f"finished {a.get('finishedAt')})"
            for a in ancestors
        ]
    versions = {d.name: d.version for d in spec.data.datasets if d.version}
    if versions:
        lines += ["", f"Dataset versions: {versions}."]
    return lines
