"""Padding-free sample packing: examples laid end to end in one row, position ids restarting at 0 for each.

Transformers builds a block-diagonal causal mask from the restarting position ids (no attention between
packed examples), so a packed batch has the same loss as the padded batch of the same examples (a test
holds it to 1e-4) without computing a single padding token. Training uses ``use_cache=False``.
"""

from __future__ import annotations

from typing import Any

from .batches import Tokenized


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


def collate_packed(group: list[Tokenized]) -> dict[str, Any]:
    """One packed row: concatenated ids and labels, position ids restarting per example, no attention mask."""
    import torch

    ids = [t for row in group for t in row[0]]
    labels = [t for row in group for t in row[1]]
    positions = [p for row in group for p in range(len(row[0]))]
    return {
        "input_ids": torch.tensor([ids]),
        "labels": torch.tensor([labels]),
        "position_ids": torch.tensor([positions]),
        "use_cache": False,
    }
