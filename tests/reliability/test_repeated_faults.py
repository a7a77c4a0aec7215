"""Repeated faults: a two-rank job whose workers are SIGKILLed at 5 seeded steps, relaunched after each, ends with
the final metrics of an uninterrupted run, having recomputed less than one checkpoint interval per kill."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.runs import repeated_kills

pytestmark = [pytest.mark.reliability, pytest.mark.slow]
SEED = 20


@pytest.mark.timeout(1200)  # an uninterrupted two-rank run and five killed-and-resumed ones: 277 s on a busy machine
def test_five_kills_end_like_an_uninterrupted_run_recomputing_under_one_interval_each(tmp_path: Path) -> None:
    result = repeated_kills(tmp_path, SEED, kills=5, max_steps=24, every=4)
    print(result.figures())
    assert len(result.kill_steps) == 5 and len(set(result.kill_steps)) == 5
    assert all(0 <= steps < result.checkpoint_every for steps in result.recomputed), result.figures()
    assert result.max_delta < 1e-4, (result.straight, result.killed)
