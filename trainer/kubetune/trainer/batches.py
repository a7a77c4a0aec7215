"""Tokenization with prompt masking, and padded batches (loss only on the target tokens)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from .data import Example

IGNORE = -100
Tokenized = tuple[list[int], list[int]]
"""(input_ids, labels) of one example."""


def tokenize(examples: list[Example], tokenizer: Any, max_len: int) -> list[Tokenized]:
    """(input_ids, labels) per example; prompt tokens are labelled IGNORE; truncated to ``max_len``."""
    out = []
    for example in examples:
        prompt = tokenizer(example.prompt, add_special_tokens=False)["input_ids"] if example.prompt else []
        target = tokenizer(example.target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + prompt + target
        labels = [IGNORE] * (len(ids) - len(target)) + target
        out.append((ids[:max_len], labels[:max_len]))
    return out


def collate(rows: list[Tokenized], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, labs) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(labs)] = torch.tensor(labs)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


def chunks(rows: list[Tokenized], batch_size: int, seed: int | None) -> Iterator[list[Tokenized]]:
    """``batch_size`` rows at a time, in a seeded shuffled order (seed None: in order)."""
    order = list(range(len(rows)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    for start in range(0, len(order), batch_size):
        yield [rows[i] for i in order[start : start + batch_size]]


def batches(rows: list[Tokenized], batch_size: int, pad_id: int, seed: int | None) -> Iterator[dict[str, Any]]:
    """Padded batches in a seeded shuffled order (seed None: in order)."""
    for chunk in chunks(rows, batch_size, seed):
        yield collate(chunk, pad_id)
