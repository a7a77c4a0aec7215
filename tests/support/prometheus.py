"""A real Prometheus server (Debian's ``prometheus``) for end-to-end tests, a small HTTP API client, and the
service discovery the chart's ServiceMonitor and PodMonitor describe.

Debian builds Prometheus without ``kubernetes_sd_configs``, so ``Discovery`` does that part: every second it asks
the test control plane for what the monitors select (the endpoints of the operator's metrics Service; running
pods of a FineTuneJob with completion index 0 and their ``metrics`` port) and writes them as ``file_sd`` target
files, with the labels the Prometheus Operator would set (``namespace``, ``pod``; ``finetunejob`` by the
PodMonitor's relabeling).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.controlplane import ControlPlane, free_port
from tests.support.wait import wait_for

INDEX = "batch.kubernetes.io/job-completion-index"


def binary(name: str) -> str:
    """``prometheus`` or ``promtool``: $KUBETUNE_PROMETHEUS_BIN_DIR/<name>, else the one on PATH."""
    configured = os.environ.get("KUBETUNE_PROMETHEUS_BIN_DIR")
    found = str(Path(configured) / name) if configured else shutil.which(name)
    if not found or not Path(found).exists():
        raise RuntimeError(f"{name} not found: `make test` installs Debian's prometheus package")
    return found


class Discovery:
    """Writes ``operator.json`` and ``trainers.json`` (file_sd) under ``workdir`` every second until stopped."""

    def __init__(self, cluster: ControlPlane, workdir: Path, operator_namespace: str) -> None:
        self.cluster, self.workdir, self.namespace = cluster, workdir, operator_namespace
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="discovery", daemon=True)

    def scrape_configs(self) -> list[dict[str, Any]]:
        def files(name: str) -> list[dict[str, Any]]:
            return [{"files": [str(self.workdir / name)], "refresh_interval": "1s"}]

        return [
            # honor_labels as the ServiceMonitor's honorLabels: per-job series keep the job's namespace
            {"job_name": "kubetune-operator", "honor_labels": True, "file_sd_configs": files("operator.json")},
            {"job_name": "kubetune-trainers", "file_sd_configs": files("trainers.json")},
        ]

    def start(self) -> Discovery:
        self.write()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(1):
            try:
                self.write()
            except (OSError, ValueError):
                continue

    def write(self) -> None:
        for name, groups in (("operator.json", self.operator()), ("trainers.json", self.trainers())):
            text = json.dumps(groups, sort_keys=True)
            path = self.workdir / name
            if not path.exists() or path.read_text() != text:
                path.with_suffix(".tmp").write_text(text)
                path.with_suffix(".tmp").replace(path)

    def operator(self) -> list[dict[str, Any]]:
        """The ready pods behind the operator's metrics Service, on the port its ``metrics`` port targets.

        (What its Endpoints would list: the API server refuses the agent's loopback pod IPs in EndpointSlices, so
        the selector is resolved here.)"""
        selector = urllib.parse.quote("app.kubernetes.io/name=kubetune")
        services = self.cluster.get_json(f"/api/v1/namespaces/{self.namespace}/services?labelSelector={selector}")
        groups = []
        for service in services["items"]:  # type: ignore[attr-defined]
            port = next((p for p in service["spec"].get("ports") or [] if p.get("name") == "metrics"), None)
            if port is None or not service["spec"].get("selector"):
                continue
            match = urllib.parse.quote(",".join(f"{k}={v}" for k, v in service["spec"]["selector"].items()))
            pods = self.cluster.get_json(f"/api/v1/namespaces/{self.namespace}/pods?labelSelector={match}")
            for pod in pods["items"]:  # type: ignore[attr-defined]
                status = pod.get("status", {})
                ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
                target = port.get("targetPort", port["port"])
                if isinstance(target, str):  # a named container port
                    named = [
                        p for c in pod["spec"]["containers"] for p in c.get("ports") or [] if p.get("name") == target
                    ]
                    target = named[0]["containerPort"] if named else None
                if ready and status.get("podIP") and target:
                    groups.append(
                        {
                            "targets": [f"{status['podIP']}:{target}"],
                            "labels": {
                                "namespace": self.namespace,
                                "service": service["metadata"]["name"],
                                "pod": pod["metadata"]["name"],
                            },
                        }
                    )
        return groups

    def trainers(self) -> list[dict[str, Any]]:
        selector = urllib.parse.quote("app.kubernetes.io/managed-by=kubetune,app.kubernetes.io/component=worker")
        pods = self.cluster.get_json(f"/api/v1/pods?labelSelector={selector}")
        groups = []
        for pod in pods["items"]:  # type: ignore[attr-defined]
            meta, status = pod["metadata"], pod.get("status", {})
            if (meta.get("annotations") or {}).get(INDEX) != "0" or status.get("phase") != "Running":
                continue
            ports = [p for c in pod["spec"]["containers"] for p in c.get("ports") or [] if p.get("name") == "metrics"]
            if ports and status.get("podIP"):
                groups.append(
                    {
                        "targets": [f"{status['podIP']}:{ports[0]['containerPort']}"],
                        "labels": {
                            "namespace": meta["namespace"],
                            "pod": meta["name"],
                            "finetunejob": meta["labels"].get("kubetune.dev/finetunejob", ""),
                        },
                    }
                )
        return groups


@dataclass
class Prometheus:
    workdir: Path
    scrape: list[dict[str, Any]]
    rule_files: list[Path] = field(default_factory=list)
    interval: str = "1s"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Prometheus:
        config = {
            "global": {
                "scrape_interval": self.interval,
                "evaluation_interval": self.interval,
                "scrape_timeout": self.interval,
            },
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": self.scrape,
        }
        (self.workdir / "prometheus.yml").write_text(json.dumps(config, indent=2))
        with open(self.workdir / "prometheus.log", "wb") as log:
            self.process = subprocess.Popen(
                [
                    binary("prometheus"),
                    f"--config.file={self.workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-lifecycle",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for("prometheus to be ready", self._ready, 60, self.log)
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)

    def log(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def api(self, path: str, **params: Any) -> Any:
        """GET /api/v1/<path>; returns ``data``, raising with Prometheus's error text (e.g. a parse error)."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:
            body = json.loads(error.read() or b"{}")
        if body.get("status") != "success":
            raise ValueError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        return list(self.api("query", **params)["result"])

    def query_range(self, expr: str, start: float, end: float, step: str = "1s") -> list[dict[str, Any]]:
        return list(self.api("query_range", query=expr, start=start, end=end, step=step)["result"])

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets")["activeTargets"])
