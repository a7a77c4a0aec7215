"""Alerts and dashboards, statically: promtool checks and unit-tests every alert; the dashboards are the files
hack/dashboards.py writes, with stable uids and the datasource variable on every panel. The end-to-end proof that
their queries return data from a real Prometheus is in test_install.py."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from typing import Any

import yaml

from tests.chart.conftest import CHART, ROOT
from tests.support.prometheus import binary

ALERTS = CHART / "files" / "alerts.yaml"
ALERT_TESTS = ROOT / "tests" / "chart" / "alerts.test.yaml"
DASHBOARDS = CHART / "files" / "dashboards"


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"] if "alert" in r]


def test_promtool_checks_the_rules() -> None:
    result = subprocess.run([binary("promtool"), "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    result = subprocess.run(
        [binary("promtool"), "test", "rules", ALERT_TESTS.name], cwd=ALERT_TESTS.parent, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    cases = [c for t in yaml.safe_load(ALERT_TESTS.read_text())["tests"] for c in t["alert_rule_test"]]
    for rule in alert_rules():
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c["exp_alerts"] for c in mine), f"{rule['alert']}: no test where it fires"
        assert any(not c["exp_alerts"] for c in mine), f"{rule['alert']}: no test where it stays quiet"
        assert rule["labels"]["severity"] in ("info", "warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_dashboards_are_what_the_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location("dashboards", ROOT / "hack" / "dashboards.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rendered = module.render()
    assert set(rendered) == {p.name for p in DASHBOARDS.glob("*.json")}
    for name, text in rendered.items():
        assert (DASHBOARDS / name).read_text() == text, f"{name} is stale: run `python hack/dashboards.py`"


def test_dashboards_have_stable_uids_and_a_datasource_variable() -> None:
    found = dashboards()
    assert {d["uid"] for d in found.values()} == {"kubetune-overview", "kubetune-finetunejob"}
    for name, dashboard in found.items():
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), name
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == "${datasource}", (name, panel["title"])
            assert panel["targets"] and all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
            assert all(t["expr"].strip() for t in panel["targets"]), (name, panel["title"])
    job = found["finetunejob.json"]
    assert {"namespace", "finetunejob"} <= {v["name"] for v in job["templating"]["list"]}
    titles = {p["title"] for p in job["panels"]}
    assert {
        "Progress",
        "Time left (ETA)",
        "Loss",
        "Test-set evaluation",
        "Throughput",
        "Peak memory (rank 0)",
    } <= titles
    overview = {p["title"] for p in found["overview.json"]["panels"]}
    assert {"Jobs by phase", "Active workers", "Failed jobs"} <= overview


def test_dashboard_json_is_valid_for_grafana_import() -> None:
    for name, dashboard in dashboards().items():
        assert dashboard["schemaVersion"] >= 36 and "id" not in dashboard, name
        for panel in dashboard["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24 and grid["w"] > 0 and grid["h"] > 0, (name, panel["title"])
