"""The training recipe, read top to bottom in ``Recipe.run``: prepare the data (``prepare``) and plan the steps, set
up the model, optimizer and schedule, resume from a checkpoint or measure the base model (zero-shot, few-shot,
retention, passkey: ``measure``), then one optimizer step after another (AdamW, warmup + schedule, gradient
accumulation, clipping, label smoothing, NEFTune, task mixing and replay), each followed by maybe-validate (per
task; early stopping and the divergence guard in ``guards``), report and maybe-checkpoint; then evaluate on the test
split (per task) and save (``saving``). Runs the same in one process and under ``torchrun`` (accelerate's DDP or
FSDP). Sequential stages run it once per stage (``stages.py``), handing their own inputs in a ``StageContext``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api import FineTuneJob, TaskType, ValidationMetric
from kubetune.api.enums import CheckpointUpload, DataChangeAction, RegressionAction

from . import checkpoint, guards, measure, outputs
from .augment import add_neftune
from .batches import Tokenized, shard_chunks
from .checkpoint import TrainerState
from .datacache import Chain
from .errors import ConfigError, DataChangedError, PreemptedError, RegressedError
from .hooks import HOOKS
from .local import Volumes
from .mirror import Mirror
from .mixing import EpochPlan
from .model import load, load_tokenizer
from .pooling import packs_classification
from .prepare import PreparedData, prepare_data
from .report import ProgressEvent, Reporter
from .rows import PrepReport
from .runtime import make_accelerator
from .saving import gathered_state, save, save_weights
from .step import accumulate, micro_batch
from .tiny import ensure_model
from .watchdog import Heartbeat

log = logging.getLogger(__name__)
METRIC_KEYS = {ValidationMetric.LOSS: "loss", ValidationMetric.ACCURACY: "accuracy", ValidationMetric.F1: "f1"}
SCHEDULERS = {"Linear": "linear", "Cosine": "cosine", "Constant": "constant_with_warmup"}


@dataclass
class StageContext:
    """What a sequential stage hands to its run of the recipe; a single run leaves every field at its default."""

    model_path: Path | None = None
    """The previous stage's output, to start from instead of spec.model."""
    replay: Sequence[Tokenized] = field(default_factory=list)
    """Earlier stages' training rows, mixed in against forgetting."""
    on_data: Callable[[PreparedData], None] | None = None
    """Receives this stage's prepared data (the next stages replay it)."""
    merge_adapter: bool = False
    """Save the merged model too (the next stage starts from it)."""
    in_stage: bool = False
    """A stage may lack General rows of its format for the retention set; a single run may not."""


@dataclass
class Plan:
    """How many optimizer steps, and when to validate and checkpoint."""

    epochs: EpochPlan
    steps_per_epoch: int
    total_steps: int
    warmup: int
    validate_every: int
    checkpoint_every: int


def train(
    job: FineTuneJob, volumes: Volumes, out: Path, reporter: Reporter | None = None, stage: StageContext | None = None
) -> dict[str, Any]:
    """Run the whole recipe for ``job``; write outputs under ``out``; return the metrics."""
    return Recipe(job, volumes, out, reporter, stage or StageContext()).run()


class Recipe:
    """One run of the recipe; its steps are the methods, in the order ``run`` calls them."""

    def __init__(self, job: FineTuneJob, volumes: Volumes, out: Path, reporter: Reporter | None, stage: StageContext):
        self.job, self.spec, self.hp = job, job.spec, job.spec.training
        self.volumes, self.out, self.stage = volumes, out, stage
        self.accelerator = make_accelerator(self.spec)
        self.main, self.world = self.accelerator.is_main_process, self.accelerator.num_processes
        self.reporter = reporter or Reporter(enabled=self.main)
        self.reporter.enabled = self.main
        self.classification = self.spec.task.type == TaskType.CLASSIFICATION
        self.metric_key = METRIC_KEYS[self.spec.validation.metric]
        self.divergence = guards.DivergenceGuard()
        self.early_stopping = guards.EarlyStopping(
            higher_is_better=self.spec.validation.metric != ValidationMetric.LOSS,
            settings=self.spec.validation.early_stopping,
        )
        self.hooks = HOOKS.install()
        self.mirror: Mirror | None = None
        output = self.spec.output
        if output is not None and output.uri is not None and not stage.in_stage:
            self.mirror = Mirror(output.uri, volumes.storage_options(output), self.accelerator)

    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        self.prepare()
        self.plan = self.make_plan()
        self.setup()
        self.resume_or_baseline()
        self.fit()
        metrics = self.evaluate()
        self.save(metrics)
        self.check_retention(metrics)
        return metrics

    def prepare(self) -> None:
        """The model's files (downloaded once per machine) and the prepared data, with its prep report."""
        spec, reporter = self.spec, self.reporter
        reporter.phase("Preparing")
        model_path = self.stage.model_path
        if model_path is None:
            if spec.model.hugging_face is not None:
                reporter.phase("Downloading")
            with self.accelerator.main_process_first():  # one download per machine: the others find it done
                downloading = lambda done: reporter.phase("Downloading", download=done)  # noqa: E731
                model_path = ensure_model(self.volumes.model(spec.model, progress=downloading), spec.model.cached)
            reporter.phase("Preparing")
        self.model_path: Path = model_path
        self.tokenizer = load_tokenizer(self.model_path, spec.model.trust_remote_code)
        self.prep = PrepReport()
        progress = lambda figures: reporter.phase("Preparing", preparation=figures)  # noqa: E731
        self.data = prepare_data(spec, self.volumes, self.tokenizer, self.prep, progress)
        if self.prep.fingerprint:
            reporter.phase("Preparing", preparedData=self.prepared_data())
        for warning in self.prep.warnings if self.main else []:
            log.warning("data: %s", warning)
        if self.stage.on_data is not None:
            self.stage.on_data(self.data)
        if spec.forgetting_guard is not None and not self.data.rows.get("retention") and not self.stage.in_stage:
            raise ConfigError(
                f"spec.forgettingGuard: no General rows in format {spec.data.format} are left for the retention set "
                "after cleaning; see the prep report's dropped rows"
            )

    def make_plan(self) -> Plan:
        """The epochs' row order (task mixing, replay) and the step counts; the prep report gets the task mix."""
        hp, data, accelerator = self.hp, self.data, self.accelerator
        replay = Chain(data.rows.get("replay", []), self.stage.replay)
        epochs = EpochPlan(self.spec, data.rows["train"], data.tasks["train"], replay, hp.seed)
        self.prep.tasks = epochs.report({name: data.tasks[name] for name in ("train", "validation", "test")})
        if self.main:
            (self.out / "prep_report.json").write_text(json.dumps(self.prep.to_dict(), indent=2))
        rank = accelerator.process_index
        per_epoch = len(shard_chunks(epochs.epoch(0), hp.per_device_batch_size, hp.seed, rank, self.world))
        steps_per_epoch = per_epoch // hp.gradient_accumulation_steps
        if steps_per_epoch == 0:
            raise ConfigError(
                f"spec.training: {len(epochs)} training rows make {per_epoch} micro-batches per process, "
                f"fewer than gradientAccumulationSteps={hp.gradient_accumulation_steps}; no optimizer step would run"
            )
        total = min(hp.max_steps or 10**12, steps_per_epoch * hp.epochs)
        warmup = hp.warmup_steps if hp.warmup_steps is not None else round(total * (hp.warmup_ratio or 0.03))
        validate_every = self.spec.validation.every_steps or steps_per_epoch
        checkpoint_every = self.spec.checkpointing.every_steps or steps_per_epoch
        return Plan(epochs, steps_per_epoch, total, warmup, validate_every, checkpoint_every)

    def setup(self) -> None:
        """Model, optimizer, schedule; seeded here, so nothing before (a model built into the cache) shifts the RNG."""
        import torch
        from transformers import get_scheduler, set_seed

        hp = self.hp
        set_seed(hp.seed)
        model = load(self.model_path, self.spec, self.tokenizer, self.data.labels)
        packing_classes = self.classification and self.spec.training.packing
        self.pack_classification = packing_classes and packs_classification(model)
        if packing_classes and not self.pack_classification:
            self.note_padded_classification(model)
        if hp.neftune_noise_alpha is not None:
            add_neftune(model, hp.neftune_noise_alpha)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=hp.learning_rate, weight_decay=hp.weight_decay)
        self.scheduler = get_scheduler(
            SCHEDULERS[hp.scheduler],
            optimizer,
            num_warmup_steps=self.plan.warmup,
            num_training_steps=self.plan.total_steps,
        )
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)

    def note_padded_classification(self, model: Any) -> None:
        """The prep report says why spec.training.packing does not pack this model's classification rows."""
        note = (
            f"spec.training.packing: classification rows are padded, not packed: {type(model).__name__}'s head "
            "does not pool per-token outputs (kubetune packs decoder classifiers: Llama, Mistral, Qwen2, ...)"
        )
        self.prep.warnings.append(note)
        if self.main:
            log.warning("data: %s", note)
            (self.out / "prep_report.json").write_text(json.dumps(self.prep.to_dict(), indent=2))

    def resume_or_baseline(self) -> None:
        """Resume from the newest checkpoint of this spec, or evaluate the base model first (saved for a resume)."""
        self.before: dict[str, Any] = {"baseline": {}}
        self.state = TrainerState(spec_hash=outputs.spec_hash(self.spec), data_sha256=dict(self.prep.sha256))
        if self.mirror is not None:  # outputs on a URI: the checkpoints a replaced pod's scratch lost are there
            self.mirror.pull(self.out, self.state.spec_hash)
        resumed = self.unchanged(checkpoint.latest(self.out, self.state.spec_hash))
        noted = {"dataWarnings": self.prep.warnings}  # for the job's status while it trains
        if resumed is not None:
            self.state = checkpoint.load(resumed, self.model, self.optimizer, self.scheduler, self.accelerator)
            path = self.out / "baseline.json"
            saved = json.loads(path.read_text()) if path.exists() else self.before
            self.before = saved if "baseline" in saved else {"baseline": saved}  # older runs saved the baseline alone
            self.reporter.metrics.resumed_from_step.set(self.state.step)
            self.reporter.phase("Training", resumedFromStep=self.state.step, **noted)
            return
        self.reporter.phase("EvaluatingBaseModel", **noted)
        self.before = measure.before_tuning(self.spec, self.model, self.tokenizer, self.data, self.accelerator)
        if self.main:
            (self.out / "baseline.json").write_text(json.dumps(self.before))
        if self.mirror is not None:
            self.mirror.put_baseline(self.out)

    def unchanged(self, resumed: Path | None) -> Path | None:
        """The checkpoint to resume from, when the data it was trained on is the data now; on changed data, fail
        (DataChangedError, exit 78) or, with spec.checkpointing.onDataChange: Restart, start over."""
        if resumed is None or not (changed := checkpoint.changed_data(resumed, self.prep.sha256)):
            return resumed
        where = {d.name: f"spec.data.datasets[{i}] ({d.name})" for i, d in enumerate(self.spec.data.datasets)}
        named = ", ".join(where.get(name, name) for name in changed)
        if self.spec.checkpointing.on_data_change == DataChangeAction.RESTART:
            log.warning("data: %s changed since checkpoint %s; starting over (onDataChange: Restart)", named, resumed)
            checkpoint.discard(self.out, self.accelerator)
            return None
        raise DataChangedError(
            f"{named}: the content changed since the checkpoint {resumed.name} was written (its SHA-256 differs); "
            "restore the data, or set spec.checkpointing.onDataChange: Restart to train again from step 0"
        )

    def fit(self) -> None:
        """Optimizer steps until the plan's last, early stopping, or SIGTERM (checkpoint, then PreemptedError)."""
        stop_requested = _on_sigterm()
        state = self.state
        # Throughput and ETA count only what this process did (a resumed run starts from a checkpoint's totals).
        self.started, self.first_step, self.first_tokens = time.monotonic(), state.step, state.tokens_seen
        self.model.train()
        heartbeat = Heartbeat.from_env(self.accelerator.process_index)  # the launcher's step-time watchdog
        for epoch, first, batches in self.steps():
            if heartbeat is not None:
                heartbeat.begin(state.step + 1)
            loss, tokens, stopping = self.optimizer_step(batches, stop_requested())
            if heartbeat is not None:
                heartbeat.end()
            state.micro_batches_done = first + self.hp.gradient_accumulation_steps
            validation_loss = self.maybe_validate()
            self.report(epoch, loss, tokens, validation_loss)
            finishing = state.step >= self.plan.total_steps or state.stopped_early
            self.maybe_checkpoint(extra=stopping and not finishing)
            if stopping:
                raise PreemptedError(f"stopped by SIGTERM at step {state.step}; the next run resumes from there")
            for hook in self.hooks.after_step:
                hook(state)
            if finishing:
                if self.mirror is not None:
                    self.mirror.wait()
                return

    def steps(self) -> Iterator[tuple[int, int, list[dict[str, Any]]]]:
        """(epoch, index of the step's first micro-batch, the step's micro-batches) for every step left, from the
        checkpoint's position in its epoch (each epoch's order is fixed by its seed)."""
        hp, state, accumulation = self.hp, self.state, self.hp.gradient_accumulation_steps
        rank, pad, device = self.accelerator.process_index, self.tokenizer.pad_token_id, self.accelerator.device
        first_epoch = hp.epochs if state.step >= self.plan.total_steps or state.stopped_early else state.epoch
        for epoch in range(first_epoch, hp.epochs):
            chunks = shard_chunks(
                self.plan.epochs.epoch(epoch), hp.per_device_batch_size, hp.seed + epoch, rank, self.world
            )
            start = state.micro_batches_done if epoch == state.epoch else 0
            state.epoch = epoch
            for first in range(start, self.plan.steps_per_epoch * accumulation, accumulation):
                batches = [
                    micro_batch(chunks[first + i], self.spec, pad, device, self.pack_classification)
                    for i in range(accumulation)
                ]
                yield epoch, first, batches
            state.micro_batches_done = 0

    def optimizer_step(self, batches: list[dict[str, Any]], stop: bool) -> tuple[float, int, bool]:
        """Forward/backward over ``batches``, the divergence guard, clip, step; returns the step's mean loss over
        all ranks, its trained tokens, and whether any rank was asked to stop (all ranks take the same branch)."""
        import torch

        accelerator, hp, state = self.accelerator, self.hp, self.state
        loss, tokens = accumulate(self.model, batches, hp.label_smoothing, self.classification, accelerator)
        totals = accelerator.reduce(torch.tensor([loss, tokens, float(stop)], device=accelerator.device), "sum")
        loss, tokens = float(totals[0]) / self.world, int(totals[1])
        self.divergence.check(loss, state.step + 1, state.train_history[0]["loss"] if state.train_history else loss)
        norm = accelerator.clip_grad_norm_(self.model.parameters(), hp.max_grad_norm) if hp.max_grad_norm else None
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()
        state.step += 1
        state.tokens_seen += tokens
        row = {"step": state.step, "loss": loss, "learningRate": self.scheduler.get_last_lr()[0]}
        if norm is not None:
            row["gradNorm"] = float(norm)
        state.train_history.append(row)
        return loss, tokens, bool(totals[2])

    def maybe_validate(self) -> float | None:
        """Validate (and per task) when due; keep the best weights; returns the validation loss, if validated."""
        state, data = self.state, self.data
        if not data.rows["validation"] or state.step % self.plan.validate_every:
            return None
        values = self.scores(data.rows["validation"])
        entry: dict[str, Any] = {"step": state.step, **values}
        if tasks := data.by_task("validation"):
            entry["tasks"] = {task: self.scores(rows) for task, (rows, _) in tasks.items()}
        state.validation_history.append(entry)
        if self.early_stopping.update(state, float(values[self.metric_key])):
            save_weights(self.accelerator, self.model, self.out / "best")
        return float(values["loss"])

    def scores(self, rows: Sequence[Tokenized]) -> dict[str, float]:
        """The validation loss and metric on ``rows``."""
        values = measure.scores(self.spec, self.model, self.tokenizer, rows, self.data, self.accelerator)
        return {key: values[key] for key in ("loss", self.metric_key)}

    def report(self, epoch: int, loss: float, tokens: int, validation_loss: float | None) -> None:
        """The step's progress: log line, Prometheus metrics, ``/progress``."""
        state, total = self.state, self.plan.total_steps
        elapsed = time.monotonic() - self.started
        done_here = max(state.step - self.first_step, 1)
        overfitting = None
        if validation_loss is not None:
            overfitting = guards.overfitting(state.train_history, state.validation_history)
        event = ProgressEvent(
            step=state.step,
            total_steps=total,
            epoch=epoch,
            loss=loss,
            learning_rate=state.train_history[-1]["learningRate"],
            tokens_per_second=round((state.tokens_seen - self.first_tokens) / max(elapsed, 1e-9), 1),
            eta_seconds=round(elapsed / done_here * (total - state.step), 1),
            validation_loss=validation_loss,
            grad_norm=state.train_history[-1].get("gradNorm"),
            best_validation_metric=state.best_value,
            best_step=state.best_step if state.validation_history else None,
            overfitting=overfitting,
        )
        self.reporter.progress(event, tokens)

    def maybe_checkpoint(self, extra: bool) -> None:
        """A checkpoint every ``checkpointing.everySteps`` steps, and an ``extra`` one (SIGTERM mid-run)."""
        if self.state.step % self.plan.checkpoint_every == 0 or extra:
            keep = self.spec.checkpointing.keep
            saved = checkpoint.save(
                self.out, self.state, self.model, self.optimizer, self.scheduler, self.accelerator, keep
            )
            if self.mirror is None:
                self.reporter.checkpoint(self.state.step)
                return
            best = self.out / "best" if self.spec.validation.restore_best else None
            step = self.state.step  # reported once it is complete there (from the upload thread)
            every = self.spec.checkpointing.upload == CheckpointUpload.EVERY
            self.mirror.push(saved, keep, best, lambda: self.reporter.checkpoint(step), force=extra or every)
            if extra:  # the pod is being stopped: the checkpoint goes up before the process ends
                self.mirror.wait()

    def evaluate(self) -> dict[str, Any]:
        """Deliver the best validation step's weights (restoreBest), evaluate on the test split (per task, passkey),
        measure retention; returns the run's metrics."""
        spec, state, model, data, accelerator = self.spec, self.state, self.model, self.data, self.accelerator
        restore_best = spec.validation.restore_best and bool(state.validation_history)
        delivered = state.best_step if restore_best else state.step
        if delivered != state.step:
            checkpoint.restore(self.out / "best", model, accelerator)
        self.reporter.phase("Evaluating")
        test, tasks = {}, {}
        if spec.evaluation.enabled:
            test = measure.test_metrics(spec, model, self.tokenizer, data, accelerator)
            test.update(measure.passkey(spec, model, self.tokenizer, accelerator))
            tasks = {
                task: measure.test_metrics(spec, model, self.tokenizer, data, accelerator, split)
                for task, split in data.by_task("test").items()
            }
        retention = None
        before = self.before.get("retentionLoss")
        if spec.forgetting_guard is not None and before is not None:
            after = measure.retention_loss(spec, model, self.tokenizer, data, accelerator)
            assert after is not None
            retention = guards.retention(float(before), after, spec.forgetting_guard)
        return self.metrics(delivered, restore_best, test, tasks, retention)

    def metrics(
        self,
        delivered: int,
        restore_best: bool,
        test: dict[str, Any],
        tasks: dict[str, Any],
        retention: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """The run's metrics document (metrics.json, the termination summary's source)."""
        state, key = self.state, self.metric_key
        last = state.validation_history[-1] if state.validation_history else None
        return {
            "steps": state.step,
            "totalSteps": self.plan.total_steps,
            "worldSize": self.world,
            "seconds": round(time.monotonic() - self.started, 2),
            "tokens": state.tokens_seen,
            "stoppedEarly": state.stopped_early,
            "bestValidation": {"step": state.best_step, key: state.best_value} if state.validation_history else None,
            "lastValidation": {"step": last["step"], key: last[key]} if last else None,
            "delivered": {"step": delivered, "of": "BestValidation" if restore_best else "LastStep"},
            "history": {"train": state.train_history, "validation": state.validation_history},
            "test": test,
            "baseline": self.before["baseline"],
            "fewShot": self.before.get("fewShot", {}),
            "tasks": tasks,
            "retention": retention,
            "overfitting": guards.overfitting(state.train_history, state.validation_history),
            "dataWarnings": self.prep.warnings,
            **({"preparedData": self.prepared_data()} if self.prep.fingerprint else {}),
        }

    def prepared_data(self) -> dict[str, Any]:
        """The prepared-data cache this run read (status.preparedData)."""
        return {"fingerprint": self.prep.fingerprint, "reused": bool(self.prep.reused)}

    def save(self, metrics: dict[str, Any]) -> None:
        """Weights (gathered from every rank), tokenizer, merged model, metrics, plots, card, manifest."""
        self.reporter.phase("Saving")
        state_dict = gathered_state(self.accelerator, self.model)  # a collective under FSDP: every rank gives shards
        if self.main:
            save(
                self.job,
                self.model_path,
                self.accelerator.unwrap_model(self.model),
                self.tokenizer,
                self.data.labels,
                self.out,
                metrics,
                self.prep,
                self.stage.merge_adapter,
                state_dict,
            )
        self.accelerator.wait_for_everyone()

    def check_retention(self, metrics: dict[str, Any]) -> None:
        """RegressedError when the forgetting guard says fail (the outputs are saved already)."""
        retention, guard = metrics["retention"], self.spec.forgetting_guard
        if retention is None or retention["passed"] or not guard or guard.on_regression != RegressionAction.FAIL:
            return
        raise RegressedError(
            f"retention loss rose {retention['regression']:.1%} ({retention['before']:.4f} -> "
            f"{retention['after']:.4f}), more than spec.forgettingGuard.maxRegression "
            f"{retention['maxRegression']:.1%} allows; the outputs are saved at {self.out}"
        )


def _on_sigterm() -> Any:
    """A flag set by SIGTERM (Kubernetes stopping the pod: suspend, preemption), checked at each step's end."""
    requested = {"stop": False}

    def handler(signum: int, frame: Any) -> None:
        requested["stop"] = True

    with contextlib.suppress(ValueError):  # not the main thread (e.g. under a test runner's thread)
        signal.signal(signal.SIGTERM, handler)
    return lambda: requested["stop"]
