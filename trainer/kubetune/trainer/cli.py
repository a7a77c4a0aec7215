"""The ``kubetune`` command.

- ``kubetune run MANIFEST``: runs a FineTuneJob on this machine with a progress bar; outputs in ``runs/<name>/``.
  The file may also hold the ConfigMaps its datasets name, as ``kubectl apply -f`` would take it.
- ``kubetune launch [MANIFEST]``: what a training pod runs: ``torchrun`` with the pod's multi-node layout,
  starting one ``worker`` per GPU (one on CPU). Without MANIFEST the job is read from ``$KUBETUNE_JOB`` (JSON).
- ``kubetune worker [MANIFEST]``: one training process (a torchrun rank).
- ``kubetune serve [MANIFEST]``: serve a finished job's model with an OpenAI-compatible API (``serve.py``).
- ``kubetune prepare MANIFEST``: the job's data preparation alone: ``prep_report.json`` and a summary of the rows
  kept and dropped (``dataprep.py``); bad data exits 78 as training would, without loading the model.

Exit codes: 0 done, 78 bad spec or data (the message names the field or row), 3 training diverged,
4 retention regressed beyond spec.forgettingGuard.maxRegression (outputs saved), 143 stopped by SIGTERM after
a checkpoint (a new run resumes), 1 anything else.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kubetune.api import FineTuneJob, credentials, describe, parse_job
from kubetune.api.wire import HEADLINE, FinalFigures, TrainerSummary

from . import outputs
from .errors import (
    EXIT_CONFIG,
    EXIT_DIVERGED,
    EXIT_PREEMPTED,
    EXIT_REGRESSED,
    ConfigError,
    DivergedError,
    PreemptedError,
    RegressedError,
)
from .evaluate import headline
from .local import Volumes
from .plots import PLOTS, columns
from .remote import upload
from .report import ProgressEvent, Reporter
from .runtime import record_exit_code, supervise, torchrun_command

LOCAL_COMMANDS = ("run", "prepare")
"""Commands run by hand on this machine (quiet logs, no metrics port, claims from --volume), not in a pod."""
RUN_FILES: tuple[str, ...] = (
    "checkpoints",
    "best",
    "adapter",
    "model",
    "merged",
    "metrics.json",
    "prep_report.json",
    "baseline.json",
    "stages",
)
RUN_FILES += ("README.md", "report.html", *PLOTS, outputs.COMPLETE)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubetune", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "run a FineTuneJob manifest on this machine"),
        ("launch", "start torchrun workers for this pod (what training pods run)"),
        ("worker", "one training process (a torchrun rank)"),
        ("serve", "serve a finished job's model (OpenAI-compatible API)"),
        ("prepare", "prepare a FineTuneJob's data only: prep_report.json and a summary"),
    ):
        command = sub.add_parser(name, help=text)
        command.add_argument("manifest", type=Path, nargs=None if name in LOCAL_COMMANDS else "?")
        command.add_argument("--output", type=Path, help="output directory (default: runs/<name> or spec.output)")
        command.add_argument(
            "--volume",
            action="append",
            default=[],
            metavar="CLAIM=DIR",
            help="local directory standing for a PersistentVolumeClaim (default: the current directory)",
        )
        command.add_argument(
            "--metrics-port",
            type=int,
            default=int(os.environ.get("KUBETUNE_METRICS_PORT", "0" if name in LOCAL_COMMANDS else "9400")),
            help="serve /metrics and /progress on this port on rank 0 (0: off)",
        )
        if name == "serve":
            command.add_argument("--port", type=int, default=8000, help="port of the API")
            command.add_argument("--merged", action="store_true", help="serve the merged model, not the adapter")
            command.add_argument("--max-new-tokens", type=int, default=256, help="most tokens one request generates")
    return parser


def read_manifest(path: Path | None) -> tuple[FineTuneJob, dict[str, dict[str, str]]]:
    """The FineTuneJob (and any ConfigMaps) of a YAML file, or of ``$KUBETUNE_JOB``; raises ConfigError."""
    if path is None:
        docs = [json.loads(os.environ["KUBETUNE_JOB"])] if os.environ.get("KUBETUNE_JOB") else []
        where = "$KUBETUNE_JOB"
    else:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        where = str(path)
    jobs = [d for d in docs if isinstance(d, dict) and d.get("kind") == "FineTuneJob"]
    if len(jobs) != 1:
        raise ConfigError(f"{where}: expected exactly one FineTuneJob, found {len(jobs)}")
    try:
        job = parse_job(jobs[0])
    except ValidationError as error:
        raise ConfigError(f"{where} is not a valid FineTuneJob:\n{describe(error)}") from error
    config_maps = {
        d["metadata"]["name"]: {k: str(v) for k, v in (d.get("data") or {}).items()}
        for d in docs
        if isinstance(d, dict) and d.get("kind") == "ConfigMap"
    }
    return job, config_maps


def output_dir(job: FineTuneJob, args: argparse.Namespace, volumes: Volumes) -> Path:
    if args.output is not None:
        return Path(args.output)
    if args.command in LOCAL_COMMANDS:
        return Path("runs") / job.name
    if job.spec.output is not None and job.spec.output.pvc is not None:
        return volumes.pvc(job.spec.output.pvc)
    return volumes.scratch / "output" / job.name


def prepared_root(job: FineTuneJob, volumes: Volumes, out: Path) -> Path:
    """Where the job's prepared data is cached: spec.data.cache, else beside the outputs (``<out>/.prepared``),
    in scratch space when the outputs go to a URI (they are uploaded whole)."""
    if job.spec.data.cache is not None:
        return volumes.pvc(job.spec.data.cache)
    if job.spec.output is not None and job.spec.output.uri is not None:
        return volumes.scratch / "prepared"
    return out / ".prepared"


THIRD_PARTY = ("bitsandbytes", "transformers", "peft", "accelerate", "torch", "huggingface_hub")


class ThirdPartyAtDebug(logging.Filter):
    """Third-party warnings that are not the user's concern (bitsandbytes' optional CPU kernels, deprecation
    notices inside transformers) are logged at DEBUG: shown with ``KUBETUNE_LOG_LEVEL=DEBUG``, hidden otherwise.
    Errors always show."""

    def filter(self, record: logging.LogRecord) -> bool:
        third_party = record.name.startswith(THIRD_PARTY) or (
            record.name == "py.warnings" and "site-packages" in record.getMessage()
        )
        if record.levelno >= logging.ERROR or not third_party:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


def quiet_third_party() -> None:
    """Route third-party warnings (and Python warnings) through ``ThirdPartyAtDebug``."""
    level = os.environ.get("KUBETUNE_LOG_LEVEL")
    if level:
        logging.getLogger().setLevel(level.upper())
    logging.captureWarnings(True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(ThirdPartyAtDebug())
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_default_handler()  # its own handler bypasses the root's filter
        transformers_logging.enable_propagation()
        transformers_logging.disable_progress_bar()  # "Loading weights" bars under the run's own


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    local = args.command in LOCAL_COMMANDS
    logging.basicConfig(level=logging.WARNING if local else logging.INFO, format="%(message)s")
    quiet_third_party()
    code = _exit_code(args)
    record_exit_code(code)
    return code


def _exit_code(args: argparse.Namespace) -> int:
    try:
        return _main(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except DivergedError as error:
        print(f"error: training diverged: {error}", file=sys.stderr)
        return EXIT_DIVERGED
    except PreemptedError as error:
        print(f"stopped: {error}", file=sys.stderr)
        return EXIT_PREEMPTED
    except RegressedError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_REGRESSED


def _main(args: argparse.Namespace) -> int:
    job, config_maps = read_manifest(args.manifest)
    if args.command == "launch":
        worker_args = [str(args.manifest)] if args.manifest else []
        worker_args += [f"--volume={v}" for v in args.volume] + [f"--metrics-port={args.metrics_port}"]
        worker_args += [f"--output={args.output}"] if args.output else []
        command = torchrun_command(worker_args)
        print(" ".join(command), file=sys.stderr, flush=True)
        return supervise(command, job.spec.training.step_timeout_seconds)
    claims = {k: Path(v) for k, v in (item.split("=", 1) for item in args.volume)}
    volumes = Volumes(claims=claims) if args.command in LOCAL_COMMANDS or claims else Volumes.in_pod()
    volumes.config_maps = config_maps
    volumes.credentials = credentials.slots(job.spec)
    volumes.hub_tokens = credentials.hub_tokens(job.spec)
    out = output_dir(job, args, volumes)
    volumes.prepared = prepared_root(job, volumes, out)
    if args.command == "serve":
        return _serve(job, volumes, out, args)
    if args.command == "prepare":
        from .dataprep import prepare_only

        prepare_only(job, volumes, out)
        return 0
    if outputs.finished(out, job.spec):
        if args.command != "run":
            print(f"{job.name}: {out} already holds the finished run of this spec", file=sys.stderr)
            _deliver(job, volumes, out)  # again: the last try may have failed to upload it
            return 0
        for name in RUN_FILES:  # a local re-run starts over
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    rank0 = os.environ.get("RANK", "0") == "0"
    bar = None
    if args.command == "run":
        from tqdm import tqdm

        bar = tqdm(desc=job.name, unit="step", dynamic_ncols=True)
    reporter = Reporter(enabled=rank0, callback=functools.partial(_show, bar) if bar is not None else None)
    if rank0 and args.metrics_port:
        reporter.serve(args.metrics_port, os.environ.get("KUBETUNE_METRICS_ADDRESS", ""))
    from .stages import run

    try:
        _refuse_overwrite(args, job, volumes, out)
        metrics = run(job, volumes, out, reporter)
        _deliver(job, volumes, out)
    except (ConfigError, DivergedError, RegressedError) as error:
        reporter.finish(TrainerSummary(phase="Failed", reason=type(error).__name__, message=str(error)[:1000]))
        raise
    finally:
        if bar is not None:
            bar.close()
        reporter.close()
    location = job.spec.output.uri if job.spec.output and job.spec.output.uri else str(out)
    final = {**_final(reporter), **_delivered(metrics)}
    summary = {"phase": "Succeeded", "output": location, "steps": metrics["steps"], "final": final}
    reporter.finish(TrainerSummary.model_validate({**summary, **_results(metrics)}))
    if args.command == "run":
        _print_summary(metrics, out)
    return 0


def _refuse_overwrite(args: argparse.Namespace, job: FineTuneJob, volumes: Volumes, out: Path) -> None:
    """A worker never replaces a finished model of another spec (a local ``run`` writes where it is told)."""
    if args.command != "run" and job.spec.output is not None:
        outputs.refuse_overwrite(out, job, volumes.storage_options(job.spec.output))


def _deliver(job: FineTuneJob, volumes: Volumes, out: Path) -> None:
    """Copy the outputs to ``spec.output.uri`` (rank 0 only; the checkpoints went up as they were written, see
    ``mirror``); a failure keeps them in ``out`` for the next try."""
    if os.environ.get("RANK", "0") == "0" and job.spec.output is not None and job.spec.output.uri is not None:
        upload(out, job.spec.output.uri, options=volumes.storage_options(job.spec.output), skip=("checkpoints",))


def _serve(job: FineTuneJob, volumes: Volumes, out: Path, args: argparse.Namespace) -> int:
    """Serve until SIGTERM (a Deployment's pod being stopped)."""
    import signal
    import threading

    from .serve import Model, serve

    if not outputs.finished(out, job.spec):
        raise ConfigError(f"{job.name}: {out} holds no finished run of this spec; nothing to serve")
    address = os.environ.get("KUBETUNE_SERVE_ADDRESS", "")  # the pod IP in a pod: all interfaces otherwise
    server = serve(Model(job, volumes, out, args.merged), args.port, args.max_new_tokens, address)
    print(f"serving {job.name} on :{server.server_address[1]}", file=sys.stderr, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    server.shutdown()
    return 0


def _final(reporter: Reporter) -> dict[str, Any]:
    """The last step's figures, so a run that ends between two of the operator's reads still reports them."""
    latest = reporter.latest.model_dump(exclude_none=True)
    return {name: latest[name] for name in FinalFigures.model_fields if name in latest}


def _delivered(metrics: dict[str, Any]) -> dict[str, Any]:
    """Which step's weights were delivered, and the validation metric at the last validation."""
    result: dict[str, Any] = {}
    if metrics.get("delivered"):
        result["delivered_step"] = metrics["delivered"]["step"]
    last = metrics.get("lastValidation")
    if last:
        result["last_validation_metric"] = next(v for k, v in last.items() if k != "step")
    return result


def _results(metrics: dict[str, Any]) -> dict[str, Any]:
    """The evaluation part of the final summary: test, baseline and few-shot headline figures, per task and per
    stage, retention and the overfitting verdict (parts a run does not have are left out)."""
    results: dict[str, Any] = {"test": headline(metrics["test"]), "baseline": headline(metrics["baseline"])}
    results["samples"] = (metrics["test"] or {}).get("samples")
    if metrics.get("fewShot"):
        results["fewShot"], results["fewShotK"] = headline(metrics["fewShot"]), metrics["fewShot"].get("k")
    if metrics.get("tasks"):
        results["tasks"] = {task: headline(values) for task, values in metrics["tasks"].items()}
    if metrics.get("retention"):
        results["retention"] = metrics["retention"]
    if metrics["history"]["validation"]:
        results["overfitting"] = metrics["overfitting"]
    results["dataWarnings"] = metrics.get("dataWarnings") or []
    if metrics.get("preparedData"):
        results["preparedData"] = metrics["preparedData"]
    if metrics.get("stages"):
        results["stages"] = [{**s, "test": headline(s.get("test", {}))} for s in metrics["stages"]]
    return results


def _show(bar: Any, event: ProgressEvent) -> None:
    """Moves the local run's progress bar to ``event``."""
    bar.total = event.total_steps
    bar.set_postfix(loss=f"{event.loss:.3f}", lr=f"{event.learning_rate:.2e}")
    bar.update(event.step - bar.n)


def _print_summary(metrics: dict[str, Any], out: Path) -> None:
    """The final lines of a local run: base model zero-shot, few-shot and tuned test metrics side by side, each
    with its 95% bootstrap interval, then tasks, stages, retention and warnings."""
    print(f"done: {metrics['steps']} steps in {metrics['seconds']}s; outputs in {out}/ (open {out}/report.html)")
    delivered, best, last = metrics.get("delivered"), metrics.get("bestValidation"), metrics.get("lastValidation")
    if delivered and best and last:
        metric = next(k for k in best if k != "step")
        what = "the best validation" if delivered["of"] == "BestValidation" else "the last step"
        print(
            f"  delivered: step {delivered['step']} ({what}); validation {metric} {best[metric]:.4f} at step "
            f"{best['step']}, {last[metric]:.4f} at the last validation (step {last['step']})"
        )
    compared = columns(metrics)
    keys = [key for key in HEADLINE if key in metrics["test"]]
    if keys:
        width = max(24, *(len(label) + 2 for label, _ in compared))
        print(f"  {'test':<16}" + "".join(f"{label:>{width}}" for label, _ in compared))
        for key in keys:
            cells = []
            for _, values in compared:
                interval = (values.get("intervals") or {}).get(key)
                text = f"{values[key]:.4f}" if key in values else "-"
                cells.append(f"{text} [{interval[0]:.2f}, {interval[1]:.2f}]" if interval and key in values else text)
            print(f"  {key:<16}" + "".join(f"{cell:>{width}}" for cell in cells))
    for task, values in (metrics.get("tasks") or {}).items():
        print(f"  task {task}: " + ", ".join(f"{k} {v:.4f}" for k, v in headline(values).items()))
    for stage in metrics.get("stages") or []:
        print(f"  stage {stage['name']}: {stage.get('steps')} steps, test {stage.get('test')}")
    if metrics.get("retention"):
        r = metrics["retention"]
        print(f"  retention loss {r['before']:.4f} -> {r['after']:.4f} ({r['regression']:+.1%})")
    for warning in metrics.get("dataWarnings") or []:
        print(f"  warning: {warning}")
    if (metrics.get("overfitting") or {}).get("detected"):
        print(f"  warning: overfitting: {metrics['overfitting']}")
