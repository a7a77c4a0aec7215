"""Streaming preparation: rows read, cleaned, split, tokenized and written to the cache a batch at a time.

For CausalLM jobs without augmentation (the datasets that grow to gigabytes: instruction, chat and completion
rows), ``stream_prepare`` produces what ``prepare._prepare`` does, without holding the dataset: a training row
goes from the file (a JSONL line at a time) through cleaning and its content-drawn split into a ``SplitWriter``,
which sends ``batch`` rows' texts to the tokenizer in one call (in worker processes beside the reader:
``tokenpool``) and appends the rows that come back, in order, to the split's Arrow IPC file. What is held
grows with the data only by what must be compared across rows: one 8-byte hash per kept row for deduplication
(and per training row when explicit validation or test datasets are checked for overlap), each row's token length
(4 bytes), and the held-out rows (validation, test, General), written at the end in the order the in-memory path
gives them. Classification (labels from the whole training split) and augmentation (it perturbs training rows
against their whole vocabulary) are prepared in memory, then written to the cache.
"""

from __future__ import annotations

import array
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubetune.api import DatasetUsage, TaskType
from kubetune.api.spec import FineTuneJobSpec

from .batches import ArrowRowsBuilder, Specials, assemble, filtered, percentiles
from .datacache import split_table, write_tables
from .errors import ConfigError
from .formats import ChatRenderer, Example, required_columns
from .local import Volumes
from .mixing import task_names
from .rows import PrepReport, _clean, draw, load, split_of
from .tokenpool import TokenPool


def streams(spec: FineTuneJobSpec) -> bool:
    """Whether the job's data is prepared by streaming (CausalLM without augmentation)."""
    return spec.task.type == TaskType.CAUSAL_LM and spec.data.augmentation is None


class SplitWriter:
    """One split's rows, tokenized ``batch`` at a time and appended to ``<directory>/<split>.arrow``."""

    def __init__(self, directory: Path, split: str, spec: FineTuneJobSpec, pool: TokenPool, report: PrepReport):
        self.path, self.split, self.spec, self.pool, self.report = directory, split, spec, pool, report
        self.tasks = task_names(spec)
        self.specials = Specials.of(pool.tokenizer)
        self.pending: list[Example] = []
        self.lengths = array.array("i")
        self.added = self.rows = 0
        self.writer: Any = None
        self.sink: Any = None

    def add(self, example: Example, batch: int = 1024) -> None:
        self.pending.append(example)
        self.added += 1
        if len(self.pending) >= batch:
            self.flush()

    def flush(self) -> None:
        """Send the pending rows' texts to the tokenizer; write the batches that come back."""
        if not self.pending:
            return
        texts = [text for example in self.pending for text, _ in example.parts]
        for examples, parts in self.pool.submit(texts, self.pending):
            self._finish(examples, parts)
        self.pending = []

    def _finish(self, examples: list[Example], parts: list[list[int]]) -> None:
        """Assemble, filter and write one tokenized batch."""
        out, kept, each = ArrowRowsBuilder(), [], iter(parts)
        max_len, cleaning = self.spec.training.max_seq_length, self.spec.data.cleaning
        for example in examples:
            ids, targets = assemble(example, [next(each) for _ in example.parts], self.specials)
            self.lengths.append(len(ids))
            row = filtered(example, ids, targets, max_len, cleaning, False, self.report)
            if row is not None:
                out.append(*row)
                kept.append(example)
        self._write(split_table(out.finish(), kept, [self.tasks.get(e.source, e.source) for e in kept]))

    def _write(self, table: Any) -> None:
        import pyarrow as pa

        if self.writer is None:
            self.sink = pa.OSFile(str(self.path / f"{self.split}.arrow"), "wb")
            self.writer = pa.ipc.new_file(self.sink, table.schema)
        if table.num_rows:
            self.writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> int:
        """Write what is pending, the token lengths and the report's figures; returns the rows kept."""

        self.flush()
        for examples, parts in self.pool.drain():
            self._finish(examples, parts)
        if self.writer is None:  # no row at all: an empty file of the same schema
            self._write(split_table(ArrowRowsBuilder().finish(), [], []))
        self.writer.close()
        self.sink.close()
        write_tables(self.path, {}, {self.split: self.lengths})
        self.report.token_lengths[self.split] = percentiles(self.lengths)
        self.report.lengths[self.split] = self.lengths
        self.report.split_sizes[self.split] = self.rows
        return self.rows


def stream_prepare(
    spec: FineTuneJobSpec, volumes: Volumes, tokenizer: Any, report: PrepReport, chat: ChatRenderer | None, out: Path
) -> dict[str, int]:
    """Prepare the job's data into ``out`` a batch at a time (tokenized beside the reader); returns the rows kept
    per split."""
    pool = TokenPool(tokenizer)
    try:
        writer = SplitWriter(out, "train", spec, pool, report)
        held = _read_and_split(spec, volumes, report, chat, writer)
        if not writer.added:
            raise ConfigError("spec.data: no training rows are left after cleaning and the split")
        sizes = {"train": writer.close()}
        for split, examples in held.items():
            if split == "train" or (split in ("retention", "replay") and not held["retention"] + held["replay"]):
                continue
            other = SplitWriter(out, split, spec, pool, report)
            for example in examples:
                other.add(example)
            sizes[split] = other.close()
        return sizes
    finally:
        pool.close()


def _read_and_split(
    spec: FineTuneJobSpec, volumes: Volumes, report: PrepReport, chat: ChatRenderer | None, train: SplitWriter
) -> dict[str, list[Example]]:
    """Every dataset's rows, cleaned and deduplicated: training rows into ``train``; the held-out ones returned
    (validation and test: explicit datasets' rows first, then the pool's; retention and replay from General)."""
    data = spec.data
    fixed: dict[str, list[Example]] = {"validation": [], "test": [], "general": []}
    drawn: dict[str, list[Example]] = {"validation": [], "test": []}
    seen: dict[str, set[int]] = defaultdict(set)
    overlap = data.cleaning.drop_test_overlap and any(
        d.usage in (DatasetUsage.VALIDATION, DatasetUsage.TEST) for d in data.datasets
    )
    trained: set[int] = set()  # the training rows' hashes, for the overlap check
    for index, source in enumerate(data.datasets):
        target = "pool" if source.usage in (DatasetUsage.SPLIT, DatasetUsage.TRAIN) else source.usage.lower()
        scope = seen["train" if target == "pool" else target]
        held = drawn if target == "pool" else fixed
        for example in _examples(spec, volumes, report, chat, index, scope):
            split = _split_of(example, source.usage, data)
            if split != "train":
                held[split].append(example)
                continue
            train.add(example)
            if overlap:
                trained.add(_key(example))
    return _held_out(spec, fixed, drawn, trained, report, train)


def _examples(
    spec: FineTuneJobSpec, volumes: Volumes, report: PrepReport, chat: ChatRenderer | None, index: int, scope: set[int]
) -> Iterator[Example]:
    """The clean rows of dataset ``index`` not already in ``scope`` (which gets their hashes), as examples."""
    data, source = spec.data, spec.data.datasets[index]
    columns = required_columns(data) if source.usage != DatasetUsage.GENERAL else None
    rows = load(source, volumes, f"spec.data.datasets[{index}]", report, columns)
    for number, (row, multiline) in enumerate(rows, start=1):
        example = _clean(row, number, multiline, source.name, data, chat, _Seen(scope))
        if isinstance(example, str):
            report.drop(example, source.name, number)
            continue
        scope.add(_key(example))
        example.raw = None
        yield example


def _split_of(example: Example, usage: DatasetUsage, data: Any) -> str:
    """Where a row goes: a Split dataset's row by its content draw, Train rows to train, the others to theirs."""
    if usage == DatasetUsage.SPLIT:
        return split_of(example.digest, data.split.seed, *data.ratios())
    return "train" if usage == DatasetUsage.TRAIN else usage.lower()


def _key(example: Example) -> int:
    return int.from_bytes(example.digest[:8], "big")


def _held_out(
    spec: FineTuneJobSpec,
    fixed: dict[str, list[Example]],
    drawn: dict[str, list[Example]],
    trained: set[int],
    report: PrepReport,
    train: SplitWriter,
) -> dict[str, list[Example]]:
    """Validation and test (explicit rows first, those also in training dropped), retention and replay."""
    data = spec.data
    if not train.added and (drawn["validation"] or drawn["test"]):
        held = drawn["validation"] + drawn["test"]  # a pool of a few rows that all drew a held-out split
        last = max(held, key=lambda e: draw(e.digest, data.split.seed))
        drawn = {name: [e for e in rows if e is not last] for name, rows in drawn.items()}
        train.add(last)
    out: dict[str, list[Example]] = {}
    for name in ("validation", "test"):
        out[name] = []
        for example in fixed[name]:
            if _key(example) in trained:
                report.drop(f"{name}OverlapsTrain", example.source, example.row)
            else:
                out[name].append(example)
        out[name] += drawn[name]
    guard = spec.forgetting_guard
    general = fixed["general"]
    ratio = guard.retention_ratio if guard else 0.5
    draws = [draw(example.digest, data.split.seed, "retention") for example in general]
    kept = [d < ratio for d in draws]
    if general and not any(kept):
        kept[draws.index(min(draws))] = True
    out["retention"] = [e for e, k in zip(general, kept, strict=True) if k]
    out["replay"] = [e for e, k in zip(general, kept, strict=True) if not k]
    return out


class _Seen:
    """The ``in`` test ``rows._clean`` makes against a set of 8-byte hashes, for a row's 16-byte digest."""

    def __init__(self, keys: set[int]) -> None:
        self.keys = keys

    def __contains__(self, digest: object) -> bool:
        return isinstance(digest, bytes) and int.from_bytes(digest[:8], "big") in self.keys
