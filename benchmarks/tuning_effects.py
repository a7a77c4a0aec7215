"""Tuning effects on a real model: each experiment a pair of FineTuneJobs identical but for one feature, run with
``kubetune run``, each delivered model scored row by row on the same held-out rows (which no arm trains on) by
this script, and each arm's metric and the paired difference reported with 95 % bootstrap intervals.

Experiments (issue 40; the sequential, context-extension and sweep rows of its table are still to do):
- ``forgetting``: language identification (Instruction rows through the chat template) with
  ``forgettingGuard.replayRatio`` 0 vs 0.5, General rows the base model knows (paragraphs of the Python
  documentation); metrics: the rise of the per-row answer loss on held-out documentation paragraphs over the
  base model's (retention regression), and exact match on held-out language rows (the task).
- ``overfitting``: 48 training rows for 12 epochs, ``validation.restoreBest`` and early stopping off vs on;
  metrics: answer loss and exact match of the delivered model on held-out language rows.
- ``multitask``: language ID (300 rows) and documentation continuation (30 rows), 10:1, ``data.mixing``
  Proportional vs Temperature 3; metrics: each task's held-out answer loss (and exact match).
- ``scarce data``: 48 training rows without and with ``data.augmentation`` (2 noisy copies: word dropout and swaps
  of 0.1); metrics: held-out language rows.

Every arm has the same rows, seed, optimizer steps (``maxSteps``) and LoRA; the trainer's own test evaluation is
off (this script evaluates). Data: ``examples/data/languages.jsonl`` (sentences from the dialogues of the PyPI
package ``chatterbot-corpus`` 1.3.3, BSD-3-Clause) and paragraphs of ``pydoc_data.topics`` (the Python
documentation shipped with CPython, PSF License). The full run uses SmolLM2-135M-Instruct from the model cache
(``hack/model-cache.sh``); ``--quick`` runs the same experiments on the random-init tiny Llama with a few steps,
which shows the harness works and nothing about the features.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("KUBETUNE_MODEL_CACHE", Path.home() / ".cache" / "kubetune" / "models"))
REAL = "smollm2-135m-instruct"
TINY = "kubetune/tiny-llama"
RESAMPLES = 2000
BASE_SCORES: dict[str, dict[str, list[float]]] = {}


def languages() -> list[dict[str, str]]:
    """The language-ID rows as Instruction rows, in file order."""
    rows = []
    for line in (ROOT / "examples" / "data" / "languages.jsonl").read_text().splitlines():
        _, user, assistant = json.loads(line)["messages"]
        rows.append({"instruction": user["content"], "output": assistant["content"]})
    return rows


def documentation() -> list[dict[str, str]]:
    """Prose paragraphs of the Python documentation as Instruction rows: the first sentence given, the rest asked."""
    from pydoc_data.topics import topics

    rows = []
    for key in sorted(topics):
        for paragraph in re.split(r"\n\s*\n", topics[key]):
            text = " ".join(paragraph.split())
            head, _, rest = text.partition(". ")
            if 250 <= len(text) <= 600 and not text.startswith((">>>", "*", "-", "|", "=")) and len(rest) > 80:
                rows.append(
                    {"instruction": f"Continue this passage of the Python documentation: {head}.", "output": rest}
                )
    return rows


def interleaved(rows: list[dict[str, str]], every: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(held out: every ``every``-th row, the rest): a fixed held-out set no arm trains on."""
    return rows[::every], [r for i, r in enumerate(rows) if i % every]


def job(name: str, model: str, steps: int, **spec: Any) -> dict[str, Any]:
    """A LoRA FineTuneJob on the task rows (claim ``data``), evaluation off; ``spec`` overrides top-level fields."""
    doc: dict[str, Any] = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"cached": model},
            "data": {
                "format": "Instruction",
                "useChatTemplate": True,
                "datasets": [{"name": "task", "pvc": {"claimName": "data", "path": "task.jsonl"}}],
                "split": {"validationRatio": 0.1, "testRatio": 0.0, "seed": 7},
            },
            "method": {
                "type": "LoRA",
                "lora": {"rank": 8, "alpha": 16, "dropout": 0.0, "targetModules": ["q_proj", "v_proj"]},
            },
            "training": {
                "learningRate": 0.002,
                "epochs": 20,  # maxSteps ends every arm: the same optimizer steps
                "perDeviceBatchSize": 8,
                "maxSeqLength": 256,
                "maxSteps": steps,
                "warmupSteps": 2,
                "seed": 7,
            },
            "evaluation": {"enabled": False, "baseline": False},
        },
    }
    for key, value in spec.items():
        target = doc["spec"]
        *path, last = key.split(".")
        for part in path:
            target = target.setdefault(part, {})
        target[last] = value
    return doc


def train(doc: dict[str, Any], folder: Path) -> tuple[Path, dict[str, Any]]:
    """Run the job with ``kubetune run``; (its adapter directory, its seconds and delivered step)."""
    name = doc["metadata"]["name"]
    manifest = folder / f"{name}.yaml"
    manifest.write_text(json.dumps(doc))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(str(ROOT / p) for p in ("api", "operator", "trainer"))
    command = [sys.executable, "-m", "kubetune.trainer", "run", str(manifest), f"--output={folder / name}"]
    start = time.monotonic()
    done = subprocess.run([*command, f"--volume=data={folder}"], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{name}: exit {done.returncode}\n{done.stderr[-4000:]}")
    metrics = json.loads((folder / name / "metrics.json").read_text())
    run = {"seconds": round(time.monotonic() - start, 1), "steps": metrics.get("steps")}
    return folder / name / "adapter", {**run, "delivered": (metrics.get("delivered") or {}).get("step")}


class Scorer:
    """Per-row answer loss and exact match of a model (the base, or the base with an adapter), on rows rendered
    as the trainer renders them (its chat template, loss on the answer only)."""

    def __init__(self, model_dir: Path, doc: dict[str, Any]) -> None:
        from kubetune.api import parse_job
        from kubetune.trainer.model import load_tokenizer
        from kubetune.trainer.prepare import chat_renderer

        self.model_dir, self.spec = model_dir, parse_job(doc).spec
        self.tokenizer = load_tokenizer(model_dir)
        self.chat = chat_renderer(self.spec, self.tokenizer)

    def model(self, adapter: Path | None) -> Any:
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter)
        return model.eval()

    def score(self, model: Any, rows: list[dict[str, str]], new_tokens: int = 6) -> dict[str, list[float]]:
        """Each row's mean answer-token loss and whether the greedy answer starts with the expected one."""
        import torch

        from kubetune.trainer.batches import IGNORE, encode
        from kubetune.trainer.formats import to_example

        losses, matches = [], []
        for number, row in enumerate(rows, start=1):
            example = to_example(row, self.spec.data, "eval", number, self.chat)
            assert not isinstance(example, str), (example, row)
            ids, labels = encode(example, self.tokenizer)  # whole: no answer is cut off
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
                target = torch.tensor(labels[1:])
                keep = target != IGNORE
                losses.append(float(torch.nn.functional.cross_entropy(logits[keep], target[keep])))
                prompt = ids[: next(i for i, label in enumerate(labels) if label != IGNORE)]
                out = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False)
            answer = self.tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True).strip()
            matches.append(float(answer.lower().startswith(row["output"].strip().lower())))
        return {"loss": losses, "exactMatch": matches}


def interval(values: Any, seed: int = 0) -> tuple[float, float, float]:
    """(mean, 2.5th and 97.5th percentiles of the bootstrap means) of ``values``."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (RESAMPLES, len(values)))].mean(axis=1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def relative_rise(arm: list[float], base: list[float], seed: int = 0) -> tuple[float, float, float]:
    """The rise of the mean loss over the base model's, relative (regression), with its bootstrap interval (rows
    resampled in pairs)."""
    import numpy as np

    a, b = np.asarray(arm), np.asarray(base)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(a), (RESAMPLES, len(a)))
    rises = a[picks].mean(axis=1) / b[picks].mean(axis=1) - 1
    return float(a.mean() / b.mean() - 1), float(np.percentile(rises, 2.5)), float(np.percentile(rises, 97.5))


def experiments(quick: bool) -> list[dict[str, Any]]:
    """Each experiment's arms (job overrides), the rows it trains on and the held-out rows it is scored on."""
    task_eval, task_train = interleaved(languages(), 5)  # 120 held out, 480 to train from
    doc_eval, doc_train = interleaved(documentation(), 3)
    n = 16 if quick else 48
    held = {"task": task_eval[:n], "general": doc_eval[:n]}
    return [
        _forgetting(task_train, doc_train, held, quick),
        _overfitting(task_train, held, quick),
        _multitask(task_train, doc_train, held, quick),
        _scarce(task_train, held, quick),
    ]


TASK = {"name": "task", "pvc": {"claimName": "data", "path": "task.jsonl"}}
SECOND = {"name": "general", "pvc": {"claimName": "data", "path": "general.jsonl"}}


def _forgetting(train: list[Any], docs: list[Any], held: dict[str, Any], quick: bool) -> dict[str, Any]:
    guard = {"retentionRatio": 0.2, "maxRegression": 10}
    datasets = [TASK, {**SECOND, "usage": "General"}]
    return {
        "name": "forgetting",
        "train": train[: 64 if quick else 320],
        "general": docs[: 32 if quick else 160],
        "eval": held,
        "steps": 4 if quick else 40,
        "arms": {
            "replay 0": {"data.datasets": datasets, "forgettingGuard": {**guard, "replayRatio": 0.0}},
            "replay 0.5": {"data.datasets": datasets, "forgettingGuard": {**guard, "replayRatio": 0.5}},
        },
    }


def _overfitting(train: list[Any], held: dict[str, Any], quick: bool) -> dict[str, Any]:
    common = {"training.learningRate": 0.005, "training.epochs": 12, "validation.everySteps": 6}
    stopping = {"validation.restoreBest": True, "validation.earlyStopping": {"patience": 3}}
    return {
        "name": "overfitting",
        "train": train[: 16 if quick else 48],
        "general": [],
        "eval": {"task": held["task"]},
        "steps": 6 if quick else 72,
        "arms": {
            "last step": {**common, "validation.restoreBest": False},
            "restoreBest + early stopping": {**common, **stopping},
        },
    }


def _multitask(train: list[Any], docs: list[Any], held: dict[str, Any], quick: bool) -> dict[str, Any]:
    """Two tasks at 10:1 rows: language ID (large) and documentation continuation (small)."""
    datasets = [{**TASK, "task": "language"}, {**SECOND, "task": "documentation"}]
    return {
        "name": "multitask",
        "train": train[: 64 if quick else 300],
        "general": docs[: 8 if quick else 30],
        "eval": {"task": held["task"], "documentation": held["general"]},
        "steps": 4 if quick else 40,
        "arms": {
            "Proportional": {"data.datasets": datasets, "data.mixing": {"strategy": "Proportional"}},
            "Temperature 3": {"data.datasets": datasets, "data.mixing": {"strategy": "Temperature", "temperature": 3}},
        },
    }


def _scarce(train: list[Any], held: dict[str, Any], quick: bool) -> dict[str, Any]:
    noise = {"copies": 2, "wordDropout": 0.1, "wordSwap": 0.1, "seed": 1234}
    return {
        "name": "scarce data",
        "train": train[: 16 if quick else 48],
        "general": [],
        "eval": {"task": held["task"]},
        "steps": 4 if quick else 24,
        "arms": {"no augmentation": {}, "augmentation": {"data.augmentation": noise}},
    }


def run_experiment(experiment: dict[str, Any], model: str, model_dir: Path, folder: Path) -> dict[str, Any]:
    """Train both arms, score the base model and each arm on the experiment's held-out rows."""
    (folder / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in experiment["train"]))
    (folder / "general.jsonl").write_text("".join(json.dumps(r) + "\n" for r in experiment["general"]))
    scorer = Scorer(model_dir, job("scorer", model, 1))
    base, scores = None, {"base": {}}
    for name, rows in experiment["eval"].items():  # the base model's scores of a row set are scored once
        key = json.dumps(rows)
        if key not in BASE_SCORES:
            base = base or scorer.model(None)
            BASE_SCORES[key] = scorer.score(base, rows)
        scores["base"][name] = BASE_SCORES[key]
    runs = {}
    for index, (arm, overrides) in enumerate(experiment["arms"].items()):
        adapter, runs[arm] = train(
            job(f"{experiment['name']}-{index}", model, experiment["steps"], **overrides), folder
        )
        tuned = scorer.model(adapter)
        scores[arm] = {name: scorer.score(tuned, rows) for name, rows in experiment["eval"].items()}
    return {"experiment": experiment["name"], "scores": scores, "runs": runs}


def table(result: dict[str, Any]) -> list[str]:
    """Markdown rows: each arm's metrics with intervals; the paired difference of the two arms."""
    scores, arms = result["scores"], [a for a in result["scores"] if a != "base"]
    lines = []
    for split, by_metric in scores["base"].items():
        for metric in by_metric:
            cells = []
            for arm in ["base", *arms]:
                mean, low, high = interval(scores[arm][split][metric])
                cells.append(f"{mean:.3f} [{low:.3f}, {high:.3f}]")
            first, second = (scores[a][split][metric] for a in arms)
            mean, low, high = interval([b - a for a, b in zip(first, second, strict=True)])
            difference = f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"
            lines.append(f"| {result['experiment']} | {split} {metric} | {' | '.join(cells)} | {difference} |")
        if split == "general":
            rises = [relative_rise(scores[a][split]["loss"], scores["base"][split]["loss"]) for a in arms]
            cells = ["0"] + [f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]" for m, lo, hi in rises]
            lines.append(f"| {result['experiment']} | general retention regression | {' | '.join(cells)} | |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="the tiny random-init Llama, a few steps: the harness only"
    )
    parser.add_argument("--only", default="", help="comma-separated experiment names (default: all)")
    args = parser.parse_args()
    from kubetune.trainer.tiny import ensure_model

    model = TINY if args.quick else REAL
    model_dir = ensure_model(CACHE / TINY, TINY) if args.quick else CACHE / REAL
    if not (model_dir / "config.json").exists():
        raise SystemExit(f"no {model} in {CACHE}: run hack/model-cache.sh")
    chosen = [e for e in experiments(args.quick) if not args.only or e["name"] in args.only.split(",")]
    print(f"model: {model}; mean [95 % bootstrap interval] over the held-out rows; difference = second arm - first")
    results = []
    for experiment in chosen:  # each table as soon as its experiment is done: a full run takes long
        with tempfile.TemporaryDirectory(prefix="kubetune-effects-") as tmp:
            results.append(result := run_experiment(experiment, model, model_dir, Path(tmp)))
        arms = [a for a in result["scores"] if a != "base"]
        print(f"\n| experiment | metric | base | {' | '.join(arms)} | difference |")
        print("|---|---|---:|---:|---:|---:|")
        print("\n".join(table(result)))
        print("runs: " + "; ".join(f"{a}: {json.dumps(r)}" for a, r in result["runs"].items()), flush=True)
    print(json.dumps({"model": model, "results": results}))


if __name__ == "__main__":
    main()
