"""A pytest plugin that fails the run when a test used more than half of its time limit.

pytest-timeout kills a test at its limit (the ini's ``timeout`` or its own ``pytest.mark.timeout(seconds)``); this
plugin sees a test drifting towards that limit before it fails CI. A test's time is what pytest-timeout counts:
its setup, call and teardown (so a session fixture's start lands on the first test that needs it). The share is
``--time-budget`` (0.5 unless told); ``--time-budget=0`` turns the check off (a slow test run by hand).
"""

from __future__ import annotations

from collections import defaultdict

import pytest

Offender = tuple[str, float, float]  # nodeid, seconds spent, limit in seconds


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--time-budget",
        type=float,
        default=0.5,
        help="fail the run when a test used more than this share of its time limit (0: no check)",
    )


def pytest_configure(config: pytest.Config) -> None:
    share = config.getoption("--time-budget")
    if share:
        config.pluginmanager.register(TimeBudget(share), "kubetune-time-budget")


def limit_of(item: pytest.Item) -> float:
    """The test's time limit in seconds as pytest-timeout reads it (its marker, else the ini); 0 for none."""
    marker = item.get_closest_marker("timeout")
    if marker is not None:
        return float(marker.kwargs.get("timeout", marker.args[0] if marker.args else 0) or 0)
    return float(item.config.getini("timeout") or 0)


def over_budget(spent: dict[str, float], limits: dict[str, float], share: float) -> list[Offender]:
    """Every test that used more than ``share`` of its limit, the worst share first."""
    over = [(node, s, limits[node]) for node, s in spent.items() if limits.get(node) and s > share * limits[node]]
    return sorted(over, key=lambda row: row[1] / row[2], reverse=True)


class TimeBudget:
    def __init__(self, share: float) -> None:
        self.share = share
        self.spent: dict[str, float] = defaultdict(float)
        self.limits: dict[str, float] = {}

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        self.limits.update({item.nodeid: limit_of(item) for item in items})

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.spent[report.nodeid] += report.duration

    def offenders(self) -> list[Offender]:
        return over_budget(self.spent, self.limits, self.share)

    def pytest_terminal_summary(self, terminalreporter) -> None:  # type: ignore[no-untyped-def]
        if not (offenders := self.offenders()):
            return
        terminalreporter.section(f"tests over {self.share:.0%} of their time limit", red=True)
        for node, seconds, limit in offenders:
            terminalreporter.line(f"{seconds:7.0f} s of {limit:5.0f} s ({seconds / limit:4.0%})  {node}")
        terminalreporter.line("give each a cheaper check, or its own honest pytest.mark.timeout with the reason")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if exitstatus == 0 and self.offenders():
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
