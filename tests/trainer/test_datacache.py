"""Prepared data as a cache (issue 38): written once as memory-mapped Arrow under its fingerprint, reused by the
next run and by concurrent processes (one prepares, the others wait on a file lock), the same rows either way;
splits drawn from content hashes, stable when rows are added; the "no training rows" error says what to change."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import parse_job
from kubetune.trainer.datacache import Chain, Picked, Store
from kubetune.trainer.errors import ConfigError
from kubetune.trainer.local import Volumes
from kubetune.trainer.model import load_tokenizer
from kubetune.trainer.prepare import prepare_data
from kubetune.trainer.rows import PrepReport, examples_by_split
from kubetune.trainer.tiny import TINY_LLAMA, ensure_model
from tests.support.builders import JobBuilder


def write_rows(path: Path, n: int, start: int = 0) -> None:
    with path.open("a") as out:
        for i in range(start, start + n):
            out.write(json.dumps({"instruction": f"Add {i} and {i + 1}", "output": str(2 * i + 1)}) + "\n")


def spec_of(**sets: Any) -> Any:
    builder = JobBuilder().set("spec.data.datasets[0]", {"name": "d", "pvc": {"claimName": "c", "path": "d.jsonl"}})
    builder.set("spec.data.split", {"validationRatio": 0.1, "testRatio": 0.1, "seed": 3})
    for key, value in sets.items():
        builder.set(key.replace("__", "."), value)
    return parse_job(builder.build()).spec


@pytest.fixture(scope="module")
def model_dir(model_cache: Path) -> Path:
    return ensure_model(model_cache / TINY_LLAMA, TINY_LLAMA)


def prepared(spec: Any, data: Path, cache: Path | None, model_dir: Path) -> tuple[Any, PrepReport]:
    volumes = Volumes(claims={"c": data}, prepared=cache)
    report = PrepReport()
    return prepare_data(spec, volumes, load_tokenizer(model_dir), report), report


def test_a_second_run_reads_the_cache_and_gets_the_same_rows(tmp_path: Path, model_dir: Path) -> None:
    write_rows(tmp_path / "d.jsonl", 300)
    spec = spec_of()
    memory, _ = prepared(spec, tmp_path, None, model_dir)
    cold, cold_report = prepared(spec, tmp_path, tmp_path / "cache", model_dir)
    warm, warm_report = prepared(spec, tmp_path, tmp_path / "cache", model_dir)
    assert cold_report.reused is None and warm_report.reused == cold_report.fingerprint
    assert warm_report.to_dict()["reused"] == cold_report.fingerprint
    for split in ("train", "validation", "test"):
        assert list(memory.rows[split]) == list(cold.rows[split]) == list(warm.rows[split]), split
        assert [e.parts for e in memory.examples[split]] == [e.parts for e in warm.examples[split]]
        assert memory.tasks[split] == warm.tasks[split]
    assert {k: v for k, v in warm_report.to_dict().items() if k != "reused"} == cold_report.to_dict()
    assert list(Store(tmp_path / "cache").root.iterdir()) and not list((tmp_path / "cache").glob(".*tmp*"))


def test_tokenizer_workers_give_the_rows_and_report_of_the_inline_path(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches tokenized in worker processes come back in order: the same rows, order and drop counts."""
    write_rows(tmp_path / "d.jsonl", 3500)  # four batches of the streaming writer
    with (tmp_path / "d.jsonl").open("a") as out:
        out.write(json.dumps({"instruction": "long " * 300, "output": "x"}) + "\n")  # tooManyTokens with Drop
    spec = spec_of(spec__data__cleaning={"overLength": "Drop"})
    runs = {}
    for workers in ("0", "2"):
        monkeypatch.setenv("KUBETUNE_PREP_WORKERS", workers)
        runs[workers] = prepared(spec, tmp_path, tmp_path / f"cache-{workers}", model_dir)
    (inline, inline_report), (pooled, pooled_report) = runs["0"], runs["2"]
    for split in ("train", "validation", "test"):
        assert list(inline.rows[split]) == list(pooled.rows[split]), split
    assert inline_report.to_dict() == pooled_report.to_dict()
    assert inline_report.to_dict()["dropped"]["tooManyTokens"] == 1


def test_a_changed_file_or_max_length_prepares_again(tmp_path: Path, model_dir: Path) -> None:
    write_rows(tmp_path / "d.jsonl", 100)
    _, first = prepared(spec_of(), tmp_path, tmp_path / "cache", model_dir)
    _, longer = prepared(spec_of(spec__training__maxSeqLength=64), tmp_path, tmp_path / "cache", model_dir)
    write_rows(tmp_path / "d.jsonl", 1, start=100)
    _, edited = prepared(spec_of(), tmp_path, tmp_path / "cache", model_dir)
    assert len({first.fingerprint, longer.fingerprint, edited.fingerprint}) == 3
    assert longer.reused is None and edited.reused is None


def _prepare_in_child(args: tuple[str, str, str]) -> tuple[str | None, int]:
    data, cache, model = args
    _, report = prepared(spec_of(), Path(data), Path(cache), Path(model))
    return report.reused, sum(report.split_sizes.values())


def test_two_processes_prepare_once_and_read_the_same_cache(tmp_path: Path, model_dir: Path) -> None:
    write_rows(tmp_path / "d.jsonl", 2000)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_prepare_in_child, [(str(tmp_path), str(tmp_path / "cache"), str(model_dir))] * 2)
    assert sorted(r is None for r, _ in results) == [False, True], results  # one prepared, the other reused
    assert results[0][1] == results[1][1]


def test_splits_follow_content_so_added_rows_never_move_old_ones(tmp_path: Path) -> None:
    write_rows(tmp_path / "d.jsonl", 1000)
    volumes = Volumes(claims={"c": tmp_path})
    before = examples_by_split(spec_of().data, volumes, PrepReport())
    write_rows(tmp_path / "d.jsonl", 500, start=1000)
    after = examples_by_split(spec_of().data, volumes, PrepReport())
    for split in ("validation", "test"):
        old = {e.target for e in before[split]}
        assert old <= {e.target for e in after[split]}, split  # every earlier held-out row stays held out
        assert 60 <= len(before[split]) <= 140  # 10% of 1,000 in expectation (binomial: sd 9.5)
    assert not {e.target for e in before["train"]} & {e.target for e in after["test"]}


def test_no_rows_left_says_how_long_the_rows_are_and_what_to_change(tmp_path: Path, model_dir: Path) -> None:
    write_rows(tmp_path / "d.jsonl", 50)
    spec = spec_of(spec__training__maxSeqLength=16, spec__data__cleaning={"overLength": "Drop"})
    with pytest.raises(ConfigError) as error:
        prepared(spec, tmp_path, tmp_path / "cache", model_dir)
    message = str(error.value)
    assert "longer than spec.training.maxSeqLength 16" in message and "p50" in message, message
    assert "raise spec.training.maxSeqLength to at least" in message and "overLength: Truncate" in message
    assert not (tmp_path / "cache").exists() or not any(p.is_dir() for p in (tmp_path / "cache").iterdir())


def test_chain_and_picked_index_without_copying() -> None:
    chained = Chain([1, 2], [], range(3, 6))
    assert list(chained) == [1, 2, 3, 4, 5] and chained[-1] == 5 and chained[1:3] == [2, 3]
    assert list(Picked(chained, [4, 0, 0])) == [5, 1, 1]


def test_streaming_preparation_equals_the_in_memory_one_with_every_kind_of_dataset(
    tmp_path: Path, model_dir: Path
) -> None:
    """Split, Train, explicit Validation (overlapping training: dropped) and General rows, with duplicates and
    an empty row: the streamed cache holds the rows, drops and sizes that preparing in memory gives."""
    write_rows(tmp_path / "d.jsonl", 400)
    write_rows(tmp_path / "d.jsonl", 5)  # duplicates of the first five
    write_rows(tmp_path / "t.jsonl", 50, start=1000)
    write_rows(tmp_path / "v.jsonl", 10, start=1045)  # 5 of them are also training rows
    (tmp_path / "v.jsonl").open("a").write(json.dumps({"instruction": "", "output": "x"}) + "\n")
    write_rows(tmp_path / "g.jsonl", 40, start=5000)
    datasets = [
        {"name": "d", "pvc": {"claimName": "c", "path": "d.jsonl"}},
        {"name": "t", "usage": "Train", "pvc": {"claimName": "c", "path": "t.jsonl"}},
        {"name": "v", "usage": "Validation", "pvc": {"claimName": "c", "path": "v.jsonl"}},
        {"name": "g", "usage": "General", "pvc": {"claimName": "c", "path": "g.jsonl"}},
    ]
    spec = spec_of(
        spec__data__datasets=datasets,
        spec__data__split={"testRatio": 0.1, "seed": 3},
        spec__forgettingGuard={"replayRatio": 0.2},
    )
    memory, memory_report = prepared(spec, tmp_path, None, model_dir)
    streamed, streamed_report = prepared(spec, tmp_path, tmp_path / "cache", model_dir)
    assert set(memory.rows) == set(streamed.rows) == {"train", "validation", "test", "retention", "replay"}
    for split in memory.rows:
        assert list(memory.rows[split]) == list(streamed.rows[split]), split
        assert [(e.source, e.row) for e in memory.examples[split]] == [
            (e.source, e.row) for e in streamed.examples[split]
        ]
        assert memory.tasks[split] == streamed.tasks[split]
    expected = {k: v for k, v in memory_report.to_dict().items() if k != "fingerprint"}
    assert {k: v for k, v in streamed_report.to_dict().items() if k != "fingerprint"} == expected
    assert memory_report.dropped["validationOverlapsTrain"] == 5 and memory_report.dropped["duplicate"] == 5
