"""A job's prepared data: rows loaded, cleaned, split, augmented, labelled and tokenized, with each row's task.

What ``loop.Recipe`` trains and evaluates on, and what stages hand on for replay.
"""

from __future__ import annotations

from typing import Any

from kubetune.api import DataFormat, DatasetUsage, TaskType
from kubetune.api.data import SMALL_SPLIT_ROWS
from kubetune.api.spec import FineTuneJobSpec

from .augment import augment
from .batches import Tokenized, tokenize_split
from .errors import ConfigError
from .formats import Example
from .local import Volumes
from .mixing import tasks_of
from .rows import PrepReport, class_labels, drop_unknown_labels, examples_by_split


class PreparedData:
    """Tokenized rows and the examples they came from, per split, their tasks, and the class labels."""

    def __init__(
        self,
        rows: dict[str, list[Tokenized]],
        examples: dict[str, list[Example]],
        labels: list[str] | None,
        tasks: dict[str, list[str]],
    ):
        self.rows, self.examples, self.labels, self.tasks = rows, examples, labels, tasks

    def by_task(self, split: str) -> dict[str, tuple[list[Tokenized], list[Example]]]:
        """The split's rows and examples per task; empty unless the job has several tasks."""
        names = sorted(set(self.tasks["train"]))
        if len(names) < 2:
            return {}
        out: dict[str, tuple[list[Tokenized], list[Example]]] = {}
        for row, example, task in zip(self.rows[split], self.examples[split], self.tasks[split], strict=True):
            rows, examples = out.setdefault(task, ([], []))
            rows.append(row)
            examples.append(example)
        return out


def prepare_data(spec: FineTuneJobSpec, volumes: Volumes, tokenizer: Any, report: PrepReport) -> PreparedData:
    chat = None
    if spec.data.format == DataFormat.CHAT or spec.data.use_chat_template:
        if not getattr(tokenizer, "chat_template", None):
            field = "useChatTemplate" if spec.data.use_chat_template else "format: Chat"
            raise ConfigError(f"spec.data.{field} needs a tokenizer with a chat template; this model has none")

        def chat(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
            return str(
                tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
            )

    guard = spec.forgetting_guard
    splits = examples_by_split(spec.data, volumes, report, chat, guard.retention_ratio if guard else 0.5)
    if spec.data.augmentation is not None:
        splits["train"], report.augmented["added"] = augment(splits["train"], spec.data, chat)
        report.augmented["copies"] = spec.data.augmentation.copies
    labels = None
    if spec.task.type == TaskType.CLASSIFICATION:
        labels = class_labels(spec.task.labels, splits["train"], report)
        splits = drop_unknown_labels(splits, labels, report)
    rows, examples = {}, {}
    for name, split in splits.items():
        rows[name], examples[name] = tokenize_split(
            split, tokenizer, spec.training.max_seq_length, spec.data.cleaning, report, name, labels
        )
    if not rows["train"]:
        raise ConfigError("spec.data.cleaning: no training rows are left after the token-length filters")
    report.warnings = split_warnings(spec, {name: len(kept) for name, kept in rows.items()})
    return PreparedData(rows, examples, labels, {name: tasks_of(kept, spec) for name, kept in examples.items()})


def split_warnings(spec: FineTuneJobSpec, sizes: dict[str, int]) -> list[str]:
    """What to tell the user about splits too small to measure with: empty, or under SMALL_SPLIT_ROWS rows, and
    what to change. The test split counts only when evaluation is enabled; a split the spec turns off (ratio 0
    and no dataset of that usage) is not warned about."""
    ratios = {"validation": spec.data.split.validation_ratio, "test": spec.data.split.test_ratio}
    usages = {"validation": DatasetUsage.VALIDATION, "test": DatasetUsage.TEST}
    lost = {
        "validation": "no validation loss, no best step (restoreBest) and no early stopping",
        "test": "no test metrics and no comparison with the base model",
    }
    warnings = []
    if sizes.get("train", 0) < SMALL_SPLIT_ROWS:
        warnings.append(
            f"train split has {sizes.get('train', 0)} rows (fewer than {SMALL_SPLIT_ROWS}): the model "
            "will learn little; add rows to spec.data.datasets"
        )
    for name in ("validation", "test"):
        if name == "test" and not spec.evaluation.enabled:
            continue
        if ratios[name] == 0 and not any(d.usage == usages[name] for d in spec.data.datasets):
            continue
        fix = (
            f"raise spec.data.split.{name}Ratio, add rows, or add a dataset with usage {usages[name]} "
            f"of at least {SMALL_SPLIT_ROWS} rows"
        )
        n = sizes.get(name, 0)
        if n == 0:
            warnings.append(f"{name} split is empty: {lost[name]}; {fix}")
        elif n < SMALL_SPLIT_ROWS:
            warnings.append(f"{name} split has {n} rows (fewer than {SMALL_SPLIT_ROWS}): its figures are noisy; {fix}")
    return warnings
