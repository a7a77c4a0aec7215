"""Sequential tuning: the stages of ``spec.stages`` run in order, each from the previous stage's output.

Each stage is a whole run of the recipe (``loop.train``) in its own directory, ``stages/<name>/``, with its own
checkpoints: a run that dies resumes the stage it was in from that stage's newest checkpoint, and skips the
stages whose directory already holds a finished run of the same stage spec. LoRA and QLoRA stages save their
adapter merged into the model they started from, and the next stage starts from that merged model; Full stages
hand on their whole model. The job's own output directory then gets the last stage's weights, a ``metrics.json``
with every stage's results, a model card with the lineage, and the manifest.

The forgetting guard spans the stages: retention is measured before the first stage and after the last (of those
whose format General rows fit: a stage reads them in its own format, and drops, counted, rows that do not), and
with ``replayEarlierStages`` each stage replays the earlier (CausalLM) stages' training rows besides the General
rows.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubetune.api import DataFormat, DatasetUsage, FineTuneJob, TaskType, ValidationMetric
from kubetune.api.enums import RegressionAction
from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.tuning import Stage

from . import guards, outputs
from .batches import Tokenized
from .datacache import Chain
from .errors import ConfigError, RegressedError
from .evaluate import headline
from .local import Volumes, handed_on
from .loop import StageContext, train
from .model import load_tokenizer
from .prepare import PreparedData, prepare_data
from .report import Reporter
from .rows import PrepReport
from .tiny import ensure_model


def stage_spec(spec: FineTuneJobSpec, stage: Stage) -> FineTuneJobSpec:
    """The spec one stage runs: its datasets (and the General ones), format, task and training; the job's
    settings for the rest. Validation watches Loss in a CausalLM stage; the guard's threshold is the job's;
    augmentation skips Completion stages (NEFTune is theirs)."""
    names = set(stage.datasets)
    chosen = [d for d in spec.data.datasets if d.name in names or d.usage == DatasetUsage.GENERAL]
    if not any(d.usage in (DatasetUsage.SPLIT, DatasetUsage.TRAIN) for d in chosen):
        raise ConfigError(f"spec.stages[{stage.name}].datasets: none has usage Split or Train; nothing to train on")
    task = stage.task or spec.task
    causal = task.type == TaskType.CAUSAL_LM
    validation = spec.validation
    if causal and validation.metric != ValidationMetric.LOSS:
        validation = validation.model_copy(update={"metric": ValidationMetric.LOSS})
    guard = spec.forgetting_guard
    form = stage.format or spec.data.format
    augmentation = spec.data.augmentation if form != DataFormat.COMPLETION else None  # no inputs to perturb
    return spec.model_copy(
        update={
            "data": spec.data.model_copy(update={"datasets": chosen, "format": form, "augmentation": augmentation}),
            "task": task,
            "training": stage.training or spec.training,
            "validation": validation,
            "evaluation": spec.evaluation if causal else spec.evaluation.model_copy(update={"few_shot": None}),
            "forgetting_guard": guard.model_copy(update={"max_regression": None}) if guard and causal else None,
            "stages": None,
        }
    )


def run(job: FineTuneJob, volumes: Volumes, out: Path, reporter: Reporter) -> dict[str, Any]:
    """Train ``job``: once, or stage by stage; return the job's metrics."""
    spec = job.spec
    if not spec.stages:
        return train(job, volumes, out, reporter)
    guard = spec.forgetting_guard
    results: list[dict[str, Any]] = [{"name": s.name, "phase": "Pending"} for s in spec.stages]
    replay: Sequence[Tokenized] = []
    model_path: Path | None = None
    metrics: dict[str, Any] = {}
    retention_before: float | None = None
    retention_after = 0.0
    warnings: list[str] = []
    for index, stage in enumerate(spec.stages):
        sub = job.model_copy(update={"spec": stage_spec(spec, stage)})
        stage_out = out / "stages" / stage.name
        causal = sub.spec.task.type == TaskType.CAUSAL_LM
        results[index]["phase"] = "Running"
        reporter.stage(stage.name, index, results)
        kept: list[PreparedData] = []
        if outputs.finished(stage_out, sub.spec):
            metrics = json.loads((stage_out / "metrics.json").read_text())
            if guard is not None and guard.replay_earlier_stages and causal:
                kept.append(_data(sub, volumes))
        else:
            handed = StageContext(model_path, replay if causal else [], kept.append, merge_adapter=True, in_stage=True)
            metrics = train(sub, volumes, stage_out, reporter, handed)
        if guard is not None and guard.replay_earlier_stages and causal and kept:
            replay = Chain(replay, kept[0].rows["train"])  # the rows stay where they are mapped
        if metrics.get("retention"):
            retention_before = metrics["retention"]["before"] if retention_before is None else retention_before
            retention_after = metrics["retention"]["after"]
        results[index].update(phase="Succeeded", steps=metrics.get("steps"), test=headline(metrics.get("test")))
        warnings += [f"stage {stage.name}: {w}" for w in metrics.get("dataWarnings") or []]
        model_path = handed_on(stage_out, f"spec.stages[{index}]")  # the next stage starts from it
    reporter.stage(None, len(spec.stages), results)
    last = spec.stages[-1]
    _publish(out / "stages" / last.name, out, stage_spec(spec, last))
    metrics = {**metrics, "stages": results, "dataWarnings": warnings}
    if guard is not None and retention_before is not None:
        metrics["retention"] = guards.retention(retention_before, retention_after, guard)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    report = json.loads((out / "stages" / last.name / "prep_report.json").read_text())
    base = volumes.model(spec.model) if spec.model.uri is None else None  # for the lineage
    outputs.model_card(out, job, metrics, report, base)
    hub_datasets = report.get("hubDatasets", {})
    outputs.write_manifest(out, job, report.get("sha256", {}), metrics.get("worldSize", 1), base, hub_datasets)
    retention = metrics.get("retention")
    if guard and retention and not retention["passed"] and guard.on_regression == RegressionAction.FAIL:
        raise RegressedError(
            f"retention loss rose {retention['regression']:.1%} over the stages, more than "
            f"spec.forgettingGuard.maxRegression {retention['maxRegression']:.1%} allows; the outputs are at {out}"
        )
    return metrics


def _data(job: FineTuneJob, volumes: Volumes) -> PreparedData:
    """A finished stage's data again (for replay in the stages after it)."""
    path = ensure_model(volumes.model(job.spec.model), job.spec.model.cached)
    tokenizer = load_tokenizer(path, job.spec.model.trust_remote_code)
    return prepare_data(job.spec, volumes, tokenizer, PrepReport())


def _publish(stage_out: Path, out: Path, spec: FineTuneJobSpec) -> None:
    """The last stage's weights (and merged model) in the job's own output directory (hard links where the
    file system allows)."""
    for name in (outputs.weights_dir(stage_out, spec).name, "merged", "prep_report.json"):
        source, target = stage_out / name, out / name
        if not source.exists():
            continue
        if target.is_dir():
            shutil.rmtree(target)
        if source.is_dir():
            shutil.copytree(source, target, copy_function=_link)
        else:
            _link(str(source), str(target))


def _link(source: str, target: str) -> None:
    try:
        if os.path.exists(target):
            os.unlink(target)
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
