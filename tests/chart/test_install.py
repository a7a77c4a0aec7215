"""`helm install` into the test control plane, like a user: the chart's operator runs (through the local node agent,
as its own ServiceAccount under the chart's RBAC), reconciles the two-worker example, and a real Prometheus scrapes
it and the job's rank 0; every dashboard panel query and every alert expression then returns data."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import CHART, NAMESPACE, ROOT
from tests.support.controlplane import ControlPlane, free_port
from tests.support.nodeagent import NodeAgent
from tests.support.prometheus import Discovery, Prometheus
from tests.support.wait import wait_for

ALERTS = CHART / "files" / "alerts.yaml"
RELEASE = "kt"
JOB = "watched-lora"
SWEEP = "watched-sweep"


@dataclass
class Release:
    cluster: ControlPlane
    node: NodeAgent
    pod: str
    notes: str

    def operator_log(self) -> str:
        return self.node.logs(NAMESPACE, self.pod)[-6000:]


@pytest.fixture(scope="module")
def release(helm: Path, cluster: ControlPlane, node: NodeAgent, volumes: dict[str, Path]) -> Iterator[Release]:
    """The chart installed with its defaults, but for free ports (a second test run on the machine may be running)
    and a short status interval for the test."""
    command = [
        str(helm),
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "--take-ownership",  # the session's CRDs were applied before, with kubectl
        "--kubeconfig",
        str(cluster.kubeconfig),
        "--wait",
        "--timeout",
        "180s",
        "--set",
        f"operator.metricsPort={free_port()}",
        "--set",
        f"operator.healthPort={free_port()}",
        "--set",
        "operator.statusIntervalSeconds=2",
        "--set",
        f"trainer.masterPort={free_port()}",  # torch's TCPStore listens on every address: one port per test run
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    pods = json.loads(cluster.kubectl("get", "pods", "-n", NAMESPACE, "-o", "json").stdout)["items"]
    names = [p["metadata"]["name"] for p in pods]
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n" + "\n".join(
        node.logs(NAMESPACE, n)[-3000:] for n in names
    )
    assert len(names) == 1, names
    yield Release(cluster, node, names[0], result.stdout)
    subprocess.run(
        [
            str(helm),
            "uninstall",
            RELEASE,
            "--namespace",
            NAMESPACE,
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--wait",
            "--timeout",
            "120s",
        ],
        capture_output=True,
        text=True,
    )


@pytest.fixture(scope="module")
def prometheus(cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    workdir = tmp_path_factory.mktemp("prometheus")
    discovery = Discovery(cluster, workdir, NAMESPACE).start()
    server = Prometheus(workdir, discovery.scrape_configs(), rule_files=[ALERTS]).start()
    yield server
    server.stop()
    discovery.stop()


def test_the_installed_operator_runs_as_its_service_account(release: Release) -> None:
    pod = json.loads(release.cluster.kubectl("get", "pod", "-n", NAMESPACE, release.pod, "-o", "json").stdout)
    assert pod["spec"]["serviceAccountName"] == f"{RELEASE}-kubetune"
    assert pod["status"]["phase"] == "Running"
    assert any(
        m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount"
        for m in pod["spec"]["containers"][0]["volumeMounts"]
    )
    # kopf creates its peering object once it starts; the pod can be Running a moment before that
    wait_for(
        "the operator's ClusterKopfPeering",
        lambda: (
            release.cluster.kubectl("get", "clusterkopfpeering", "kubetune", "-o", "json", check=False).returncode == 0
        ),
        60,
        release.operator_log,
    )
    assert "kubectl get ftj -w" in release.notes and "kubetune / Overview" in release.notes


@pytest.mark.parametrize(
    ("verb", "resource", "allowed"),
    [
        ("watch", "finetunejobs.kubetune.dev", True),
        ("patch", "finetunejobs.kubetune.dev/status", True),
        ("create", "jobs.batch", True),
        ("create", "configmaps", True),
        ("create", "services", True),
        ("list", "pods", True),
        ("create", "events", True),
        ("list", "persistentvolumeclaims", True),
        ("patch", "clusterkopfpeerings.kopf.dev", True),
        ("get", "secrets", False),
        ("list", "secrets", False),
        ("watch", "secrets", False),
        ("create", "pods", False),
        ("create", "pods/exec", False),
        ("get", "pods/log", False),
        ("delete", "jobs.batch", False),
        ("update", "customresourcedefinitions", False),
        ("create", "clusterrolebindings", False),
        ("update", "finetunejobs.kubetune.dev", False),
        ("create", "finetunejobs.kubetune.dev", True),  # a sweep's trials
        ("watch", "finetunesweeps.kubetune.dev", True),
        ("patch", "finetunesweeps.kubetune.dev/status", True),
        ("create", "finetunesweeps.kubetune.dev", False),
        ("create", "deployments.apps", True),  # spec.deploy
        ("delete", "deployments.apps", False),
        ("update", "deployments.apps", False),
        ("delete", "pods", False),
        ("create", "serviceaccounts/token", False),
        ("create", "persistentvolumeclaims", False),
    ],
)
def test_operator_rbac_is_least_privilege(release: Release, verb: str, resource: str, allowed: bool) -> None:
    who = f"system:serviceaccount:{NAMESPACE}:{RELEASE}-kubetune"
    kind, _, subresource = resource.partition("/")  # kubectl reads "pods/log" as the pod named "log"
    extra = ["--subresource", subresource] if subresource else []
    result = release.cluster.kubectl("auth", "can-i", verb, kind, *extra, "--all-namespaces", "--as", who, check=False)
    assert result.stdout.strip() == ("yes" if allowed else "no"), (verb, resource, result.stdout, result.stderr)


def _example() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "examples" / "two-workers-cpu.yaml").read_text())
    doc["metadata"]["name"] = JOB
    doc["spec"]["output"]["pvc"]["path"] = JOB
    doc["spec"]["training"]["epochs"] = 8  # ~10 s of steps, so Prometheus scrapes rank 0 while it trains
    claim = doc["spec"]["data"]["datasets"][0]["pvc"]["claimName"]  # general data: the retention panel has data
    doc["spec"]["data"]["datasets"].append(
        {"name": "general", "usage": "General", "pvc": {"claimName": claim, "path": "examples/data/general.jsonl"}}
    )
    doc["spec"]["forgettingGuard"] = {"replayRatio": 0.1}
    return dict(doc)


def _sweep() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "examples" / "sweeps" / "learning-rate.yaml").read_text())
    doc["metadata"]["name"] = SWEEP
    doc["spec"].update(maxTrials=1, maxParallel=1)
    doc["spec"]["template"]["training"]["maxSteps"] = 4
    doc["spec"]["template"]["validation"]["everySteps"] = 2  # the objective is the best validation loss
    return dict(doc)


def _phase(cluster: ControlPlane, name: str, kind: str = "finetunejob") -> str:
    result = cluster.kubectl("get", kind, name, "-o", "jsonpath={.status.phase}", check=False)
    return result.stdout.strip()


def _selectors(expr: str) -> list[str]:
    """The kubetune_* vector selectors (with their label matchers) in a PromQL expression."""
    return [m.group(0) for m in re.finditer(r"kubetune_[a-z_]+(\{[^}]*\})?", expr)]


@dataclass
class Watched:
    start: float
    end: float


@pytest.fixture(scope="module")
def watched(release: Release, prometheus: Prometheus, node: NodeAgent) -> Iterator[Watched]:
    """The two-worker example applied while Prometheus scrapes; done when it Succeeded and was scraped once more."""
    cluster = release.cluster
    start = time.time()
    cluster.kubectl("apply", "-f", "-", input=json.dumps(_example()))
    cluster.kubectl("apply", "-f", "-", input=json.dumps(_sweep()))  # one trial: the sweep panels have data

    def diagnostics() -> str:
        worker = node.logs("default", _pod(cluster, 0))[-3000:]
        return f"operator:\n{release.operator_log()}\nworker 0:\n{worker}"

    wait_for("the example to succeed", lambda: _phase(cluster, JOB) in ("Succeeded", "Failed"), 420, diagnostics)
    assert _phase(cluster, JOB) == "Succeeded", diagnostics()
    done = ("Succeeded", "Failed")
    wait_for("the sweep to finish", lambda: _phase(cluster, SWEEP, "finetunesweep") in done, 300, diagnostics)
    assert _phase(cluster, SWEEP, "finetunesweep") == "Succeeded", diagnostics()
    time.sleep(3)  # one more scrape of the final status
    yield Watched(start, time.time())
    cluster.kubectl("delete", "finetunejob", JOB, "--wait=true", check=False)
    cluster.kubectl("delete", "finetunesweep", SWEEP, "--wait=true", check=False)


def _pod(cluster: ControlPlane, index: int) -> str:
    result = cluster.kubectl(
        "get",
        "pods",
        "-l",
        f"kubetune.dev/finetunejob={JOB}",
        "-o",
        f'jsonpath={{.items[?(@.metadata.annotations.batch\\.kubernetes\\.io/job-completion-index=="{index}")].metadata.name}}',
        check=False,
    )
    return result.stdout.split()[0] if result.stdout.split() else ""


def test_the_installed_operator_runs_the_example_to_success(release: Release, watched: Watched) -> None:
    status = json.loads(release.cluster.kubectl("get", "finetunejob", JOB, "-o", "json").stdout)["status"]
    assert status["progress"]["percentage"] == 100
    assert status["evaluation"]["test"] and status["outputLocation"]
    # Reconciled by the chart's operator, not by anything else: its whole log (the sweep's timer fills the tail).
    assert f"[default/{JOB}]" in release.node.logs(NAMESPACE, release.pod)


def test_prometheus_discovers_the_operator_and_rank_0(prometheus: Prometheus, watched: Watched) -> None:
    jobs = {t["labels"]["job"]: t for t in prometheus.targets()}
    discovered = (prometheus.workdir / "operator.json").read_text()
    assert jobs.get("kubetune-operator", {}).get("health") == "up", (jobs, discovered)
    trainer = prometheus.query_range(
        f'up{{job="kubetune-trainers", finetunejob="{JOB}"}} == 1', watched.start, watched.end
    )
    assert trainer, "rank 0 was never scraped"


def _substitute(expr: str) -> str:
    return expr.replace("$namespace", "default").replace("$finetunejob", JOB).replace("$__rate_interval", "10s")


@pytest.mark.parametrize("dashboard", ["overview.json", "finetunejob.json"])
def test_every_dashboard_panel_query_returns_data(prometheus: Prometheus, watched: Watched, dashboard: str) -> None:
    board = json.loads((CHART / "files" / "dashboards" / dashboard).read_text())
    empty = []
    for panel in board["panels"]:
        for target in panel["targets"]:
            expr = _substitute(target["expr"])
            if not prometheus.query_range(expr, watched.start, watched.end):
                empty.append(f"{panel['title']}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    for variable in board["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable.get("definition", ""))
        if match:
            values = prometheus.api(f"label/{match.group(2)}/values", **{"match[]": _substitute(match.group(1))})
            assert ("default" if match.group(2) == "namespace" else JOB) in values, (variable["name"], values)


def test_every_alert_expression_parses_evaluates_and_has_data(prometheus: Prometheus, watched: Watched) -> None:
    rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
    ours = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    assert {r["name"] for r in rules} == {r["alert"] for r in ours}
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    for rule in ours:
        prometheus.query(rule["expr"])  # raises on a parse error
        for selector in _selectors(rule["expr"]):
            assert prometheus.query_range(selector, watched.start, watched.end), (rule["alert"], selector)


def test_a_failed_job_fires_the_failed_alert(release: Release, prometheus: Prometheus) -> None:
    bad = _example()
    bad["metadata"]["name"] = "broken-lora"
    del bad["spec"]["output"]  # two workers and no output: rejected as an invalid spec (Failed)
    release.cluster.kubectl("apply", "-f", "-", input=json.dumps(bad))
    try:
        wait_for(
            "the Failed alert to fire",
            lambda: prometheus.query(
                'ALERTS{alertname="KubetuneFineTuneJobFailed", finetunejob="broken-lora", alertstate="firing"}'
            ),
            60,
            release.operator_log,
        )
    finally:
        release.cluster.kubectl("delete", "finetunejob", "broken-lora", check=False)
