"""One arm of the trainer throughput benchmark, run in its own process (so its peak RSS is its own):
``python -m benchmarks.trainer_arms CONFIG.json`` prints one JSON line of figures.

Arms: ``hf`` (transformers' Trainer + PEFT LoRA, dynamic padding to the longest row of each batch), ``hf-grouped``
(the same with ``train_sampling_strategy="group_by_length"``), ``trl-packed`` (TRL's SFTTrainer with ``packing=True``,
its default best-fit-decreasing packing with padding-free batches) and ``kubetune`` (our trainer's own loop, run through
``kubetune.trainer.loop.train`` on a FineTuneJob, which packs each micro-batch padding-free). Every arm trains the
same model on the same rows with the same LoRA, optimizer, schedule, batch size and seed. Figures count only the
steps after the warm-up: real (non-padding) input tokens per second, padding waste (padding / all positions
computed), the mean loss of the last steps, and the process's peak RSS.

The classification profile (``config["task"] == "classification"``) trains a sequence classifier (LoRA, the
``score`` head trained in full) on labelled rows: ``hf`` and ``hf-grouped`` with padded batches, ``kubetune`` with
packed ones (``kubetune.trainer.pooling``); each then reports its accuracy on the same held-out rows.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


class Meter:
    """Per step: when it ended, real input tokens, positions computed (with padding), loss."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.batches: list[tuple[int, int]] = []
        self.losses: list[float] = []

    def figures(self, warmup: int) -> dict[str, Any]:
        steps = len(self.ends)
        if steps <= warmup + 1:
            raise RuntimeError(f"only {steps} steps ran; need more than warm-up ({warmup}) + 1")
        seconds = self.ends[-1] - self.ends[warmup - 1] if warmup else self.ends[-1] - self.ends[0]
        measured = self.batches[warmup:steps] if warmup else self.batches[1:steps]
        real, computed = sum(b[0] for b in measured), sum(b[1] for b in measured)
        last = self.losses[-min(5, len(self.losses)) :]
        return {
            "steps": steps,
            "measured_steps": len(measured),
            "seconds": round(seconds, 3),
            "tokens_per_second": real / seconds,
            "padding_waste": 1 - real / computed if computed else 0.0,
            "final_loss": sum(last) / len(last),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }


def encode(texts: list[str], tokenizer: Any) -> list[tuple[list[int], list[int]]]:
    """BOS + text + EOS; labels mask BOS only, exactly as kubetune's Completion rows are encoded."""
    rows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        rows.append(([tokenizer.bos_token_id, *ids, tokenizer.eos_token_id], [-100, *ids, tokenizer.eos_token_id]))
    return rows


def with_lora(config: dict[str, Any], model: Any, task_type: str) -> Any:
    """``model`` with the benchmark's LoRA on all linear layers (PEFT trains a classifier's head in full)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config["lora_rank"],
        lora_alpha=config["lora_alpha"],
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type=task_type,
    )
    return get_peft_model(model, lora)


def lora_model(config: dict[str, Any]) -> Any:
    """The benchmark's model in FP32 with LoRA on all linear layers, seeded: the HF and TRL arms' common start."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(config["seed"])
    return with_lora(config, AutoModelForCausalLM.from_pretrained(config["model"], dtype=torch.float32), "CAUSAL_LM")


def shared_arguments(config: dict[str, Any]) -> dict[str, Any]:
    """The TrainingArguments every transformers-based arm shares: optimizer, schedule, seed, logging each step."""
    return {
        "max_steps": config["steps"],
        "learning_rate": config["learning_rate"],
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "seed": config["seed"],
        "data_seed": config["seed"],
        "dataloader_num_workers": 0,
        "use_cpu": True,
        "disable_tqdm": True,
    }


def timing(meter: Meter) -> Any:
    """A Trainer callback recording into ``meter`` when each step ended and each step's logged loss."""
    from transformers import TrainerCallback

    class Timing(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            meter.ends.append(time.perf_counter())

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                meter.losses.append(float(logs["loss"]))

    return Timing()


def labelled(config: dict[str, Any], key: str, tokenizer: Any) -> list[tuple[list[int], int]]:
    """(input ids, class index) of the rows of ``config[key]``, encoded as kubetune encodes Classification rows:
    BOS (when the tokenizer has one) and the text, no EOS."""
    start = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    rows = []
    for line in Path(config[key]).read_text().splitlines():
        row = json.loads(line)
        ids = tokenizer(row["text"], add_special_tokens=False)["input_ids"]
        rows.append((start + ids, config["labels"].index(row["label"])))
    return rows


def classifier(config: dict[str, Any], pad: int) -> Any:
    """The benchmark's model as a sequence classifier in FP32, LoRA on all linear layers, seeded."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(config["seed"])
    model = AutoModelForSequenceClassification.from_pretrained(
        config["model"], num_labels=len(config["labels"]), pad_token_id=pad, dtype=torch.float32
    )
    return with_lora(config, model, "SEQ_CLS")


def padded(rows: list[tuple[list[int], int]], pad: int) -> dict[str, Any]:
    """A right-padded classification batch with its attention mask."""
    import torch

    longest = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), longest), pad)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, (ids, _) in enumerate(rows):
        input_ids[i, : len(ids)], mask[i, : len(ids)] = torch.tensor(ids), 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": torch.tensor([label for _, label in rows])}


def accuracy(model: Any, rows: list[tuple[list[int], int]], pad: int) -> float:
    """Share of ``rows`` whose argmax class is their label (padded batches of 16, no dropout)."""
    import torch

    model.eval()
    right = 0
    with torch.no_grad():
        for start in range(0, len(rows), 16):
            batch = padded(rows[start : start + 16], pad)
            labels = batch.pop("labels")
            right += int((model(**batch).logits.argmax(-1) == labels).sum())
    return right / len(rows)


def train_with_trainer(
    config: dict[str, Any], model: Any, rows: list[dict[str, Any]], collate: Any, meter: Meter, grouped: bool
) -> None:
    """transformers' Trainer over ``rows`` with the shared arguments, in random or length-grouped order."""
    from transformers import Trainer, TrainingArguments

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=config["batch_size"],
            **shared_arguments(config),
            remove_unused_columns=False,
            train_sampling_strategy="group_by_length" if grouped else "random",
        )
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=[timing(meter)])
        trainer.train()


def run_hf_classification(config: dict[str, Any], grouped: bool) -> dict[str, Any]:
    from transformers import AutoTokenizer

    meter = Meter()
    tokenizer = AutoTokenizer.from_pretrained(config["model"])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = [{"input_ids": ids, "labels": label} for ids, label in labelled(config, "data", tokenizer)]

    def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
        out = padded([(r["input_ids"], r["labels"]) for r in batch], pad)
        meter.batches.append((int(out["attention_mask"].sum()), out["input_ids"].numel()))
        return out

    model = classifier(config, pad)
    train_with_trainer(config, model, rows, collate, meter, grouped)
    figures = meter.figures(config["warmup"])
    figures["accuracy"] = accuracy(model, labelled(config, "test_data", tokenizer), pad)
    return figures


def run_hf(config: dict[str, Any], grouped: bool) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer

    meter = Meter()
    tokenizer = AutoTokenizer.from_pretrained(config["model"])
    texts = [json.loads(line)["text"] for line in Path(config["data"]).read_text().splitlines()]
    rows = [{"input_ids": ids, "labels": labels} for ids, labels in encode(texts, tokenizer)]
    pad = tokenizer.pad_token_id

    def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
        longest = max(len(r["input_ids"]) for r in batch)
        ids = torch.full((len(batch), longest), pad)
        labels = torch.full((len(batch), longest), -100)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for i, r in enumerate(batch):
            n = len(r["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
        meter.batches.append((int(mask.sum()), ids.numel()))
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    model = lora_model(config)
    train_with_trainer(config, model, rows, collate, meter, grouped)
    return meter.figures(config["warmup"])


def run_trl(config: dict[str, Any]) -> dict[str, Any]:
    """TRL's SFTTrainer with ``packing=True``: its default best-fit-decreasing packing, which turns padding-free on.
    Its bins are ``max_length`` tokens; one bin per step, ``max_length`` the epoch's tokens over the steps, so a step
    holds as many tokens as the other arms' batches of 8 rows. TRL's defaults that the other arms do not share
    (gradient checkpointing, BF16 autocast) are off: every arm runs the same FP32 computation."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    meter = Meter()
    tokenizer = AutoTokenizer.from_pretrained(config["model"])
    texts = [json.loads(line)["text"] for line in Path(config["data"]).read_text().splitlines()]
    rows = [ids for ids, _ in encode(texts, tokenizer)]  # BOS + text + EOS; TRL masks each sequence's first label
    bin_tokens = -(-sum(len(r) for r in rows) // config["steps"])

    model = lora_model(config)
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            output_dir=out,
            packing=True,
            max_length=max(bin_tokens, config["max_length"]),
            per_device_train_batch_size=1,
            **shared_arguments(config),
            gradient_checkpointing=False,
            bf16=False,
        )
        dataset = Dataset.from_dict({"input_ids": rows})
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[timing(meter)]
        )
        collate = trainer.data_collator

        def counting(batch: list[dict[str, Any]]) -> dict[str, Any]:
            out = collate(batch)
            meter.batches.append((int(out["input_ids"].numel()), int(out["input_ids"].numel())))
            return dict(out)

        trainer.data_collator = counting  # count what TRL computes; its collator itself is untouched
        trainer.train()
    figures = meter.figures(config["warmup"])
    figures["attention"] = str(model.config._attn_implementation)
    return figures


def run_kubetune(config: dict[str, Any]) -> dict[str, Any]:
    from kubetune.api.spec import parse_job
    from kubetune.trainer import loop, step
    from kubetune.trainer.local import Volumes
    from kubetune.trainer.report import ProgressEvent, Reporter

    meter = Meter()
    packed = step.collate_packed

    def counting(group: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        batch = packed(group, *args, **kwargs)
        meter.batches.append((int(batch["input_ids"].numel()), int(batch["input_ids"].numel())))
        return batch

    step.collate_packed = counting  # count what the loop computes; the loop itself is untouched

    class Timing(Reporter):
        def progress(self, event: ProgressEvent, tokens: int) -> None:
            meter.ends.append(time.perf_counter())
            meter.losses.append(event.loss)

    root = Path(config["data"]).parent
    classification = config.get("task") == "classification"
    doc = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "bench"},
        "spec": {
            "model": {"pvc": {"claimName": "models", "path": Path(config["model"]).name}},
            "data": {
                "format": "Completion",
                "datasets": [{"name": "synthetic", "pvc": {"claimName": "bench", "path": Path(config["data"]).name}}],
                "split": {"validationRatio": 0.0, "testRatio": 0.0, "seed": config["seed"]},
                "cleaning": {"deduplicate": False},
            },
            "method": {
                "type": "LoRA",
                "lora": {
                    "rank": config["lora_rank"],
                    "alpha": config["lora_alpha"],
                    "dropout": 0.0,
                    "targetModules": ["all-linear"],
                },
            },
            "training": {
                "learningRate": config["learning_rate"],
                "epochs": 1,
                "maxSteps": config["steps"],
                "perDeviceBatchSize": config["batch_size"],
                "maxSeqLength": config["max_length"],
                "packing": True,
                "scheduler": "Constant",
                "warmupSteps": 0,
                "weightDecay": 0.0,
                "maxGradNorm": 1.0,
                "seed": config["seed"],
                "precision": "FP32",
            },
            "evaluation": {"enabled": False},
            "checkpointing": {"everySteps": 10**6},
        },
    }
    if classification:
        test = {"name": "test", "pvc": {"claimName": "bench", "path": Path(config["test_data"]).name}, "usage": "Test"}
        doc["spec"]["data"]["datasets"][0]["usage"] = "Train"
        doc["spec"]["data"] |= {"format": "Classification", "datasets": [doc["spec"]["data"]["datasets"][0], test]}
        doc["spec"]["data"]["split"] = {"seed": config["seed"]}  # every row is Train or Test: nothing to split
        doc["spec"]["task"] = {"type": "Classification", "labels": config["labels"]}
        doc["spec"]["evaluation"] = {"enabled": True, "baseline": False}
    job = parse_job(doc)
    with tempfile.TemporaryDirectory() as out:
        metrics = loop.train(
            job,
            Volumes(claims={"bench": root, "models": Path(config["model"]).parent}),
            Path(out),
            Timing(enabled=True),
        )
    figures = meter.figures(config["warmup"])
    if classification:
        figures["accuracy"] = metrics["test"]["accuracy"]
    return figures


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    import torch

    torch.set_num_threads(config["threads"])
    arm = config["arm"]
    if arm == "kubetune":
        figures = run_kubetune(config)
    elif arm == "trl-packed":
        figures = run_trl(config)
    elif config.get("task") == "classification":
        figures = run_hf_classification(config, grouped=arm == "hf-grouped")
    else:
        figures = run_hf(config, grouped=arm == "hf-grouped")
    print(json.dumps({"arm": arm, **figures}))


if __name__ == "__main__":
    main()
