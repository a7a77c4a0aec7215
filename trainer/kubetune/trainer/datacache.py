"""Prepared data as a cache: written once as Arrow IPC files, memory-mapped when read, shared by every process.

What preparation produces (each split's kept rows: token ids, labels, the example's text parts, source row, label
and task; every row's token length; the prep report) is stored under ``<root>/<fingerprint>/``. The fingerprint
hashes everything that changes it (``fingerprint``): the data files' contents, the tokenizer's files, the spec's
data section, maxSeqLength, the task, the retention ratio and ``PREP_VERSION``. A writer fills a temporary
directory and renames it into place, so a killed writer leaves nothing half-written.

One process prepares: it holds an exclusive ``flock`` on ``<root>/<fingerprint>.lock`` while it works; the others
wait on that file (not on a collective, so no NCCL/gloo timeout during a long preparation), then memory-map the
finished cache. Rows are read through ``TokenRows`` and ``ExampleRows``, sequences over the mapped columns that
build one row's Python lists only when it is asked for, so a process holds the pages it touches, not the data.

pyarrow (already in the trainer image for Parquet) is the format: the Arrow IPC file is memory-mappable with zero
copies, and needs none of `datasets`' machinery or its fingerprinting of Python functions.
"""

from __future__ import annotations

import bisect
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from kubetune.api.spec import FineTuneJobSpec

from .formats import Example

if TYPE_CHECKING:
    from .batches import Tokenized

PREP_VERSION = 2
"""Bumped when preparation changes what it produces from the same inputs (2: splits drawn from content hashes)."""
SPLITS = ("train", "validation", "test", "retention", "replay")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)


def fingerprint(spec: FineTuneJobSpec, data_digests: dict[str, str], tokenizer_dir: Path, retention: float) -> str:
    """The cache key of a job's prepared data: what it reads, how it reads it, and the tokenizer that encodes it."""
    digest = hashlib.sha256(f"kubetune-prep-v{PREP_VERSION}\n".encode())
    digest.update(spec.data.model_dump_json(by_alias=True).encode())
    digest.update(spec.task.model_dump_json(by_alias=True).encode())
    digest.update(f"\nmaxSeqLength={spec.training.max_seq_length}\nretention={retention}\n".encode())
    digest.update(json.dumps(data_digests, sort_keys=True).encode())
    for name in TOKENIZER_FILES:
        path = tokenizer_dir / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + file_digest(path).encode())
    return digest.hexdigest()[:32]


def file_digest(path: Path) -> str:
    """sha256 of a file, read in blocks (a GB file is never held in memory)."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class Store:
    """The prepared-data caches under ``root``, one directory per fingerprint."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / key

    def has(self, key: str) -> bool:
        return (self.path(key) / "prep_report.json").is_file()

    def write(self, key: str, fill: Callable[[Path], dict[str, Any]]) -> Path:
        """Let ``fill`` write the split files into a temporary directory (it returns the prep report), add the
        report, then rename the directory to the key's; returns it."""
        self.root.mkdir(parents=True, exist_ok=True)
        temp = self.root / f".{key}.tmp-{os.getpid()}"
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir()
        try:
            report = fill(temp)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        (temp / "prep_report.json").write_text(json.dumps({**report, "fingerprint": key}, indent=2))
        final = self.path(key)
        shutil.rmtree(final, ignore_errors=True)  # a half-removed earlier copy; `has` never saw it complete
        os.rename(temp, final)
        return final

    def read(self, key: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """(split -> memory-mapped table, split -> token lengths array, prep report) of a finished cache."""
        root = self.path(key)
        tables = {
            split: _read_table(root / f"{split}.arrow") for split in SPLITS if (root / f"{split}.arrow").is_file()
        }
        lengths = {
            split: _read_table(path).column("length").to_numpy()
            for split in SPLITS
            if (path := root / f"{split}.lengths.arrow").is_file()
        }
        return tables, lengths, json.loads((root / "prep_report.json").read_text())

    def once(self, key: str, prepare: Callable[[], None], waiting: Callable[[float], None]) -> bool:
        """Run ``prepare`` (which writes the key) unless the key is there; while another process holds the key's
        lock, wait for it, calling ``waiting(seconds)`` about every 10 s. Returns whether this process prepared."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / f"{key}.lock").open("a") as lock:
            _lock(lock, waiting)
            try:
                if self.has(key):
                    return False
                prepare()
                return True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _lock(handle: Any, waiting: Callable[[float], None]) -> None:
    """Take an exclusive flock on ``handle``, calling ``waiting(seconds)`` about every 10 s while another holds it
    (a blocking flock would leave nothing to report the wait)."""
    start = last = time.monotonic()
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() - last >= 10:
                last = time.monotonic()
                waiting(last - start)
            time.sleep(0.2)


def write_tables(directory: Path, tables: dict[str, Any], lengths: Mapping[str, Sequence[int]]) -> None:
    """Each split's table and its token lengths, as Arrow IPC files in ``directory``."""
    import pyarrow as pa

    for split, table in tables.items():
        _write_table(directory / f"{split}.arrow", table)
    for split, values in lengths.items():
        _write_table(directory / f"{split}.lengths.arrow", pa.table({"length": pa.array(values, type=pa.int32())}))


def _write_table(path: Path, table: Any) -> None:
    import pyarrow as pa

    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=65536)


def _read_table(path: Path) -> Any:
    import pyarrow as pa

    with pa.memory_map(str(path), "r") as source:
        return pa.ipc.open_file(source).read_all()  # zero-copy: the buffers stay on the mapped pages


def split_table(rows: Sequence[Tokenized], examples: Sequence[Example], tasks: Sequence[str]) -> Any:
    """One split as an Arrow table: token ids, labels, the example's parts, source, row, label, eos and task."""
    import pyarrow as pa

    ints = pa.list_(pa.int32())
    if isinstance(rows, TokenRows):  # already Arrow (tokenize_split's): its columns as they are
        ids, labels = rows.table.column("input_ids"), rows.table.column("labels")
    else:
        ids, labels = pa.array([i for i, _ in rows], type=ints), pa.array([t for _, t in rows], type=ints)
    return pa.table(
        {
            "input_ids": ids,
            "labels": labels,
            "texts": pa.array([[text for text, _ in e.parts] for e in examples], type=pa.list_(pa.large_string())),
            "trained": pa.array([[t for _, t in e.parts] for e in examples], type=pa.list_(pa.bool_())),
            "source": pa.array([e.source for e in examples], type=pa.string()),
            "row": pa.array([e.row for e in examples], type=pa.int64()),
            "label": pa.array([e.label for e in examples], type=pa.string()),
            "eos": pa.array([e.eos for e in examples], type=pa.bool_()),
            "task": pa.array(list(tasks), type=pa.string()),
        }
    )


class _Lists:
    """Offsets and values of a mapped list<int32> column, chunk by chunk, as numpy views (nothing is copied: a
    streamed file has a record batch per 1,024 rows, and combining them would read the whole column in)."""

    def __init__(self, column: Any) -> None:
        import numpy as np

        chunks = [column.chunk(i) for i in range(column.num_chunks)]
        self.offsets = [chunk.offsets.to_numpy() for chunk in chunks]
        self.values = [chunk.values.to_numpy() for chunk in chunks]
        self.starts = np.cumsum([0] + [len(chunk) for chunk in chunks])

    def __call__(self, index: int) -> list[int]:
        at = bisect.bisect_right(self.starts, index) - 1
        offsets, local = self.offsets[at], index - int(self.starts[at])
        return self.values[at][offsets[local] : offsets[local + 1]].tolist()  # type: ignore[no-any-return]


class _Rows(Sequence[Any]):
    """A sequence whose items are built on demand; a slice is a list."""

    size: int

    def __len__(self) -> int:
        return self.size

    def item(self, index: int) -> Any:
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self.item(i) for i in range(*index.indices(self.size))]
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(index)
        return self.item(index)

    def __iter__(self) -> Iterator[Any]:
        return (self.item(i) for i in range(self.size))

    def __eq__(self, other: object) -> bool:
        """Equal to any sequence of the same items, as a list is (tests compare epochs with lists)."""
        return isinstance(other, Sequence) and len(other) == self.size and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]


class TokenRows(_Rows):
    """A split's (input_ids, labels) rows, read from the mapped table one row at a time."""

    def __init__(self, table: Any) -> None:
        self.size, self.table = table.num_rows, table
        self.ids, self.labels = _Lists(table.column("input_ids")), _Lists(table.column("labels"))

    def item(self, index: int) -> Tokenized:
        return self.ids(index), self.labels(index)


class ExampleRows(_Rows):
    """A split's examples (text parts, source row, label), read from the mapped table one at a time."""

    def __init__(self, table: Any) -> None:
        self.size, self.table = table.num_rows, table

    def item(self, index: int) -> Example:
        row = self.table.slice(index, 1).to_pylist()[0]
        parts = list(zip(row["texts"], row["trained"], strict=True))
        return Example(parts, row["source"], row["row"], row["label"], row["eos"])


class Chain(_Rows):
    """Sequences one after the other, without copying them."""

    def __init__(self, *parts: Sequence[Any]) -> None:
        self.parts = [p for p in parts if len(p)]
        self.starts = [0]
        for part in self.parts:
            self.starts.append(self.starts[-1] + len(part))
        self.size = self.starts[-1]

    def item(self, index: int) -> Any:
        at = bisect.bisect_right(self.starts, index) - 1
        return self.parts[at][index - self.starts[at]]


class Picked(_Rows):
    """``base[indices[i]]`` for each i: an epoch's draw of rows, as indices only."""

    def __init__(self, base: Sequence[Any], indices: Sequence[int]) -> None:
        self.base, self.indices, self.size = base, indices, len(indices)

    def item(self, index: int) -> Any:
        return self.base[int(self.indices[index])]
