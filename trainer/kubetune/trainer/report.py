"""Progress reporting: structured log lines, Prometheus metrics and a JSON progress document.

Rank 0 serves ``/metrics`` (Prometheus text, ``kubetune_trainer_*``) and ``/progress`` (the latest progress as
JSON) on ``$KUBETUNE_METRICS_PORT`` (0 turns the server off). The operator reads ``/progress`` from the rank-0 pod
and writes it into the FineTuneJob's status at its own pace, so training pods need no Kubernetes API access at all.
When training ends, a summary (phase, test metrics, output) goes to the container's termination message
(``$KUBETUNE_TERMINATION_LOG``, ``/dev/termination-log`` in a pod), which Kubernetes copies into the pod status.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from kubetune.api.wire import SUMMARY_OPTIONAL, TrainerProgress, TrainerSummary, wire_fields

log = logging.getLogger("kubetune.trainer")
TERMINATION_MESSAGE_LIMIT = 4096


@dataclass
class ProgressEvent:
    """One training step's progress, as logged, served (``TrainerProgress``) and shown."""

    step: int
    total_steps: int
    epoch: int
    loss: float
    learning_rate: float
    tokens_per_second: float
    eta_seconds: float
    validation_loss: float | None = None
    grad_norm: float | None = None
    best_validation_metric: float | None = None
    best_step: int | None = None
    overfitting: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        camel = {
            "total_steps": "totalSteps",
            "learning_rate": "learningRate",
            "tokens_per_second": "tokensPerSecond",
            "eta_seconds": "etaSeconds",
            "validation_loss": "validationLoss",
            "grad_norm": "gradNorm",
            "best_validation_metric": "bestValidationMetric",
            "best_step": "bestStep",
        }
        return {camel.get(k, k): v for k, v in asdict(self).items() if v is not None}


class TrainerMetrics:
    """The trainer's Prometheus metrics, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(f"kubetune_trainer_{name}", doc, labels, registry=self.registry)

        self.step = gauge("step", "Optimizer steps done.")
        self.total_steps = gauge("total_steps", "Optimizer steps planned.")
        self.epoch = gauge("epoch", "Current epoch (0-based).")
        self.loss = gauge("loss", "Training loss of the latest step.")
        self.learning_rate = gauge("learning_rate", "Learning rate of the latest step.")
        self.tokens_per_second = gauge("tokens_per_second", "Training throughput over all ranks.")
        self.eta = gauge("eta_seconds", "Estimated seconds until training ends.")
        self.eval_loss = gauge("eval_loss", "Latest evaluation loss by split.", ("split",))
        self.tokens = Counter("kubetune_trainer_tokens", "Tokens trained on.", registry=self.registry)
        self.checkpoints = Counter("kubetune_trainer_checkpoints", "Checkpoints written.", registry=self.registry)
        self.peak_memory = gauge(
            "peak_memory_bytes",
            "Peak memory of rank 0: host (resident set) and gpu (allocated by torch).",
            ("device",),
        )
        self.stage = gauge("stage", "Index of the stage running (sequential tuning; 0-based).")
        self.resumed_from_step = gauge(
            "resumed_from_step", "Step of the checkpoint this process resumed from (0: none)."
        )


class Reporter:
    """Fans progress out to log lines, Prometheus, the /progress document and an optional callback."""

    def __init__(self, enabled: bool, callback: Callable[[ProgressEvent], None] | None = None) -> None:
        self.enabled = enabled
        self.callback = callback
        self.metrics = TrainerMetrics()
        self.latest = TrainerProgress()
        self.server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    def serve(self, port: int, address: str = "") -> int:
        """Start the /metrics and /progress server on ``address:port`` (port 0: pick one; address "": all
        interfaces); returns the port."""
        reporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/metrics"):
                    body, kind = generate_latest(reporter.metrics.registry), CONTENT_TYPE_LATEST
                elif self.path.startswith("/progress"):
                    with reporter._lock:
                        body, kind = json.dumps(reporter.latest.to_wire()).encode(), "application/json"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((address, port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return int(self.server.server_address[1])

    def phase(self, phase: str, **fields: Any) -> None:
        """A phase change (Preparing, Baseline, Training, Evaluating, Saving, Succeeded, Failed)."""
        if not self.enabled:
            return
        self._update(phase=phase, **fields)
        log.info(json.dumps({"event": "phase", "phase": phase, **fields}))

    def progress(self, event: ProgressEvent, tokens: int) -> None:
        if not self.enabled:
            return
        m = self.metrics
        m.step.set(event.step)
        m.total_steps.set(event.total_steps)
        m.epoch.set(event.epoch)
        m.loss.set(event.loss)
        m.learning_rate.set(event.learning_rate)
        m.tokens_per_second.set(event.tokens_per_second)
        m.eta.set(event.eta_seconds)
        m.tokens.inc(tokens)
        for device, peak in _peak_memory().items():
            m.peak_memory.labels(device=device).set(peak)
        if event.validation_loss is not None:
            m.eval_loss.labels(split="validation").set(event.validation_loss)
        self._update(phase="Training", updated=time.time(), **event.to_dict())
        log.info(json.dumps({"event": "progress", **event.to_dict()}))
        if self.callback is not None:
            self.callback(event)

    def stage(self, name: str | None, index: int, stages: list[dict[str, Any]]) -> None:
        """Sequential tuning moved to stage ``name`` (None: all done); ``stages`` is every stage's state so far."""
        if not self.enabled:
            return
        self.metrics.stage.set(index)
        self._update(stage=name, stageIndex=index, stages=[dict(s) for s in stages])
        log.info(json.dumps({"event": "stage", "stage": name, "index": index}))

    def checkpoint(self, step: int) -> None:
        """A checkpoint of ``step`` was written (``checkpointStep`` in /progress)."""
        if not self.enabled:
            return
        self.metrics.checkpoints.inc()
        self._update(checkpointStep=step, checkpointTime=time.time())

    def finish(self, summary: TrainerSummary, path: Path | None = None) -> None:
        """The final summary: logged, served, and written as the termination message (kept under 4 KiB)."""
        if not self.enabled:
            return
        self._update(phase=summary.phase)
        log.info(json.dumps({"event": "finished", **summary.to_wire()}))
        write_summary(summary, path)

    def _update(self, **fields: Any) -> None:
        """Set ``fields`` (camelCase) of the /progress document; a name the document does not have is a bug."""
        if unknown := set(fields) - wire_fields(TrainerProgress):
            raise ValueError(f"not fields of TrainerProgress: {sorted(unknown)}")
        with self._lock:
            self.latest = TrainerProgress.model_validate({**self.latest.to_wire(), **fields})

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def _peak_memory() -> dict[str, int]:
    """Peak host RSS of this process and, on CUDA, the peak memory torch allocated on its device."""
    peaks = {"host": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}  # Linux reports KiB
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        peaks["gpu"] = int(torch.cuda.max_memory_allocated())
    return peaks


def write_summary(summary: TrainerSummary, path: Path | None = None) -> None:
    """``summary`` as the container's termination message (kept under 4 KiB: the least needed parts go first)."""
    target = path or _termination_log()
    if target is None:
        return
    document = summary.to_wire()
    text = json.dumps(document, separators=(",", ":"))
    for key in SUMMARY_OPTIONAL:
        if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
            break
        document.pop(key, None)
        text = json.dumps(document, separators=(",", ":"))
    with contextlib.suppress(OSError):
        target.write_text(text[:TERMINATION_MESSAGE_LIMIT])


def _termination_log() -> Path | None:
    configured = os.environ.get("KUBETUNE_TERMINATION_LOG")
    if configured:
        return Path(configured)
    default = Path("/dev/termination-log")
    return default if default.exists() and os.access(default, os.W_OK) else None
