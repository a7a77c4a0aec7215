"""Tokenization beside the reader: batches of texts encoded in worker processes while the preparing process goes
on reading, cleaning and writing.

A streaming preparation spends about a third of its time in the tokenizer and the rest in Python (JSON, cleaning,
hashing, Arrow); with one process those add up. ``TokenPool`` hands each batch's texts to a worker process (the
Rust ``tokenizers.Tokenizer`` behind the fast tokenizer, pickled to each worker once, with truncation and padding
off as transformers sets them) and gives the results back in submission order, so the rows, their order and every
drop reason are those of the inline path. The ids come back as one flat int32 array and offsets per batch (a list
of lists would cost more to pickle than to encode). Workers: the pod's CPUs (its affinity, bounded by the
container's CPU limit) minus the reader's one, at most 16 (``KUBETUNE_PREP_WORKERS`` overrides; 0 encodes inline,
as do a tokenizer without a Rust backend and a daemon process, which may not have children). Workers are spawned,
not forked: the preparing process may already hold threads (torch, the heartbeat).
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import current_process, get_context
from pathlib import Path
from typing import Any

_BACKEND: Any = None
MAX_WORKERS = 16


def workers() -> int:
    """Tokenizer worker processes for this pod: its CPUs but the reader's (``KUBETUNE_PREP_WORKERS`` wins)."""
    if (configured := os.environ.get("KUBETUNE_PREP_WORKERS")) is not None:
        return max(int(configured), 0)
    return min(max(cpus() - 1, 0), MAX_WORKERS)


def cpus(cgroup: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The CPUs this process may use: its affinity, bounded by the container's CPU limit (cgroup v2's quota)."""
    count = len(os.sched_getaffinity(0))
    try:
        quota, period = cgroup.read_text().split()[:2]
    except (OSError, ValueError):
        return count
    return count if quota == "max" else max(min(count, math.ceil(int(quota) / int(period))), 1)


def _start(backend: Any) -> None:
    global _BACKEND
    _BACKEND = backend


def _encode(texts: list[str]) -> tuple[Any, Any]:
    """The texts' token ids (no special tokens) as one flat array and the offsets of each text's ids."""
    import numpy as np

    encodings = _BACKEND.encode_batch(texts, add_special_tokens=False)
    lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
    offsets = np.zeros(len(encodings) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((i for e in encodings for i in e.ids), dtype=np.int32, count=int(offsets[-1]))
    return flat, offsets


def _split(flat: Any, offsets: Any) -> list[list[int]]:
    ids: list[int] = flat.tolist()
    bounds = offsets.tolist()
    return [ids[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)]


class TokenPool:
    """Encode batches of texts in order, in worker processes when there are any."""

    def __init__(self, tokenizer: Any) -> None:
        count = workers()
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self.pool: ProcessPoolExecutor | None = None
        self.in_flight: deque[tuple[Any, Future[tuple[Any, Any]]]] = deque()
        if count > 0 and backend is not None and not current_process().daemon:  # a daemon may have no children
            backend = _plain(backend)
            self.pool = ProcessPoolExecutor(
                count, mp_context=get_context("spawn"), initializer=_start, initargs=(backend,)
            )
            self.depth = 2 * count

    def submit(self, texts: list[str], tag: Any) -> Iterator[tuple[Any, list[list[int]]]]:
        """Queue ``texts`` (with ``tag``, given back with their ids); yields the (tag, ids) of batches done, oldest
        first, keeping a few batches in flight."""
        if self.pool is None:
            from .batches import _encode_texts  # not at the top: a spawned worker imports this module alone

            yield tag, _encode_texts(self.tokenizer, texts)
            return
        self.in_flight.append((tag, self.pool.submit(_encode, texts)))
        while len(self.in_flight) > self.depth:
            yield self._next()

    def drain(self) -> Iterator[tuple[Any, list[list[int]]]]:
        """The (tag, ids) of every batch still in flight, in order."""
        while self.in_flight:
            yield self._next()

    def _next(self) -> tuple[Any, list[list[int]]]:
        tag, future = self.in_flight.popleft()
        return tag, _split(*future.result())

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None


def _plain(backend: Any) -> Any:
    """A copy of the Rust tokenizer with no truncation and no padding (what transformers' call sets)."""
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(backend.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy
