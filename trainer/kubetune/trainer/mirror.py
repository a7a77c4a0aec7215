"""Checkpoints mirrored to object storage: with ``spec.output.uri`` the outputs are written in the pod's scratch
space, which a replaced pod does not get back, so each checkpoint also goes to ``<uri>/checkpoints/step-N/``.

After ``checkpoint.save`` (its local atomic write), every node's first process uploads the files of the checkpoint
its node holds (rank 0's node: the weights, scheduler and state; every node: its ranks' optimizer and RNG state) in
a background thread, so training goes on while the bytes travel, then writes ``done-<first rank>.json`` naming
its ranks and files: written last, it marks that node's part complete. A checkpoint due while an upload is still
under way on any node stays local on every node (the ranks agree in one small all-gather), so training never
waits for the store: with uploads slower than the steps between checkpoints the bucket holds every k-th one.
A checkpoint is complete when the markers cover every rank; one whose upload was cut off (a killed pod) is never
resumed from. ``checkpointing.keep`` applies there: rank 0 removes what is older than the ``keep`` newest complete
checkpoints.

A run that starts with a mirror resumes from the newest complete checkpoint of its spec there (rank 0 chooses, every
rank hears the same step), downloaded whole into the local checkpoint directory by every node's first process
(the best weights on rank 0's node only: rank 0 alone rewrites them, and the other ranks read them from rank 0
when their node has none); ``baseline.json`` (the base model's figures, measured once) travels the same way, and with
``validation.restoreBest`` the best weights go with each checkpoint. Sequential stages do not mirror (yet).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import checkpoint
from .remote import errors, filesystem

log = logging.getLogger(__name__)
BASELINE = "baseline.json"


class Mirror:
    """The remote copy of one run's checkpoints under ``uri``/checkpoints."""

    def __init__(self, uri: str, options: dict[str, Any] | None, accelerator: Any) -> None:
        self.uri = f"{uri.rstrip('/')}/checkpoints"
        self.fs, self.root = filesystem(self.uri, "spec.output.uri", options)
        self.root = self.root.rstrip("/")
        self.accelerator = accelerator
        self.uploader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-upload")
        self.pending: Future[None] | None = None

    # Writing

    def push(
        self,
        local: Path,
        keep: int,
        best: Path | None = None,
        uploaded: Callable[[], None] | None = None,
        force: bool = False,
    ) -> bool:
        """Upload this node's part of the checkpoint at ``local`` in the background; ``uploaded`` is called (on
        rank 0) once its part is there. Every rank calls it: while any node is still uploading an earlier
        checkpoint, every node keeps this one locally only (all skip the same ones, so the ones uploaded are
        complete), and training never waits for the store; ``force`` (a pod being stopped) waits instead."""
        busy = self._anyone(
            self.accelerator.is_local_main_process and self.pending is not None and not self.pending.done()
        )
        if busy and not force:
            log.info("checkpoint %s kept locally only: an earlier one is still being uploaded", local.name)
            return False
        if self.accelerator.is_local_main_process:
            self.wait()
            ranks = list(range(self.accelerator.process_index, self.accelerator.process_index + _local_world()))
            main = self.accelerator.is_main_process
            staged = _stage(local, best if main else None)
            args = (staged, local.name, ranks, keep if main else 0, uploaded if main else None)
            self.pending = self.uploader.submit(self._upload, *args)
        return True

    def _anyone(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank (every rank calls it)."""
        if self.accelerator.num_processes == 1:
            return flag
        import torch.distributed as dist

        flags: list[Any] = [None] * self.accelerator.num_processes
        dist.all_gather_object(flags, flag)
        return any(flags)

    def _upload(
        self, staged: Path, name: str, ranks: list[int], keep: int, uploaded: Callable[[], None] | None
    ) -> None:
        start, target = time.monotonic(), f"{self.root}/{name}"
        try:
            with errors("spec.output.uri", f"{self.uri}/{name}", "write"):
                files = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
                self.fs.put(str(staged).rstrip("/") + "/", target, recursive=True)
                there = {str(p)[len(target) + 1 :] for p in self.fs.find(target)}
                if missing := [f for f in files if f not in there]:
                    raise OSError(f"{len(missing)} file(s) did not arrive, e.g. {missing[0]}")
                marker = {"ranks": ranks, "files": files, "world": self.accelerator.num_processes}
                self.fs.pipe_file(f"{target}/done-{ranks[0]}.json", json.dumps(marker).encode())
                if keep:
                    self._rotate(keep)
        except Exception as error:  # the next checkpoint tries again; training goes on
            log.warning("checkpoint %s was not uploaded: %s", name, error)
            return
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        if uploaded is not None:
            uploaded()
        log.info("checkpoint %s uploaded to %s in %.2f s", name, self.uri, time.monotonic() - start)

    def _rotate(self, keep: int) -> None:
        """Remove what is older than the ``keep`` newest complete checkpoints (incomplete ones among them too)."""
        steps = self._steps()
        complete = [s for s in steps if self._complete(s)]
        if len(complete) <= keep:
            return
        oldest_kept = complete[-keep]
        for step in steps:
            if step < oldest_kept:
                self.fs.rm(f"{self.root}/{step}", recursive=True)

    def put_baseline(self, out: Path) -> None:
        """The base model's figures, measured once, for a resumed run on another node (rank 0, at once)."""
        if self.accelerator.is_main_process and (out / BASELINE).is_file():
            with errors("spec.output.uri", self.uri, "write"):
                self.fs.pipe_file(f"{self.root}/{BASELINE}", (out / BASELINE).read_bytes())

    def wait(self) -> None:
        """Until the upload under way (if any) is done."""
        if self.pending is not None:
            self.pending.result()
            self.pending = None

    # Reading

    def _steps(self) -> list[str]:
        """The checkpoint directories there, oldest first."""
        try:
            listed = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return []
        names = [str(p).rstrip("/").rsplit("/", 1)[-1] for p in listed]
        return sorted(n for n in names if n.startswith(checkpoint.PREFIX))

    def _complete(self, step: str) -> dict[str, Any] | None:
        """The checkpoint's state when its markers cover every rank; None otherwise."""
        base = f"{self.root}/{step}"
        try:
            names = [str(p).rsplit("/", 1)[-1] for p in self.fs.ls(base, detail=False)]
            markers = [json.loads(self.fs.cat_file(f"{base}/{n}")) for n in names if n.startswith("done-")]
            if not markers or "state.json" not in names:
                return None
            covered = {rank for marker in markers for rank in marker["ranks"]}
            if covered != set(range(markers[0]["world"])):
                return None
            return dict(json.loads(self.fs.cat_file(f"{base}/state.json")))
        except FileNotFoundError:
            return None

    def newest(self, spec_hash: str) -> str | None:
        """The newest complete checkpoint of this spec there."""
        for step in reversed(self._steps()):
            state = self._complete(step)
            if state is not None and state.get("spec_hash") == spec_hash:
                return step
        return None

    def pull(self, out: Path, spec_hash: str) -> None:
        """Bring the newest complete checkpoint of this spec (and the baseline) into ``out`` on every node; rank 0
        chooses it, so every rank resumes from the same step."""
        chosen = [self.newest(spec_hash) if self.accelerator.is_main_process else None]
        if self.accelerator.num_processes > 1:
            import torch.distributed as dist

            dist.broadcast_object_list(chosen, src=0)
        step = chosen[0]
        if self.accelerator.is_local_main_process:
            for other in checkpoint.directory(out).glob("*"):  # a local one may be newer than any complete there
                if other.name != step:
                    shutil.rmtree(other, ignore_errors=True)
            if step is not None:
                self._download(step, out)
        self.accelerator.wait_for_everyone()

    def _download(self, step: str, out: Path) -> None:
        local = checkpoint.directory(out) / step
        partial = local.with_name(f".pull-{step}")
        shutil.rmtree(partial, ignore_errors=True)
        with errors("spec.output.uri", f"{self.uri}/{step}", "read"):
            self.fs.get(f"{self.root}/{step}/", str(partial), recursive=True)
            if self.fs.exists(f"{self.root}/{BASELINE}"):
                (out / BASELINE).write_bytes(self.fs.cat_file(f"{self.root}/{BASELINE}"))
        partial.mkdir(parents=True, exist_ok=True)
        if (partial / "best").is_dir() and self.accelerator.is_main_process:
            shutil.rmtree(out / "best", ignore_errors=True)
            (partial / "best").rename(out / "best")
        # Only rank 0 keeps the best weights up to date: a stale copy on another node would be delivered there.
        shutil.rmtree(partial / "best", ignore_errors=True)
        shutil.rmtree(local, ignore_errors=True)
        partial.rename(local)
        log.info("resuming from %s/%s", self.uri, step)


def _stage(local: Path, best: Path | None) -> Path:
    """What travels, fixed now: hard links to the checkpoint's files (the local ``keep`` may delete the checkpoint
    while its upload is under way) and a copy of the best weights (rewritten in place when they improve)."""
    staged = local.with_name(f".upload-{local.name}")
    shutil.rmtree(staged, ignore_errors=True)
    for path in sorted(local.rglob("*")):
        target = staged / path.relative_to(local)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            target.mkdir(exist_ok=True)
            continue
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
    staged.mkdir(parents=True, exist_ok=True)
    if best is not None and best.is_dir():
        shutil.copytree(best, staged / "best")
    return staged


def _local_world() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
