"""Seeded corruptions of the example datasets, each with the outcome data preparation must reach.

A corrupted file either trains, with the prep report naming each dropped row and its reason (``Trains``), or
fails with exit 78 and a message naming the file and the first bad row (``Fails``); never a traceback. The
corruptions are those users' exports produce: broken UTF-8, truncated JSON lines, wrong column types, empty
files, 10 MB single rows, CSV with unbalanced quotes, labels unseen in training, Parquet with a wrong schema or
no Parquet at all, plus byte-order marks, rows that are not objects, control characters and missing columns.
``benchmarks/chaos.py`` prints the figures of a run; ``test_hostile_data.py`` asserts them.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.paths import ROOT

DATA = ROOT / "examples" / "data"
HUGE = 10 * 1024 * 1024


@dataclass
class Trains:
    """Preparation succeeds; each of ``dropped`` (reason -> row numbers) is in the prep report; ``truncated`` or
    one of ``dropped`` holds when ``either`` is set (a 10 MB row is dropped or truncated, by where it lands)."""

    dropped: dict[str, list[int]] = field(default_factory=dict)
    either: bool = False


@dataclass
class Fails:
    """Exit 78; the message names the file and ``where`` (e.g. ``row 7`` or ``line 3``)."""

    where: str


@dataclass
class Corrupted:
    """One corrupted dataset file and the job spec pieces that read it."""

    kind: str
    index: int
    name: str
    content: bytes
    data_format: str
    expected: Trains | Fails
    fields: dict[str, str] = field(default_factory=dict)
    labels: list[str] | None = None


def _instructions() -> list[dict[str, Any]]:
    """The example instructions that clean without a drop (the file holds a few dirty rows of its own)."""
    rows = [json.loads(line) for line in (DATA / "instructions.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if str(r.get("instruction") or "").strip() and str(r.get("output") or "").strip()]


def _tickets() -> str:
    docs = list(yaml.safe_load_all((ROOT / "examples" / "classification.yaml").read_text()))
    return str(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["tickets.csv"])


TICKET_LABELS = ["billing", "bug", "feature-request", "other"]


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def _instruction_file(kind: str, index: int, content: bytes | str, expected: Trains | Fails) -> Corrupted:
    raw = content.encode() if isinstance(content, str) else content
    return Corrupted(kind, index, f"{kind}-{index}.jsonl", raw, "Instruction", expected)


def broken_utf8(rng: random.Random, index: int) -> Corrupted:
    lines = _jsonl(_instructions()).encode().splitlines(keepends=True)
    at = rng.randrange(len(lines))
    bad = rng.choice([b"\xff\xfe", b"\xc3", b"\xe2\x82", b"\x80"])
    cut = rng.randrange(2, len(lines[at]) - 2)
    lines[at] = lines[at][:cut] + bad + lines[at][cut:]
    return _instruction_file("brokenUtf8", index, b"".join(lines), Fails(f"line {at + 1}"))


def truncated_json(rng: random.Random, index: int) -> Corrupted:
    lines = _jsonl(_instructions()).splitlines(keepends=True)
    at = rng.randrange(len(lines))
    lines[at] = lines[at][: rng.randrange(1, len(lines[at]) - 2)] + "\n"
    return _instruction_file("truncatedJson", index, "".join(lines), Fails(f"row {at + 1}"))


def wrong_types(rng: random.Random, index: int) -> Corrupted:
    rows = _instructions()
    picked = sorted(rng.sample(range(len(rows)), 5))
    dropped: dict[str, list[int]] = {}
    for at in picked:
        column = rng.choice(["instruction", "output"])
        value = rng.choice([{"nested": 1}, [1, 2], None, 42])
        rows[at][column] = value
        if isinstance(value, dict | list):
            dropped.setdefault("wrongType", []).append(at + 1)
        elif value is None:
            reason = "emptyInstruction" if column == "instruction" else "emptyResponse"
            dropped.setdefault(reason, []).append(at + 1)
    return _instruction_file("wrongTypes", index, _jsonl(rows), Trains(dropped))


def empty_file(rng: random.Random, index: int) -> Corrupted:
    content = rng.choice(["", "\n", "\n\n  \n", "\r\n"])
    return _instruction_file("emptyFile", index, content, Fails("the file is empty"))


def huge_row(rng: random.Random, index: int) -> Corrupted:
    """One row of 10 MB, in a JSONL instruction or answer or in a CSV ticket's text."""
    words = ["alpha", "beta", "gamma", "delta", "epsilon"]
    text = " ".join(rng.choice(words) for _ in range(HUGE // 6))
    if rng.random() < 0.5:
        lines = _tickets().splitlines(keepends=True)
        at = rng.randrange(1, len(lines))
        lines[at] = text + "," + lines[at].rsplit(",", 1)[1]
        return _ticket_file("hugeRow", index, "".join(lines), Trains({}, either=True))
    rows = _instructions()
    rows[rng.randrange(len(rows))][rng.choice(["instruction", "output"])] = text
    return _instruction_file("hugeRow", index, _jsonl(rows), Trains({}, either=True))


def not_an_object(rng: random.Random, index: int) -> Corrupted:
    lines = _jsonl(_instructions()).splitlines(keepends=True)
    at = rng.randrange(len(lines))
    lines[at] = rng.choice(['["a list"]\n', "42\n", '"a string"\n', "null\n"])
    return _instruction_file("notAnObject", index, "".join(lines), Fails(f"row {at + 1}"))


def byte_order_mark(rng: random.Random, index: int) -> Corrupted:
    return _instruction_file("byteOrderMark", index, "\ufeff" + _jsonl(_instructions()), Trains({}))


def control_characters(rng: random.Random, index: int) -> Corrupted:
    """Control and separator characters inside strings, some unescaped (U+2028 and U+0085 are valid raw JSON)."""
    rows = _instructions()
    for at in rng.sample(range(len(rows)), 5):
        noise = rng.choice(["\x00", "\x07", "\u202e", "\x1b[31m", "\t\v", "\u2028", "\x85", "\x0c"])
        rows[at]["input"] = str(rows[at].get("input", "")) + noise
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return _instruction_file("controlCharacters", index, text, Trains({}))


def missing_column(rng: random.Random, index: int) -> Corrupted:
    rows = _instructions()
    column = rng.choice(["instruction", "output"])
    everywhere = rng.random() < 0.5
    picked = range(len(rows)) if everywhere else sorted(rng.sample(range(len(rows)), 4))
    for at in picked:
        rows[at].pop(column)
    if everywhere:
        return _instruction_file("missingColumn", index, _jsonl(rows), Fails("row 1 has no column"))
    reason = "emptyInstruction" if column == "instruction" else "emptyResponse"
    return _instruction_file("missingColumn", index, _jsonl(rows), Trains({reason: [at + 1 for at in picked]}))


def _ticket_file(kind: str, index: int, text: str, expected: Trains | Fails) -> Corrupted:
    return Corrupted(
        kind,
        index,
        f"{kind}-{index}.csv",
        text.encode(),
        "Classification",
        expected,
        fields={"text": "body", "label": "category"},
        labels=TICKET_LABELS,
    )


def unbalanced_quote(rng: random.Random, index: int) -> Corrupted:
    """A quote that never closes fails (it would swallow the rest of the file); one closed on the next line
    makes one row of two, dropped as multilineField."""
    lines = _tickets().splitlines(keepends=True)
    at = rng.randrange(1, len(lines) - 2)
    lines[at] = '"' + lines[at]
    if rng.random() < 0.5:
        return _ticket_file("unbalancedQuote", index, "".join(lines), Fails(f"row {at} (line {at + 1})"))
    body, label = lines[at + 1].rstrip("\n").rsplit(",", 1)
    lines[at + 1] = f'{body}",{label}\n'
    return _ticket_file("unbalancedQuote", index, "".join(lines), Trains({"multilineField": [at]}))


def extra_cells(rng: random.Random, index: int) -> Corrupted:
    lines = _tickets().splitlines(keepends=True)
    at = rng.randrange(1, len(lines))
    lines[at] = lines[at].rstrip("\n") + ",surplus\n"
    return _ticket_file("extraCells", index, "".join(lines), Fails(f"row {at} has more cells"))


def unseen_labels(rng: random.Random, index: int) -> Corrupted:
    rows = list(csv.DictReader(io.StringIO(_tickets())))
    picked = sorted(rng.sample(range(len(rows)), 6))
    for at in picked:
        rows[at]["category"] = rng.choice(["refund", "Billing", "bugs", "spam"])
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["body", "category"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return _ticket_file("unseenLabels", index, out.getvalue(), Trains({"unknownLabel": [at + 1 for at in picked]}))


def _parquet(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


def parquet_wrong_schema(rng: random.Random, index: int) -> Corrupted:
    """Renamed columns fail naming the column; a numeric answer column trains (numbers are text); a list-typed
    column trains with the rows that hold a list dropped (wrongType)."""
    rows = _instructions()
    variant = rng.choice(["renamed", "numeric", "lists"])
    expected: Trains | Fails = Trains({})
    if variant == "renamed":
        rows = [{"prompt": r["instruction"], "input": r.get("input", ""), "answer": r["output"]} for r in rows]
        expected = Fails("row 1 has no column 'instruction'")
    elif variant == "numeric":
        rows = [{**r, "output": len(r["output"])} for r in rows]
    else:
        picked = sorted(rng.sample(range(len(rows)), 5))
        rows = [{**r, "input": [1, 2] if at in picked else None} for at, r in enumerate(rows)]
        expected = Trains({"wrongType": [at + 1 for at in picked]})
    name = f"parquetWrongSchema-{index}.parquet"
    return Corrupted("parquetWrongSchema", index, name, _parquet(rows), "Instruction", expected)


def not_parquet(rng: random.Random, index: int) -> Corrupted:
    real = _parquet(_instructions())
    content = rng.choice([real[: rng.randrange(8, len(real) - 8)], _jsonl(_instructions()).encode(), b"PAR1" * 3])
    return Corrupted("notParquet", index, f"notParquet-{index}.parquet", content, "Instruction", Fails("Parquet"))


KINDS: dict[str, Callable[[random.Random, int], Corrupted]] = {
    "brokenUtf8": broken_utf8,
    "truncatedJson": truncated_json,
    "wrongTypes": wrong_types,
    "emptyFile": empty_file,
    "hugeRow": huge_row,
    "notAnObject": not_an_object,
    "byteOrderMark": byte_order_mark,
    "controlCharacters": control_characters,
    "missingColumn": missing_column,
    "unbalancedQuote": unbalanced_quote,
    "extraCells": extra_cells,
    "unseenLabels": unseen_labels,
    "parquetWrongSchema": parquet_wrong_schema,
    "notParquet": not_parquet,
}


def corrupted(seed: int, per_kind: int) -> Iterator[Corrupted]:
    """``per_kind`` seeded corruptions of each kind, in a fixed order."""
    rng = random.Random(seed)
    for make in KINDS.values():
        for index in range(per_kind):
            yield make(rng, index)


def manifest(item: Corrupted, folder: Path) -> Path:
    """Writes the file and a FineTuneJob on the tiny Llama that reads it from claim ``data``; returns the
    manifest's path."""
    (folder / item.name).write_bytes(item.content)
    data: dict[str, Any] = {
        "format": item.data_format,
        "datasets": [{"name": "rows", "pvc": {"claimName": "data", "path": item.name}}],
        "split": {"validationRatio": 0.1, "testRatio": 0.1, "seed": 7},
        "cleaning": {"deduplicate": False},
    }
    if item.fields:
        data["fields"] = item.fields
    task: dict[str, Any] = {"type": "CausalLM"}
    if item.data_format == "Classification":
        task = {"type": "Classification", "labels": item.labels}
    job = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": f"{item.kind.lower()}-{item.index}"},
        "spec": {
            "model": {"cached": "kubetune/tiny-llama"},
            "task": task,
            "data": data,
            "method": {"type": "LoRA", "lora": {"rank": 4, "alpha": 8, "dropout": 0.0}},
            "training": {"learningRate": 0.01, "epochs": 1, "perDeviceBatchSize": 8, "maxSeqLength": 64},
            "evaluation": {"maxSamples": 4, "maxNewTokens": 4},
        },
    }
    path = folder / f"{item.name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


@dataclass
class Verdict:
    """What preparing one corrupted file gave, and whether it is what the corruption expects."""

    item: Corrupted
    code: int
    message: str
    report: dict[str, Any] | None
    traceback: bool
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def judge(item: Corrupted, code: int, stderr: str, report: dict[str, Any] | None) -> Verdict:
    """Compare one outcome with the corruption's expectation."""
    problems: list[str] = []
    traceback = "Traceback (most recent call last)" in stderr
    if traceback:
        problems.append("a traceback")
    expected = item.expected
    if isinstance(expected, Fails):
        if code != 78:
            problems.append(f"exit {code}, not 78")
        if item.name not in stderr or expected.where not in stderr:
            problems.append(f"the message does not name {item.name} and {expected.where!r}: {stderr[-300:]!r}")
        return Verdict(item, code, stderr, report, traceback, problems)
    if code != 0 or report is None:
        return Verdict(item, code, stderr, report, traceback, [*problems, f"exit {code}: {stderr[-300:]!r}"])
    for reason, rows in expected.dropped.items():
        named = report["firstDroppedRows"].get(reason, [])
        if report["dropped"].get(reason, 0) != len(rows):
            problems.append(f"{reason}: {report['dropped'].get(reason, 0)} dropped, expected {len(rows)}")
        # The report names the first 5 of each reason in the order it met them (after the split, for labels).
        if len(named) != min(5, len(rows)) or not set(named) <= {f"rows:{row}" for row in rows}:
            problems.append(f"{reason}: named rows {named}, expected among {rows}")
    if expected.either and not (report["truncated"] or report["dropped"]):
        problems.append("the 10 MB row was neither dropped nor truncated")
    return Verdict(item, code, stderr, report, traceback, problems)
