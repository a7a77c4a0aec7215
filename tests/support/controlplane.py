"""A real Kubernetes control plane on loopback for tests: etcd, kube-apiserver, kube-controller-manager
and kube-scheduler, started from the binaries ``hack/build-control-plane.sh`` builds and caches.

Each process gets a free port and a temporary directory; the API server uses static-token
authentication and RBAC; the controller manager uses per-controller service-account credentials (without
them its Job controller cannot create pods under RBAC). ``ControlPlane.stop()`` tears everything down.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.paths import ROOT


def bin_dir() -> Path:
    """Where the control-plane binaries are: $KUBETUNE_BIN_DIR, else built (or found cached) now."""
    env = os.environ.get("KUBETUNE_BIN_DIR")
    if env:
        return Path(env)
    out = subprocess.run(
        ["bash", str(ROOT / "hack" / "build-control-plane.sh")], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ControlPlane:
    """A running control plane; use :func:`start`."""

    bin: Path
    workdir: Path
    server: str
    token: str
    kubeconfig: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    commands: dict[str, list[str]] = field(default_factory=dict)
    keep: bool = False
    """Leave ``workdir`` (etcd's data, certificates, keys, token) on stop, for the next start (``make up``)."""

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this control plane."""
        result = subprocess.run(
            [str(self.bin / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result

    def get_json(self, path: str) -> dict[str, object]:
        """GET a raw API path as JSON."""
        request = urllib.request.Request(self.server + path, headers={"Authorization": f"Bearer {self.token}"})
        context = ssl._create_unverified_context()
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def log(self, name: str) -> str:
        """The tail of one component's log, for failure messages."""
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def restart(self, names: tuple[str, ...] = ("etcd", "kube-apiserver")) -> float:
        """Stop ``names`` (SIGTERM, SIGKILL after 15 s; the API server before etcd), start them again on the same
        ports and data, and return when the API server is ready again; returns the seconds it was away."""
        stopped = time.monotonic()
        for name in sorted(names, key=lambda n: n != "kube-apiserver"):
            self.processes[name].terminate()
            try:
                self.processes[name].wait(timeout=15)
            except subprocess.TimeoutExpired:  # kube-apiserver drains its watches for longer: a crash, then
                self.processes[name].kill()
                self.processes[name].wait(timeout=30)
        for name in ("etcd", "kube-apiserver"):  # start order
            if name in names:
                _spawn(self, name, self.commands[name])
        _wait(self, "kube-apiserver", _healthz(self), 120)
        return time.monotonic() - stopped

    def stop(self) -> None:
        for proc in reversed(list(self.processes.values())):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _spawn(cp: ControlPlane, name: str, args: list[str]) -> None:
    log = open(cp.workdir / f"{name}.log", "ab")  # noqa: SIM115 - closed by the process's exit
    cp.processes[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=cp.workdir)
    cp.commands[name] = args


def _wait(cp: ControlPlane, name: str, ready: Callable[[], bool], deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if cp.processes[name].poll() is not None:
            raise RuntimeError(f"{name} exited early:\n{cp.log(name)}")
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{name} not ready after {deadline_s}s:\n{cp.log(name)}")


def _write_kubeconfig(path: Path, server: str, token: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin", "namespace": "default"}}],
        "current-context": "test",
    }
    path.write_text(json.dumps(config))


AUDIT_WRITES = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    verbs: [create, update, patch, delete, deletecollection]
  - level: None
"""


@dataclass(frozen=True)
class Ports:
    """Fixed ports, for a control plane that a kubeconfig must find again after a restart (``make up``)."""

    api: int
    etcd: int
    peer: int
    controller_manager: int
    scheduler: int

    @classmethod
    def free(cls) -> Ports:
        return cls(free_port(), free_port(), free_port(), free_port(), free_port())


def start(
    workdir: Path | None = None, audit_writes: bool = False, ports: Ports | None = None, keep: bool = False
) -> ControlPlane:
    """Start etcd, kube-apiserver, kube-controller-manager and kube-scheduler; return when all are ready.

    ``keep``: reuse what an earlier start left in ``workdir`` (etcd's data, the token, the service-account key, the
    serving certificates) and leave it there on stop."""
    binaries = bin_dir()
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="kubetune-cp-", dir=shm))
    workdir.mkdir(parents=True, exist_ok=True)
    ports = ports or Ports.free()
    tokens = workdir / "tokens.csv"
    token = tokens.read_text().split(",")[0] if keep and tokens.exists() else secrets.token_hex(16)
    api_port, etcd_port, peer_port = ports.api, ports.etcd, ports.peer
    server = f"https://127.0.0.1:{api_port}"
    cp = ControlPlane(binaries, workdir, server, token, workdir / "kubeconfig", keep=keep)
    try:
        if audit_writes:
            (workdir / "audit-policy.yaml").write_text(AUDIT_WRITES)
        tokens.write_text(f'{token},admin,admin,"system:masters"\n')
        if not (keep and (workdir / "sa.key").exists()):
            key = ["openssl", "genrsa", "-out", str(workdir / "sa.key"), "2048"]
            subprocess.run(key, check=True, capture_output=True)
        subprocess.run(
            ["openssl", "rsa", "-in", str(workdir / "sa.key"), "-pubout", "-out", str(workdir / "sa.pub")],
            check=True,
            capture_output=True,
        )
        _write_kubeconfig(cp.kubeconfig, server, token)
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        _spawn(
            cp,
            "etcd",
            [
                str(binaries / "etcd"),
                "--data-dir",
                str(workdir / "etcd"),
                "--listen-client-urls",
                etcd_url,
                "--advertise-client-urls",
                etcd_url,
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-cluster",
                f"default=http://127.0.0.1:{peer_port}",
                "--log-level",
                "warn",
            ],
        )
        _wait(cp, "etcd", lambda: urllib.request.urlopen(etcd_url + "/health", timeout=2).status == 200, 30)
        _spawn(
            cp,
            "kube-apiserver",
            [
                str(binaries / "kube-apiserver"),
                "--etcd-servers",
                etcd_url,
                "--bind-address",
                "127.0.0.1",
                "--advertise-address",
                "127.0.0.1",
                "--secure-port",
                str(api_port),
                "--cert-dir",
                str(workdir / "certs"),
                "--token-auth-file",
                str(workdir / "tokens.csv"),
                "--authorization-mode",
                "RBAC",
                "--service-account-issuer",
                "https://kubernetes.default.svc.cluster.local",
                "--service-account-key-file",
                str(workdir / "sa.pub"),
                "--service-account-signing-key-file",
                str(workdir / "sa.key"),
                "--service-cluster-ip-range",
                "10.0.0.0/24",
                "--allow-privileged=true",
                *(
                    [
                        "--audit-policy-file",
                        str(workdir / "audit-policy.yaml"),
                        "--audit-log-path",
                        str(workdir / "audit.log"),
                        "--audit-log-format",
                        "json",
                        "--audit-log-mode",
                        "blocking",
                    ]
                    if audit_writes
                    else []
                ),
                "--v",
                "1",
            ],
        )

        _wait(cp, "kube-apiserver", _healthz(cp), 90)
        common = [
            "--kubeconfig",
            str(cp.kubeconfig),
            "--leader-elect=false",
            "--bind-address",
            "127.0.0.1",
            "--authentication-kubeconfig",
            str(cp.kubeconfig),
            "--authorization-kubeconfig",
            str(cp.kubeconfig),
        ]
        _spawn(
            cp,
            "kube-controller-manager",
            [
                str(binaries / "kube-controller-manager"),
                *common,
                "--secure-port",
                str(ports.controller_manager),
                "--use-service-account-credentials=true",
                "--service-account-private-key-file",
                str(workdir / "sa.key"),
                "--root-ca-file",
                str(workdir / "certs" / "apiserver.crt"),  # published as kube-root-ca.crt
                "--cluster-signing-duration",
                "24h",
                "--controllers",
                "*,-nodeipam,-nodelifecycle,-service-lb-controller,-cloud-node-lifecycle",
            ],
        )
        _spawn(cp, "kube-scheduler", [str(binaries / "kube-scheduler"), *common, "--secure-port", str(ports.scheduler)])
        _wait(cp, "kube-controller-manager", _default_service_account(cp), 60)
    except BaseException:
        cp.stop()
        raise
    return cp


def _healthz(cp: ControlPlane) -> Callable[[], bool]:
    def ready() -> bool:
        request = urllib.request.Request(cp.server + "/readyz", headers={"Authorization": f"Bearer {cp.token}"})
        with urllib.request.urlopen(request, context=ssl._create_unverified_context(), timeout=2) as response:
            return bool(response.status == 200)

    return ready


def _default_service_account(cp: ControlPlane) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            cp.get_json("/api/v1/namespaces/default/serviceaccounts/default")
        except urllib.error.HTTPError:
            return False
        return True

    return ready
