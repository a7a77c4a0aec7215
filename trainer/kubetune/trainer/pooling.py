"""Packed sequence classification: the class logits of every example of a packed row, in one forward pass.

A decoder's ``*ForSequenceClassification`` (transformers' ``GenericForSequenceClassification``: Llama, Mistral,
Qwen2, Gemma, SmolLM2, ...) computes its ``score`` head over every token's final hidden state and pools the last
non-padding token of each row. For a packed row (examples end to end, position ids restarting, attention within
each example: ``packing``) that pools one token for the whole row; the head's per-token output holds every
example's logits, though. A forward hook on the head catches that output during the model's own forward pass
(through DDP or FSDP, and through PEFT's trainable copy of the head), and ``pool_at`` picks each example's last
non-padding token from it: the same token, the same logits as the padded batch's (a test holds them to 1e-4).

Models whose head is not such a per-token ``score`` (encoders pooling their first token, custom heads) train on
padded batches; ``packs_classification`` tells which, and the prep report says so.
"""

from __future__ import annotations

from typing import Any

HEAD = "score"


def classifier(model: Any) -> Any | None:
    """The transformers model inside ``model`` (unwrapped from DDP, FSDP and PEFT) when it is a sequence
    classifier that pools per-token ``score`` outputs; else None."""
    from transformers.modeling_layers import GenericForSequenceClassification

    for module in model.modules():
        if isinstance(module, GenericForSequenceClassification):
            return module
    return None


def packs_classification(model: Any) -> bool:
    """Whether packed classification batches can train ``model`` (else they are padded)."""
    return classifier(model) is not None


def _head(model: Any) -> Any:
    """The module whose output is the per-token class logits: the classifier's ``score`` (PEFT's wrapper of it,
    which runs the trainable copy, when the model is adapted)."""
    found = classifier(model)
    if found is None:
        raise ValueError(f"{type(model).__name__} does not pool per-token {HEAD} outputs; use padded batches")
    return getattr(found, HEAD)


def packed_class_logits(model: Any, batch: dict[str, Any]) -> Any:
    """The class logits, one row per example, of a packed classification batch (``collate_packed``)."""
    caught: list[Any] = []
    handle = _head(model).register_forward_hook(lambda _module, _inputs, output: caught.append(output))
    try:
        model(**{k: v for k, v in batch.items() if k not in ("labels", "pool_at")})
    finally:
        handle.remove()
    return caught[-1][0, batch["pool_at"]]
