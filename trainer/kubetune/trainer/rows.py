"""Rows: load them, clean them with a counted report, deduplicate, and split them with a seed.

Every dropped row is counted by reason, and the first few row numbers of each reason are kept, so a user
can find them in the file. Token-level filters (too short, too long) run at tokenization and add to the same
report, which is saved with the outputs as ``prep_report.json``.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from kubetune.api import DatasetUsage, FileFormat
from kubetune.api.data import Data, DatasetSource

from .errors import ConfigError
from .formats import ChatRenderer, Example, Row, required_columns, to_example
from .local import Volumes


@dataclass
class PrepReport:
    """What data preparation did, saved as ``prep_report.json``."""

    rows_read: dict[str, int] = field(default_factory=dict)
    dropped: Counter[str] = field(default_factory=Counter)
    first_dropped_rows: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    truncated: int = 0
    multiline_fields: int = 0
    """CSV rows with a quoted field spanning lines (dropped as ``multilineField`` unless allowMultiline)."""
    split_sizes: dict[str, int] = field(default_factory=dict)
    token_lengths: dict[str, dict[str, int]] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    sha256: dict[str, str] = field(default_factory=dict)
    hub: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Dataset name -> repo, revision and commit of each Hugging Face Hub dataset."""
    augmented: dict[str, int] = field(default_factory=dict)
    tasks: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    """Splits too small to measure with, and what to change (``prepare.split_warnings``)."""
    lengths: dict[str, Sequence[int]] = field(default_factory=dict)
    """Every row's token count per split, for the report's histogram (not saved in prep_report.json)."""
    fingerprint: str | None = None
    """The prepared-data cache's key (``datacache.fingerprint``); None when prepared in memory only."""
    reused: str | None = None
    """The key, when this process found the data prepared (by another process, an earlier run or job)."""
    progress: Callable[[dict[str, Any]], None] | None = field(default=None, repr=False, compare=False)
    """Told ``rowsRead``, ``bytesRead`` and ``rowsPerSecond`` every 10,000 rows read (the Preparing phase)."""
    read: list[float] = field(default_factory=lambda: [0, 0, time.monotonic()], repr=False, compare=False)
    """Rows and bytes read so far, and when reading started."""

    def count(self, rows: int = 0, size: int = 0) -> None:
        """``rows`` more rows and ``size`` more bytes read; every 10,000 rows ``progress`` is told."""
        before = int(self.read[0])
        self.read[0] += rows
        self.read[1] += size
        if self.progress is not None and rows and int(self.read[0]) // 10_000 > before // 10_000:
            seconds = max(time.monotonic() - self.read[2], 1e-9)
            figures = {"rowsRead": int(self.read[0]), "bytesRead": int(self.read[1])}
            self.progress({**figures, "rowsPerSecond": round(self.read[0] / seconds, 1)})

    def drop(self, reason: str, source: str, row: int) -> None:
        self.dropped[reason] += 1
        if len(self.first_dropped_rows[reason]) < 5:
            self.first_dropped_rows[reason].append(f"{source}:{row}")

    def restore(self, saved: dict[str, Any], lengths: dict[str, Sequence[int]], reused: str | None) -> None:
        """Take what a prepared-data cache's report says (``to_dict``'s keys), and its token lengths."""
        self.rows_read, self.dropped = saved["rowsRead"], Counter(saved["dropped"])
        self.first_dropped_rows = defaultdict(list, saved["firstDroppedRows"])
        self.truncated, self.multiline_fields = saved["truncated"], saved["multilineFields"]
        self.split_sizes, self.token_lengths, self.labels = saved["splitSizes"], saved["tokenLengths"], saved["labels"]
        self.sha256, self.hub, self.augmented = saved["sha256"], saved["hubDatasets"], saved["augmented"]
        self.warnings, self.lengths = list(saved["warnings"]), lengths
        self.fingerprint, self.reused = saved.get("fingerprint"), reused

    def to_dict(self) -> dict[str, Any]:
        cache = {"fingerprint": self.fingerprint} if self.fingerprint else {}
        return {
            **cache,
            **({"reused": self.reused} if self.reused else {}),
            "rowsRead": self.rows_read,
            "dropped": dict(self.dropped),
            "firstDroppedRows": dict(self.first_dropped_rows),
            "truncated": self.truncated,
            "multilineFields": self.multiline_fields,
            "splitSizes": self.split_sizes,
            "tokenLengths": self.token_lengths,
            "labels": self.labels,
            "sha256": self.sha256,
            "hubDatasets": self.hub,
            "augmented": self.augmented,
            "tasks": self.tasks,
            "warnings": self.warnings,
        }


def parse_rows(raw: bytes, kind: FileFormat, where: str) -> list[Row]:
    """Rows of a JSONL, CSV or Parquet file's bytes; a malformed file or row is a ConfigError naming it."""
    if not raw.strip():
        raise _empty(where)
    if kind == FileFormat.PARQUET:
        return _parquet_rows(raw, where)
    if kind == FileFormat.JSONL:
        return list(_file_rows(io.BytesIO(raw), kind, where, hashlib.sha256()))
    raw = raw.removeprefix(codecs.BOM_UTF8)  # spreadsheets' UTF-8 exports start with one
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        bad = raw[: error.start].count(b"\n") + 1
        raise ConfigError(f"{where}: line {bad} is not valid UTF-8 (re-encode the file as UTF-8)") from error
    return _csv_rows(text, where)


CSV_FIELD_LIMIT = 1 << 30
"""The longest CSV field read; longer rows are the token-length filters' to drop or truncate, not the reader's."""


def _parquet_rows(raw: bytes, where: str) -> list[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return list(pq.read_table(io.BytesIO(raw)).to_pylist())
    except (pa.ArrowException, OSError) as error:
        raise ConfigError(f"{where}: not a readable Parquet file: {error}") from error


def _csv_rows(text: str, where: str) -> list[Row]:
    """The rows of a CSV file; a quoted field that never closes (it would swallow every row after it) and a row
    with more cells than the header are ConfigErrors naming the row."""
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))  # the default, 128 KiB, fails long rows
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows: list[Row] = []
    ends = [1]  # the physical line each row ends on; the header's first
    try:
        for cells in reader:
            rows.append(cells)
            ends.append(reader.line_num)
    except csv.Error as error:
        raise ConfigError(f"{where}: row {len(rows) + 1} (line {reader.line_num}): {error}") from error
    for index, cells in enumerate(rows, start=1):
        if None in cells:
            raise ConfigError(f"{where}: row {index} has more cells than the header has columns")
    if rows and _unclosed_quote(text):
        start = ends[-2] + 1
        raise ConfigError(
            f"{where}: row {len(rows)} (line {start}): a quoted field opens and never closes, so it would take in "
            f'every line after it ({ends[-1] - start + 1} lines); close or escape the quote ("")'
        )
    return rows


_SENTINEL = "kubetune-end-of-file"


def _unclosed_quote(text: str) -> bool:
    """Whether the file ends inside a quoted field. The lenient reader takes such a field to the end of the file
    without a word; a quote and a sentinel line after the text tell: inside a field, the quote closes it and the
    sentinel is a row of its own; outside, the quote opens a field that takes the sentinel in."""
    rows = list(csv.reader(io.StringIO(f'{text}\n"\n{_SENTINEL}\n', newline="")))
    return bool(rows) and rows[-1] == [_SENTINEL]


def file_format(source: DatasetSource, name: str) -> FileFormat:
    """The declared format, or the one the file name's extension implies (JSONL otherwise)."""
    if source.file_format is not None:
        return source.file_format
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return {"csv": FileFormat.CSV, "parquet": FileFormat.PARQUET}.get(suffix, FileFormat.JSONL)


def load(
    source: DatasetSource, volumes: Volumes, where: str, report: PrepReport, columns: dict[str, str] | None = None
) -> Iterator[tuple[Row, bool]]:
    """Every row of one dataset source (a directory is read file by file, in name order), and whether it is a CSV
    row with a quoted field that spans lines. JSONL files on a claim are read a line at a time, so a row is held
    only while it is cleaned. A file none of whose rows has one of ``columns`` (column -> the spec field naming
    it) is a ConfigError: the wrong file, or a field mapping to fix."""
    digest = hashlib.sha256()
    count = 0
    for name, handle in volumes.dataset_streams(source, where):
        kind, label = file_format(source, name), f"{where} ({name})"
        present: set[str] = set()
        with handle:
            for row in _file_rows(handle, kind, label, _Counted(digest, report)):
                report.count(rows=1)
                present.update(row)
                spans = kind == FileFormat.CSV and _spans_lines(row)
                report.multiline_fields += spans
                count += 1
                yield row, spans
        _check_columns(present, columns or {}, label)
    report.sha256[source.name] = digest.hexdigest()
    if source.name in volumes.hub_datasets:
        report.hub[source.name] = volumes.hub_datasets[source.name]
    report.rows_read[source.name] = count


class _Counted:
    """A hash that also counts the bytes it is given into the report (the bytes read while preparing)."""

    def __init__(self, digest: Any, report: PrepReport) -> None:
        self.digest, self.report = digest, report

    def update(self, data: bytes) -> None:
        self.digest.update(data)
        self.report.count(size=len(data))


def _file_rows(handle: BinaryIO, kind: FileFormat, where: str, digest: Any) -> Iterator[Row]:
    """The rows of one open file: JSONL line by line, Parquet a record batch at a time, CSV whole
    (``parse_rows``)."""
    if kind == FileFormat.PARQUET and handle.seekable():
        yield from _parquet_batches(handle, where, digest)
        return
    if kind != FileFormat.JSONL:
        raw = handle.read()
        digest.update(raw)
        yield from parse_rows(raw, kind, where)
        return
    blank = True
    for number, line in enumerate(handle, start=1):  # a binary file's lines end at b"\n" only, as JSON lines do
        digest.update(line)
        blank = blank and not line.strip()
        # spreadsheets' UTF-8 exports start with a BOM
        row = _json_row(line.removeprefix(codecs.BOM_UTF8) if number == 1 else line, number, where)
        if row is not None:
            yield row
    if blank:
        raise _empty(where)


def _parquet_batches(handle: BinaryIO, where: str, digest: Any, batch: int = 4096) -> Iterator[Row]:
    """A Parquet file's rows, ``batch`` at a time through pyarrow (the file hashed first, a block at a time), so
    a row is held only while its batch is: what ``parse_rows`` gives, without the whole table in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    blank = True
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
        blank = blank and not block.strip()
    if blank:
        raise _empty(where)
    handle.seek(0)
    try:
        for rows in pq.ParquetFile(handle).iter_batches(batch_size=batch):
            yield from rows.to_pylist()
    except (pa.ArrowException, OSError) as error:
        raise ConfigError(f"{where}: not a readable Parquet file: {error}") from error


def _empty(where: str) -> ConfigError:
    return ConfigError(f"{where}: the file is empty (an export that failed?); remove it or fill it")


def _json_row(line: bytes, number: int, where: str) -> Row | None:
    """One JSONL line's row (None for a blank line); bad UTF-8, bad JSON or a non-object is a ConfigError."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{where}: line {number} is not valid UTF-8 (re-encode the file as UTF-8)") from error
    if not text.strip():
        return None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{where}: row {number} is not valid JSON: {error.msg}") from error
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: row {number} is not a JSON object")
    return row


def _check_columns(present: set[str], columns: dict[str, str], where: str) -> None:
    for column, spec_field in columns.items():
        if present and column not in present:
            found = ", ".join(sorted(map(str, present))[:20]) or "none"
            raise ConfigError(
                f"{where}: row 1 has no column {column!r} ({spec_field}), nor does any other row; "
                f"the file's columns are: {found}"
            )


def _spans_lines(row: Row) -> bool:
    return any(isinstance(value, str) and ("\n" in value or "\r" in value) for value in row.values())


def examples_by_split(
    data: Data, volumes: Volumes, report: PrepReport, chat: ChatRenderer | None = None, retention_ratio: float = 0.5
) -> dict[str, list[Example]]:
    """Load, clean, deduplicate and split every dataset; returns examples by split name.

    A row's split is drawn from a seeded hash of its content (``split_of``), so a dataset with rows added keeps
    every earlier row in its split. Rows of General datasets (the forgetting guard's) become two more splits:
    ``retention`` (held out, a ``retention_ratio`` share by the same kind of draw) and ``replay`` (the rest, mixed
    into training).
    """
    pools = _pools(data, volumes, report, chat)
    splits = _split(pools.pop("pool"), pools, data)
    if data.cleaning.drop_test_overlap:
        _drop_overlap(splits, report)
    if not splits["train"]:
        raise ConfigError("spec.data: no training rows are left after cleaning and the split")
    if general := pools["general"]:
        draws = [draw(example.digest, data.split.seed, "retention") for example in general]
        held = [d < retention_ratio for d in draws]
        if not any(held):  # at least one retention row, as a shuffled cut gave
            held[draws.index(min(draws))] = True
        splits["retention"] = [e for e, h in zip(general, held, strict=True) if h]
        splits["replay"] = [e for e, h in zip(general, held, strict=True) if not h]
    report.split_sizes = {name: len(rows) for name, rows in splits.items()}
    return splits


def _pools(data: Data, volumes: Volumes, report: PrepReport, chat: ChatRenderer | None) -> dict[str, list[Example]]:
    """Every dataset's clean, deduplicated examples, by where they go: the pool to split, or a fixed split.
    Duplicates are found by a 16-byte hash of the row's text, not by keeping the texts."""
    pools: dict[str, list[Example]] = {"pool": [], "train": [], "validation": [], "test": [], "general": []}
    seen: dict[str, set[bytes]] = defaultdict(set)
    for index, source in enumerate(data.datasets):
        # Split and Train rows share the pool, in dataset order (Train rows always train), and one duplicate set.
        target = "pool" if source.usage in (DatasetUsage.SPLIT, DatasetUsage.TRAIN) else source.usage.lower()
        scope = seen["train" if target == "pool" else target]
        # General rows may be of another stage's format; the ones not of this one are dropped, not an error.
        columns = required_columns(data) if source.usage != DatasetUsage.GENERAL else None
        rows = load(source, volumes, f"spec.data.datasets[{index}]", report, columns)
        keep_raw = data.augmentation is not None and target == "pool"  # augmentation reformats rows
        for number, (row, multiline) in enumerate(rows, start=1):
            example = _clean(row, number, multiline, source.name, data, chat, scope)
            if isinstance(example, str):
                report.drop(example, source.name, number)
                continue
            scope.add(example.digest)
            if not keep_raw:
                example.raw = None
            pools[target].append(example)
    return pools


def _clean(
    row: Row, number: int, multiline: bool, source: str, data: Data, chat: ChatRenderer | None, seen: Container[bytes]
) -> Example | str:
    """The row's example, or the reason it is dropped."""
    if multiline and not data.cleaning.allow_multiline:
        return "multilineField"
    example = to_example(row, data, source, number, chat)
    if not isinstance(example, str) and data.cleaning.deduplicate and example.digest in seen:
        return "duplicate"
    return example


def draw(digest: bytes, seed: int, salt: str = "split") -> float:
    """A number in [0, 1) fixed by a row's content hash, the seed and what it is drawn for."""
    keyed = hashlib.blake2b(digest, digest_size=8, key=f"{salt}:{seed}".encode()).digest()
    return int.from_bytes(keyed, "big") / 2**64


def split_of(digest: bytes, seed: int, validation_ratio: float, test_ratio: float) -> str:
    """The split of a pool row: validation when its draw is under the validation ratio, test under the two
    ratios' sum, train otherwise. Each row's split depends only on its content and the seed, so the split sizes
    follow the ratios in expectation (binomially), not to the row, and new rows never move old ones."""
    value = draw(digest, seed)
    return "validation" if value < validation_ratio else "test" if value < validation_ratio + test_ratio else "train"


def _split(pool: list[Example], fixed: dict[str, list[Example]], data: Data) -> dict[str, list[Example]]:
    """Each pool row goes to the split its seeded content hash draws (``split_of``), after the rows of each fixed
    split (Train datasets' rows are in the pool and always train); rows keep their dataset and file order. Should
    every pool row draw a held-out split (a pool of a few rows), the one
    with the highest draw trains."""
    validation_ratio, test_ratio = data.ratios()
    splits = {name: list(fixed[name]) for name in ("train", "validation", "test")}
    trains = {d.name for d in data.datasets if d.usage == DatasetUsage.TRAIN}
    for example in pool:
        drawn = split_of(example.digest, data.split.seed, validation_ratio, test_ratio)
        splits["train" if example.source in trains else drawn].append(example)
    if pool and not splits["train"]:  # a pool of a few rows that all drew a held-out split: one trains
        held = splits["validation"][len(fixed["validation"]) :] + splits["test"][len(fixed["test"]) :]
        last = max(held, key=lambda e: draw(e.digest, data.split.seed))
        for name in ("validation", "test"):
            splits[name] = [e for e in splits[name] if e is not last]
        splits["train"].append(last)
    return splits


def _drop_overlap(splits: dict[str, list[Example]], report: PrepReport) -> None:
    """Validation and test rows that are also training rows are dropped (``validationOverlapsTrain``...)."""
    train_keys = {example.digest for example in splits["train"]}
    for name in ("validation", "test"):
        kept = []
        for example in splits[name]:
            if example.digest in train_keys:
                report.drop(f"{name}OverlapsTrain", example.source, example.row)
            else:
                kept.append(example)
        splits[name] = kept


def class_labels(declared: list[str] | None, train: list[Example], report: PrepReport) -> list[str]:
    """Class labels in index order: the declared ones, or the sorted labels of the training rows."""
    labels = declared or sorted({example.label for example in train if example.label is not None})
    if len(labels) < 2:
        raise ConfigError(f"spec.task.labels: Classification needs at least 2 classes; the data has {labels}")
    report.labels = labels
    return labels


def drop_unknown_labels(
    splits: dict[str, list[Example]], labels: list[str], report: PrepReport
) -> dict[str, list[Example]]:
    """Rows whose label is not one of ``labels`` are dropped (reason unknownLabel)."""
    known = set(labels)
    kept: dict[str, list[Example]] = {}
    for name, examples in splits.items():
        kept[name] = []
        for example in examples:
            if example.label in known:
                kept[name].append(example)
            else:
                report.drop("unknownLabel", example.source, example.row)
    return kept
