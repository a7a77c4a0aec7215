"""The training recipe, read top to bottom: prepare data, load the model, evaluate the base model, train
(AdamW, warmup + schedule, gradient accumulation, clipping, validation, early stopping, checkpoints), evaluate
on the test split, save. Runs the same in one process and under ``torchrun`` (accelerate's DDP or FSDP).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

from kubetune.api import DataFormat, FineTuneJob, MethodType, TaskType, ValidationMetric
from kubetune.api.spec import FineTuneJobSpec

from . import checkpoint, evaluate, outputs
from .batches import IGNORE, Tokenized, collate, shard_chunks, tokenize_split
from .checkpoint import TrainerState
from .data import PrepReport, class_labels, drop_unknown_labels, prepare
from .errors import ConfigError, DivergedError, PreemptedError
from .formats import Example
from .local import Volumes
from .model import load, load_tokenizer, merged
from .packing import collate_packed
from .report import ProgressEvent, Reporter
from .runtime import make_accelerator
from .tiny import ensure_model

DIVERGENCE_FACTOR = 5.0
DIVERGENCE_STEPS = 5
"""The loss counts as diverged when it stays above DIVERGENCE_FACTOR x the first step's for DIVERGENCE_STEPS steps."""


class Data:
    """Tokenized rows and the examples they came from, per split, and the class labels (Classification)."""

    def __init__(self, rows: dict[str, list[Tokenized]], examples: dict[str, list[Example]], labels: list[str] | None):
        self.rows, self.examples, self.labels = rows, examples, labels


def prepare_data(spec: FineTuneJobSpec, volumes: Volumes, tokenizer: Any, report: PrepReport) -> Data:
    chat = None
    if spec.data.format == DataFormat.CHAT:
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("spec.data.format: Chat needs a tokenizer with a chat template; this model has none")

        def chat(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
            return str(
                tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
            )

    splits = prepare(spec.data, volumes, report, chat)
    labels = None
    if spec.task.type == TaskType.CLASSIFICATION:
        labels = class_labels(spec.task.labels, splits["train"], report)
        splits = drop_unknown_labels(splits, labels, report)
    rows, examples = {}, {}
    for name, split in splits.items():
        rows[name], examples[name] = tokenize_split(
            split, tokenizer, spec.training.max_seq_length, spec.data.cleaning, report, name, labels
        )
    if not rows["train"]:
        raise ConfigError("spec.data.cleaning: no training rows are left after the token-length filters")
    return Data(rows, examples, labels)


def scores(
    spec: FineTuneJobSpec, model: Any, tokenizer: Any, rows: list[Tokenized], data: Data, accelerator: Any
) -> dict[str, Any]:
    """Classification metrics of ``rows``, or their loss (CausalLM); what validation watches."""
    batch, pad = spec.training.per_device_batch_size, tokenizer.pad_token_id
    if data.labels is not None:
        return evaluate.classification(model, rows, batch, pad, data.labels, accelerator)
    return {"loss": evaluate.causal_loss(model, rows, batch, pad, accelerator)}


def test_metrics(spec: FineTuneJobSpec, model: Any, tokenizer: Any, data: Data, accelerator: Any) -> dict[str, Any]:
    """Test-split metrics: loss and perplexity plus exact match and ROUGE-L, or classification metrics."""
    limit = spec.evaluation.max_samples
    rows, examples = data.rows["test"][:limit], data.examples["test"][:limit]
    if not rows:
        return {}
    metrics = scores(spec, model, tokenizer, rows, data, accelerator)
    if data.labels is not None:
        return metrics
    metrics = evaluate.loss_metrics(metrics["loss"])
    if accelerator.is_main_process:
        metrics.update(
            evaluate.generation(accelerator.unwrap_model(model), tokenizer, examples, spec.evaluation.max_new_tokens)
        )
    accelerator.wait_for_everyone()
    return metrics


def micro_batch(chunk: list[Tokenized], spec: FineTuneJobSpec, pad: int, device: Any) -> dict[str, Any]:
    classification = spec.task.type == TaskType.CLASSIFICATION
    if spec.training.packing and not classification:
        batch = collate_packed(chunk)
    else:
        batch = collate(chunk, pad, classification)
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def train(job: FineTuneJob, volumes: Volumes, out: Path, reporter: Reporter | None = None) -> dict[str, Any]:
    """Run the whole recipe for ``job``; write outputs under ``out``; return the metrics."""
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
    with accelerator.main_process_first():
        model_path = ensure_model(volumes.model(spec.model), spec.model.cached)
    tokenizer = load_tokenizer(model_path, spec.model.trust_remote_code)
    report = PrepReport()
    data = prepare_data(spec, volumes, tokenizer, report)
    if main:
        (out / "prep_report.json").write_text(json.dumps(report.to_dict(), indent=2))
    per_epoch = len(shard_chunks(data.rows["train"], hp.per_device_batch_size, hp.seed, rank, world))
    steps_per_epoch = per_epoch // hp.gradient_accumulation_steps
    if steps_per_epoch == 0:
        raise ConfigError(
            f"spec.training: {len(data.rows['train'])} training rows make {per_epoch} micro-batches per process, "
            f"fewer than gradientAccumulationSteps={hp.gradient_accumulation_steps}; no optimizer step would run"
        )
    total_steps = min(hp.max_steps or 10**12, steps_per_epoch * hp.epochs)
    warmup = hp.warmup_steps if hp.warmup_steps is not None else round(total_steps * (hp.warmup_ratio or 0.03))

    # Model, optimizer, schedule. Seeded here, so nothing before (a model built into the cache) shifts the RNG.
    set_seed(hp.seed)
    model = load(model_path, spec, tokenizer, data.labels)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=hp.learning_rate, weight_decay=hp.weight_decay)
    name = {"Linear": "linear", "Cosine": "cosine", "Constant": "constant_with_warmup"}[hp.scheduler]
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    pad = tokenizer.pad_token_id

    # Resume from the newest checkpoint of this spec, or evaluate the base model first.
    state = TrainerState(spec_hash=outputs.spec_hash(spec))
    resumed = checkpoint.latest(out, state.spec_hash)
    baseline: dict[str, Any] = {}
    if resumed is not None:
        state = checkpoint.load(resumed, model, optimizer, scheduler, accelerator)
        baseline = json.loads((out / "baseline.json").read_text()) if (out / "baseline.json").exists() else {}
        reporter.metrics.resumed_from_step.set(state.step)
        reporter.phase("Training", resumedFromStep=state.step)
    elif spec.evaluation.enabled and spec.evaluation.baseline:
        reporter.phase("EvaluatingBaseModel")
        baseline = test_metrics(spec, model, tokenizer, data, accelerator)
        if main:
            (out / "baseline.json").write_text(json.dumps(baseline))

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
        chunks = shard_chunks(data.rows["train"], hp.per_device_batch_size, hp.seed + epoch, rank, world)
        start = state.micro_batches_done if epoch == state.epoch else 0
        state.epoch = epoch
        for first in range(start, steps_per_epoch * accumulation, accumulation):
            # One optimizer step: `accumulation` micro-batches, gradients synchronised on the last one only.
            step_loss, tokens = 0.0, 0
            for micro in range(accumulation):
                batch = micro_batch(chunks[first + micro], spec, pad, accelerator.device)
                sync = micro == accumulation - 1
                with contextlib.nullcontext() if sync else accelerator.no_sync(model), accelerator.autocast():
                    loss = model(**batch).loss / accumulation
                accelerator.backward(loss)
                step_loss += float(loss.detach())
                tokens += int((batch["labels"] != IGNORE).sum()) if batch["labels"].dim() > 1 else len(batch["labels"])
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
                values = scores(spec, model, tokenizer, data.rows["validation"], data, accelerator)
                value = float(values[metric_key])
                state.validation_history.append({"step": state.step, **{k: values[k] for k in ("loss", metric_key)}})
                event_validation = values["loss"]
                best = state.best_value
                delta = spec.validation.early_stopping.min_delta if spec.validation.early_stopping else 0.0
                improved = best is None or (value > best + delta if higher_is_better else value < best - delta)
                if improved:
                    state.best_value, state.best_step, state.bad_validations = value, state.step, 0
                    if main:
                        accelerator.unwrap_model(model).save_pretrained(out / "best")
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

    # Evaluate on the test split; save.
    reporter.phase("Evaluating")
    test = test_metrics(spec, model, tokenizer, data, accelerator) if spec.evaluation.enabled else {}
    metrics = {
        "steps": state.step,
        "totalSteps": total_steps,
        "worldSize": world,
        "seconds": round(time.monotonic() - started, 2),
        "tokens": state.tokens_seen,
        "stoppedEarly": state.stopped_early,
        "bestValidation": {"step": state.best_step, metric_key: state.best_value} if state.validation_history else None,
        "history": {"train": state.train_history, "validation": state.validation_history},
        "test": test,
        "baseline": baseline,
    }
    reporter.phase("Saving")
    if main:
        save(job, model_path, accelerator.unwrap_model(model), tokenizer, data.labels, out, metrics, report)
    accelerator.wait_for_everyone()
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
) -> None:
    """Weights and tokenizer, the merged model when asked, metrics, the model card, then the manifest (last)."""
    spec = job.spec
    weights = outputs.weights_dir(out, spec)
    model.save_pretrained(weights)
    tokenizer.save_pretrained(weights)
    if spec.output is not None and spec.output.merge_adapter and spec.method.type != MethodType.FULL:
        merged(model_path, weights, spec, labels).save_pretrained(out / "merged")
        tokenizer.save_pretrained(out / "merged")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    outputs.model_card(out, job, metrics, report.to_dict())
    outputs.write_manifest(out, job, report.sha256, metrics["worldSize"])


def _on_sigterm() -> Any:
    """A flag set by SIGTERM (Kubernetes stopping the pod: suspend, preemption), checked at each step's end."""
    requested = {"stop": False}

    def handler(signum: int, frame: Any) -> None:
        requested["stop"] = True

    with contextlib.suppress(ValueError):  # not the main thread (e.g. under a test runner's thread)
        signal.signal(signal.SIGTERM, handler)
    return lambda: requested["stop"]
