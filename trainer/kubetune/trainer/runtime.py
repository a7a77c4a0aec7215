"""The process layout: accelerate's Accelerator for one process or a ``torchrun`` group (DDP or FSDP2; gloo on
CPU, nccl on GPU), numeric precision, and the ``torchrun`` command a training pod runs.

Multi-node layout comes from the standard variables: ``NNODES``, ``NODE_RANK`` (or the Indexed Job's
``JOB_COMPLETION_INDEX``), ``MASTER_ADDR`` and ``MASTER_PORT``; one process per GPU (``NPROC_PER_NODE``
overrides it; 1 on CPU). ``accelerate launch --cpu --num_processes 2`` silently starts one process, which is why
pods run ``torchrun`` directly.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kubetune.api import Distributed, Precision
from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.wire import TrainerSummary

from . import watchdog
from .errors import EXIT_HUNG, EXIT_PREEMPTED, NON_RETRYABLE, ConfigError
from .report import write_summary


def mixed_precision(precision: Precision, cuda: bool, bf16_ok: bool) -> str:
    """accelerate's mixed_precision for the spec's precision on this hardware."""
    if precision == Precision.AUTO:
        return "bf16" if cuda and bf16_ok else "no"
    if precision == Precision.FP16 and not cuda:
        raise ConfigError("spec.training.precision: FP16 needs a GPU; use BF16 or FP32 on CPU")
    return {Precision.BF16: "bf16", Precision.FP16: "fp16", Precision.FP32: "no"}[precision]


def make_accelerator(spec: FineTuneJobSpec) -> Any:
    import torch
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    precision = mixed_precision(spec.training.precision, cuda, cuda and torch.cuda.is_bf16_supported())
    kwargs: dict[str, Any] = {"mixed_precision": precision, "cpu": not cuda}
    if spec.training.distributed == Distributed.FSDP:
        from accelerate import FullyShardedDataParallelPlugin

        kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(
            fsdp_version=2, auto_wrap_policy="transformer_based_wrap", state_dict_type="FULL_STATE_DICT"
        )
    accelerator = Accelerator(**kwargs)
    if "fsdp_plugin" in kwargs:
        _fsdp_on_cpu(accelerator, kwargs["fsdp_plugin"], precision)
    return accelerator


def _fsdp_on_cpu(accelerator: Any, plugin: Any, precision: str) -> None:
    """accelerate turns FSDP on for accelerators only and runs a CPU process group as DDP (MULTI_CPU), yet
    torch's FSDP2 shards over gloo as well: switch the shared state over, which is what ``prepare`` reads."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    for state in (accelerator.state, PartialState()):
        state.distributed_type = DistributedType.FSDP
    if precision != "no":
        plugin.set_mixed_precision(precision)
    accelerator.state.fsdp_plugin = plugin


def sharded(accelerator: Any) -> bool:
    """Whether the model's parameters are sharded across ranks (FSDP): then every forward pass is a collective,
    so all ranks must run the same number of them, generation included."""
    from accelerate.utils import DistributedType

    return bool(accelerator.num_processes > 1 and accelerator.distributed_type == DistributedType.FSDP)


def torchrun_command(worker_args: list[str], env: dict[str, str] | None = None) -> list[str]:
    """``torchrun`` arguments for this pod from the standard multi-node variables."""
    env = dict(os.environ if env is None else env)
    nnodes = int(env.get("NNODES", "1"))
    node_rank = env.get("NODE_RANK") or env.get("JOB_COMPLETION_INDEX") or "0"
    nproc = env.get("NPROC_PER_NODE") or str(_gpus(env) or 1)
    command = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--nproc-per-node={nproc}"]
    if nnodes > 1:
        addr, port = env.get("MASTER_ADDR"), env.get("MASTER_PORT", "29500")
        if not addr:
            raise ConfigError("MASTER_ADDR must be set when NNODES > 1")
        command += [f"--node-rank={node_rank}", f"--master-addr={addr}", f"--master-port={port}"]
    else:
        command += ["--standalone"]
    return [*command, "-m", "kubetune.trainer", "worker", *worker_args]


def _gpus(env: dict[str, str]) -> int:
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    try:
        import torch

        return int(torch.cuda.device_count())
    except ImportError:
        return 0


EXIT_CODES_DIR = "KUBETUNE_EXIT_CODES_DIR"


def record_exit_code(code: int) -> None:
    """A worker leaves its exit code where ``supervise`` finds it (torchrun itself only ever exits 0 or 1)."""
    directory = os.environ.get(EXIT_CODES_DIR)
    if directory and code:
        Path(directory, os.environ.get("RANK", "0")).write_text(str(code))


def supervise(command: list[str], step_timeout: float | None = None) -> int:
    """Run torchrun and exit as the workers did: a non-retryable code of any local worker (78 bad spec or
    data, 3 diverged) becomes the pod's exit code, so the Job's pod failure policy can act on it. SIGTERM and
    SIGINT are passed on to torchrun, which passes them to the workers. With ``step_timeout``, the step-time
    watchdog (``watchdog``) ends the round when a local rank hangs: torchrun and its workers are killed, the
    termination message names the rank, and the pod exits ``EXIT_HUNG`` (retried from the last checkpoint)."""
    with tempfile.TemporaryDirectory(prefix="kubetune-exit-") as directory:
        codes, beats = Path(directory, "codes"), Path(directory, "heartbeats")
        codes.mkdir()
        beats.mkdir()
        env = {**os.environ, EXIT_CODES_DIR: str(codes)}
        if step_timeout:
            env[watchdog.HEARTBEAT_DIR] = str(beats)
        child = subprocess.Popen(command, env=env)
        forward = lambda signum, _frame: child.send_signal(signum)  # noqa: E731
        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            verdict = _watch(child, beats, step_timeout)
            code = child.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        workers = [int(p.read_text()) for p in codes.iterdir()]
    if verdict is not None:
        print(f"error: {verdict.message}", file=sys.stderr, flush=True)
        write_summary(TrainerSummary(phase="Failed", reason="RankHung", message=verdict.message))
        return EXIT_HUNG
    for worker in sorted(workers):
        if worker in NON_RETRYABLE:
            return worker
    if code != 0 and EXIT_PREEMPTED in workers:
        return EXIT_PREEMPTED
    return code if code >= 0 else 128 - code


def _watch(child: subprocess.Popen[bytes], beats: Path, step_timeout: float | None) -> watchdog.Hung | None:
    """Wait for ``child``; with ``step_timeout``, check the heartbeats every beat and kill the tree on a hang."""
    while child.poll() is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=watchdog.BEAT_SECONDS)
        verdict = watchdog.hung(watchdog.read_beats(beats), time.time(), step_timeout) if step_timeout else None
        if verdict is not None and child.poll() is None:
            _kill_tree(child.pid)
            return verdict
    return None


def _kill_tree(root: int) -> None:
    for pid in process_tree(root):  # SIGKILL ends a stopped process too
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants, children first, from /proc: torchrun starts each worker in a session of its
    own, so killing torchrun's process group would leave the workers running."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found[::-1]
