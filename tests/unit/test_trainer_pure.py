"""Pure trainer helpers: ROUGE-L and answer normalisation, torchrun's multi-node command, precision, sharding."""

from __future__ import annotations

import pytest

from kubetune.api import Precision
from kubetune.trainer.batches import shard_chunks
from kubetune.trainer.errors import ConfigError
from kubetune.trainer.evaluate import normalize_answer, rouge_l
from kubetune.trainer.runtime import mixed_precision, torchrun_command


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
