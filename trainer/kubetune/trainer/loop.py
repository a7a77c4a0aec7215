"""The training recipe, read top to bottom: prepare data, load the model, evaluate the baseline, train
(AdamW, warmup + schedule, gradient accumulation, clipping, validation, early stopping), evaluate, save.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api import FineTuneJob, MethodType

from .batches import IGNORE, batches, tokenize
from .data import PrepReport, prepare
from .errors import ConfigError
from .local import Volumes
from .packing import packed_batches
from .tiny import ensure_model


@dataclass
class History:
    """Loss and validation history, saved in metrics.json."""

    train: list[dict[str, float]] = field(default_factory=list)
    validation: list[dict[str, float]] = field(default_factory=list)
    best_loss: float = math.inf
    best_step: int = 0
    stopped_early: bool = False


def evaluate_loss(model: Any, rows: list[Any], batch_size: int, pad_id: int) -> float:
    """Mean per-token loss over ``rows`` (no gradients)."""
    import torch

    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for batch in batches(rows, batch_size, pad_id, seed=None):
            n = int((batch["labels"][:, 1:] != IGNORE).sum())
            total += float(model(**batch).loss) * n
            tokens += n
    model.train()
    return total / max(tokens, 1)


def train(job: FineTuneJob, volumes: Volumes, out: Path, progress: Any = None) -> dict[str, Any]:
    """Run the whole recipe for ``job``; write outputs under ``out``; return the metrics."""
    import torch
    from transformers import get_scheduler

    spec = job.spec
    hp = spec.training
    torch.manual_seed(hp.seed)
    out.mkdir(parents=True, exist_ok=True)

    report = PrepReport()
    splits = prepare(spec.data, volumes, report)
    (out / "prep_report.json").write_text(json.dumps(report.to_dict(), indent=2))

    from . import model as model_loader

    model_path = ensure_model(volumes.model(spec.model), spec.model.cached)
    model, tokenizer = model_loader.load(model_path, spec.method, spec.model.trust_remote_code)
    rows = {name: tokenize(examples, tokenizer, hp.max_seq_length) for name, examples in splits.items()}
    pad = tokenizer.pad_token_id
    baseline = evaluate_loss(model, rows["test"], hp.per_device_batch_size, pad) if rows["test"] else None

    steps_per_epoch = math.ceil(len(rows["train"]) / hp.per_device_batch_size / hp.gradient_accumulation_steps)
    total_steps = min(hp.max_steps or 10**12, steps_per_epoch * hp.epochs)
    warmup = hp.warmup_steps if hp.warmup_steps is not None else round(total_steps * (hp.warmup_ratio or 0.03))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=hp.learning_rate, weight_decay=hp.weight_decay)
    name = {"Linear": "linear", "Cosine": "cosine", "Constant": "constant_with_warmup"}[hp.scheduler]
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    every = spec.validation.every_steps or steps_per_epoch
    patience = spec.validation.early_stopping
    history, step, bad_validations, started = History(), 0, 0, time.monotonic()

    model.train()
    for epoch in range(hp.epochs):
        micro = 0
        if hp.packing:
            epoch_batches = packed_batches(rows["train"], hp.per_device_batch_size, hp.max_seq_length, hp.seed + epoch)
        else:
            epoch_batches = batches(rows["train"], hp.per_device_batch_size, pad, seed=hp.seed + epoch)
        for batch in epoch_batches:
            loss = model(**batch).loss / hp.gradient_accumulation_steps
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {float(loss)} at step {step}; lower spec.training.learningRate")
            loss.backward()
            micro += 1
            if micro % hp.gradient_accumulation_steps:
                continue
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, hp.max_grad_norm or math.inf)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            row = {"step": step, "loss": loss.item() * hp.gradient_accumulation_steps}
            history.train.append({**row, "learningRate": scheduler.get_last_lr()[0], "gradNorm": float(grad_norm)})
            if progress is not None:
                progress(step, total_steps, history.train[-1])
            if rows["validation"] and step % every == 0:
                val = evaluate_loss(model, rows["validation"], hp.per_device_batch_size, pad)
                history.validation.append({"step": step, "loss": val})
                min_delta = patience.min_delta if patience else 0.0
                if val < history.best_loss - min_delta:
                    history.best_loss, history.best_step, bad_validations = val, step, 0
                    model.save_pretrained(out / "best")
                else:
                    bad_validations += 1
                if patience and bad_validations >= patience.patience:
                    history.stopped_early = True
            if step >= total_steps or history.stopped_early:
                break
        if step >= total_steps or history.stopped_early:
            break

    test_loss = evaluate_loss(model, rows["test"], hp.per_device_batch_size, pad) if rows["test"] else None
    save_dir = out / ("model" if spec.method.type == MethodType.FULL else "adapter")
    model.save_pretrained(save_dir)
    tokenizer.save_pretrained(save_dir)
    metrics = {
        "steps": step,
        "totalSteps": total_steps,
        "seconds": round(time.monotonic() - started, 2),
        "stoppedEarly": history.stopped_early,
        "bestValidation": {"step": history.best_step, "loss": history.best_loss} if history.validation else None,
        "history": {"train": history.train, "validation": history.validation},
        "test": _loss_metrics(test_loss),
        "baseline": _loss_metrics(baseline),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if not history.train:
        raise ConfigError("spec.training: no optimizer step ran (too few rows for the batch size and accumulation)")
    return metrics


def _loss_metrics(loss: float | None) -> dict[str, float]:
    return {} if loss is None else {"loss": loss, "perplexity": math.exp(min(loss, 50))}
