"""The Helm chart, statically: helm lint and template with the real helm CLI, the strict values schema, what it
renders, and the API server's own validation of the rendered manifests (server-side dry run)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.chart.conftest import CHART, NAMESPACE, ROOT, by_kind, render
from tests.support.controlplane import ControlPlane


def test_chart_crds_are_the_repository_crds() -> None:
    for source in sorted((ROOT / "crds").glob("*.yaml")):
        copy = CHART / "files" / "crds" / source.name
        assert copy.is_file() and copy.read_text() == source.read_text(), f"{copy} differs: run `make crds`"
    assert {p.name for p in (CHART / "files" / "crds").glob("*.yaml")} == {
        p.name for p in (ROOT / "crds").glob("*.yaml")
    }


def test_every_value_has_a_description_and_default_from_values_yaml() -> None:
    check = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "values_schema.py"), "--check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr  # stale: `make values-schema`

    def undocumented(node: dict[str, Any], path: str = "") -> list[str]:
        missing = []
        for key, prop in (node.get("properties") or {}).items():
            if "description" not in prop or "default" not in prop:
                missing.append(path + key)
            missing += undocumented(prop, f"{path}{key}.")
        return missing

    assert not undocumented(json.loads((CHART / "values.schema.json").read_text()))


def test_helm_lint_strict(helm: Path) -> None:
    result = subprocess.run([str(helm), "lint", "--strict", str(CHART)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_values_schema_rejects_unknown_and_wrong_values(helm: Path) -> None:
    for bad in (
        ["--set", "operator.replicaz=2"],
        ["--set", "operator.metricsPort=0"],
        ["--set", "crds.enabled=yes"],
        ["--set", "grafana.dashboards.namespace=Not_A_Namespace"],
    ):
        result = subprocess.run([str(helm), "template", "kt", str(CHART), *bad], capture_output=True, text=True)
        assert result.returncode != 0 and "values don't meet the specifications" in result.stderr, bad


def test_every_value_is_commented() -> None:
    """Each value of values.yaml has a comment right above it, or above a parent block (e.g. resources)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    parents: list[tuple[int, bool]] = []  # (indent, commented) of the enclosing keys
    for i, line in enumerate(lines):
        key = re.match(r"^( *)([A-Za-z_][\w-]*):(.*)$", line)
        if not key:
            continue
        indent, value = len(key.group(1)), key.group(3).strip()
        while parents and parents[-1][0] >= indent:
            parents.pop()
        commented = i > 0 and lines[i - 1].strip().startswith("#")
        if value:  # a leaf
            assert commented or any(c for _, c in parents), f"values.yaml:{i + 1}: {line.strip()} has no comment"
        else:
            parents.append((indent, commented))


def test_rendered_objects(helm: Path) -> None:
    docs = render(helm)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        ["CustomResourceDefinition"] * 4
        + ["ConfigMap"] * 2
        + ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service"]
    )
    crds = {d["metadata"]["name"]: d for d in by_kind(docs, "CustomResourceDefinition")}
    assert crds["finetunejobs.kubetune.dev"]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    pod = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["livenessProbe"] and container["readinessProbe"] and container["resources"]["requests"]
    assert "CustomResourceDefinition" not in {d["kind"] for d in render(helm, "--set", "crds.enabled=false")}
    monitors = render(
        helm, *[f"--set=metrics.{k}.enabled=true" for k in ("serviceMonitor", "podMonitor", "prometheusRule")]
    )
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= {d["kind"] for d in monitors}


def test_dashboards_and_alerts_ship_as_the_repository_files(helm: Path) -> None:
    docs = render(
        helm, "--set", "metrics.prometheusRule.enabled=true", "--set", "metrics.prometheusRule.labels.release=kps"
    )
    dashboards = {d["metadata"]["name"]: d for d in by_kind(docs, "ConfigMap")}
    assert set(dashboards) == {"kt-kubetune-dashboard-overview", "kt-kubetune-dashboard-finetunejob"}
    for name, cm in dashboards.items():
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((key, text),) = cm["data"].items()
        assert json.loads(text) == json.loads((CHART / "files" / "dashboards" / key).read_text()), name
    rule = by_kind(docs, "PrometheusRule")[0]
    assert rule["metadata"]["labels"]["release"] == "kps"
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    elsewhere = render(helm, "--set", "grafana.dashboards.namespace=monitoring")
    assert {d["metadata"]["namespace"] for d in by_kind(elsewhere, "ConfigMap")} == {"monitoring"}


def test_rendered_manifests_pass_server_side_validation(helm: Path, cluster: ControlPlane) -> None:
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    docs = [d for d in render(helm) if d["kind"] != "CustomResourceDefinition"]
    result = cluster.kubectl(
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-n",
        NAMESPACE,
        "-f",
        "-",
        input="\n---\n".join(json.dumps(d) for d in docs),
        check=False,
    )
    assert result.returncode == 0, result.stderr


PROMETHEUS_OPERATOR = "github.com/prometheus-operator/prometheus-operator@v0.85.0"


def monitoring_crds() -> list[Path]:
    """The Prometheus Operator's CRDs for ServiceMonitor, PodMonitor and PrometheusRule, from its Go module."""
    out = subprocess.run(
        ["go", "mod", "download", "-json", PROMETHEUS_OPERATOR],
        capture_output=True,
        text=True,
        env={**os.environ, "GOFLAGS": "-mod=mod"},
        cwd="/",
    )
    found = json.loads(out.stdout or "{}")
    assert "Dir" in found, f"cannot fetch {PROMETHEUS_OPERATOR}: {out.stdout}{out.stderr}"
    crds = Path(found["Dir"]) / "example" / "prometheus-operator-crd"
    return [
        crds / f"monitoring.coreos.com_{kind}.yaml" for kind in ("servicemonitors", "podmonitors", "prometheusrules")
    ]


def test_monitors_and_rules_pass_the_prometheus_operators_schemas(helm: Path, cluster: ControlPlane) -> None:
    for crd in monitoring_crds():
        cluster.kubectl("apply", "--server-side", "-f", str(crd))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/prometheusrules.monitoring.coreos.com",
        "crd/servicemonitors.monitoring.coreos.com",
        "crd/podmonitors.monitoring.coreos.com",
    )
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    enabled = [f"--set=metrics.{k}.enabled=true" for k in ("serviceMonitor", "podMonitor", "prometheusRule")]
    docs = [d for d in render(helm, *enabled) if d["apiVersion"].startswith("monitoring.coreos.com/")]
    assert len(docs) == 3
    result = cluster.kubectl(
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-n",
        NAMESPACE,
        "-f",
        "-",
        input="\n---\n".join(json.dumps(d) for d in docs),
        check=False,
    )
    assert result.returncode == 0, result.stderr
