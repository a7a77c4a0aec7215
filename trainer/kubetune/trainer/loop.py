"""The training recipe, read top to bottom: prepare data (``splits``), load the model, measure the base model
(zero-shot, few-shot, retention, passkey: ``measure``), train (AdamW, warmup + schedule, gradient accumulation,
clipping, label smoothing, NEFTune, task mixing and replay, validation per task, early stopping, overfitting check,
checkpoints), evaluate on the test split (per task), save. Runs the same in one process and under ``torchrun``
(accelerate's DDP or FSDP). Sequential stages call it once per stage (``stages.py``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubetune.api import FineTuneJob, MethodType, TaskType, ValidationMetric
from kubetune.api.enums import RegressionAction
from kubetune.api.spec import FineTuneJobSpec

from . import checkpoint, guards, measure, outputs, plots
from .augment import add_neftune
from .batches import IGNORE, Tokenized, collate, shard_chunks
from .checkpoint import TrainerState
from .data import PrepReport
from .errors import ConfigError, DivergedError, PreemptedError, RegressedError
from .local import Volumes
from .mixing import EpochPlan
from .model import load, load_tokenizer, merged
from .packing import collate_packed
from .report import ProgressEvent, Reporter
from .runtime import make_accelerator
from .splits import Data, prepare_data
from .tiny import ensure_model

log = logging.getLogger(__name__)

DIVERGENCE_FACTOR = 5.0
DIVERGENCE_STEPS = 5
"""The loss counts as diverged when it stays above DIVERGENCE_FACTOR x the first step's for DIVERGENCE_STEPS steps."""


def target_count(batch: dict[str, Any], classification: bool) -> int:
    """What one micro-batch's loss is summed over: its rows (Classification) or its shifted target tokens."""
    labels = batch["labels"]
    return len(labels) if classification else int((labels[..., 1:] != IGNORE).sum())


def summed_loss(model: Any, batch: dict[str, Any], smoothing: float, classification: bool) -> Any:
    """Cross-entropy summed over the micro-batch's targets: the shifted tokens (CausalLM, as transformers
    shifts them) or the rows' classes, with label smoothing when asked."""
    import torch

    labels = batch["labels"]
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
    if classification:
        return torch.nn.functional.cross_entropy(logits, labels, label_smoothing=smoothing, reduction="sum")
    return torch.nn.functional.cross_entropy(
        logits[..., :-1, :].reshape(-1, logits.size(-1)),
        labels[..., 1:].reshape(-1).to(logits.device),
        ignore_index=IGNORE,
        label_smoothing=smoothing,
        reduction="sum",
    )


def accumulate(model: Any, batches: list[dict[str, Any]], smoothing: float, classification: bool,
               accelerator: Any) -> tuple[float, int]:  # fmt: skip
    """Forward and backward over one optimizer step's micro-batches, gradients synchronised on the last one.

    Every target of the step weighs the same, whatever its micro-batch and rank: each micro-batch's summed loss
    is divided by the step's target count over all micro-batches and ranks (one all-reduce of the count), times
    the world size that DDP's and FSDP's gradient averaging divides by again. Returns this rank's share of the
    step's mean loss (the shares sum to it over ranks, over the world size) and its trained tokens."""
    import torch

    local = float(sum(target_count(batch, classification) for batch in batches))
    count = accelerator.reduce(torch.tensor([local], device=accelerator.device), "sum")
    scale = accelerator.num_processes / max(float(count[0]), 1.0)
    step_loss, tokens = 0.0, 0
    for i, batch in enumerate(batches):
        sync = i == len(batches) - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(model), accelerator.autocast():
            loss = summed_loss(model, batch, smoothing, classification) * scale
        accelerator.backward(loss)
        step_loss += float(loss.detach())
        tokens += int((batch["labels"] != IGNORE).sum()) if batch["labels"].dim() > 1 else len(batch["labels"])
    return step_loss, tokens


def micro_batch(chunk: list[Tokenized], spec: FineTuneJobSpec, pad: int, device: Any) -> dict[str, Any]:
    classification = spec.task.type == TaskType.CLASSIFICATION
    if spec.training.packing and not classification:
        batch = collate_packed(chunk)
    else:
        batch = collate(chunk, pad, classification)
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def train(
    job: FineTuneJob,
    volumes: Volumes,
    out: Path,
    reporter: Reporter | None = None,
    model_path: Path | None = None,
    replay: list[Tokenized] | None = None,
    on_data: Callable[[Data], None] | None = None,
    merge_adapter: bool = False,
    in_stage: bool = False,
) -> dict[str, Any]:
    """Run the whole recipe for ``job``; write outputs under ``out``; return the metrics.

    Stages pass the previous stage's output as ``model_path``, earlier stages' training rows as ``replay``, and
    ``on_data`` to receive this stage's data, and ask for the merged model (``merge_adapter``); a stage may lack
    General rows of its format (``in_stage``), a single run may not."""
    import torch
    from transformers import get_scheduler, set_seed

    spec, hp = job.spec, job.spec.training
    accelerator = make_accelerator(spec)
    main, world, rank = accelerator.is_main_process, accelerator.num_processes, accelerator.process_index
    reporter = reporter or Reporter(enabled=main)
    reporter.enabled = main
    out.mkdir(parents=True, exist_ok=True)

    # Data, and the plan: how many optimizer steps.
    reporter.phase("Preparing")
    if model_path is None:
        if spec.model.hugging_face is not None:
            reporter.phase("Downloading")
        with accelerator.main_process_first():  # one download per machine: the others find it done
            downloading = lambda done: reporter.phase("Downloading", download=done)  # noqa: E731
            model_path = ensure_model(volumes.model(spec.model, progress=downloading), spec.model.cached)
        reporter.phase("Preparing")
    tokenizer = load_tokenizer(model_path, spec.model.trust_remote_code)
    report = PrepReport()
    data = prepare_data(spec, volumes, tokenizer, report)
    for warning in report.warnings if main else []:
        log.warning("data: %s", warning)
    noted = {"dataWarnings": report.warnings}  # for the job's status while it trains
    if on_data is not None:
        on_data(data)
    if spec.forgetting_guard is not None and not data.rows.get("retention") and not in_stage:
        raise ConfigError(
            f"spec.forgettingGuard: no General rows in format {spec.data.format} are left for the retention set "
            "after cleaning; see the prep report's dropped rows"
        )
    plan = EpochPlan(spec, data.rows["train"], data.tasks["train"], data.rows.get("replay", []) + (replay or []),
                     hp.seed)  # fmt: skip
    report.tasks = plan.report({name: data.tasks[name] for name in ("train", "validation", "test")})
    if main:
        (out / "prep_report.json").write_text(json.dumps(report.to_dict(), indent=2))
    per_epoch = len(shard_chunks(plan.epoch(0), hp.per_device_batch_size, hp.seed, rank, world))
    steps_per_epoch = per_epoch // hp.gradient_accumulation_steps
    if steps_per_epoch == 0:
        raise ConfigError(
            f"spec.training: {len(plan)} training rows make {per_epoch} micro-batches per process, "
            f"fewer than gradientAccumulationSteps={hp.gradient_accumulation_steps}; no optimizer step would run"
        )
    total_steps = min(hp.max_steps or 10**12, steps_per_epoch * hp.epochs)
    warmup = hp.warmup_steps if hp.warmup_steps is not None else round(total_steps * (hp.warmup_ratio or 0.03))

    # Model, optimizer, schedule. Seeded here, so nothing before (a model built into the cache) shifts the RNG.
    set_seed(hp.seed)
    model = load(model_path, spec, tokenizer, data.labels)
    if hp.neftune_noise_alpha is not None:
        add_neftune(model, hp.neftune_noise_alpha)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=hp.learning_rate, weight_decay=hp.weight_decay)
    name = {"Linear": "linear", "Cosine": "cosine", "Constant": "constant_with_warmup"}[hp.scheduler]
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    pad = tokenizer.pad_token_id

    # Resume from the newest checkpoint of this spec, or evaluate the base model first.
    state = TrainerState(spec_hash=outputs.spec_hash(spec))
    resumed = checkpoint.latest(out, state.spec_hash)
    before: dict[str, Any] = {"baseline": {}}
    if resumed is not None:
        state = checkpoint.load(resumed, model, optimizer, scheduler, accelerator)
        saved = json.loads((out / "baseline.json").read_text()) if (out / "baseline.json").exists() else before
        before = saved if "baseline" in saved else {"baseline": saved}  # older runs saved the baseline alone
        reporter.metrics.resumed_from_step.set(state.step)
        reporter.phase("Training", resumedFromStep=state.step, **noted)
    else:
        reporter.phase("EvaluatingBaseModel", **noted)
        before = measure.before_tuning(spec, model, tokenizer, data, accelerator)
        if main:
            (out / "baseline.json").write_text(json.dumps(before))
    baseline = before["baseline"]
    classification = spec.task.type == TaskType.CLASSIFICATION
    validation_tasks = data.by_task("validation")

    # Train.
    stop_requested = _on_sigterm()
    higher_is_better = spec.validation.metric != ValidationMetric.LOSS
    metric_key = {"Loss": "loss", "Accuracy": "accuracy", "F1": "f1"}[spec.validation.metric]
    validate_every = spec.validation.every_steps or steps_per_epoch
    checkpoint_every = spec.checkpointing.every_steps or steps_per_epoch
    accumulation = hp.gradient_accumulation_steps
    fault_after = int(os.environ.get("KUBETUNE_FAULT_AFTER_STEP", "0"))
    # Throughput and ETA count only what this process did (a resumed run starts from a checkpoint's totals).
    started, first_step, first_tokens, exploding = time.monotonic(), state.step, state.tokens_seen, 0
    model.train()
    first_epoch = hp.epochs if state.step >= total_steps or state.stopped_early else state.epoch
    for epoch in range(first_epoch, hp.epochs):
        chunks = shard_chunks(plan.epoch(epoch), hp.per_device_batch_size, hp.seed + epoch, rank, world)
        start = state.micro_batches_done if epoch == state.epoch else 0
        state.epoch = epoch
        for first in range(start, steps_per_epoch * accumulation, accumulation):
            # One optimizer step: `accumulation` micro-batches, gradients synchronised on the last one only.
            step = [micro_batch(chunks[first + micro], spec, pad, accelerator.device) for micro in range(accumulation)]
            step_loss, tokens = accumulate(model, step, hp.label_smoothing, classification, accelerator)
            # All ranks agree on the loss and on stopping, so they all take the same branch below.
            totals = torch.tensor([step_loss, tokens, float(stop_requested())], device=accelerator.device)
            totals = accelerator.reduce(totals, "sum")
            step_loss, tokens = float(totals[0]) / world, int(totals[1])
            if not math.isfinite(step_loss):
                raise DivergedError(
                    f"loss became {step_loss} at step {state.step + 1}; lower spec.training.learningRate"
                )
            reference = state.train_history[0]["loss"] if state.train_history else step_loss
            exploding = exploding + 1 if step_loss > DIVERGENCE_FACTOR * reference else 0
            if exploding >= DIVERGENCE_STEPS:
                raise DivergedError(
                    f"loss {step_loss:.4g} at step {state.step + 1} has stayed above {DIVERGENCE_FACTOR:g}x the first "
                    f"step's ({reference:.4g}) for {DIVERGENCE_STEPS} steps; lower spec.training.learningRate"
                )
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), hp.max_grad_norm) if hp.max_grad_norm else None
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            state.step += 1
            state.micro_batches_done = first + accumulation
            state.tokens_seen += tokens
            row = {"step": state.step, "loss": step_loss, "learningRate": scheduler.get_last_lr()[0]}
            if grad_norm is not None:
                row["gradNorm"] = float(grad_norm)
            state.train_history.append(row)

            event_validation = None
            if data.rows["validation"] and state.step % validate_every == 0:
                values = measure.scores(spec, model, tokenizer, data.rows["validation"], data, accelerator)
                value = float(values[metric_key])
                entry = {"step": state.step, **{k: values[k] for k in ("loss", metric_key)}}
                if validation_tasks:
                    entry["tasks"] = {
                        task: {k: v for k, v in measure.scores(spec, model, tokenizer, rows, data, accelerator).items()
                               if k in ("loss", metric_key)}
                        for task, (rows, _) in validation_tasks.items()
                    }  # fmt: skip
                state.validation_history.append(entry)
                event_validation = values["loss"]
                best = state.best_value
                delta = spec.validation.early_stopping.min_delta if spec.validation.early_stopping else 0.0
                improved = best is None or (value > best + delta if higher_is_better else value < best - delta)
                if improved:
                    state.best_value, state.best_step, state.bad_validations = value, state.step, 0
                    save_weights(accelerator, model, out / "best")
                else:
                    state.bad_validations += 1
                patience = spec.validation.early_stopping
                state.stopped_early = patience is not None and state.bad_validations >= patience.patience

            elapsed = time.monotonic() - started
            done_here = max(state.step - first_step, 1)
            reporter.progress(
                ProgressEvent(
                    step=state.step,
                    total_steps=total_steps,
                    epoch=epoch,
                    loss=step_loss,
                    learning_rate=row["learningRate"],
                    tokens_per_second=round((state.tokens_seen - first_tokens) / max(elapsed, 1e-9), 1),
                    eta_seconds=round(elapsed / done_here * (total_steps - state.step), 1),
                    validation_loss=event_validation,
                    best_validation_metric=state.best_value,
                    best_step=state.best_step if state.validation_history else None,
                    overfitting=guards.overfitting(state.train_history, state.validation_history)
                    if event_validation is not None
                    else None,
                ),
                tokens,
            )
            finishing = state.step >= total_steps or state.stopped_early
            if state.step % checkpoint_every == 0 or (bool(totals[2]) and not finishing):
                checkpoint.save(out, state, model, optimizer, scheduler, accelerator, spec.checkpointing.keep)
                reporter.checkpoint(state.step)
            if bool(totals[2]):
                raise PreemptedError(f"stopped by SIGTERM at step {state.step}; the next run resumes from there")
            if fault_after and state.step == fault_after:
                os.kill(os.getpid(), signal.SIGKILL)  # fault injection for the resume test: die like an OOM kill
            if finishing:
                break
        else:
            state.micro_batches_done = 0
            continue
        break

    # Deliver the best validation step's weights (restoreBest), then evaluate on the test split (per task,
    # passkey), check retention; save.
    restore_best = spec.validation.restore_best and bool(state.validation_history)
    delivered = state.best_step if restore_best else state.step
    last = state.validation_history[-1] if state.validation_history else None
    if delivered != state.step:
        checkpoint.restore(out / "best", model, accelerator)
    reporter.phase("Evaluating")
    test, tasks = {}, {}
    if spec.evaluation.enabled:
        test = measure.test_metrics(spec, model, tokenizer, data, accelerator)
        test.update(measure.passkey(spec, model, tokenizer, accelerator))
        tasks = {
            task: measure.test_metrics(spec, model, tokenizer, data, accelerator, split)
            for task, split in data.by_task("test").items()
        }
    retention = None
    if spec.forgetting_guard is not None and before.get("retentionLoss") is not None:
        after = measure.retention_loss(spec, model, tokenizer, data, accelerator)
        assert after is not None
        retention = guards.retention(before["retentionLoss"], after, spec.forgetting_guard)
    metrics = {
        "steps": state.step,
        "totalSteps": total_steps,
        "worldSize": world,
        "seconds": round(time.monotonic() - started, 2),
        "tokens": state.tokens_seen,
        "stoppedEarly": state.stopped_early,
        "bestValidation": {"step": state.best_step, metric_key: state.best_value} if state.validation_history else None,
        "lastValidation": {"step": last["step"], metric_key: last[metric_key]} if last else None,
        "delivered": {"step": delivered, "of": "BestValidation" if restore_best else "LastStep"},
        "history": {"train": state.train_history, "validation": state.validation_history},
        "test": test,
        "baseline": baseline,
        "fewShot": before.get("fewShot", {}),
        "tasks": tasks,
        "retention": retention,
        "overfitting": guards.overfitting(state.train_history, state.validation_history),
        "dataWarnings": report.warnings,
    }
    reporter.phase("Saving")
    state_dict = gathered_state(accelerator, model)  # a collective under FSDP: every rank gives its shards
    if main:
        save(job, model_path, accelerator.unwrap_model(model), tokenizer, data.labels, out, metrics, report,
             merge_adapter, state_dict)  # fmt: skip
    accelerator.wait_for_everyone()
    guard = spec.forgetting_guard
    if retention is not None and not retention["passed"] and guard and guard.on_regression == RegressionAction.FAIL:
        raise RegressedError(
            f"retention loss rose {retention['regression']:.1%} ({retention['before']:.4f} -> "
            f"{retention['after']:.4f}), more than spec.forgettingGuard.maxRegression "
            f"{retention['maxRegression']:.1%} allows; the outputs are saved at {out}"
        )
    return metrics


def save(
    job: FineTuneJob,
    model_path: Path,
    model: Any,
    tokenizer: Any,
    labels: list[str] | None,
    out: Path,
    metrics: dict[str, Any],
    report: PrepReport,
    merge_adapter: bool = False,
    state_dict: dict[str, Any] | None = None,
) -> None:
    """Weights (from ``state_dict``, the whole state gathered on this process, when given) and tokenizer, the
    merged model when asked, metrics, plots, the model card, then the manifest (last)."""
    spec = job.spec
    weights = outputs.weights_dir(out, spec)
    model.save_pretrained(weights, state_dict=state_dict)
    tokenizer.save_pretrained(weights)
    merge_adapter = merge_adapter or (spec.output is not None and spec.output.merge_adapter)
    if merge_adapter and spec.method.type != MethodType.FULL:
        merged(model_path, weights, spec, labels).save_pretrained(out / "merged")
        tokenizer.save_pretrained(out / "merged")
        outputs.readable(out / "merged")
    outputs.readable(weights)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plots.write(out, job.name, metrics, report.to_dict(), report.lengths)
    outputs.model_card(out, job, metrics, report.to_dict(), model_path)
    outputs.write_manifest(out, job, report.sha256, metrics["worldSize"], model_path, report.hub)


def save_weights(accelerator: Any, model: Any, path: Path) -> None:
    """Save the model (or adapter) from every rank's part: the state dict is gathered on all ranks (FSDP's
    shards are a collective; DDP and one process just read it), then the main process writes it."""
    state_dict = gathered_state(accelerator, model)
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(path, state_dict=state_dict)
        outputs.readable(path)
    accelerator.wait_for_everyone()


def gathered_state(accelerator: Any, model: Any) -> dict[str, Any]:
    """The whole state dict on the main process (every rank must call it), without the second names of tied
    parameters (the LM head that is the embedding): FSDP gathers each name into its own tensor, so
    ``save_pretrained`` would not see that they are one and would write the embedding twice."""
    state_dict = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    first = {name for name, _ in unwrapped.named_parameters()}
    aliases = {name for name, _ in unwrapped.named_parameters(remove_duplicate=False)} - first
    return {name: tensor for name, tensor in state_dict.items() if name not in aliases}


def _on_sigterm() -> Any:
    """A flag set by SIGTERM (Kubernetes stopping the pod: suspend, preemption), checked at each step's end."""
    requested = {"stop": False}

    def handler(signum: int, frame: Any) -> None:
        requested["stop"] = True

    with contextlib.suppress(ValueError):  # not the main thread (e.g. under a test runner's thread)
        signal.signal(signal.SIGTERM, handler)
    return lambda: requested["stop"]
