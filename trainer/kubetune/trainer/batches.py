"""Tokenization with loss masking and length filters, and padded batches.

CausalLM rows are (input_ids, labels) with IGNORE on every token not trained on (prompts, user turns);
Classification rows are (input_ids, [class index]). Rows shorter than ``cleaning.minTokens`` are dropped;
rows longer than ``maxSeqLength`` are truncated or dropped (``cleaning.overLength``); the report counts both and
records token-length percentiles per split.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from kubetune.api.data import Cleaning
from kubetune.api.enums import OverLength

from .formats import Example
from .rows import PrepReport

IGNORE = -100
Tokenized = tuple[list[int], list[int]]
"""(input_ids, labels) of one example; labels is [class index] for Classification."""


def bos(tokenizer: Any, text: str) -> list[int]:
    """The BOS id to put before ``text``: none when the tokenizer has none or the text already starts with it
    (chat templates whose turns open with the BOS token, as SmolLM2's ``<|im_start|>``)."""
    if tokenizer.bos_token_id is None or (tokenizer.bos_token and text.startswith(tokenizer.bos_token)):
        return []
    return [tokenizer.bos_token_id]


def encode(example: Example, tokenizer: Any, labels: list[str] | None = None) -> Tokenized:
    """Token ids of one example (BOS first, EOS last where the example asks for it) and their labels."""
    ids = bos(tokenizer, example.parts[0][0] if example.parts else "")
    targets: list[int] = [IGNORE] * len(ids)
    for text, trained in example.parts:
        part = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += part
        targets += part if trained else [IGNORE] * len(part)
    if example.eos and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
        targets.append(tokenizer.eos_token_id if example.parts[-1][1] else IGNORE)
    if labels is not None:
        return ids, [labels.index(example.label or "")]
    return ids, targets


def tokenize(examples: list[Example], tokenizer: Any, max_len: int) -> list[Tokenized]:
    """Encoded rows truncated to ``max_len`` (no filters, no report)."""
    return tokenize_split(examples, tokenizer, max_len)[0]


def _dropped(ids: list[int], targets: Any, max_len: int, cleaning: Cleaning, classification: bool) -> str | None:
    """Why a tokenized row is dropped (tooFewTokens, tooManyTokens, nothingToTrainOnAfterTruncation), or None."""
    if len(ids) < cleaning.min_tokens:
        return "tooFewTokens"
    if len(ids) > max_len and cleaning.over_length == OverLength.DROP:
        return "tooManyTokens"
    if not classification and all(t == IGNORE for t in targets[:max_len]):
        return "nothingToTrainOnAfterTruncation"
    return None


def tokenize_split(
    examples: list[Example],
    tokenizer: Any,
    max_len: int,
    cleaning: Cleaning | None = None,
    report: PrepReport | None = None,
    split: str = "",
    labels: list[str] | None = None,
) -> tuple[list[Tokenized], list[Example]]:
    """Encoded, filtered and truncated rows, and the examples they came from; drops and truncations are counted
    in ``report``."""
    cleaning = cleaning or Cleaning()
    out, kept, lengths = [], [], []
    for example in examples:
        ids, targets = encode(example, tokenizer, labels)
        lengths.append(len(ids))
        reason = _dropped(ids, targets, max_len, cleaning, labels is not None)
        if reason:
            if report is not None:
                report.drop(reason, example.source, example.row)
            continue
        if len(ids) > max_len:
            if report is not None:
                report.truncated += 1
            ids = ids[:max_len]
            targets = targets if labels is not None else targets[:max_len]
        out.append((ids, targets))
        kept.append(example)
    if report is not None and split:
        report.token_lengths[split] = percentiles(lengths)
        report.lengths[split] = lengths
        report.split_sizes[split] = len(out)
    return out, kept


def percentiles(lengths: list[int]) -> dict[str, int]:
    """p50/p90/p99/max of token lengths (nearest rank)."""
    if not lengths:
        return {}
    ordered = sorted(lengths)

    def rank(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99), "max": ordered[-1]}


def collate(rows: list[Tokenized], pad_id: int, classification: bool = False) -> dict[str, Any]:
    """Right-padded batch with an attention mask; labels per token (CausalLM) or per row (Classification)."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (ids, labs) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
        if not classification:
            labels[i, : len(labs)] = torch.tensor(labs)
    if classification:
        labels = torch.tensor([labs[0] for _, labs in rows], dtype=torch.long)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


def order(n: int, seed: int | None) -> list[int]:
    """Row indices in a seeded shuffled order (seed None: in order)."""
    indices = list(range(n))
    if seed is not None:
        random.Random(seed).shuffle(indices)
    return indices


def batches(
    rows: list[Tokenized], batch_size: int, pad_id: int, seed: int | None, classification: bool = False
) -> Iterator[dict[str, Any]]:
    """Padded batches in a seeded shuffled order (seed None: in order)."""
    for chunk in shard_chunks(rows, batch_size, seed):
        yield collate(chunk, pad_id, classification)


def shard_chunks(
    rows: list[Tokenized], batch_size: int, seed: int | None, rank: int = 0, world: int = 1
) -> list[list[Tokenized]]:
    """This rank's micro-batches of an epoch: the seeded order cut into global batches of ``batch_size * world``
    rows, each rank taking its slice. Every rank gets the same number of micro-batches (a trailing global batch
    too small to give each rank a row is left out), so no rank waits forever on the others' gradients.
    """
    indices = order(len(rows), seed)
    step = batch_size * world
    out = []
    for start in range(0, len(indices), step):
        batch = indices[start : start + step]
        if len(batch) < world:
            break
        share = -(-len(batch) // world)
        mine = batch[rank * share : (rank + 1) * share] or batch[-1:]
        out.append([rows[i] for i in mine])
    return out
