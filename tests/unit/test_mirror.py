"""Checkpoints mirrored to object storage (kubetune.trainer.mirror) on fsspec's in-memory filesystem: complete only
when the markers cover every rank, the newest complete one of the spec resumed, ``keep`` applied there."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from kubetune.trainer.mirror import Mirror


def _rank(index: int, world: int) -> SimpleNamespace:
    return SimpleNamespace(
        process_index=index,
        num_processes=world,
        is_main_process=index == 0,
        is_local_main_process=True,  # one process per node
        wait_for_everyone=lambda: None,
    )


def _checkpoint(root: Path, step: int, rank: int, spec: str = "s") -> Path:
    local = root / "checkpoints" / f"step-{step:08d}"
    local.mkdir(parents=True, exist_ok=True)
    (local / f"rng-{rank}.pt").write_bytes(b"rng")
    if rank == 0:
        (local / "state.json").write_text(json.dumps({"spec_hash": spec, "step": step}))
        (local / "trainable.safetensors").write_bytes(b"weights")
    return local


@pytest.fixture
def uri(request: pytest.FixtureRequest) -> str:
    """A location of this test's own on fsspec's in-memory filesystem (one per interpreter)."""
    return f"memory://runs/{request.node.name}"


def test_a_checkpoint_is_complete_when_every_node_marked_its_part(
    tmp_path: Path, uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Mirror, "_anyone", lambda self, flag: flag)  # the ranks' all-gather, here one at a time
    rank0, rank1 = Mirror(uri, None, _rank(0, 2)), Mirror(uri, None, _rank(1, 2))
    rank0.push(_checkpoint(tmp_path / "node0", 2, 0), keep=2)
    rank0.wait()
    assert rank0.newest("s") is None  # rank 1's part is not there yet
    rank1.push(_checkpoint(tmp_path / "node1", 2, 1), keep=2)
    rank1.wait()
    assert rank0.newest("s") == "step-00000002" and rank0.newest("other spec") is None
    rank0.push(_checkpoint(tmp_path / "node0", 4, 0), keep=2)  # step 4: rank 1's upload cut off
    rank0.wait()
    assert rank0.newest("s") == "step-00000002"
    fresh = tmp_path / "replaced-pod"
    Mirror(uri, None, _rank(0, 1)).pull(fresh, "s")
    assert sorted(p.name for p in (fresh / "checkpoints" / "step-00000002").iterdir()) == [
        "done-0.json",
        "done-1.json",
        "rng-0.pt",
        "rng-1.pt",
        "state.json",
        "trainable.safetensors",
    ]


def test_keep_applies_to_the_complete_checkpoints_there(tmp_path: Path, uri: str) -> None:
    mirror = Mirror(uri, None, _rank(0, 1))
    for step in (2, 4, 6):
        mirror.push(_checkpoint(tmp_path, step, 0), keep=2)
        mirror.wait()
    assert mirror._steps() == ["step-00000004", "step-00000006"]
    local = tmp_path / "resumed"
    (local / "checkpoints" / "step-00000008").mkdir(parents=True)  # newer than any complete one there: dropped
    mirror.pull(local, "s")
    assert sorted(p.name for p in (local / "checkpoints").iterdir()) == ["step-00000006"]


def test_a_checkpoint_due_while_an_upload_is_under_way_stays_local(tmp_path: Path, uri: str) -> None:
    """Training never waits for the store: the next checkpoint is skipped there unless the pod is being stopped."""
    mirror = Mirror(uri, None, _rank(0, 1))
    gate = threading.Event()
    mirror.pending = mirror.uploader.submit(gate.wait)  # an upload under way
    assert mirror.push(_checkpoint(tmp_path, 2, 0), keep=2) is False
    gate.set()
    assert mirror.push(_checkpoint(tmp_path, 4, 0), keep=2, force=True) is True
    mirror.wait()
    assert mirror._steps() == ["step-00000004"]


def test_what_travels_is_fixed_when_pushed_though_the_local_keep_deletes_it(tmp_path: Path, uri: str) -> None:
    """The local ``keep`` may remove a checkpoint while it is uploaded: hard links taken at the push travel."""
    mirror = Mirror(uri, None, _rank(0, 1))
    local = _checkpoint(tmp_path, 2, 0)
    mirror.push(local, keep=2)
    shutil.rmtree(local)
    mirror.wait()
    assert mirror.newest("s") == "step-00000002"
    assert not list((tmp_path / "checkpoints").glob(".upload-*"))  # the staging links go once it is there


def test_the_best_weights_come_back_on_rank_0s_node_only(tmp_path: Path, uri: str) -> None:
    """Rank 0 alone rewrites ``best`` as validation improves; a copy pulled onto another node would go stale and
    be delivered there (the other ranks take rank 0's weights only when their node has none)."""
    mirror = Mirror(uri, None, _rank(0, 1))
    best = tmp_path / "best"
    best.mkdir()
    (best / "adapter_model.safetensors").write_bytes(b"best")
    mirror.push(_checkpoint(tmp_path, 2, 0), keep=2, best=best)
    mirror.wait()
    for index, node in ((0, tmp_path / "node0"), (1, tmp_path / "node1")):
        Mirror(uri, None, _rank(index, 2))._download("step-00000002", node)
        assert (node / "best").is_dir() is (index == 0)
        assert not (node / "checkpoints" / "step-00000002" / "best").exists()
