"""Padding-free sample packing: examples laid end to end in one row, position ids restarting at 0 for each.

No padding token is computed, and no attention crosses examples: the batch carries the examples' boundaries
(``cu_seq_lens_q``/``_k``, as flash-attention's varlen kernels take them), and the ``kubetune_packed`` attention
runs causal SDPA within each example, so attention costs the sum of the squared example lengths rather than the
square of the packed row's (a block-diagonal mask over the whole row would). Flash-attention kernels read the same
boundaries. A packed batch has the same loss as the padded batch of the same examples (a test holds it to 1e-4).
Batches without boundaries (evaluation, generation) get plain SDPA with their mask. Training uses
``use_cache=False``.
"""

from __future__ import annotations

import itertools
from typing import Any

from .batches import Tokenized

PACKED_ATTENTION = "kubetune_packed"
"""The attention implementation name models trained with packing are loaded with."""


def pack(rows: list[Tokenized], max_tokens: int) -> list[list[Tokenized]]:
    """Greedy first-fit, in order: groups of rows whose total length is at most ``max_tokens``."""
    groups: list[list[Tokenized]] = []
    current: list[Tokenized] = []
    used = 0
    for row in rows:
        if current and used + len(row[0]) > max_tokens:
            groups.append(current)
            current, used = [], 0
        current.append(row)
        used += len(row[0])
    if current:
        groups.append(current)
    return groups


def collate_packed(group: list[Tokenized], pad_id: int | None = None, classification: bool = False) -> dict[str, Any]:
    """One packed row: concatenated ids and labels, position ids restarting per example, no attention mask.

    Classification: the labels are the examples' classes, and ``pool_at`` holds each example's last token that is
    not ``pad_id`` (the one a padded batch's ``*ForSequenceClassification`` pools; ``pooling`` reads it)."""
    import torch

    ids = [t for row in group for t in row[0]]
    labels = [t for row in group for t in row[1]]
    positions = [p for row in group for p in range(len(row[0]))]
    if classification:
        labels = [row[1][0] for row in group]
    bounds = [0]
    for row in group:
        bounds.append(bounds[-1] + len(row[0]))
    cu = torch.tensor(bounds, dtype=torch.int32)
    longest = max(len(row[0]) for row in group)
    extra = {"pool_at": torch.tensor(last_tokens(group, bounds, pad_id))} if classification else {}
    return {
        **extra,
        "input_ids": torch.tensor([ids]),
        "labels": torch.tensor(labels if classification else [labels]),
        "position_ids": torch.tensor([positions]),
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu,
        "max_length_q": longest,
        "max_length_k": longest,
        "use_cache": False,
    }


def last_tokens(group: list[Tokenized], bounds: list[int], pad_id: int | None) -> list[int]:
    """Each example's last position in the packed row whose token is not ``pad_id`` (its first when all are)."""
    found = []
    for row, start in zip(group, bounds, strict=False):
        at = len(row[0]) - 1
        while at > 0 and row[0][at] == pad_id:
            at -= 1
        found.append(start + at)
    return found


def packed_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Causal attention within each packed example; any batch without boundaries goes to transformers' SDPA."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None or query.shape[0] != 1:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    cuts = [int(b) for b in bounds.tolist()]
    parts = [
        torch.nn.functional.scaled_dot_product_attention(
            query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], dropout_p=dropout, is_causal=True, scale=scaling
        )
        for a, b in itertools.pairwise(cuts)
        if b > a
    ]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def register_packed_attention() -> str:
    """Make ``kubetune_packed`` known to transformers (attention and its mask, built as for SDPA); idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_ATTENTION, packed_attention)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)
    return PACKED_ATTENTION
