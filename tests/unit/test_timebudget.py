"""The time-budget check of ``make test`` (issue 36): a test that used more than half of its time limit fails
the run, so one drifting towards its limit is seen before it times out in CI."""

from __future__ import annotations

import os

from tests.support.paths import ROOT
from tests.support.timebudget import over_budget


def test_tests_over_their_share_are_listed_worst_first_and_tests_without_a_limit_never() -> None:
    spent = {"a": 290.0, "b": 320.0, "c": 1300.0, "d": 5.0, "e": 900.0}
    limits = {"a": 600.0, "b": 600.0, "c": 2400.0, "d": 0.0, "e": 0.0}
    assert over_budget(spent, limits, 0.5) == [("c", 1300.0, 2400.0), ("b", 320.0, 600.0)]
    assert over_budget(spent, limits, 0.9) == []


def test_a_run_with_a_test_over_half_its_limit_fails(pytester, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    pytester.makeconftest('pytest_plugins = ["tests.support.timebudget"]')
    pytester.makepyfile(
        """
        import time
        import pytest

        @pytest.mark.timeout(0.4)
        def test_slow():
            time.sleep(0.3)

        def test_fast():
            pass
        """
    )
    result = pytester.runpytest_subprocess()
    result.stdout.fnmatch_lines(["*tests over 50% of their time limit*", "*test_slow*"])
    assert result.ret == 1
    assert pytester.runpytest_subprocess("--time-budget=0").ret == 0
