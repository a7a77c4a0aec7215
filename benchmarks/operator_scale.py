"""Operator scale on the real test control plane: many FineTuneJobs applied at once.

    python -m benchmarks.operator_scale             # 500 jobs, then 20 single jobs one at a time
    python -m benchmarks.operator_scale --quick     # 20 jobs, 3 single ones: that it runs and prints

The control plane is the test suite's (etcd, kube-apiserver, controller-manager, scheduler; built by
``make control-plane``), with an audit log of every write. There is no node, so the workers' pods stay Pending:
what is measured is the operator's part (validate, create the ConfigMap, headless Service and Indexed Job, keep the
status) and the Job controller creating the pods. Reported: time from each job's apply (its POST returning) to its
Job existing (all children created) and to its first pod existing, p50/p99; jobs reconciled per second over the
batch; the operator's CPU seconds and peak RSS; API writes per job, from the audit log (user agents ``kopf/*`` and
``kubetune-operator``). Then single jobs applied one at a time on the idle operator, p50/p99.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.support import controlplane, nodeagent
from tests.support.operator import Operator

NAMESPACE = "scale"
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
    """The node agent's client (requests, reconnecting watches) with POSTs on kept-alive connections."""

    def __init__(self, cp: controlplane.ControlPlane) -> None:
        super().__init__(cp.server, cp.token)
        self.local = threading.local()

    def post(self, path: str, body: dict[str, Any]) -> None:
        """POST on this thread's kept-alive connection (as kubectl would: no TLS handshake per object); one that
        the server closed while idle is opened again."""
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Content-Type": "application/json",
            "User-Agent": "kubetune-bench",
        }
        for attempt in (1, 2):
            connection = getattr(self.local, "connection", None)
            if connection is None:
                url = urllib.parse.urlsplit(self.server)
                connection = self.local.connection = http.client.HTTPSConnection(
                    url.hostname or "127.0.0.1", url.port, context=self.context, timeout=60
                )
            try:
                connection.request("POST", path, body=json.dumps(body).encode(), headers=headers)
                response = connection.getresponse()
                text = response.read()
                break
            except (OSError, http.client.HTTPException):
                connection.close()
                self.local.connection = None
                if attempt == 2:
                    raise
        if response.status >= 300:
            raise RuntimeError(f"POST {path}: {response.status} {text[:300]!r}")

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
    hwm = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM"))
    return cpu, int(hwm.split()[1]) * 1024


def operator_writes(audit: Path) -> Counter[str]:
    writes: Counter[str] = Counter()
    for line in audit.read_text().splitlines():
        event = json.loads(line)
        agent = event.get("userAgent", "")
        if event.get("stage") == "ResponseComplete" and (agent.startswith("kopf/") or agent.startswith("kubetune-op")):
            ref = event.get("objectRef", {})
            writes[
                f"{event['verb']} {ref.get('resource')}{'/' + ref['subresource'] if ref.get('subresource') else ''}"
            ] += 1
    return writes


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
    stop = threading.Event()
    try:
        cp.kubectl("apply", "--server-side", "-f", str(Path(__file__).resolve().parents[1] / "crds"))
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/finetunejobs.kubetune.dev")
        cp.kubectl("create", "namespace", NAMESPACE)
        api = Api(cp)
        for claim in CLAIMS:  # unbound claims: references resolve, no pod ever runs
            api.post(
                f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims",
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {"name": claim},
                    "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
                },
            )
        operator = Operator(
            cp, Path(tempfile.mkdtemp(prefix="kubetune-bench-op-")), env={"KUBETUNE_STATUS_INTERVAL_SECONDS": "5"}
        ).start()
        deadline = time.monotonic() + 60
        while not operator.metrics() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert operator.process is not None
        jobs_seen: dict[str, float] = {}
        pods_seen: dict[str, float] = {}
        for path, seen in (
            (f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs", jobs_seen),
            (f"/api/v1/namespaces/{NAMESPACE}/pods", pods_seen),
        ):
            threading.Thread(target=api.record_added, args=(path, seen, stop), daemon=True).start()
        time.sleep(1)
        cpu_before, _ = process_figures(operator.process.pid)
        writes_before = operator_writes(cp.workdir / "audit.log")

        applied: dict[str, float] = {}

        def apply(name: str) -> None:
            api.post(f"/apis/kubetune.dev/v1alpha1/namespaces/{NAMESPACE}/finetunejobs", job(name))
            applied[name] = time.monotonic()

        names = [f"job-{i:04d}" for i in range(args.jobs)]
        started = time.monotonic()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(apply, names))
        applied_all = time.monotonic()
        deadline = time.monotonic() + max(120, args.jobs)
        while (len([n for n in names if n in pods_seen]) < len(names)) and time.monotonic() < deadline:
            time.sleep(0.5)
            print(f"  {len(jobs_seen)} Jobs, pods of {len(pods_seen)} jobs", end="\r", file=sys.stderr)
        missing = [n for n in names if n not in pods_seen or n not in jobs_seen]
        if missing:
            raise SystemExit(f"{len(missing)} jobs never got their pods, e.g. {missing[:3]}\n{operator.log()[-3000:]}")
        cpu_after, peak_rss = process_figures(operator.process.pid)
        writes = operator_writes(cp.workdir / "audit.log") - writes_before
        to_job = [jobs_seen[n] - applied[n] for n in names]
        to_pods = [pods_seen[n] - applied[n] for n in names]
        done = max(jobs_seen[n] for n in names)

        single_job, single_pods = [], []
        for i in range(args.singles):
            name = f"single-{i:03d}"
            apply(name)
            deadline = time.monotonic() + 60
            while name not in pods_seen and time.monotonic() < deadline:
                time.sleep(0.01)
            if name not in pods_seen or name not in jobs_seen:
                raise SystemExit(f"{name} got no pods within 60 s\n{operator.log()[-3000:]}")
            single_job.append(jobs_seen[name] - applied[name])
            single_pods.append(pods_seen[name] - applied[name])
            time.sleep(0.2)
        _, peak_rss = process_figures(operator.process.pid)

        print(
            f"# operator scale: {args.jobs} FineTuneJobs ({args.clients} concurrent POSTs, "
            f"{applied_all - started:.1f} s to apply), {os.cpu_count()} CPUs, no node (pods stay Pending)"
        )
        print("| measure | p50 | p99 | max |")
        print("|---|---:|---:|---:|")
        for label, values in (
            ("batch: apply -> children created (Job exists)", to_job),
            ("batch: apply -> pods created", to_pods),
            ("single job: apply -> children created", single_job),
            ("single job: apply -> pods created", single_pods),
        ):
            print(
                f"| {label} | {percentile(values, 0.5):.3f} s | {percentile(values, 0.99):.3f} s | "
                f"{max(values):.3f} s |"
            )
        rate = args.jobs / (done - started)
        total_writes = sum(writes.values())
        print(f"\njobs reconciled per second over the batch: {rate:.1f} (target >= 40)")
        print(f"single job p99 apply -> pods created: {percentile(single_pods, 0.99):.3f} s (target <= 2 s)")
        print(
            f"operator CPU: {cpu_after - cpu_before:.1f} s for the batch; peak RSS {peak_rss / 2**20:.1f} MiB "
            f"(target < 150 MB)"
        )
        print(
            f"API writes per job (batch): {total_writes / args.jobs:.2f} = "
            + ", ".join(f"{k} {v / args.jobs:.2f}" for k, v in sorted(writes.items(), key=lambda kv: -kv[1]))
        )
        print(
            json.dumps(
                {
                    "jobs": args.jobs,
                    "jobs_per_second": round(rate, 2),
                    "p50_apply_to_children_s": round(statistics.median(to_job), 3),
                    "p99_apply_to_children_s": round(percentile(to_job, 0.99), 3),
                    "p99_single_apply_to_pods_s": round(percentile(single_pods, 0.99), 3),
                    "operator_cpu_seconds": round(cpu_after - cpu_before, 2),
                    "operator_peak_rss_bytes": peak_rss,
                    "api_writes_per_job": round(total_writes / args.jobs, 2),
                }
            )
        )
    finally:
        stop.set()
        if operator is not None:
            operator.stop()
        cp.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
