"""A local kubetune for a person to try (``make up`` / ``make down``), on loopback, with no container engine needed.

``up`` starts, in one background process (``serve``): the real control plane (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler; tests/support/controlplane.py), the local node agent (pods as local
processes, tests/support/nodeagent.py; ``KUBETUNE_RUNTIME=podman`` runs them in the images of ``make images``),
hostPath volumes for the examples' claims (kubetune-data holding examples/data, kubetune-outputs, kubetune-models with
the tiny Llama and SmolLM2-135M-Instruct), the operator installed with the Helm chart, and Prometheus scraping the
operator and the jobs' rank 0 with the chart's alert rules. Then it prints ``export KUBECONFIG=...`` and what to try.

State lives under ``~/.cache/kubetune/cluster`` (``KUBETUNE_CLUSTER_DIR``) and survives ``make down && make up``:
etcd's data, the token, keys and certificates are kept, the ports are fixed, so the kubeconfig stays valid and jobs
are still there (pods that were running when it went down are deleted on the way up; their Jobs recreate them and
training resumes from the last checkpoint). ``up`` refuses, naming the cause, when a cluster is already up or a port
is taken.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import containers, controlplane  # noqa: E402
from tests.support.nodeagent import NODE, NodeAgent  # noqa: E402
from tests.support.prometheus import Discovery, Prometheus  # noqa: E402

STATE = Path(os.environ.get("KUBETUNE_CLUSTER_DIR", Path.home() / ".cache" / "kubetune" / "cluster"))
BASE_PORT = int(os.environ.get("KUBETUNE_CLUSTER_PORT", "16443"))  # below Linux's ephemeral range (32768-60999)
PORTS = controlplane.Ports(
    api=BASE_PORT, etcd=BASE_PORT + 1, peer=BASE_PORT + 2, controller_manager=BASE_PORT + 3, scheduler=BASE_PORT + 4
)
PROMETHEUS_PORT, OPERATOR_METRICS_PORT, OPERATOR_HEALTH_PORT = BASE_PORT + 5, BASE_PORT + 6, BASE_PORT + 7
NAMESPACE, RELEASE = "kubetune-system", "kubetune"
CLAIMS = ("kubetune-data", "kubetune-outputs", "kubetune-models")


def _taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _pid() -> int | None:
    """The serving process's pid, when one is alive."""
    try:
        pid = int((STATE / "pid").read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def up() -> int:
    pid = _pid()
    if pid is not None:
        print(f"kubetune is already up (pid {pid}, state in {STATE}); `make down` first", file=sys.stderr)
        return 1
    ports = [*vars(PORTS).values(), PROMETHEUS_PORT, OPERATOR_METRICS_PORT, OPERATOR_HEALTH_PORT]
    taken = [p for p in ports if _taken(p)]
    if taken:
        print(
            f"cannot start: port(s) {', '.join(map(str, taken))} on 127.0.0.1 are taken (set KUBETUNE_CLUSTER_PORT "
            f"to move the {len(ports)} ports starting at {BASE_PORT})",
            file=sys.stderr,
        )
        return 1
    STATE.mkdir(parents=True, exist_ok=True)
    (STATE / "ready").unlink(missing_ok=True)
    log = open(STATE / "serve.log", "ab")  # noqa: SIM115 - handed to the background process
    server = subprocess.Popen(
        [sys.executable, __file__, "serve"],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 600
    while not (STATE / "ready").exists():
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            print(f"kubetune did not come up; its log ({STATE / 'serve.log'}) ends:", file=sys.stderr)
            print((STATE / "serve.log").read_text(errors="replace")[-4000:], file=sys.stderr)
            return 1
        time.sleep(0.5)
    print((STATE / "ready").read_text(), end="")
    return 0


def down() -> int:
    pid = _pid()
    if pid is None:
        print("kubetune is not up", file=sys.stderr)
        return 0
    os.kill(pid, signal.SIGTERM)
    for _ in range(600):
        if _pid() is None:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
    (STATE / "ready").unlink(missing_ok=True)
    print(f"kubetune is down; its state stays in {STATE} (`make up` brings it back, `rm -rf {STATE}` forgets it)")
    return 0


def serve() -> int:
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints every thread's stack to serve.log
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    (STATE / "pid").write_text(str(os.getpid()))
    cp = controlplane.start(STATE / "control-plane", ports=PORTS, keep=True)
    parts: list[object] = []
    try:
        cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
        _forget_pods_of_the_last_run(cp)
        runtime = os.environ.get("KUBETUNE_RUNTIME", "process")
        node = NodeAgent(cp.server, cp.token, STATE / "node", runtime=runtime, images=_images(runtime)).start()
        parts.append(node)
        _volumes(cp)
        _install(cp)
        workdir = STATE / "prometheus"
        workdir.mkdir(exist_ok=True)
        discovery = Discovery(cp, workdir, NAMESPACE).start()
        parts.append(discovery)
        alerts = ROOT / "charts" / "kubetune" / "files" / "alerts.yaml"
        prometheus = Prometheus(
            workdir, discovery.scrape_configs(), rule_files=[alerts], interval="5s", port=PROMETHEUS_PORT
        ).start()
        parts.append(prometheus)
        (STATE / "env").write_text(f"export KUBECONFIG={cp.kubeconfig} PATH={cp.bin}:$PATH\n")
        (STATE / "ready").write_text(_next_steps(cp, prometheus.url))
        stop.wait()
    finally:
        for part in reversed(parts):
            part.stop()  # type: ignore[attr-defined]
        cp.stop()
        (STATE / "pid").unlink(missing_ok=True)
    return 0


def _forget_pods_of_the_last_run(cp: controlplane.ControlPlane) -> None:
    """Pods still marked as running on the node from before `make down` have no process any more: delete them (as
    a node's restart would end them); their Deployment or Job makes new ones."""
    pods = json.loads(cp.kubectl("get", "pods", "-A", "-o", "json").stdout)["items"]
    for pod in pods:
        owners = {o["kind"] for o in pod["metadata"].get("ownerReferences") or []}
        stale = pod["status"].get("phase") in ("Pending", "Running", None)
        if pod["spec"].get("nodeName") == NODE and (stale or "ReplicaSet" in owners):  # the operator's old pod too
            meta = pod["metadata"]
            cp.kubectl(
                "delete",
                "pod",
                "-n",
                meta["namespace"],
                meta["name"],
                "--grace-period=0",
                "--force",
                "--wait=false",
                check=False,
            )


def _images(runtime: str) -> dict[str, str]:
    if runtime != "podman":
        return {}
    return {"ghcr.io/kubetune/trainer:latest": containers.build_images().trainer}


def _volumes(cp: controlplane.ControlPlane) -> None:
    """hostPath PersistentVolumes pre-bound to the examples' claims in 'default' (once; kept across restarts)."""
    from kubetune.trainer.tiny import TINY_LLAMA, ensure_model

    root = STATE / "volumes"
    data, outputs, models = (root / c.removeprefix("kubetune-") for c in CLAIMS)
    shutil.copytree(ROOT / "examples" / "data", data / "examples" / "data", dirs_exist_ok=True)
    outputs.mkdir(parents=True, exist_ok=True)
    ensure_model(models / TINY_LLAMA, TINY_LLAMA)
    cache = Path(os.environ.get("KUBETUNE_MODEL_CACHE", Path.home() / ".cache" / "kubetune" / "models"))
    for entry in cache.iterdir() if cache.is_dir() else []:  # the real pretrained models of hack/model-cache.sh
        if entry.is_dir() and entry.name != "kubetune" and not (models / entry.name).exists():
            (models / entry.name).symlink_to(entry)
    for claim, path in zip(CLAIMS, (data, outputs, models), strict=True):
        docs = [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"local-{claim}"},
                "spec": {
                    "capacity": {"storage": "10Gi"},
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": "",
                    "hostPath": {"path": str(path)},
                    "claimRef": {"namespace": "default", "name": claim},
                },
            },
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim, "namespace": "default"},
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": "",
                    "volumeName": f"local-{claim}",
                    "resources": {"requests": {"storage": "10Gi"}},
                },
            },
        ]
        cp.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))


def _install(cp: controlplane.ControlPlane) -> None:
    helm = (
        os.environ.get("KUBETUNE_HELM")
        or subprocess.run(
            ["bash", str(ROOT / "hack" / "build-helm.sh")], capture_output=True, text=True, check=True
        ).stdout.split()[-1]
    )
    command = [
        helm,
        "upgrade",
        "--install",
        RELEASE,
        str(ROOT / "charts" / "kubetune"),
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "--take-ownership",
        "--kubeconfig",
        str(cp.kubeconfig),
        "--wait",
        "--timeout",
        "300s",
        "--set",
        f"operator.metricsPort={OPERATOR_METRICS_PORT}",
        "--set",
        f"operator.healthPort={OPERATOR_HEALTH_PORT}",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"helm install failed:\n{result.stdout}\n{result.stderr}")


def _next_steps(cp: controlplane.ControlPlane, prometheus: str) -> str:
    query = urllib.parse.quote("kubetune_finetunejob_progress_ratio")
    return f"""kubetune is up: control plane {cp.server}, operator (Helm release {RELEASE} in {NAMESPACE}), node agent,
Prometheus {prometheus}. State in {STATE}.

  source {STATE / "env"}   # export KUBECONFIG={cp.kubeconfig} PATH={cp.bin}:$PATH
  kubectl apply -f examples/two-workers-cpu.yaml
  kubectl get ftj -w
  curl -s '{prometheus}/api/v1/query?query={query}'

`make down` stops it (the state stays; `make up` brings it back).
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "serve"])
    command = parser.parse_args().command
    return {"up": up, "down": down, "serve": serve}[command]()


if __name__ == "__main__":
    raise SystemExit(main())
