"""Operator scale on the real test control plane: many FineTuneJobs applied at once, against the limit.

    python -m benchmarks.operator_scale             # 500 jobs per arm, then 20 single jobs one at a time
    python -m benchmarks.operator_scale --quick     # 20 jobs, 3 single ones: that it runs and prints

The control plane is the test suite's (etcd, kube-apiserver, controller-manager, scheduler; built by
``make control-plane``), with an audit log of every write. There is no node, so the workers' pods stay Pending:
what is measured is the operator's part (validate, create the ConfigMap, headless Service and Indexed Job, keep the
status) and the Job controller creating the pods. In one run, on one control plane:

1. the kopf floor idle (benchmarks/operator_limit.py: kopf watching the same resources, doing nothing);
2. the limit arm: a plain client making only the 4 writes a minimal operator must make per job, for a batch in
   namespace ``limit``; then the kopf floor again with every object of that batch seen; the namespace is deleted;
3. the operator arm: single jobs applied one at a time on the idle operator (which also warms it up: its idle RSS
   is taken after them), then the same batch as the limit arm's in namespace ``scale``.

Reported per arm: time from each job's apply (its POST returning) to its Job existing (all children created) and to
its first pod existing, p50/p99; jobs reconciled per second; the API server's CPU seconds from the first POST to the
last Job; API writes per job, from the audit log. Then ours / limit, and the operator's RSS per job against the kopf
floor's.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import controlplane, nodeagent
from tests.support.operator import Operator
from tests.support.paths import ROOT

from benchmarks import operator_limit
from kubetune.operator import settings

NAMESPACE = "scale"
LIMIT_NAMESPACE = "limit"
OPERATOR_AGENTS = ("kopf/", "kubetune-op")
"""User agents of the operator's writes in the audit log (kopf's and the kubernetes client's)."""
MINIMUM_WRITES = 4
"""Create the ConfigMap, the Service and the Job; one status patch."""
LABEL = "kubetune.dev/finetunejob"
CLAIMS = ("kubetune-data", "kubetune-models", "kubetune-outputs")


def job(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"cached": "kubetune/tiny-llama"},
            "data": {
                "format": "Instruction",
                "datasets": [
                    {"name": "rows", "pvc": {"claimName": "kubetune-data", "path": "examples/data/instructions.jsonl"}}
                ],
            },
            "method": {"type": "LoRA"},
            "resources": {"workers": 2, "cpu": "1", "memory": "2Gi"},
            "output": {"pvc": {"claimName": "kubetune-outputs", "path": name}},
        },
    }


class Api(nodeagent.Api):
    """The node agent's client (requests, reconnecting watches) with writes on kept-alive connections."""

    def __init__(self, cp: controlplane.ControlPlane, user_agent: str = "kubetune-bench") -> None:
        super().__init__(cp.server, cp.token)
        self.local = threading.local()
        self.user_agent = user_agent

    def post(self, path: str, body: dict[str, Any]) -> None:
        self.send("POST", path, body)

    def send(
        self, method: str, path: str, body: dict[str, Any], content_type: str = "application/json"
    ) -> dict[str, Any]:
        """A write on this thread's kept-alive connection (as kubectl would: no TLS handshake per object); one
        that the server closed while idle is opened again."""
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": content_type, "User-Agent": self.user_agent}
        for attempt in (1, 2):
            connection = getattr(self.local, "connection", None)
            if connection is None:
                url = urllib.parse.urlsplit(self.server)
                connection = self.local.connection = http.client.HTTPSConnection(
                    url.hostname or "127.0.0.1", url.port, context=self.context, timeout=60
                )
            try:
                connection.request(method, path, body=json.dumps(body).encode(), headers=headers)
                response = connection.getresponse()
                text = response.read()
                break
            except (OSError, http.client.HTTPException):
                connection.close()
                self.local.connection = None
                if attempt == 2:
                    raise
        if response.status >= 300:
            raise RuntimeError(f"{method} {path}: {response.status} {text[:300]!r}")
        return dict(json.loads(text))

    def record_added(self, path: str, seen: dict[str, float], stop: threading.Event) -> None:
        """Record when each FineTuneJob's first object of this kind appears (by its label). Only ADDED events
        are parsed: the benchmark takes as little CPU as it can from what it measures."""
        for event in self.watch(f"{path}?labelSelector={urllib.parse.quote(LABEL)}", stop, types=("ADDED",)):
            name = (event["object"]["metadata"].get("labels") or {}).get(LABEL)
            if name and name not in seen:
                seen[name] = time.monotonic()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def process_figures(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) and peak RSS in bytes of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return cpu, _status_bytes(pid, "VmHWM")


def rss(pid: int) -> int:
    """The process's resident memory now, in bytes."""
    return _status_bytes(pid, "VmRSS")


def _status_bytes(pid: int, key: str) -> int:
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith(key))
    return int(line.split()[1]) * 1024


def writes_by(audit: Path, agents: tuple[str, ...]) -> Counter[str]:
    """Completed writes in the audit log whose user agent starts with one of ``agents``, by verb and resource."""
    writes: Counter[str] = Counter()
    for line in audit.read_text().splitlines():
        event = json.loads(line)
        if event.get("stage") == "ResponseComplete" and event.get("userAgent", "").startswith(agents):
            ref = event.get("objectRef", {})
            writes[
                f"{event['verb']} {ref.get('resource')}{'/' + ref['subresource'] if ref.get('subresource') else ''}"
            ] += 1
    return writes


@dataclass
class Batch:
    """One arm's batch: when each job was applied, when its Job and its first pod appeared, and what it cost the
    API server (CPU seconds from the first POST to the last Job) and in writes (from the audit log)."""

    names: list[str]
    started: float
    applied: dict[str, float]
    jobs_seen: dict[str, float]
    pods_seen: dict[str, float]
    apiserver_cpu: float
    writes: Counter[str]

    @property
    def rate(self) -> float:
        return len(self.names) / (max(self.jobs_seen[n] for n in self.names) - self.started)

    @property
    def to_job(self) -> list[float]:
        return [self.jobs_seen[n] - self.applied[n] for n in self.names]

    @property
    def to_pods(self) -> list[float]:
        return [self.pods_seen[n] - self.applied[n] for n in self.names]

    @property
    def writes_per_job(self) -> float:
        return sum(self.writes.values()) / len(self.names)


def watch_children(api: Api, namespace: str, stop: threading.Event) -> tuple[dict[str, float], dict[str, float]]:
    """When each FineTuneJob's Job and first pod appeared in ``namespace``, filled in by two watch threads."""
    jobs_seen: dict[str, float] = {}
    pods_seen: dict[str, float] = {}
    for path, seen in (
        (f"/apis/batch/v1/namespaces/{namespace}/jobs", jobs_seen),
        (f"/api/v1/namespaces/{namespace}/pods", pods_seen),
    ):
        threading.Thread(target=api.record_added, args=(path, seen, stop), daemon=True).start()
    time.sleep(1)
    return jobs_seen, pods_seen


def run_batch(
    cp: controlplane.ControlPlane, api: Api, namespace: str, count: int, clients: int, agents: tuple[str, ...]
) -> Batch:
    """POST ``count`` FineTuneJobs from ``clients`` threads and wait for every Job and pod."""
    stop = threading.Event()
    jobs_seen, pods_seen = watch_children(api, namespace, stop)
    apiserver = cp.processes["kube-apiserver"].pid
    cpu_before, _ = process_figures(apiserver)
    writes_before = writes_by(cp.workdir / "audit.log", agents)
    applied: dict[str, float] = {}

    def apply(name: str) -> None:
        api.post(f"/apis/kubetune.dev/v1alpha1/namespaces/{namespace}/finetunejobs", job(name))
        applied[name] = time.monotonic()

    names = [f"job-{i:04d}" for i in range(count)]
    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(apply, names))
    deadline = time.monotonic() + max(120, count)
    cpu_after: float | None = None
    # Both watches must have seen a job's children: they are two threads, and the pods' may run ahead of the Jobs'.
    while not all(n in pods_seen and n in jobs_seen for n in names) and time.monotonic() < deadline:
        if cpu_after is None and all(n in jobs_seen for n in names):
            cpu_after, _ = process_figures(apiserver)
        time.sleep(0.1)
        print(f"  {namespace}: {len(jobs_seen)} Jobs, pods of {len(pods_seen)} jobs", end="\r", file=sys.stderr)
    stop.set()
    missing = [n for n in names if n not in pods_seen or n not in jobs_seen]
    if missing:
        raise SystemExit(f"{namespace}: {len(missing)} jobs never got their pods, e.g. {missing[:3]}")
    if cpu_after is None:
        cpu_after, _ = process_figures(apiserver)
    writes = writes_by(cp.workdir / "audit.log", agents) - writes_before
    return Batch(names, started, applied, jobs_seen, pods_seen, cpu_after - cpu_before, writes)


def kopf_floor(cp: controlplane.ControlPlane, logdir: Path, events: int) -> int:
    """RSS of the do-nothing kopf operator (benchmarks/operator_limit.py) once it has seen ``events`` events (or,
    with 0, five seconds after it started on an empty cluster)."""
    log, count = logdir / f"floor-{events}.log", logdir / f"floor-{events}.count"
    env = {
        **os.environ,
        "KUBECONFIG": str(cp.kubeconfig),
        "PYTHONPATH": f"{ROOT / 'api'}:{ROOT / 'operator'}:{ROOT}",
        "KUBETUNE_KOPF_FLOOR": "1",
        "KUBETUNE_FLOOR_COUNT": str(count),
        "PYTHONWARNINGS": "ignore:Unverified HTTPS request",
    }
    command = [
        sys.executable,
        "-m",
        "kopf",
        "run",
        "--all-namespaces",
        "--standalone",
        "-m",
        "benchmarks.operator_limit",
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        seen = -1
        while seen < events and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.5)
            seen = int(count.read_text() or 0) if count.exists() else -1
        if process.poll() is not None or seen < events:
            raise SystemExit(f"the kopf floor saw {seen} of {events} events\n{log.read_text()[-3000:]}")
        time.sleep(5)  # the last events, kopf's worker tasks settling
        return rss(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)


def delete_namespace(cp: controlplane.ControlPlane, namespace: str) -> None:
    cp.kubectl("delete", "namespace", namespace, "--wait=false")
    deadline = time.monotonic() + 600
    while cp.kubectl("get", "namespace", namespace, check=False).returncode == 0:
        if time.monotonic() > deadline:
            raise SystemExit(f"namespace {namespace} still there after 600 s")
        time.sleep(1)


def setup(cp: controlplane.ControlPlane, api: Api, namespaces: tuple[str, ...]) -> None:
    cp.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/finetunejobs.kubetune.dev")
    for namespace in namespaces:
        cp.kubectl("create", "namespace", namespace)
        for claim in CLAIMS:  # unbound claims: references resolve, no pod ever runs
            api.post(
                f"/api/v1/namespaces/{namespace}/persistentvolumeclaims",
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {"name": claim},
                    "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
                },
            )


def singles(api: Api, count: int) -> tuple[list[float], list[float]]:
    """Jobs applied one at a time on the idle operator: apply -> children, apply -> pods."""
    stop = threading.Event()
    jobs_seen, pods_seen = watch_children(api, NAMESPACE, stop)
    to_job, to_pods = [], []
    for i in range(count):
        name = f"single-{i:03d}"
        api.post(f"/apis/kubetune.dev/v1alpha1/namespaces/{NAMESPACE}/finetunejobs", job(name))
        applied = time.monotonic()
        deadline = applied + 60
        while (name not in pods_seen or name not in jobs_seen) and time.monotonic() < deadline:
            time.sleep(0.01)  # both watches: the pods' thread may see the pods before the Jobs' sees the Job
        if name not in pods_seen or name not in jobs_seen:
            missing = " and ".join(k for k, seen in (("Job", jobs_seen), ("pods", pods_seen)) if name not in seen)
            raise SystemExit(f"{name}: no {missing} seen within 60 s")
        to_job.append(jobs_seen[name] - applied)
        to_pods.append(pods_seen[name] - applied)
        time.sleep(0.2)
    stop.set()
    return to_job, to_pods


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 jobs and 3 single ones")
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--singles", type=int, default=20)
    parser.add_argument("--clients", type=int, default=8, help="concurrent POSTs while applying")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.singles = 20, 3
    # The control plane and the operator run in sessions of their own: a SIGTERM must still stop them (finally).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cp = controlplane.start(audit_writes=True)
    operator = None
    logdir = Path(tempfile.mkdtemp(prefix="kubetune-bench-op-"))
    try:
        api = Api(cp)
        setup(cp, api, (LIMIT_NAMESPACE, NAMESPACE))
        workers = settings.current().max_workers
        floor_idle = kopf_floor(cp, logdir, 0)
        arm = operator_limit.LimitArm(Api(cp, operator_limit.USER_AGENT), LIMIT_NAMESPACE, workers).start()
        limit = run_batch(cp, api, LIMIT_NAMESPACE, args.jobs, args.clients, (operator_limit.USER_AGENT,))
        arm.close()
        if arm.errors:
            raise SystemExit(f"the limit arm failed on {len(arm.errors)} jobs, e.g. {arm.errors[:3]}")
        floor_full = kopf_floor(cp, logdir, 4 * args.jobs)  # each job: itself, its Job, two pods
        delete_namespace(cp, LIMIT_NAMESPACE)  # the operator arm starts on the same empty cluster

        operator = Operator(cp, logdir, env={"KUBETUNE_STATUS_INTERVAL_SECONDS": "5"}).start()
        deadline = time.monotonic() + 60
        while not operator.metrics() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert operator.process is not None
        time.sleep(2)
        pid = operator.process.pid
        ours_cold = rss(pid)
        single_job, single_pods = singles(api, args.singles)  # on the idle operator; they also warm it up
        time.sleep(2)
        ours_idle = rss(pid)  # idle after its first jobs: what it imports and builds once is not per job
        cpu_before, _ = process_figures(pid)
        ours = run_batch(cp, api, NAMESPACE, args.jobs, args.clients, OPERATOR_AGENTS)
        cpu_after, ours_peak = process_figures(pid)
        report(args, limit, ours, single_job, single_pods)
        print(
            f"\noperator RSS on start: {ours_cold / 2**20:.1f} MiB; idle after {args.singles} single jobs: "
            f"{ours_idle / 2**20:.1f} MiB"
        )
        report_memory(args.jobs, (floor_idle, floor_full), (ours_idle, ours_peak), cpu_after - cpu_before)
        per_job, floor_per_job = (ours_peak - ours_idle) / args.jobs, (floor_full - floor_idle) / args.jobs
        print(
            json.dumps(
                {
                    "jobs": args.jobs,
                    "jobs_per_second": round(ours.rate, 2),
                    "limit_jobs_per_second": round(limit.rate, 2),
                    "ours_over_limit": round(ours.rate / limit.rate, 3),
                    "p50_apply_to_children_s": round(statistics.median(ours.to_job), 3),
                    "p99_apply_to_children_s": round(percentile(ours.to_job, 0.99), 3),
                    "p99_single_apply_to_pods_s": round(percentile(single_pods, 0.99), 3),
                    "apiserver_cpu_seconds": round(ours.apiserver_cpu, 2),
                    "limit_apiserver_cpu_seconds": round(limit.apiserver_cpu, 2),
                    "operator_cpu_seconds": round(cpu_after - cpu_before, 2),
                    "operator_start_rss_bytes": ours_cold,
                    "operator_idle_rss_bytes": ours_idle,
                    "operator_peak_rss_bytes": ours_peak,
                    "operator_rss_per_job_bytes": round(per_job),
                    "kopf_floor_rss_per_job_bytes": round(floor_per_job),
                    "api_writes_per_job": round(ours.writes_per_job, 2),
                    "limit_api_writes_per_job": round(limit.writes_per_job, 2),
                }
            )
        )
    finally:
        if operator is not None:
            operator.stop()
        cp.stop()
    return 0


def report(
    args: argparse.Namespace, limit: Batch, ours: Batch, single_job: list[float], single_pods: list[float]
) -> None:
    print(
        f"# operator scale: {args.jobs} FineTuneJobs per arm ({args.clients} concurrent POSTs), "
        f"{os.cpu_count()} CPUs, no node (pods stay Pending)"
    )
    print("| measure | p50 | p99 | max |")
    print("|---|---:|---:|---:|")
    for label, values in (
        ("limit batch: apply -> children created (Job exists)", limit.to_job),
        ("batch: apply -> children created (Job exists)", ours.to_job),
        ("batch: apply -> pods created", ours.to_pods),
        ("single job: apply -> children created", single_job),
        ("single job: apply -> pods created", single_pods),
    ):
        print(f"| {label} | {percentile(values, 0.5):.3f} s | {percentile(values, 0.99):.3f} s | {max(values):.3f} s |")
    print("\n| arm | jobs/s | API server CPU (s) | API writes per job |")
    print("|---|---:|---:|---|")
    for name, arm in (("limit (plain client, 4 writes)", limit), ("kubetune (kopf)", ours)):
        detail = ", ".join(
            f"{k} {v / len(arm.names):.2f}" for k, v in sorted(arm.writes.items(), key=lambda kv: -kv[1])
        )
        print(f"| {name} | {arm.rate:.1f} | {arm.apiserver_cpu:.1f} | {arm.writes_per_job:.2f}: {detail} |")
    ratio = ours.rate / limit.rate
    mark = "ok" if ratio >= 0.85 else "MISSED"
    print(f"\nours / limit, jobs per second: {ratio:.2f} ({mark} >= 0.85)")
    print(f"API writes per job: {ours.writes_per_job:.2f} against the minimum {MINIMUM_WRITES}")
    print(f"single job p99 apply -> pods created: {percentile(single_pods, 0.99):.3f} s (target <= 2 s)")


def report_memory(jobs: int, floor: tuple[int, int], ours: tuple[int, int], operator_cpu: float) -> None:
    mib = 2**20
    floor_per_job, per_job = (floor[1] - floor[0]) / jobs, (ours[1] - ours[0]) / jobs
    print("\n| process | idle RSS (MiB) | RSS with the batch (MiB) | per job (KiB) |")
    print("|---|---:|---:|---:|")
    print(f"| kopf floor (no-op handlers) | {floor[0] / mib:.1f} | {floor[1] / mib:.1f} | {floor_per_job / 1024:.1f} |")
    print(f"| kubetune operator (peak) | {ours[0] / mib:.1f} | {ours[1] / mib:.1f} | {per_job / 1024:.1f} |")
    ratio = per_job / floor_per_job if floor_per_job > 0 else float("inf")
    mark = "ok" if ratio <= 2 else "MISSED"
    print(f"\nper-job memory, ours / kopf floor: {ratio:.2f}x ({mark} <= 2x)")
    print(f"operator CPU for the batch: {operator_cpu:.1f} s")


if __name__ == "__main__":
    raise SystemExit(main())
