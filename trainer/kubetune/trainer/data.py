"""Data preparation: load rows, clean them with a counted report, and split them with a seed.

Every dropped row is counted by reason, and the first few row numbers of each reason are kept, so a user
can find them in the file. The report is saved with the outputs.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api import DataFormat, DatasetUsage, FileFormat
from kubetune.api.data import Data

from .errors import ConfigError
from .local import Volumes

Row = dict[str, Any]
_SPACES = re.compile(r"\s+")


@dataclass
class Example:
    """One cleaned example: the prompt (not trained on) and the target (trained on)."""

    prompt: str
    target: str
    source: str
    row: int


@dataclass
class PrepReport:
    """What data preparation did, saved as ``prep_report.json``."""

    rows_read: dict[str, int] = field(default_factory=dict)
    dropped: Counter[str] = field(default_factory=Counter)
    first_dropped_rows: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    split_sizes: dict[str, int] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)

    def drop(self, reason: str, source: str, row: int) -> None:
        self.dropped[reason] += 1
        if len(self.first_dropped_rows[reason]) < 5:
            self.first_dropped_rows[reason].append(f"{source}:{row}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "rowsRead": self.rows_read,
            "dropped": dict(self.dropped),
            "firstDroppedRows": dict(self.first_dropped_rows),
            "splitSizes": self.split_sizes,
            "sha256": self.sha256,
        }


def read_rows(path: Path, file_format: FileFormat | None, where: str) -> list[Row]:
    """Rows of a JSONL, CSV or Parquet file; a malformed line is a ConfigError naming its number."""
    if not path.exists():
        raise ConfigError(f"{where}: file {path} does not exist")
    kind = file_format or {".csv": FileFormat.CSV, ".parquet": FileFormat.PARQUET}.get(path.suffix, FileFormat.JSONL)
    if kind == FileFormat.CSV:
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    if kind == FileFormat.PARQUET:
        import pyarrow.parquet as pq

        return list(pq.read_table(path).to_pylist())
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ConfigError(f"{where}: row {number} of {path} is not valid JSON: {error.msg}") from error
    return rows


def normalize(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def to_example(row: Row, data: Data, source: str, number: int) -> Example | str:
    """The row as an Example, or the reason it is dropped."""
    fields = data.fields

    def get(key: str) -> str:
        return str(row.get(key) or "")

    clean = normalize if data.cleaning.normalize_whitespace else str
    if data.format == DataFormat.INSTRUCTION:
        instruction, extra, response = (
            clean(get(fields.instruction)),
            clean(get(fields.input)),
            clean(get(fields.response)),
        )
        if not instruction:
            return "emptyInstruction"
        if not response:
            return "emptyResponse"
        template = data.prompt_template or "### Instruction:\n{instruction}\n{input_block}### Response:\n"
        input_block = f"### Input:\n{extra}\n" if extra else ""
        prompt = template.format(
            instruction=instruction, input=extra, input_block=input_block, system=get(fields.system)
        )
        return Example(prompt, response, source, number)
    if data.format == DataFormat.COMPLETION:
        text = clean(get(fields.text))
        return Example("", text, source, number) if text else "emptyText"
    raise ConfigError(f"spec.data.format: {data.format} is not implemented by this trainer build yet")


def prepare(data: Data, volumes: Volumes, report: PrepReport) -> dict[str, list[Example]]:
    """Load, clean, deduplicate and split every dataset; returns examples by split name."""
    pools: dict[str, list[Example]] = {"pool": [], "train": [], "validation": [], "test": []}
    seen: set[str] = set()
    for index, source in enumerate(data.datasets):
        where = f"spec.data.datasets[{index}]"
        path = volumes.dataset(source, where)
        report.sha256[source.name] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        rows = read_rows(path, source.file_format, where)
        report.rows_read[source.name] = len(rows)
        target = {DatasetUsage.SPLIT: "pool", DatasetUsage.TRAIN: "train"}.get(source.usage, source.usage.lower())
        for number, row in enumerate(rows, start=1):
            example = to_example(row, data, source.name, number)
            if isinstance(example, str):
                report.drop(example, source.name, number)
                continue
            key = (example.prompt + "\x00" + example.target).lower()
            if data.cleaning.deduplicate and key in seen:
                report.drop("duplicate", source.name, number)
                continue
            seen.add(key)
            pools[target].append(example)
    validation_ratio, test_ratio = data.ratios()
    pool = pools.pop("pool")
    random.Random(data.split.seed).shuffle(pool)
    n_val, n_test = round(len(pool) * validation_ratio), round(len(pool) * test_ratio)
    splits = {
        "validation": pools["validation"] + pool[:n_val],
        "test": pools["test"] + pool[n_val : n_val + n_test],
        "train": pools["train"] + pool[n_val + n_test :],
    }
    if not splits["train"]:
        raise ConfigError("spec.data: no training rows are left after cleaning and the split")
    report.split_sizes = {name: len(rows) for name, rows in splits.items()}
    return splits
