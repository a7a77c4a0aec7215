"""A local node for tests: the kubelet's part of running pods, without containers.

There is no container runtime here, so this agent registers a Node and runs each pod the scheduler binds to it
as a local process group: the container's command and args, its env (plain values, ``$(VAR)`` references,
downward-API ``fieldRef``s such as the Job completion index and ``status.podIP``, ConfigMap and Secret keys,
``envFrom`` Secrets and ConfigMaps), and its
volume mounts materialised under a per-pod directory (ConfigMaps written out, PersistentVolumeClaims linked to
their bound PersistentVolume's ``hostPath``, emptyDirs created). Absolute paths under a mount point (and the
termination message path) in env values and args are rewritten to those directories, and the name
``<hostname>.<service>`` of a pod behind a headless Service is rewritten to that pod's IP: every pod gets its
own loopback address (127.x.y.z, derived from its hostname and subdomain, so worker 0's address is known
before it starts). Pod status (Running; Succeeded or Failed with the exit code and the termination message,
falling back to the last log lines) goes back through the API server; the real scheduler and Job controller
do the rest. As the kubelet does, a Secret or ConfigMap (or key) that env refers to and that does not exist keeps
the container waiting (``CreateContainerConfigError``, with the kubelet's message) and is looked up again until
it appears. A PersistentVolume's hostPath of ``type: Directory`` that is not a directory keeps the container
ContainerCreating with the kubelet's ``FailedMount`` Warning event on the pod, tried again until it is one.

Projected volumes are materialised too, above all the ServiceAccount token volume the API server adds to pods that
automount a token: the token comes from the TokenRequest API (bound to the pod), ``ca.crt`` from the
``kube-root-ca.crt`` ConfigMap, ``namespace`` from the downward API. Programs read those at fixed paths
(``/var/run/secrets/kubernetes.io/serviceaccount``), so projected volumes are bind-mounted at their real mount path
in a private mount namespace of the pod's process (``unshare --mount``); ``KUBERNETES_SERVICE_HOST``/``PORT`` point
at the API server, as kube-proxy would make the ``kubernetes`` Service do. An in-cluster client (the operator
installed by the Helm chart) thus talks to the API server as its own ServiceAccount, under the chart's RBAC.

By default the "image" is this repository's virtualenv: ``python`` is the venv's interpreter, its ``bin`` (kopf,
torchrun) is on PATH and the packages are on PYTHONPATH; readOnly mounts and CPU limits are not enforced. The memory
limit is, as the cgroup's OOM killer would: a pod whose processes use more (their summed proportional set size,
checked every second) is SIGKILLed whole and reported ``OOMKilled`` with exit code 137.
``runtime="podman"`` runs each pod's container in its real image instead (``podrun``: the locally built images of
hack/images.sh, with the pod's env, mounts, user and limits), at the same paths and addresses.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubetune.trainer.runtime import process_tree
from tests.support import podrun
from tests.support.paths import ROOT

NODE = "local-node"
LOG_FALLBACK_LINES = 80
LOG_FALLBACK_BYTES = 2048
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
_FIELD = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


class UnresolvedError(Exception):
    """A Secret or ConfigMap (or one of its keys) the container's env refers to is missing: the kubelet's
    CreateContainerConfigError, retried until it appears."""


class MountError(Exception):
    """A volume the kubelet cannot set up (a hostPath of ``type: Directory`` that is not one): the container stays
    ContainerCreating, a ``FailedMount`` Warning event says why, and the mount is tried again until it works."""


MEMORY_CHECK_SECONDS = 1.0


def pod_ip(namespace: str, hostname: str, subdomain: str, cluster: str = "") -> str:
    """The loopback address of the pod with this hostname under this headless Service (or of this uid) in the
    cluster at this API server address: two test runs on one machine (or the orphans of a killed one) never share
    an address (the trainer's metrics server listens on its pod's; torch's rendezvous store listens on every
    address, so each test operator also has a rendezvous port of its own)."""
    digest = hashlib.sha256(f"{cluster}/{namespace}/{hostname}.{subdomain}".encode()).digest()
    return f"127.{digest[0] % 254 + 1}.{digest[1]}.{digest[2] % 254 + 1}"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Api:
    """Just enough of a Kubernetes REST client (token auth, JSON, merge patches, watches)."""

    def __init__(self, server: str, token: str) -> None:
        self.server, self.token = server, token
        self.context = ssl._create_unverified_context()

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json", timeout: float = 30
    ) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": content_type}
        request = urllib.request.Request(self.server + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(request, context=self.context, timeout=timeout) as response:
            return json.loads(response.read() or b"null")

    def get(self, path: str) -> Any:
        try:
            return self.request("GET", path)
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise

    def merge(self, path: str, body: Any, patience: float = 90) -> Any:
        """A merge patch, retried for ``patience`` seconds while the API server is away or not ready (a kubelet
        keeps a pod's final status until it can report it)."""
        end = time.monotonic() + patience
        while True:
            try:
                return self.request("PATCH", path, body, "application/merge-patch+json")
            except urllib.error.HTTPError as error:
                if error.code not in (429, 500, 503) or time.monotonic() > end:
                    raise
            except OSError:
                if time.monotonic() > end:
                    raise
            time.sleep(1)

    def watch(self, path: str, stop: threading.Event, types: tuple[str, ...] = ()) -> Any:
        """Yield watch events of ``path`` (a list URL with a query), reconnecting until ``stop`` is set; with
        ``types`` (e.g. ("ADDED",)) only those, the others skipped without being parsed."""
        wanted = tuple(f'{{"type":"{t}"'.encode() for t in (*types, "ERROR")) if types else ()
        version = ""
        while not stop.is_set():
            sep = "&" if "?" in path else "?"
            url = f"{path}{sep}watch=1&timeoutSeconds=20" + (f"&resourceVersion={version}" if version else "")
            request = urllib.request.Request(self.server + url, headers={"Authorization": f"Bearer {self.token}"})
            try:
                with urllib.request.urlopen(request, context=self.context, timeout=30) as response:
                    for line in response:
                        if stop.is_set():
                            return
                        if wanted and not line.startswith(wanted):
                            continue
                        event = json.loads(line)
                        if event["type"] == "ERROR":  # e.g. 410 Gone: start over from a fresh list
                            version = ""
                            time.sleep(0.5)
                            break
                        version = event["object"]["metadata"].get("resourceVersion", version)
                        yield event
            except (OSError, ValueError):
                time.sleep(0.5)


class PodProcess:
    """One pod: its directory, its process group, and the thread that reports its status."""

    def __init__(self, pod: dict[str, Any], root: Path) -> None:
        self.pod = pod
        self.dir = root
        self.process: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None
        self.deleting = threading.Event()
        self.finished = threading.Event()

    @property
    def log(self) -> Path:
        return self.dir / "log"


class NodeAgent:
    """Registers ``local-node`` and runs the pods bound to it; ``start()`` then ``stop()``."""

    def __init__(
        self,
        server: str,
        token: str,
        workdir: Path,
        cpu: str = "64",
        memory: str = "256Gi",
        runtime: str = "process",
        images: dict[str, str] | None = None,
    ) -> None:
        """``runtime``: "process" (the venv, fast) or "podman" (each pod in its image; ``images`` maps the pods'
        image names to local ones)."""
        assert runtime in ("process", "podman"), runtime
        self.runtime, self.images = runtime, images or {}
        self.api = Api(server, token)
        address = urllib.parse.urlsplit(server)
        self.api_host, self.api_port = address.hostname or "127.0.0.1", str(address.port or 443)
        self.workdir = workdir
        self.cpu, self.memory = cpu, memory
        self.pods: dict[str, PodProcess] = {}
        self.faults: dict[str, dict[str, str]] = {}
        """Pod name prefix -> variables added to those pods' environment: a test's faults (``tests.support.faults``)
        reach a trainer this way, since a spec may not set KUBETUNE_ variables."""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="node-agent", daemon=True)

    # Node registration

    def start(self) -> NodeAgent:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": NODE,
                "labels": {"kubernetes.io/hostname": NODE, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"},
            },
        }
        try:
            self.api.request("POST", "/api/v1/nodes", node)
        except urllib.error.HTTPError as error:
            if error.code != 409:
                raise
        # The TaintNodesByCondition admission plugin adds not-ready taints; the node lifecycle controller (off
        # here) would remove them once the node reports Ready, so the agent does.
        self.api.merge(f"/api/v1/nodes/{NODE}", {"spec": {"taints": None}})
        capacity = {"cpu": self.cpu, "memory": self.memory, "pods": "110", "ephemeral-storage": "100Gi"}
        ready = {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "local node agent",
            "lastHeartbeatTime": _now(),
            "lastTransitionTime": _now(),
        }
        self.api.merge(
            f"/api/v1/nodes/{NODE}/status",
            {
                "status": {
                    "capacity": capacity,
                    "allocatable": capacity,
                    "conditions": [ready],
                    "addresses": [
                        {"type": "InternalIP", "address": "127.0.0.1"},
                        {"type": "Hostname", "address": NODE},
                    ],
                }
            },
        )
        self._thread.start()
        threading.Thread(target=self._resync, name="node-agent-resync", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            running = list(self.pods.values())
        for pod in running:
            self._kill(pod, signal.SIGKILL)
        self._thread.join(timeout=30)

    # Test helpers

    def process(self, namespace: str, name: str) -> PodProcess | None:
        with self._lock:
            return next(
                (
                    p
                    for p in self.pods.values()
                    if p.pod["metadata"]["name"] == name and p.pod["metadata"]["namespace"] == namespace
                ),
                None,
            )

    def logs(self, namespace: str, name: str) -> str:
        pod = self.process(namespace, name)
        return pod.log.read_text(errors="replace") if pod is not None and pod.log.exists() else ""

    def kill(self, namespace: str, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill all of a pod's processes, as an OOM kill or a node failure would."""
        pod = self.process(namespace, name)
        assert pod is not None and pod.process is not None, f"pod {namespace}/{name} is not running here"
        self._kill(pod, sig)

    # The watch loop

    def _run(self) -> None:
        selector = urllib.parse.quote(f"spec.nodeName={NODE}")
        for event in self.api.watch(f"/api/v1/pods?fieldSelector={selector}", self._stop):
            self._handle(event["type"], event["object"])

    def _resync(self) -> None:
        """Every few seconds, the node's pods as a list too: a pod the watch never delivered (seen once under load:
        a bound pod left Pending for minutes) starts anyway."""
        selector = urllib.parse.quote(f"spec.nodeName={NODE}")
        while not self._stop.wait(5):
            try:
                pods = self.api.get(f"/api/v1/pods?fieldSelector={selector}") or {}
            except OSError:
                continue
            for pod in pods.get("items") or []:
                self._handle("MODIFIED", pod)

    def _handle(self, kind: str, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        with self._lock:
            known = self.pods.get(uid)
            start = known is None and kind != "DELETED" and not _deleting(pod)
            start = start and (pod.get("status") or {}).get("phase") in ("Pending", None)
            if start:
                name = f"{pod['metadata']['namespace']}_{pod['metadata']['name']}"
                known = self.pods[uid] = PodProcess(pod, self.workdir / name)
        if start:
            threading.Thread(target=self._lifecycle, args=(known,), daemon=True).start()
        elif kind == "DELETED" or _deleting(pod):
            if known is not None:
                known.deleting.set()
            elif kind != "DELETED":
                self._delete(pod)  # never started here (or the agent restarted): nothing to stop

    def _lifecycle(self, pod: PodProcess) -> None:
        meta = pod.pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        container = pod.pod["spec"]["containers"][0]
        try:
            while True:
                try:
                    command, env, termination = self._prepare(pod)
                    break
                except (UnresolvedError, MountError) as missing:
                    if isinstance(missing, MountError):
                        self._report_mount_failure(pod, path, container, str(missing))
                    else:
                        waiting = {"reason": "CreateContainerConfigError", "message": str(missing)}
                        self._report_waiting(path, container, waiting)
                    if pod.deleting.wait(1.0):
                        self._delete(pod.pod)
                        return
        except Exception as error:
            pod.dir.mkdir(parents=True, exist_ok=True)
            pod.log.write_text(f"node agent: cannot start the pod: {error}\n")
            self._report_exit(pod, path, container, 128, str(error), _now())
            return
        started = _now()
        with open(pod.log, "wb") as log:
            pod.process = subprocess.Popen(
                command, env=env, cwd=pod.dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        ip = env["KUBETUNE_NODE_AGENT_POD_IP"]
        self.api.merge(
            f"{path}/status",
            {
                "status": {
                    "phase": "Running",
                    "podIP": ip,
                    "podIPs": [{"ip": ip}],
                    "hostIP": "127.0.0.1",
                    "startTime": started,
                    "conditions": _conditions(True),
                    "containerStatuses": [
                        {
                            "name": container["name"],
                            "image": container["image"],
                            "imageID": "",
                            "ready": True,
                            "started": True,
                            "restartCount": 0,
                            "state": {"running": {"startedAt": started}},
                        }
                    ],
                }
            },
        )
        limit = self._memory_limit(container)
        oom_killed, checked = False, time.monotonic()
        while pod.process.poll() is None:
            if pod.deleting.wait(0.2):
                grace = int(pod.pod["spec"].get("terminationGracePeriodSeconds", 30))
                self._kill(pod, signal.SIGTERM, leader_only=True)
                try:
                    pod.process.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    self._kill(pod, signal.SIGKILL)
            elif limit and time.monotonic() - checked >= MEMORY_CHECK_SECONDS:
                checked = time.monotonic()
                if memory_used(pod.process.pid) > limit:  # the cgroup's OOM killer: the whole container goes
                    oom_killed = True
                    self._kill(pod, signal.SIGKILL)
        code = pod.process.wait()
        code = 128 + -code if code < 0 else code
        self._kill(pod, signal.SIGKILL)  # anything the main process left behind
        text = termination.read_text(errors="replace")[:4096] if termination.exists() else ""
        policy = container.get("terminationMessagePolicy", "File")
        if not text.strip() and code != 0 and policy == "FallbackToLogsOnError":
            lines = pod.log.read_text(errors="replace").splitlines()[-LOG_FALLBACK_LINES:]
            text = "\n".join(lines)[-LOG_FALLBACK_BYTES:]
        try:
            self._report_exit(pod, path, container, code, text, started, "OOMKilled" if oom_killed else None)
        except OSError:
            if not self._stop.is_set():  # the API server is gone when the agent stops: nothing to report to
                raise

    def _report_waiting(self, path: str, container: dict[str, Any], waiting: dict[str, str]) -> None:
        """The pod Pending with its container waiting (``waiting``: the kubelet's reason and message)."""
        status = {
            "name": container["name"],
            "image": container["image"],
            "imageID": "",
            "ready": False,
            "started": False,
            "restartCount": 0,
            "state": {"waiting": waiting},
        }
        with contextlib.suppress(urllib.error.HTTPError):
            self.api.merge(f"{path}/status", {"status": {"phase": "Pending", "containerStatuses": [status]}})

    def _report_mount_failure(self, pod: PodProcess, path: str, container: dict[str, Any], text: str) -> None:
        """As the kubelet does: the container ContainerCreating, and a FailedMount Warning event on the pod (one
        object, its count and lastTimestamp raised on each retry)."""
        self._report_waiting(path, container, {"reason": "ContainerCreating"})
        meta, now = pod.pod["metadata"], _now()
        events = f"/api/v1/namespaces/{meta['namespace']}/events"
        name = f"{meta['name']}.{hashlib.sha256(text.encode()).hexdigest()[:16]}"
        with contextlib.suppress(urllib.error.HTTPError):
            found = self.api.get(f"{events}/{name}")
            if found is None:
                involved = {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "namespace": meta["namespace"],
                    "name": meta["name"],
                    "uid": meta["uid"],
                }
                event = {
                    "metadata": {"name": name, "namespace": meta["namespace"]},
                    "involvedObject": involved,
                    "reason": "FailedMount",
                    "message": text,
                    "type": "Warning",
                    "source": {"component": "kubelet", "host": NODE},
                    "firstTimestamp": now,
                    "lastTimestamp": now,
                    "count": 1,
                }
                self.api.request("POST", events, event)
            else:
                self.api.merge(f"{events}/{name}", {"count": int(found.get("count") or 1) + 1, "lastTimestamp": now})

    def _memory_limit(self, container: dict[str, Any]) -> int | None:
        """The container's memory limit in bytes, enforced here in process mode (podman's cgroup does it there)."""
        limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
        return podrun.memory_bytes(str(limit)) if limit and self.runtime == "process" else None

    def _report_exit(
        self,
        pod: PodProcess,
        path: str,
        container: dict[str, Any],
        code: int,
        text: str,
        started: str,
        reason: str | None = None,
    ) -> None:
        pod.exit_code = code
        terminated = {
            "exitCode": code,
            "reason": reason or ("Completed" if code == 0 else "Error"),
            "message": text,
            "startedAt": started,
            "finishedAt": _now(),
        }
        try:
            self.api.merge(
                f"{path}/status",
                {
                    "status": {
                        "phase": "Succeeded" if code == 0 else "Failed",
                        "conditions": _conditions(False),
                        "containerStatuses": [
                            {
                                "name": container["name"],
                                "image": container["image"],
                                "imageID": "",
                                "ready": False,
                                "started": False,
                                "restartCount": 0,
                                "state": {"terminated": terminated},
                            }
                        ],
                    }
                },
            )
        except urllib.error.HTTPError as error:
            if error.code != 404:
                raise
        pod.finished.set()
        if pod.deleting.is_set() or _deleting(self.api.get(path) or {}):
            self._delete(pod.pod)

    def _delete(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        try:
            self.api.request(
                "DELETE",
                path,
                {
                    "kind": "DeleteOptions",
                    "apiVersion": "v1",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": meta["uid"]},
                },
            )
        except urllib.error.HTTPError as error:
            if error.code not in (404, 409):
                raise

    def _kill(self, pod: PodProcess, sig: int, leader_only: bool = False) -> None:
        """Signal the pod's main process, or its whole process tree (torchrun starts its workers in new
        sessions, so a process group is not enough; a kubelet would kill the container's cgroup)."""
        if pod.process is None:
            return
        if self.runtime == "podman":
            podrun.kill(pod.pod, sig)
        pids = [pod.process.pid] if leader_only else process_tree(pod.process.pid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    # Turning a pod spec into a process

    def _prepare(self, pod: PodProcess) -> tuple[list[str], dict[str, str], Path]:
        spec, meta = pod.pod["spec"], pod.pod["metadata"]
        namespace = meta["namespace"]
        container = spec["containers"][0]
        shutil.rmtree(pod.dir, ignore_errors=True)
        rootfs = pod.dir / "rootfs"
        rootfs.mkdir(parents=True)
        (pod.dir / "tmp").mkdir()
        hostname = spec.get("hostname", meta["name"])
        ip = pod_ip(namespace, hostname, spec.get("subdomain", meta["uid"]), self.api.server)
        pod.pod["status"] = {**pod.pod.get("status", {}), "podIP": ip, "hostIP": "127.0.0.1"}
        paths, binds = self._mount(pod.pod, container, rootfs)
        termination_path = container.get("terminationMessagePath", "/dev/termination-log")
        termination = pod.dir / "termination-log"
        paths[termination_path] = termination

        def translate(value: str) -> str:
            for mount in sorted(paths, key=len, reverse=True):
                if value == mount or value.startswith(mount.rstrip("/") + "/"):
                    return str(paths[mount]) + value[len(mount) :]
            if value.startswith("/") and any(m.startswith(value.rstrip("/") + "/") for m in paths):
                return str(rootfs) + value  # a directory holding mount points (e.g. /mnt/pvc)
            return self._resolve_host(namespace, value)

        env: dict[str, str] = {
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            "PYTHONPATH": f"{ROOT / 'api'}:{ROOT / 'operator'}:{ROOT / 'trainer'}",
            "HOME": str(pod.dir),
            "LANG": "C.UTF-8",
            "TMPDIR": str(pod.dir / "tmp"),
            "HOSTNAME": hostname,
            "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": "1",
            "KUBETUNE_NODE_AGENT_POD_IP": ip,
            "KUBERNETES_SERVICE_HOST": self.api_host,
            "KUBERNETES_SERVICE_PORT": self.api_port,
            "KUBERNETES_SERVICE_PORT_HTTPS": self.api_port,
        }
        for source in container.get("envFrom") or []:
            for key, value in self._env_from(namespace, source).items():
                env[(source.get("prefix") or "") + key] = value
        for var in container.get("env") or []:
            if "value" in var:
                value = _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), var["value"])
            else:
                value = self._value_from(pod.pod, var["valueFrom"])
            env[var["name"]] = translate(value)
        env["OMP_NUM_THREADS"] = "1"  # two cores shared by every pod and the control plane
        for prefix, extra in list(self.faults.items()):
            if meta["name"].startswith(prefix):
                env.update(extra)
                env["PYTHONPATH"] += f":{ROOT}"  # where the faults' module is
        if self.runtime == "podman":
            return self._in_container(pod, env, paths, binds, termination, termination_path)
        argv = [*(container.get("command") or []), *(container.get("args") or [])]
        argv = [translate(_VAR.sub(lambda m: env.get(m.group(1), m.group(0)), a)) for a in argv]
        if argv and argv[0] == "python":
            argv[0] = sys.executable
        if binds:  # bind-mount at the real paths, in a mount namespace of the pod's own
            script = 'while [ "$1" != -- ]; do mkdir -p "$1" && mount --bind "$2" "$1" || exit 126; shift 2; done'
            pairs = [str(x) for target, source in binds.items() for x in (target, source)]
            argv = [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                script + '; shift; exec "$@"',
                "sh",
                *pairs,
                "--",
                *argv,
            ]
        return argv, env, termination

    def _in_container(
        self,
        pod: PodProcess,
        env: dict[str, str],
        paths: dict[str, Path],
        binds: dict[str, Path],
        termination: Path,
        termination_path: str,
    ) -> tuple[list[str], dict[str, str], Path]:
        """The pod as ``podman run``: env without the venv's variables, mounts at their real paths, host names of
        headless Services resolved (there is no cluster DNS), paths left as they are."""
        namespace = pod.pod["metadata"]["namespace"]
        container = pod.pod["spec"]["containers"][0]
        read_only = {m["mountPath"]: bool(m.get("readOnly")) for m in container.get("volumeMounts") or []}
        mounts = {target: (source, read_only.get(target, False)) for target, source in {**paths, **binds}.items()}
        termination.touch()
        termination.chmod(0o666)
        mounts[termination_path] = (termination, False)
        env = {k: v for k, v in env.items() if k not in ("PATH", "PYTHONPATH", "HOME", "TMPDIR")}
        for var in container.get("env") or []:  # values again, without the rewriting of paths to this machine
            if "value" in var:
                value = _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), var["value"])
                env[var["name"]] = self._resolve_host(namespace, value)
        expand = [
            [self._resolve_host(namespace, _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), a)) for a in part]
            for part in (container.get("command") or [], container.get("args") or [])
        ]
        argv, podman_env = podrun.command(pod.pod, (expand[0], expand[1]), env, mounts, self.images)
        return argv, podman_env, termination

    def _mount(
        self, pod: dict[str, Any], container: dict[str, Any], rootfs: Path
    ) -> tuple[dict[str, Path], dict[str, Path]]:
        """Materialise the container's volume mounts under ``rootfs``: (mount path -> directory to rewrite paths
        to, mount path -> directory to bind-mount there)."""
        namespace, spec = pod["metadata"]["namespace"], pod["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        paths: dict[str, Path] = {}
        binds: dict[str, Path] = {}
        for mount in container.get("volumeMounts") or []:
            volume = volumes[mount["name"]]
            target = rootfs / mount["mountPath"].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume:
                target.mkdir()
                cm = self.api.get(f"/api/v1/namespaces/{namespace}/configmaps/{volume['configMap']['name']}")
                if cm is None:
                    raise RuntimeError(f"configmap {volume['configMap']['name']!r} not found")
                for key, value in (cm.get("data") or {}).items():
                    (target / key).write_text(value)
            elif "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                pvc = self.api.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}")
                name = (pvc or {}).get("spec", {}).get("volumeName")
                pv = self.api.get(f"/api/v1/persistentvolumes/{name}") if name else None
                if pv is None or "hostPath" not in pv["spec"]:
                    raise RuntimeError(f"persistentvolumeclaim {claim!r} is not bound to a hostPath volume")
                host = pv["spec"]["hostPath"]
                if host.get("type") == "Directory" and not Path(host["path"]).is_dir():
                    raise MountError(
                        f'MountVolume.SetUp failed for volume "{name}" : hostPath type check failed: '
                        f"{host['path']} is not a directory"
                    )
                target.symlink_to(host["path"])
            elif "hostPath" in volume:
                target.symlink_to(volume["hostPath"]["path"])
            elif "projected" in volume:
                target.mkdir()
                self._project(pod, volume["projected"], target)
                binds[mount["mountPath"]] = target
                continue
            else:  # emptyDir and anything else: a fresh directory (writable by the image's non-root user)
                target.mkdir(exist_ok=True)
                target.chmod(0o777)
            paths[mount["mountPath"]] = target
        return paths, binds

    def _project(self, pod: dict[str, Any], projected: dict[str, Any], target: Path) -> None:
        """Write a projected volume's files: ServiceAccount token, ConfigMap keys, downward-API fields."""
        meta = pod["metadata"]
        for source in projected.get("sources") or []:
            if "serviceAccountToken" in source:
                request = source["serviceAccountToken"]
                account = pod["spec"].get("serviceAccountName", "default")
                body = {
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenRequest",
                    "spec": {
                        "audiences": [request["audience"]] if request.get("audience") else [],
                        "expirationSeconds": int(request.get("expirationSeconds", 3600)),
                        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
                    },
                }
                path = f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token"
                token = self.api.request("POST", path, body)["status"]["token"]
                (target / request["path"]).write_text(token)
            elif "configMap" in source:
                ref = source["configMap"]
                cm = self.api.get(f"/api/v1/namespaces/{meta['namespace']}/configmaps/{ref['name']}")
                data = (cm or {}).get("data") or {}
                if cm is None and not ref.get("optional"):
                    raise RuntimeError(f"configmap {ref['name']!r} not found")
                items = ref.get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    (target / item["path"]).write_text(data.get(item["key"], ""))
            elif "downwardAPI" in source:
                for item in source["downwardAPI"].get("items") or []:
                    (target / item["path"]).write_text(self._value_from(pod, item))

    def _value_from(self, pod: dict[str, Any], source: dict[str, Any]) -> str:
        if "fieldRef" in source:
            field = source["fieldRef"]["fieldPath"]
            meta, spec = pod["metadata"], pod["spec"]
            simple = {
                "metadata.name": meta["name"],
                "metadata.namespace": meta["namespace"],
                "metadata.uid": meta["uid"],
                "spec.nodeName": NODE,
                "spec.serviceAccountName": spec.get("serviceAccountName", ""),
                "status.podIP": pod["status"]["podIP"],
                "status.hostIP": "127.0.0.1",
            }
            if field in simple:
                return str(simple[field])
            match = _FIELD.match(field)
            if match:
                return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
            raise RuntimeError(f"unsupported fieldRef {field!r}")
        for kind, ref_name in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
            if kind in source:
                ref, namespace = source[kind], pod["metadata"]["namespace"]
                data = self._data(namespace, ref_name, ref["name"], bool(ref.get("optional")))
                if ref["key"] not in data:
                    if ref.get("optional"):
                        return ""
                    raise UnresolvedError(f"couldn't find key {ref['key']} in {ref_name} {namespace}/{ref['name']}")
                return data[ref["key"]]
        raise RuntimeError(f"unsupported valueFrom {sorted(source)}")

    def _env_from(self, namespace: str, source: dict[str, Any]) -> dict[str, str]:
        kind, ref = ("Secret", source["secretRef"]) if "secretRef" in source else ("ConfigMap", source["configMapRef"])
        return self._data(namespace, kind, ref["name"], bool(ref.get("optional")))

    def _data(self, namespace: str, kind: str, name: str, optional: bool) -> dict[str, str]:
        """A Secret's (decoded) or ConfigMap's data; a missing one is UnresolvedError unless optional."""
        import base64

        plural = "secrets" if kind == "Secret" else "configmaps"
        found = self.api.get(f"/api/v1/namespaces/{namespace}/{plural}/{name}")
        if found is None:
            if optional:
                return {}
            raise UnresolvedError(f'{kind.lower()} "{name}" not found')
        if kind == "Secret":
            return {k: base64.b64decode(v).decode() for k, v in (found.get("data") or {}).items()}
        return dict(found.get("data") or {})

    def _resolve_host(self, namespace: str, value: str) -> str:
        """``<hostname>.<service>[.<namespace>[.svc[.cluster.local]]]`` of a headless Service -> the pod's IP."""
        if not re.search(r"[a-z]", value):
            return value
        match = re.fullmatch(r"([a-z0-9-]+)\.([a-z0-9-]+)(?:\.([a-z0-9-]+)(?:\.svc(?:\.cluster\.local)?)?)?", value)
        if not match:
            return value
        host, service, ns = match.group(1), match.group(2), match.group(3) or namespace
        found = self.api.get(f"/api/v1/namespaces/{ns}/services/{service}")
        if found is None or found["spec"].get("clusterIP") != "None":
            return value
        return pod_ip(ns, host, service, self.api.server)


def memory_used(root: int) -> int:
    """Bytes the process tree of ``root`` uses, as a memory cgroup counts them: the sum of the processes'
    proportional set sizes (a page shared by several processes counts once in all, not once in each)."""
    total = 0
    for pid in process_tree(root):
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        total += sum(int(line.split()[1]) * 1024 for line in rollup.splitlines() if line.startswith("Pss:"))
    return total


def _deleting(pod: dict[str, Any]) -> bool:
    return bool(pod.get("metadata", {}).get("deletionTimestamp"))


def _conditions(ready: bool) -> list[dict[str, str]]:
    now, state = _now(), "True" if ready else "False"
    return [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
        {"type": "Initialized", "status": "True", "lastTransitionTime": now},
        {"type": "ContainersReady", "status": state, "lastTransitionTime": now},
        {"type": "Ready", "status": state, "lastTransitionTime": now},
    ]
