"""Loss weighting: every target token of an optimizer step weighs the same, whatever micro-batch and rank it is
in. One step with gradient accumulation 4 over rows of very different lengths, and two torchrun ranks on CPU,
give the gradients of one big batch of the same rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import PYTHONPATH

WORKER = Path(__file__).with_name("loss_weighting_worker.py")


def _gradients(model_dir: Path, out: Path, groups: int, world: int = 1) -> dict[str, list[float]]:
    env = {**os.environ, "PYTHONPATH": PYTHONPATH}
    if world == 1:
        command = [sys.executable, str(WORKER)]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={world}",
            "--master-port=29517",
            str(WORKER),
        ]
    subprocess.run([*command, str(model_dir), str(out), str(groups)], check=True, env=env, timeout=300)
    return dict(json.loads(out.read_text()))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kubetune.trainer.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("weighting") / "tiny", seed=5)


def _close(a: dict[str, list[float]], b: dict[str, list[float]]) -> float:
    """The largest |a - b| relative to the largest |b| of each tensor."""
    worst = 0.0
    for name, values in b.items():
        scale = max(max(abs(v) for v in values), 1e-12)
        worst = max(worst, max(abs(x - y) for x, y in zip(a[name], values, strict=True)) / scale)
    return worst


@pytest.mark.slow
def test_accumulation_weighs_every_token_alike(tiny: Path, tmp_path: Path) -> None:
    big = _gradients(tiny, tmp_path / "big.json", groups=1)
    accumulated = _gradients(tiny, tmp_path / "acc.json", groups=4)
    assert _close(accumulated, big) <= 1e-5


@pytest.mark.slow
def test_two_ranks_weigh_every_token_alike(tiny: Path, tmp_path: Path) -> None:
    big = _gradients(tiny, tmp_path / "big.json", groups=1)
    ranks = _gradients(tiny, tmp_path / "ranks.json", groups=2, world=2)
    assert _close(ranks, big) <= 1e-5
