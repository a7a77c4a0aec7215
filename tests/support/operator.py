"""The operator as a test starts it: ``kopf run`` of ``kubetune.operator.handlers`` in a subprocess, against
the test control plane, with its own metrics port. ``restart()`` kills it hard, as a node failure would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.controlplane import ControlPlane, free_port
from tests.support.paths import ROOT


@dataclass
class Operator:
    cluster: ControlPlane
    logdir: Path
    peering: str = "kubetune"
    priority: int = 100
    metrics_port: int = field(default_factory=free_port)
    master_port: int = field(default_factory=free_port)
    """The workers' rendezvous port: torch's TCPStore listens on every address, so two test runs on one machine
    (each pod with its own loopback address) would still meet on the default 29500."""
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment (e.g. a longer KUBETUNE_STATUS_INTERVAL_SECONDS)."""

    @property
    def log_path(self) -> Path:
        return self.logdir / f"operator-{self.metrics_port}-{self.starts}.log"

    def start(self) -> Operator:
        self.starts += 1
        env = {
            **os.environ,
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "PYTHONPATH": f"{ROOT / 'api'}:{ROOT / 'operator'}:{ROOT / 'trainer'}",
            "KUBETUNE_METRICS_PORT": str(self.metrics_port),
            "KUBETUNE_MASTER_PORT": str(self.master_port),
            "KUBETUNE_STATUS_INTERVAL_SECONDS": "2",
            "KUBETUNE_PEERING": self.peering,
            "KUBETUNE_PEERING_PRIORITY": str(self.priority),
            "KUBETUNE_TRAINER_IMAGE": "kubetune-trainer:test",
            "PYTHONWARNINGS": "ignore:Unverified HTTPS request",  # the test kubeconfig skips TLS verification
            **self.env,
        }
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kopf",
                    "run",
                    "--all-namespaces",
                    "--peering",
                    self.peering,
                    "-m",
                    "kubetune.operator.handlers",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
            )
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def restart(self) -> None:
        self.stop(signal.SIGKILL)
        self.start()

    def metrics(self) -> str:
        """The operator's /metrics text ("" while it does not answer)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
                return str(response.read().decode())
        except OSError:
            return ""

    def reconciles(self) -> float:
        """Status handler calls so far (the reconcile histogram's count)."""
        for line in self.metrics().splitlines():
            if line.startswith('kubetune_reconcile_duration_seconds_count{handler="status"}'):
                return float(line.split()[-1])
        return 0.0

    def log_mark(self) -> dict[Path, int]:
        """Where each of this operator's log files ends now (``log_since`` reads what comes after)."""
        return {p: p.stat().st_size for p in self.logdir.glob(f"operator-{self.metrics_port}-*")}

    def log_since(self, mark: dict[Path, int]) -> str:
        """Everything this operator logged after ``mark``, in every process it has run since."""
        parts = []
        for path in sorted(self.logdir.glob(f"operator-{self.metrics_port}-*")):
            with open(path, "rb") as log:
                log.seek(mark.get(path, 0))
                parts.append(log.read().decode(errors="replace"))
        return "\n".join(parts)

    def log(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-6000:] for p in sorted(self.logdir.glob(f"operator-{self.metrics_port}-*"))
        )
