"""One optimizer step's arithmetic: a micro-batch collated (packed or padded, Classification too), its summed
cross-entropy (shifted tokens or classes, label smoothing), and forward/backward over the step's micro-batches
with every target weighing the same across micro-batches and ranks."""

from __future__ import annotations

import contextlib
from typing import Any

from kubetune.api import TaskType
from kubetune.api.spec import FineTuneJobSpec

from .batches import IGNORE, Tokenized, collate
from .packing import collate_packed
from .pooling import packed_class_logits


def target_count(batch: dict[str, Any], classification: bool) -> int:
    """What one micro-batch's loss is summed over: its rows (Classification) or its shifted target tokens."""
    labels = batch["labels"]
    return len(labels) if classification else int((labels[..., 1:] != IGNORE).sum())


def summed_loss(model: Any, batch: dict[str, Any], smoothing: float, classification: bool) -> Any:
    """Cross-entropy summed over the micro-batch's targets: the shifted tokens (CausalLM, as transformers
    shifts them) or the rows' classes, with label smoothing when asked."""
    import torch

    labels = batch["labels"]
    if "pool_at" in batch:  # a packed classification row: the examples' logits from the head's per-token output
        logits = packed_class_logits(model, batch).float()
    else:
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


def accumulate(
    model: Any, batches: list[dict[str, Any]], smoothing: float, classification: bool, accelerator: Any
) -> tuple[float, int]:
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


def micro_batch(
    chunk: list[Tokenized], spec: FineTuneJobSpec, pad: int, device: Any, pack_classification: bool = True
) -> dict[str, Any]:
    """The chunk's micro-batch: packed when spec.training.packing is on (Classification too, unless the model's
    head cannot pool packed rows: ``pooling.packs_classification``), else right-padded."""
    classification = spec.task.type == TaskType.CLASSIFICATION
    if spec.training.packing and (pack_classification or not classification):
        batch = collate_packed(chunk, pad, classification)
    else:
        batch = collate(chunk, pad, classification)
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
