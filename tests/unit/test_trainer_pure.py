"""Pure trainer helpers: ROUGE-L and answer normalisation, torchrun's multi-node command, precision, sharding,
task mixing and replay, the overfitting and retention verdicts, augmentation noise."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import Precision, parse_spec
from kubetune.api.data import Augmentation
from kubetune.api.tuning import ForgettingGuard
from kubetune.trainer.augment import perturb
from kubetune.trainer.batches import shard_chunks
from kubetune.trainer.errors import ConfigError
from kubetune.trainer.evaluate import normalize_answer, rouge_l
from kubetune.trainer.guards import overfitting, retention
from kubetune.trainer.mixing import EpochPlan, shares
from kubetune.trainer.runtime import mixed_precision, torchrun_command
from tests.support.builders import JobBuilder


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("the cat sat", "the cat sat", 1.0),
        ("The cat, sat!", "the cat sat", 1.0),
        ("dog", "the cat sat", 0.0),
        ("the cat", "the cat sat", 0.8),  # P=1, R=2/3
        ("", "", 1.0),
    ],
)
def test_rouge_l(prediction: str, reference: str, expected: float) -> None:
    assert rouge_l(prediction, reference) == pytest.approx(expected)


def test_exact_match_ignores_case_and_punctuation() -> None:
    assert normalize_answer("Paris.") == normalize_answer(" paris") == "paris"


def test_torchrun_command_single_node_and_indexed_job() -> None:
    single = torchrun_command(["job.yaml"], {"NPROC_PER_NODE": "2"})
    assert "--standalone" in single and "--nproc-per-node=2" in single
    assert single[-3:] == ["kubetune.trainer", "worker", "job.yaml"]
    env = {
        "NNODES": "3",
        "JOB_COMPLETION_INDEX": "2",
        "MASTER_ADDR": "job-workers-0.job",
        "CUDA_VISIBLE_DEVICES": "0,1",
    }
    multi = torchrun_command([], env)
    assert {"--nnodes=3", "--node-rank=2", "--master-addr=job-workers-0.job", "--master-port=29500"} <= set(multi)
    assert "--nproc-per-node=2" in multi
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        torchrun_command([], {"NNODES": "2"})


def test_precision_choices() -> None:
    assert mixed_precision(Precision.AUTO, cuda=False, bf16_ok=False) == "no"
    assert mixed_precision(Precision.AUTO, cuda=True, bf16_ok=True) == "bf16"
    assert mixed_precision(Precision.BF16, cuda=False, bf16_ok=False) == "bf16"
    with pytest.raises(ConfigError, match=r"spec\.training\.precision"):
        mixed_precision(Precision.FP16, cuda=False, bf16_ok=False)


def test_every_rank_gets_the_same_number_of_micro_batches() -> None:
    rows = [([i], [i]) for i in range(11)]
    shards = [shard_chunks(rows, batch_size=2, seed=1, rank=r, world=3) for r in range(3)]
    assert len({len(s) for s in shards}) == 1
    seen = [row[0][0] for shard in shards for chunk in shard for row in chunk]
    assert len(seen) == len(set(seen)), "no row is trained twice in an epoch"


def _spec(strategy: str, weights: dict[str, float], temperature: float = 2.0) -> Any:
    datasets = [{"name": name, "weight": w, "uri": f"s3://b/{name}.jsonl"} for name, w in weights.items()]
    job = JobBuilder().set("spec.data.datasets", datasets)
    return parse_spec(job.set("spec.data.mixing", {"strategy": strategy, "temperature": temperature}).build()["spec"])


@pytest.mark.parametrize(
    ("strategy", "weights", "expected"),
    [
        ("Proportional", {"a": 1.0, "b": 1.0}, {"a": 0.8, "b": 0.2}),
        ("Proportional", {"a": 1.0, "b": 4.0}, {"a": 0.5, "b": 0.5}),
        ("Weighted", {"a": 1.0, "b": 3.0}, {"a": 0.25, "b": 0.75}),
        ("Temperature", {"a": 1.0, "b": 1.0}, {"a": 2 / 3, "b": 1 / 3}),  # sqrt(80) : sqrt(20)
    ],
)
def test_task_shares(strategy: str, weights: dict[str, float], expected: dict[str, float]) -> None:
    assert shares(_spec(strategy, weights), {"a": 80, "b": 20}) == pytest.approx(expected)


def test_an_epoch_keeps_its_size_oversamples_small_tasks_and_adds_replay() -> None:
    spec = _spec("Weighted", {"a": 1.0, "b": 1.0})
    spec.forgetting_guard = ForgettingGuard(replay_ratio=0.5)
    rows = [([i], [i]) for i in range(10)]
    plan = EpochPlan(spec, rows, ["a"] * 8 + ["b"] * 2, replay=[([100], [100])], seed=1)
    epoch = plan.epoch(0)
    assert len(epoch) == len(plan) == 15 and plan.counts == {"a": 5, "b": 5}
    drawn = [r[0][0] for r in epoch[:10] if r[0][0] >= 8]
    assert len(drawn) == 5 and min(drawn.count(8), drawn.count(9)) == 2, "b's 2 rows: each twice, then one draw"
    assert epoch[10:] == [([100], [100])] * 5 and plan.epoch(0) == epoch, "seeded by the epoch"
    assert plan.report({"train": ["a"] * 8 + ["b"] * 2})["imbalanceRatio"] == 4.0


def test_proportional_mixing_with_equal_weights_is_the_split_itself() -> None:
    rows = [([i], [i]) for i in range(5)]
    plan = EpochPlan(_spec("Proportional", {"a": 1.0, "b": 1.0}), rows, ["a", "b", "a", "b", "a"], [], seed=1)
    assert plan.identity and plan.epoch(3) == rows


def test_overfitting_needs_validation_up_and_training_down() -> None:
    train = [{"step": s, "loss": 3.0 - 0.1 * s} for s in range(1, 21)]
    rising = [{"step": 5, "loss": 2.0}, {"step": 10, "loss": 1.5}, {"step": 15, "loss": 1.6}, {"step": 20, "loss": 1.8}]
    verdict = overfitting(train, rising)
    assert verdict["detected"] and (verdict["bestStep"], verdict["step"]) == (10, 20)
    assert verdict["trainLoss"] < verdict["trainLossAtBest"]
    assert not overfitting(train, rising[:2])["detected"], "validation still falling"
    flat_train = [{"step": s, "loss": 1.0} for s in range(1, 21)]
    assert not overfitting(flat_train, rising)["detected"], "training loss did not fall"
    assert not overfitting(train, [{"step": 10, "loss": 1.5}, {"step": 20, "loss": 1.505}])["detected"], "within 1 %"


def test_retention_regression_and_threshold() -> None:
    kept = retention(2.0, 2.02, ForgettingGuard(max_regression=0.02))
    assert kept["regression"] == pytest.approx(0.01) and kept["passed"]
    assert not retention(2.0, 2.1, ForgettingGuard(max_regression=0.02))["passed"]
    assert retention(2.0, 9.0, ForgettingGuard())["passed"], "no threshold, no verdict against"


def test_augmentation_perturbs_only_inputs_and_is_seeded() -> None:
    knobs = Augmentation(word_dropout=0.3, word_swap=0.3, token_noise=0.2)
    text = "one two three four five six seven eight"
    first = perturb(text, knobs, random.Random(1), ["x", "y"])
    assert first == perturb(text, knobs, random.Random(1), ["x", "y"]) and first != text
    assert perturb("only", Augmentation(word_dropout=0.99), random.Random(0), []) == "only", "a word is kept"


@pytest.mark.parametrize(
    ("edits", "sizes", "expected"),
    [
        ({}, {"train": 400, "validation": 50, "test": 50}, []),
        (
            {},
            {"train": 2, "validation": 0, "test": 0},
            ["train split has 2 rows", "validation split is empty", "test split is empty"],
        ),
        ({}, {"train": 400, "validation": 7, "test": 20}, ["validation split has 7 rows (fewer than 20)"]),
        ({"spec.evaluation.enabled": False}, {"train": 400, "validation": 50, "test": 0}, []),
        (
            {"spec.data.split": {"validationRatio": 0.0, "testRatio": 0.1}},
            {"train": 400, "validation": 0, "test": 40},
            [],
        ),
    ],
)
def test_split_warnings_name_the_small_splits_and_what_to_change(
    edits: dict[str, Any], sizes: dict[str, int], expected: list[str]
) -> None:
    from kubetune.trainer.prepare import split_warnings

    job = JobBuilder()
    for path, value in edits.items():
        job.set(path, value)
    warnings = split_warnings(parse_spec(job.build()["spec"]), sizes)
    assert len(warnings) == len(expected)
    for warning, start in zip(warnings, expected, strict=True):
        assert warning.startswith(start)
    assert all("spec.data" in w for w in warnings)


def test_s3_storage_options_come_from_the_slot_of_the_locations_secret() -> None:
    from kubetune.api import credentials
    from kubetune.trainer.local import Volumes

    s3 = {
        "name": "s3",
        "uri": "s3://data/rows.jsonl",
        "endpoint": "http://127.0.0.1:9000",
        "credentialsSecretRef": {"name": "data-keys"},
    }
    doc = JobBuilder().set("spec.data.datasets[1]", s3).build()
    spec = parse_spec(doc["spec"])
    volumes = Volumes(credentials=credentials.slots(spec))
    env = {"KUBETUNE_CREDENTIALS_0_AWS_ACCESS_KEY_ID": "AKID", "KUBETUNE_CREDENTIALS_0_AWS_SECRET_ACCESS_KEY": "s3cr"}
    options = volumes.storage_options(spec.data.datasets[1], env)
    assert options == {"key": "AKID", "secret": "s3cr", "endpoint_url": "http://127.0.0.1:9000"}
    assert volumes.storage_options(spec.data.datasets[0], env) == {}, "a PVC location has none"


def _beat(rank: int, time: float, step: int | None = None, started: float | None = None) -> dict[str, Any]:
    return {"rank": rank, "time": time, "step": step, "stepStarted": started}


@pytest.mark.parametrize(
    ("beats", "rank", "words"),
    [
        ([_beat(0, 99, 5, 95), _beat(1, 98, 5, None)], None, None),  # healthy: beating, steps short
        ([_beat(0, 99, 5, 95), _beat(1, 50, 4, None)], 1, "rank 1 hung after step 4: no heartbeat for 50 s"),
        ([_beat(0, 99, 5, 80), _beat(1, 60, 5, 59)], 1, "rank 1 hung in step 5: no heartbeat for 40 s"),
        ([_beat(0, 99, 6, 70), _beat(1, 99, 5, 65)], 1, "rank 1 hung in step 5: the step has run 35 s"),
        ([_beat(0, 99, 6, 70), _beat(1, 99, 6, 65)], 0, "rank 0 hung in step 6: the step has run 30 s"),
        ([], None, None),
    ],
)
def test_the_watchdog_names_the_silent_rank_first_then_the_longest_stuck_step(
    beats: list[dict[str, Any]], rank: int | None, words: str | None
) -> None:
    from kubetune.trainer.watchdog import hung

    verdict = hung(beats, now=100.0, timeout=20)
    assert (verdict.rank if verdict else None) == rank
    if verdict is not None:
        assert verdict.message.startswith(words or "") and "spec.training.stepTimeoutSeconds (20 s)" in verdict.message


def test_heartbeats_are_written_whole_and_read_back(tmp_path: Path) -> None:
    from kubetune.trainer.watchdog import Heartbeat, hung, read_beats

    beat = Heartbeat(tmp_path, rank=3, interval=0.05).start()
    beat.begin(7)
    (tmp_path / "rank-9.json").write_text("{half")  # a file mid-write is skipped, not an error
    beats = read_beats(tmp_path)
    beat.stop()
    assert [(b["rank"], b["step"]) for b in beats] == [(3, 7)] and beats[0]["stepStarted"] is not None
    assert hung(beats, now=beats[0]["time"] + 1, timeout=20) is None


def test_tokenizer_workers_follow_the_containers_cpu_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubetune.trainer import tokenpool

    monkeypatch.setattr(tokenpool.os, "sched_getaffinity", lambda _pid: set(range(64)))  # a big node
    limit = tmp_path / "cpu.max"
    limit.write_text("150000 100000\n")  # a 1.5-CPU limit: 2 CPUs, one reader and one tokenizer
    assert tokenpool.cpus(limit) == 2
    limit.write_text("max 100000\n")
    assert tokenpool.cpus(limit) == 64 and tokenpool.cpus(tmp_path / "none") == 64
    monkeypatch.delenv("KUBETUNE_PREP_WORKERS", raising=False)
    monkeypatch.setattr(tokenpool, "cpus", lambda: 64)
    assert tokenpool.workers() == tokenpool.MAX_WORKERS
    monkeypatch.setenv("KUBETUNE_PREP_WORKERS", "0")
    assert tokenpool.workers() == 0
