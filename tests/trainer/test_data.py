"""Data preparation: formats, cleaning with counted reasons, dedup and overlap, file kinds, URIs, ConfigMaps,
token-length filters and percentiles."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import parse_job
from kubetune.trainer.batches import IGNORE, encode, tokenize_split
from kubetune.trainer.cli import read_manifest
from kubetune.trainer.errors import ConfigError
from kubetune.trainer.formats import Example
from kubetune.trainer.local import Volumes
from kubetune.trainer.model import load_tokenizer
from kubetune.trainer.rows import PrepReport, examples_by_split
from kubetune.trainer.tiny import TINY_LLAMA, ensure_model
from tests.support.builders import JobBuilder


def data_spec(tmp_path: Path, rows: list[dict[str, Any]] | str, name: str = "d.jsonl", **sets: Any) -> Any:
    path = tmp_path / name
    if isinstance(rows, str):
        path.write_text(rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    builder = JobBuilder().set("spec.data.datasets[0]", {"name": "d", "pvc": {"claimName": "c", "path": name}})
    for key, value in sets.items():
        builder.set(key.replace("__", "."), value)
    return parse_job(builder.build()).spec


def run_prepare(spec: Any, tmp_path: Path, chat: Any = None) -> tuple[dict[str, list[Example]], PrepReport]:
    report = PrepReport()
    return examples_by_split(spec.data, Volumes(claims={"c": tmp_path}), report, chat), report


@pytest.fixture(scope="module")
def tokenizer(model_cache: Path) -> Any:
    return load_tokenizer(ensure_model(model_cache / TINY_LLAMA, TINY_LLAMA))


def test_cleaning_counts_every_reason_and_names_the_first_rows(tmp_path: Path) -> None:
    rows = [
        {"instruction": "Say hi", "output": "hi"},
        {"instruction": "  Say   hi ", "output": "hi"},  # a duplicate after whitespace normalisation
        {"instruction": "", "output": "x"},
        {"instruction": "Ask", "output": None},
    ] + [{"instruction": f"Count to {i}", "output": str(i)} for i in range(20)]
    splits, report = run_prepare(data_spec(tmp_path, rows), tmp_path)
    assert report.dropped == {"duplicate": 1, "emptyInstruction": 1, "emptyResponse": 1}
    assert report.first_dropped_rows["duplicate"] == ["d:2"]
    assert sum(len(s) for s in splits.values()) == 21
    again, _ = run_prepare(data_spec(tmp_path, rows), tmp_path)
    assert [e.row for e in again["test"]] == [e.row for e in splits["test"]], "the split is seeded"


def test_explicit_test_rows_that_appear_in_training_are_dropped(tmp_path: Path) -> None:
    (tmp_path / "test.jsonl").write_text(json.dumps({"instruction": "Count to 3", "output": "3"}) + "\n")
    rows = [{"instruction": f"Count to {i}", "output": str(i)} for i in range(10)]
    spec = data_spec(
        tmp_path,
        rows,
        **{"spec__data__datasets[1]": {"name": "t", "pvc": {"claimName": "c", "path": "test.jsonl"}, "usage": "Test"}},
    )
    splits, report = run_prepare(spec, tmp_path)
    assert report.dropped["testOverlapsTrain"] == 1
    assert splits["test"] == []


def test_csv_parquet_and_directories_load_and_bad_rows_are_named(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "many"
    folder.mkdir()
    (folder / "a.csv").write_text("instruction,output\nFirst,1\nSecond,2\n")
    pq.write_table(pa.Table.from_pylist([{"instruction": "Third", "output": "3"}]), folder / "b.parquet")
    spec = data_spec(tmp_path, "", **{"spec__data__datasets[0]__pvc__path": "many"})
    _splits, report = run_prepare(spec, tmp_path)
    assert report.rows_read == {"d": 3}
    (folder / "c.csv").write_text("instruction,output\nok,1\nbad,2,extra\n")
    with pytest.raises(ConfigError, match=r"spec.data.datasets\[0\] \(c.csv\): row 2 has more cells"):
        run_prepare(spec, tmp_path)
    (folder / "c.csv").write_bytes(b"instruction,output\nok,1\n\xff\xfe,2\n")
    with pytest.raises(ConfigError, match="line 3 is not valid UTF-8"):
        run_prepare(spec, tmp_path)


def test_a_parquet_file_is_read_a_batch_at_a_time_with_the_rows_of_a_whole_read(tmp_path: Path) -> None:
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    from kubetune.trainer.rows import FileFormat, _file_rows, parse_rows

    rows = [{"instruction": f"Say {i}", "output": str(i), "input": None if i % 3 else "x"} for i in range(10_000)]
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=1_000)
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        streamed = list(_file_rows(handle, FileFormat.PARQUET, "d", digest))
    assert streamed == parse_rows(path.read_bytes(), FileFormat.PARQUET, "d") == rows
    assert digest.hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()  # what a resume compares
    path.write_bytes(path.read_bytes()[:5_000])  # cut off: no footer
    with pytest.raises(ConfigError, match="d: not a readable Parquet file"), path.open("rb") as handle:
        list(_file_rows(handle, FileFormat.PARQUET, "d", hashlib.sha256()))
    path.write_bytes(b"")
    with pytest.raises(ConfigError, match="d: the file is empty"), path.open("rb") as handle:
        list(_file_rows(handle, FileFormat.PARQUET, "d", hashlib.sha256()))


def test_a_csv_field_with_an_unbalanced_quote_is_dropped_as_multiline_not_merged_silently(tmp_path: Path) -> None:
    # 5 data lines; the quote opened on line 3 closes on line 4, so the reader makes one row of two, with the
    # second one's answer: it is dropped (and named) unless cleaning.allowMultiline keeps it.
    text = 'instruction,output\nSay one,1\n"Say two,2\nSay three",3\nSay four,4\nSay five,5\n'
    splits, report = run_prepare(data_spec(tmp_path, text, "d.csv"), tmp_path)
    assert report.rows_read == {"d": 4} and report.multiline_fields == 1
    assert report.dropped == {"multilineField": 1} and report.first_dropped_rows["multilineField"] == ["d:2"]
    assert sorted(e.target for s in splits.values() for e in s) == ["1", "4", "5"]
    assert report.to_dict()["multilineFields"] == 1
    kept, allowed = run_prepare(
        data_spec(tmp_path, text, "d.csv", spec__data__cleaning={"allowMultiline": True}), tmp_path
    )
    assert allowed.dropped == {} and allowed.multiline_fields == 1 and sum(map(len, kept.values())) == 4
    jsonl = [{"instruction": "Two lines\nof question", "output": "fine"}]  # JSONL newlines are escaped: kept
    _, plain = run_prepare(data_spec(tmp_path, jsonl), tmp_path)
    assert plain.dropped == {} and plain.multiline_fields == 0


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[str]:
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_uri_datasets_are_read_through_fsspec(tmp_path: Path, http_root: str) -> None:
    (tmp_path / "remote.jsonl").write_text(json.dumps({"instruction": "Over HTTP", "output": "yes"}) + "\n")
    for uri in (f"{http_root}/remote.jsonl", f"file://{tmp_path}/remote.jsonl"):
        spec = data_spec(
            tmp_path,
            "",
            **{
                "spec__data__datasets[0]": {"name": "d", "uri": uri, "usage": "Train"},
                "spec__data__split": {"validationRatio": 0, "testRatio": 0},
            },
        )
        splits, _ = run_prepare(spec, tmp_path)
        assert splits["train"][0].target == "yes"
    spec = data_spec(tmp_path, "", **{"spec__data__datasets[0]": {"name": "d", "uri": f"{http_root}/missing.jsonl"}})
    with pytest.raises(ConfigError, match=r"spec.data.datasets\[0\].uri"):
        run_prepare(spec, tmp_path)


def test_configmap_datasets_come_from_the_same_file_locally(tmp_path: Path) -> None:
    job = JobBuilder().set("spec.data.datasets[0]", {"name": "d", "configMap": {"name": "rows", "key": "r.jsonl"}})
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "rows"},
        "data": {"r.jsonl": "".join(json.dumps({"instruction": f"Q{i}", "output": "A"}) + "\n" for i in range(10))},
    }
    import yaml

    (tmp_path / "job.yaml").write_text(yaml.safe_dump_all([config_map, job.build()]))
    parsed, config_maps = read_manifest(tmp_path / "job.yaml")
    report = PrepReport()
    splits = examples_by_split(parsed.spec.data, Volumes(config_maps=config_maps), report)
    assert report.rows_read == {"d": 10}
    with pytest.raises(ConfigError, match=r"spec.data.datasets\[0\].configMap: ConfigMap 'rows' is not in"):
        examples_by_split(parsed.spec.data, Volumes(), PrepReport())
    assert splits["train"]


def test_chat_rows_train_only_on_assistant_turns(tmp_path: Path, tokenizer: Any) -> None:
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},
        {"role": "user", "content": "And of Spain?"},
        {"role": "assistant", "content": "Madrid"},
    ]
    rows = [{"messages": conversation}, {"messages": [{"role": "user", "content": "hi"}]}, {"messages": "nonsense"}]
    spec = data_spec(
        tmp_path, rows, spec__data__format="Chat", spec__data__split={"validationRatio": 0, "testRatio": 0}
    )

    def chat(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt))

    splits, report = run_prepare(spec, tmp_path, chat)
    assert report.dropped == {"noAssistantTurn": 1, "invalidMessages": 1}
    example = splits["train"][0]
    assert "".join(text for text, _ in example.parts) == chat(conversation, False)
    trained = [text for text, on in example.parts if on]
    assert [t.split(tokenizer.eos_token)[0] for t in trained] == ["Paris", "Madrid"]
    _ids, labels = encode(example, tokenizer)
    learned = tokenizer.decode([t for t in labels if t != IGNORE])
    assert "Paris" in learned and "Madrid" in learned and "Spain" not in learned and "<|assistant|>" not in learned


def test_token_filters_count_drops_and_truncations_and_report_percentiles(tmp_path: Path, tokenizer: Any) -> None:
    rows = [{"instruction": "Say " + "very " * n + "long", "output": "ok"} for n in (1, 8, 60, 61)]
    shortest = len(encode(Example.pair("### Instruction:\nSay very long\n### Response:\n", "ok"), tokenizer)[0])
    spec = data_spec(
        tmp_path,
        rows,
        spec__data__cleaning={"overLength": "Drop", "minTokens": shortest + 1},
        spec__data__split={"validationRatio": 0, "testRatio": 0},
    )
    splits, report = run_prepare(spec, tmp_path)
    kept, examples = tokenize_split(splits["train"], tokenizer, 64, spec.data.cleaning, report, "train")
    assert report.dropped["tooManyTokens"] == 2 and report.dropped["tooFewTokens"] == 1
    assert len(kept) == len(examples) == 1
    assert set(report.token_lengths["train"]) == {"p50", "p90", "p99", "max"}
    rows += [{"instruction": "Say it", "output": "very " * 80}]
    spec = data_spec(tmp_path, rows, spec__data__split={"validationRatio": 0, "testRatio": 0})
    splits, report = run_prepare(spec, tmp_path)
    kept, _ = tokenize_split(splits["train"], tokenizer, 64, spec.data.cleaning, report, "train")
    # Truncated: the long response. Dropped: long prompts whose response is cut off entirely.
    assert report.truncated == 1 and report.dropped["nothingToTrainOnAfterTruncation"] == 2
    assert all(len(ids) <= 64 for ids, _ in kept)


def test_classification_rows_need_text_and_label(tmp_path: Path) -> None:
    rows = "text,label\ngreat film,pos\n,neg\nawful film,\n"
    spec = data_spec(
        tmp_path,
        rows,
        name="d.csv",
        spec__data__format="Classification",
        spec__task={"type": "Classification"},
        spec__data__split={"validationRatio": 0, "testRatio": 0},
    )
    splits, report = run_prepare(spec, tmp_path)
    assert report.dropped == {"emptyText": 1, "emptyLabel": 1}
    assert splits["train"][0].label == "pos"
