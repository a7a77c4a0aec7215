"""Tokenization with loss masking and length filters, and padded batches.

CausalLM rows are (input_ids, labels) with IGNORE on every token not trained on (prompts, user turns);
Classification rows are (input_ids, [class index]). Rows shorter than ``cleaning.minTokens`` are dropped;
rows longer than ``maxSeqLength`` are truncated or dropped (``cleaning.overLength``); the report counts both and
records token-length percentiles per split.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

from kubetune.api.data import Cleaning
from kubetune.api.enums import OverLength

from .datacache import TokenRows
from .formats import Example
from .rows import PrepReport

IGNORE = -100
Tokenized = tuple[list[int], list[int]]
"""(input_ids, labels) of one example; labels is [class index] for Classification."""


@dataclass(frozen=True)
class Specials:
    """A tokenizer's BOS and EOS, read once (each read is a Python property call in transformers)."""

    bos_id: int | None
    bos_token: str | None
    eos_id: int | None

    @classmethod
    def of(cls, tokenizer: Any) -> Specials:
        return cls(tokenizer.bos_token_id, tokenizer.bos_token, tokenizer.eos_token_id)

    def bos(self, text: str) -> list[int]:
        """The BOS id to put before ``text``: none when the tokenizer has none or the text already starts with it
        (chat templates whose turns open with the BOS token, as SmolLM2's ``<|im_start|>``)."""
        if self.bos_id is None or (self.bos_token and text.startswith(self.bos_token)):
            return []
        return [self.bos_id]


def bos(tokenizer: Any, text: str) -> list[int]:
    """``Specials.bos`` of the tokenizer."""
    return Specials.of(tokenizer).bos(text)


def encode(example: Example, tokenizer: Any, labels: list[str] | None = None) -> Tokenized:
    """Token ids of one example (BOS first, EOS last where the example asks for it) and their labels."""
    parts = _encode_texts(tokenizer, [text for text, _ in example.parts])
    return assemble(example, parts, Specials.of(tokenizer), labels)


def _encode_texts(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Each text's token ids without special tokens, in one batched call (fast tokenizers encode it in Rust)."""
    return list(tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else []


def assemble(
    example: Example, parts: list[list[int]], specials: Specials, labels: list[str] | None = None
) -> Tokenized:
    """One example's ids and labels from its parts' token ids."""
    ids = specials.bos(example.parts[0][0] if example.parts else "")
    targets: list[int] = [IGNORE] * len(ids)
    for (_, trained), part in zip(example.parts, parts, strict=True):
        ids += part
        targets += part if trained else [IGNORE] * len(part)
    if example.eos and specials.eos_id is not None:
        ids.append(specials.eos_id)
        targets.append(specials.eos_id if example.parts[-1][1] else IGNORE)
    if labels is not None:
        return ids, [labels.index(example.label or "")]
    return ids, targets


def encoded(examples: list[Example], tokenizer: Any, labels: list[str] | None, batch: int = 512) -> Iterator[Tokenized]:
    """``encode`` of each example, the texts of ``batch`` examples at a time in one tokenizer call."""
    specials = Specials.of(tokenizer)
    for start in range(0, len(examples), batch):
        chunk = examples[start : start + batch]
        parts = iter(_encode_texts(tokenizer, [text for example in chunk for text, _ in example.parts]))
        for example in chunk:
            yield assemble(example, [next(parts) for _ in example.parts], specials, labels)


def tokenize(examples: list[Example], tokenizer: Any, max_len: int) -> Sequence[Tokenized]:
    """Encoded rows truncated to ``max_len`` (no filters, no report)."""
    return tokenize_split(examples, tokenizer, max_len)[0]


def _dropped(ids: list[int], targets: Any, max_len: int, cleaning: Cleaning, classification: bool) -> str | None:
    """Why a tokenized row is dropped (tooFewTokens, tooManyTokens, nothingToTrainOnAfterTruncation), or None."""
    if len(ids) < cleaning.min_tokens:
        return "tooFewTokens"
    if len(ids) > max_len and cleaning.over_length == OverLength.DROP:
        return "tooManyTokens"
    if not classification and targets[:max_len].count(IGNORE) == min(len(targets), max_len):
        return "nothingToTrainOnAfterTruncation"
    return None


def filtered(
    example: Example,
    ids: list[int],
    targets: list[int],
    max_len: int,
    cleaning: Cleaning,
    classification: bool,
    report: PrepReport | None,
) -> Tokenized | None:
    """The row truncated to ``max_len``, or None when a token filter drops it; ``report`` counts both."""
    reason = _dropped(ids, targets, max_len, cleaning, classification)
    if reason:
        if report is not None:
            report.drop(reason, example.source, example.row)
        return None
    if len(ids) > max_len:
        if report is not None:
            report.truncated += 1
        return ids[:max_len], targets if classification else targets[:max_len]
    return ids, targets


def tokenize_split(
    examples: list[Example],
    tokenizer: Any,
    max_len: int,
    cleaning: Cleaning | None = None,
    report: PrepReport | None = None,
    split: str = "",
    labels: list[str] | None = None,
) -> tuple[Sequence[Tokenized], list[Example]]:
    """Encoded, filtered and truncated rows, and the examples they came from; drops and truncations are counted
    in ``report``."""
    cleaning = cleaning or Cleaning()
    out, kept, lengths = ArrowRowsBuilder(), [], []
    for example, (ids, targets) in zip(examples, encoded(examples, tokenizer, labels), strict=True):
        lengths.append(len(ids))
        row = filtered(example, ids, targets, max_len, cleaning, labels is not None, report)
        if row is not None:
            out.append(*row)
            kept.append(example)
    rows = out.finish()
    if report is not None and split:
        report.token_lengths[split] = percentiles(lengths)
        report.lengths[split] = lengths
        report.split_sizes[split] = len(rows)
    return rows, kept


class ArrowRowsBuilder:
    """Tokenized rows gathered as int32 Arrow arrays, ``batch`` rows at a time: 4 bytes a token instead of a
    Python list's 36, so a split of millions of rows fits where its lists would not."""

    def __init__(self, batch: int = 1024) -> None:
        self.batch = batch
        self.ids: list[list[int]] = []
        self.labels: list[list[int]] = []
        self.chunks: tuple[list[Any], list[Any]] = ([], [])

    def append(self, ids: list[int], labels: list[int]) -> None:
        self.ids.append(ids)
        self.labels.append(labels)
        if len(self.ids) >= self.batch:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self.ids:
            self.chunks[0].append(pa.array(self.ids, type=pa.list_(pa.int32())))
            self.chunks[1].append(pa.array(self.labels, type=pa.list_(pa.int32())))
            self.ids, self.labels = [], []

    def finish(self) -> TokenRows:
        import pyarrow as pa

        self._flush()
        kind = pa.list_(pa.int32())
        ids, labels = (pa.concat_arrays(c) if c else pa.array([], type=kind) for c in self.chunks)
        self.chunks = ([], [])  # one array each, so a row is read from two numpy views
        return TokenRows(pa.table({"input_ids": ids, "labels": labels}))


def percentiles(lengths: Sequence[int]) -> dict[str, int]:
    """p50/p90/p99/max of token lengths (nearest rank)."""
    import numpy as np

    if not len(lengths):
        return {}
    ordered = np.sort(np.asarray(lengths))

    def rank(q: float) -> int:
        return int(ordered[min(len(ordered) - 1, int(q * len(ordered)))])

    return {"p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99), "max": int(ordered[-1])}


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
    rows: Sequence[Tokenized], batch_size: int, pad_id: int, seed: int | None, classification: bool = False
) -> Iterator[dict[str, Any]]:
    """Padded batches in a seeded shuffled order (seed None: in order)."""
    for chunk in shard_chunks(rows, batch_size, seed):
        yield collate(chunk, pad_id, classification)


def shard_chunks(rows: Sequence[Tokenized], batch_size: int, seed: int | None, rank: int = 0, world: int = 1) -> Chunks:
    """This rank's micro-batches of an epoch: the seeded order cut into global batches of ``batch_size * world``
    rows, each rank taking its slice. Every rank gets the same number of micro-batches (a trailing global batch
    too small to give each rank a row is left out), so no rank waits forever on the others' gradients. The
    micro-batches hold row indices; a micro-batch's rows are read when it is asked for.
    """
    indices = order(len(rows), seed)
    step = batch_size * world
    out = []
    for start in range(0, len(indices), step):
        batch = indices[start : start + step]
        if len(batch) < world:
            break
        share = -(-len(batch) // world)
        out.append(batch[rank * share : (rank + 1) * share] or batch[-1:])
    return Chunks(rows, out)


class Chunks(Sequence[list[Tokenized]]):
    """Micro-batches as lists of row indices into ``rows``; indexing one reads its rows."""

    def __init__(self, rows: Sequence[Tokenized], chunks: list[list[int]]) -> None:
        self.rows, self.chunks = rows, chunks

    def __len__(self) -> int:
        return len(self.chunks)

    @overload
    def __getitem__(self, index: int) -> list[Tokenized]: ...
    @overload
    def __getitem__(self, index: slice) -> list[list[Tokenized]]: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return [self.rows[i] for i in self.chunks[index]]
