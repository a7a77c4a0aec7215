"""Multitask mixing and replay: which training rows one epoch holds.

Each task (``datasets[].task``, the dataset's name by default) gets a share of the epoch: Proportional
(weight x rows), Weighted (weight) or Temperature ((weight x rows)^(1/T)). The epoch keeps the number of training
rows; a task whose share asks for more rows than it has is oversampled (every row once, then seeded draws), one
that asks for fewer is undersampled. With every weight 1 and Proportional mixing the epoch is the training split
itself. The forgetting guard then adds ``replayRatio`` x rows drawn from the replay pool (General rows, and
earlier stages' training rows). Everything is seeded by the epoch, so a resumed run sees the same epochs.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

from kubetune.api import DatasetUsage
from kubetune.api.enums import Mixing
from kubetune.api.spec import FineTuneJobSpec

from .batches import Tokenized
from .datacache import Chain, Picked
from .formats import Example


def task_names(spec: FineTuneJobSpec) -> dict[str, str]:
    """Dataset name -> task name."""
    return {d.name: d.task_name for d in spec.data.datasets}


def tasks_of(examples: list[Example], spec: FineTuneJobSpec) -> list[str]:
    """The task of each example, in order."""
    names = task_names(spec)
    return [names.get(example.source, example.source) for example in examples]


def shares(spec: FineTuneJobSpec, rows_per_task: dict[str, int]) -> dict[str, float]:
    """Each task's share of an epoch's rows under ``spec.data.mixing``."""
    weights: dict[str, float] = {}
    for task in rows_per_task:
        own = [d.weight for d in spec.data.datasets if d.task_name == task and d.usage != DatasetUsage.GENERAL]
        weights[task] = sum(own) / len(own) if own else 1.0
    mixing = spec.data.mixing
    if mixing.strategy == Mixing.WEIGHTED:
        raw = dict(weights)
    elif mixing.strategy == Mixing.TEMPERATURE:
        raw = {t: (weights[t] * n) ** (1.0 / mixing.temperature) for t, n in rows_per_task.items()}
    else:
        raw = {t: weights[t] * n for t, n in rows_per_task.items()}
    total = sum(raw.values()) or 1.0
    return {t: v / total for t, v in raw.items()}


def _draw(indices: list[int], count: int, rng: random.Random) -> list[int]:
    """``count`` of ``indices``: each once (shuffled) as long as they last, then seeded draws."""
    shuffled = indices[:]
    rng.shuffle(shuffled)
    out = shuffled * (count // len(shuffled)) if shuffled else []
    return out + shuffled[: count - len(out)]


class EpochPlan:
    """The rows of each epoch: mixed tasks plus replay."""

    def __init__(
        self,
        spec: FineTuneJobSpec,
        rows: Sequence[Tokenized],
        tasks: list[str],
        replay: Sequence[Tokenized],
        seed: int,
    ) -> None:
        self.rows, self.tasks, self.replay, self.seed = rows, tasks, replay, seed
        counts = Counter(tasks)
        self.shares = shares(spec, dict(counts))
        natural = {t: n / len(rows) for t, n in counts.items()}
        self.identity = all(abs(self.shares[t] - natural[t]) < 1e-9 for t in counts)
        self.counts = self._counts(len(rows))
        guard = spec.forgetting_guard
        self.replay_rows = round(len(rows) * guard.replay_ratio) if guard is not None and replay else 0

    def _counts(self, total: int) -> dict[str, int]:
        """Rows per task adding up to ``total`` (largest remainders)."""
        exact = {t: share * total for t, share in self.shares.items()}
        counts = {t: int(v) for t, v in exact.items()}
        for t in sorted(exact, key=lambda t: exact[t] - counts[t], reverse=True)[: total - sum(counts.values())]:
            counts[t] += 1
        return counts

    def __len__(self) -> int:
        return len(self.rows) + self.replay_rows

    def epoch(self, epoch: int) -> Sequence[Tokenized]:
        """The epoch's rows in draw order, as indices into the training and replay rows (nothing is copied)."""
        rng = random.Random(f"{self.seed}-{epoch}")
        picked: Sequence[int]
        if self.identity:
            picked = range(len(self.rows))
        else:
            by_task: dict[str, list[int]] = {}
            for i, task in enumerate(self.tasks):
                by_task.setdefault(task, []).append(i)
            picked = [i for task in sorted(by_task) for i in _draw(by_task[task], self.counts[task], rng)]
        replayed = _draw(list(range(len(self.replay))), self.replay_rows, rng)
        return Chain(Picked(self.rows, picked), Picked(self.replay, replayed))

    def report(self, splits: dict[str, list[str]]) -> dict[str, Any]:
        """The prep report's view of the tasks: rows per split, natural and sampled shares, imbalance."""
        train = Counter(self.tasks)
        per_task = {
            task: {
                "rows": {name: tasks.count(task) for name, tasks in splits.items()},
                "naturalShare": round(train[task] / len(self.tasks), 4),
                "sampledShare": round(self.shares[task], 4),
                "rowsPerEpoch": self.counts[task],
            }
            for task in sorted(train)
        }
        return {
            "tasks": per_task,
            "imbalanceRatio": round(max(train.values()) / min(train.values()), 2),
            "replayRowsPerEpoch": self.replay_rows,
        }
