"""A job's prepared data: rows loaded, cleaned, split, augmented, labelled and tokenized, with each row's task.

What ``loop.Recipe`` trains and evaluates on, and what stages hand on for replay. Where the volumes name a
prepared-data root (every job run by the cli), the result is cached there as memory-mapped Arrow
(``datacache``): one process prepares, the others, a restarted pod, the next stage and a job of the same data
read it; the rows are then sequences over the mapped files, not Python lists.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kubetune.api import DataFormat, DatasetUsage, TaskType
from kubetune.api.data import SMALL_SPLIT_ROWS
from kubetune.api.spec import FineTuneJobSpec

from .augment import augment
from .batches import Tokenized, tokenize_split
from .datacache import ExampleRows, Store, TokenRows, file_digest, fingerprint, split_table, write_tables
from .errors import ConfigError
from .formats import ChatRenderer, Example
from .local import Volumes
from .mixing import tasks_of
from .rows import PrepReport, class_labels, drop_unknown_labels, examples_by_split
from .streaming import stream_prepare, streams

log = logging.getLogger(__name__)


class PreparedData:
    """Tokenized rows and the examples they came from, per split, their tasks, and the class labels."""

    def __init__(
        self,
        rows: Mapping[str, Sequence[Tokenized]],
        examples: Mapping[str, Sequence[Example]],
        labels: list[str] | None,
        tasks: dict[str, list[str]],
    ):
        self.rows, self.examples, self.labels, self.tasks = rows, examples, labels, tasks

    @classmethod
    def from_tables(cls, tables: dict[str, Any], labels: list[str] | None) -> PreparedData:
        """The data of a prepared-data cache: each split's rows and examples read from its mapped table."""
        rows = {split: TokenRows(table) for split, table in tables.items()}
        examples = {split: ExampleRows(table) for split, table in tables.items()}
        tasks = {split: table.column("task").to_pylist() for split, table in tables.items()}
        return cls(rows, examples, labels, tasks)

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


def prepare_data(
    spec: FineTuneJobSpec,
    volumes: Volumes,
    tokenizer: Any,
    report: PrepReport,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> PreparedData:
    """The job's prepared data: from the cache under ``volumes.prepared`` (prepared there first by one process
    while the others wait), or in memory when the volumes name no cache. ``progress`` is told the rows and bytes
    read, or how long this process has waited (``waitingSeconds``)."""
    report.progress = progress
    if volumes.prepared is None:
        return _prepare(spec, volumes, tokenizer, report)
    guard = spec.forgetting_guard
    digests = data_digests(spec, volumes)
    key = fingerprint(spec, digests, Path(tokenizer.name_or_path), guard.retention_ratio if guard else 0.5)
    store = Store(volumes.prepared)

    def fill(directory: Path) -> dict[str, Any]:
        if streams(spec):
            sizes = stream_prepare(spec, volumes, tokenizer, report, chat_renderer(spec, tokenizer), directory)
            if not sizes["train"]:
                raise ConfigError(no_rows_left(spec, report))
            report.warnings = split_warnings(spec, sizes)
            return report.to_dict()
        data = _prepare(spec, volumes, tokenizer, report)
        tables = {split: split_table(data.rows[split], data.examples[split], data.tasks[split]) for split in data.rows}
        write_tables(directory, tables, report.lengths)
        return report.to_dict()

    def prepare() -> None:
        store.write(key, fill)

    def wait(seconds: float) -> None:
        log.info("data: waiting %.0f s for another process preparing %s", seconds, store.path(key))
        if progress is not None:
            progress({"waitingSeconds": round(seconds)})

    prepared = store.once(key, prepare, wait)
    tables, lengths, saved = store.read(key)
    report.restore(saved, lengths, reused=None if prepared else key)
    if not prepared:
        log.info("data: reused the prepared data %s (%s)", key, store.path(key))
    return PreparedData.from_tables(tables, saved.get("labels") or None)


def data_digests(spec: FineTuneJobSpec, volumes: Volumes) -> dict[str, str]:
    """A content digest of each dataset, the prepared-data cache's key: files on a claim are hashed in blocks;
    other sources (ConfigMaps, the Hub, object storage) through their bytes."""
    import hashlib

    digests = {}
    for index, source in enumerate(spec.data.datasets):
        where = f"spec.data.datasets[{index}]"
        if source.pvc is not None:
            parts = [f"{path.name}:{file_digest(path)}" for path in volumes.dataset_paths(source.pvc, where)]
            digests[source.name] = hashlib.sha256("\n".join(parts).encode()).hexdigest()
            continue
        digest = hashlib.sha256()
        for name, raw in volumes.dataset_files(source, where):
            digest.update(name.encode() + b"\0" + hashlib.sha256(raw).digest())
        digests[source.name] = digest.hexdigest()
    return digests


def chat_renderer(spec: FineTuneJobSpec, tokenizer: Any) -> ChatRenderer | None:
    """How rows are rendered with the tokenizer's chat template, for Chat data and useChatTemplate; else None."""
    if not (spec.data.format == DataFormat.CHAT or spec.data.use_chat_template):
        return None
    if not getattr(tokenizer, "chat_template", None):
        field = "useChatTemplate" if spec.data.use_chat_template else "format: Chat"
        raise ConfigError(f"spec.data.{field} needs a tokenizer with a chat template; this model has none")

    def chat(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt))

    return chat


def _prepare(spec: FineTuneJobSpec, volumes: Volumes, tokenizer: Any, report: PrepReport) -> PreparedData:
    chat = chat_renderer(spec, tokenizer)
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
        raise ConfigError(no_rows_left(spec, report))
    report.warnings = split_warnings(spec, {name: len(kept) for name, kept in rows.items()})
    return PreparedData(rows, examples, labels, {name: tasks_of(kept, spec) for name, kept in examples.items()})


def no_rows_left(spec: FineTuneJobSpec, report: PrepReport) -> str:
    """Why no training row is left after the token-length filters, with the counts, the lengths and what to change."""
    cleaning, limit = spec.data.cleaning, spec.training.max_seq_length
    causes = {
        "tooManyTokens": f"longer than spec.training.maxSeqLength {limit} (spec.data.cleaning.overLength: Drop)",
        "tooFewTokens": f"shorter than spec.data.cleaning.minTokens {cleaning.min_tokens}",
        "nothingToTrainOnAfterTruncation": f"no trained token within the first {limit} (the prompt fills them)",
    }
    counts = [f"{report.dropped[reason]} {cause}" for reason, cause in causes.items() if report.dropped[reason]]
    lengths = report.token_lengths.get("train", {})
    shown = ", ".join(f"{name} {value}" for name, value in lengths.items()) or "none"
    fix = (
        f"raise spec.training.maxSeqLength to at least {lengths.get('p90', limit)} (the p90), "
        "or set spec.data.cleaning.overLength: Truncate"
    )
    if report.dropped["tooFewTokens"] and not report.dropped["tooManyTokens"]:
        fix = "lower spec.data.cleaning.minTokens"
    return (
        "spec.data.cleaning: no training rows are left after the token-length filters: dropped "
        f"{'; '.join(counts) or 'every row'}; training rows' token lengths: {shown}; {fix}"
    )


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
