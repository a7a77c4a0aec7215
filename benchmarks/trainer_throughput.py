"""Trainer throughput: kubetune's loop against transformers' Trainer + PEFT and TRL's packed SFTTrainer, in one run.

    python -m benchmarks.trainer_throughput            # the full run (README.md has the latest figures)
    python -m benchmarks.trainer_throughput --quick    # a small model and a few steps: that it runs and prints

Arms (benchmarks/trainer_arms.py): ``hf`` (dynamic padding), ``hf-grouped`` (``group_by_length``), ``trl-packed``
(``trl.SFTTrainer`` with ``packing=True``: best-fit-decreasing bins, padding-free), ``kubetune`` (padding-free
packing, attention within each example). LoRA r=16 on all linear layers, AdamW at a constant 2e-4, batch 8, the same
rows, seed 0. Profiles: a Llama-architecture model (random init; hidden 512, 4 layers by default) on seeded
log-normal row lengths, high variance (median 96 tokens, sigma 1.0) and low variance (median 192, sigma 0.25),
capped at 512; and the real pretrained SmolLM2-135M of the model cache on the high-variance lengths (fewer steps and
repeats: it is 10x the compute). Each (profile, arm) runs ``--repeats`` times in its own process, arms interleaved
(A B C D A B C D ...), the first ``--warmup`` steps excluded; the table shows medians, then the ratios and targets.

The ``classification`` profile: sequence classification of 5 topics on headline-like lengths of high variance
(median 24 tokens, sigma 0.8; each row's words mostly random, a quarter drawn from its topic's 24 words), batch 16,
learning rate 1e-3, on the real SmolLM2-135M when the model cache has it (the tiny random-init model otherwise, and
with ``--quick``). Arms ``hf`` (dynamic padding), ``hf-grouped`` and ``kubetune`` (packed:
``kubetune.trainer.pooling``), each with its accuracy on 400 held-out rows; the target is 1.3x over dynamic padding
with the same accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REAL_PROFILE = "smollm2-135m"
ARMS = ("hf", "hf-grouped", "trl-packed", "kubetune")
CLASS_PROFILE = "classification"
CLASS_ARMS = ("hf", "hf-grouped", "kubetune")
TOPICS = ("business", "sports", "science", "politics", "arts")
TEST_ROWS = 400
"""Held-out rows each classification arm classifies (one row moves the accuracy by 0.0025)."""
PROFILES = {"high-variance": (96, 1.0), "low-variance": (192, 0.25), REAL_PROFILE: (96, 1.0), CLASS_PROFILE: (24, 0.8)}
"""Profile -> (median tokens, sigma of the log of the length)."""
REAL_MODEL = Path(os.environ.get("KUBETUNE_MODEL_CACHE", Path.home() / ".cache" / "kubetune" / "models")) / (
    "smollm2-135m-instruct"
)
"""The real pretrained model of the model cache (hack/model-cache.sh), the third profile's model."""


def build_model(path: Path, hidden: int, layers: int, max_length: int) -> Path:
    """A random-init Llama of the given shape with the tiny model's locally trained tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from kubetune.trainer.tiny import TINY_LLAMA, ensure_model

    tiny = ensure_model(Path(tempfile.gettempdir()) / "kubetune-bench-cache" / TINY_LLAMA, TINY_LLAMA)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    heads = max(hidden // 64, 1)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=int(hidden * 8 / 3) // 8 * 8,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_length * 2,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def synthetic_rows(path: Path, model: Path, rows: int, median: int, sigma: float, cap: int, seed: int) -> list[int]:
    """``rows`` Completion rows of whole-word tokens with log-normal token counts; returns the token counts."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    words = sorted({t for t in tokenizer.get_vocab() if t.startswith("Ġ") and t[1:].isalpha()})
    rng = random.Random(seed)
    lines, lengths = [], []
    for _ in range(rows):
        n = min(max(round(rng.lognormvariate(math.log(median), sigma)), 4), cap - 2)
        chosen = [rng.choice(words) for _ in range(n)]
        while True:  # BOS + text + EOS within the cap, so no arm truncates or drops a row
            text = "".join(chosen).replace("Ġ", " ").strip()
            tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 2
            if tokens <= cap:
                break
            chosen = chosen[: len(chosen) - (tokens - cap)]
        lengths.append(tokens)
        lines.append(json.dumps({"text": text}))
    path.write_text("\n".join(lines) + "\n")
    return lengths


def topic_rows(path: Path, model: Path, rows: int, median: int, sigma: float, cap: int, seed: int) -> list[int]:
    """``rows`` Classification rows of the 5 topics: log-normal word counts, a quarter of the words from the row's
    topic (24 words each, disjoint; fewer with a small vocabulary), the rest from the whole vocabulary; returns the
    token counts."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    words = sorted({t for t in tokenizer.get_vocab() if t.startswith("Ġ") and t[1:].isalpha()})
    rng = random.Random(seed)
    each = min(24, len(words) // (2 * len(TOPICS)))  # the tiny model's tokenizer has few whole words
    vocabulary = random.Random(0).sample(words, each * len(TOPICS))  # the same topic words for every split
    topics = {topic: vocabulary[i * each : (i + 1) * each] for i, topic in enumerate(TOPICS)}
    lines, lengths = [], []
    for _ in range(rows):
        topic = rng.choice(TOPICS)
        n = min(max(round(rng.lognormvariate(math.log(median), sigma)), 4), cap // 2)
        chosen = [rng.choice(topics[topic]) if rng.random() < 0.25 else rng.choice(words) for _ in range(n)]
        text = "".join(chosen).replace("Ġ", " ").strip()
        lengths.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1)
        lines.append(json.dumps({"text": text, "label": topic}))
    path.write_text("\n".join(lines) + "\n")
    return lengths


def plan(profile: str, args: argparse.Namespace, workdir: Path, max_length: int) -> dict[str, Any]:
    """A profile's model, rows (written to a file), steps, warm-up, repeats, batch size and learning rate."""
    real_classes = profile == CLASS_PROFILE and not args.quick and (REAL_MODEL / "config.json").exists()
    real = profile == REAL_PROFILE or real_classes
    model = REAL_MODEL if real else workdir / "model"
    if not real and not model.exists():
        build_model(model, args.hidden, args.layers, max_length)
    steps = args.real_steps if real else args.steps
    median, sigma = PROFILES[profile]
    data = workdir / f"{profile}.jsonl"
    plan: dict[str, Any] = {"model": model, "data": data, "steps": steps, "batch_size": args.batch_size}
    plan |= {"warmup": 2 if real else args.warmup, "repeats": args.real_repeats if real else args.repeats}
    plan |= {"learning_rate": 2e-4, "arms": ARMS}
    if profile == CLASS_PROFILE:
        batch = 2 * args.batch_size
        test = workdir / f"{profile}-test.jsonl"
        topic_rows(test, model, TEST_ROWS, median, sigma, max_length, seed=2)
        lengths = topic_rows(data, model, steps * batch, median, sigma, max_length, seed=1)
        extra = {"task": "classification", "test_data": str(test), "labels": sorted(TOPICS)}
        return plan | {"lengths": lengths, "batch_size": batch, "learning_rate": 1e-3, "arms": CLASS_ARMS, **extra}
    lengths = synthetic_rows(data, model, steps * args.batch_size, median, sigma, max_length, seed=1)
    return plan | {"lengths": lengths}


def run_arm(config: dict[str, Any], workdir: Path) -> dict[str, Any]:
    path = workdir / f"config-{config['arm']}-{config['profile']}-{config['repeat']}.json"
    path.write_text(json.dumps(config))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(config["threads"]),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "PYTHONWARNINGS": "ignore",
    }
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.trainer_arms", str(path)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"arm {config['arm']} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, few steps, one repeat, two profiles")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=24, help="optimizer steps per run, warm-up included")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per arm (runs are sequential)")
    parser.add_argument("--profiles", help=f"comma-separated, of {', '.join(PROFILES)} (default: all there are)")
    parser.add_argument("--real-steps", type=int, default=12, help=f"steps of the {REAL_PROFILE} profile")
    parser.add_argument("--real-repeats", type=int, default=1, help=f"repeats of the {REAL_PROFILE} profile")
    parser.add_argument("--json", type=Path, help="also write all runs and medians here")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.steps, args.warmup, args.hidden, args.layers = 1, 6, 2, 64, 2
        args.profiles = f"high-variance,{CLASS_PROFILE}"
    if args.profiles is None:
        real = (REAL_MODEL / "config.json").exists()
        args.profiles = ",".join(p for p in PROFILES if real or p != REAL_PROFILE)
        if not real:
            print(f"# no {REAL_MODEL} (hack/model-cache.sh makes it): the {REAL_PROFILE} profile is left out")
    profiles = args.profiles.split(",")
    max_length = 512
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        plans = {p: plan(p, args, workdir, max_length) for p in profiles}
        print(
            f"# trainer throughput on {platform.machine()} {platform.processor() or ''} ({os.cpu_count()} CPUs), "
            f"torch threads {args.threads}; LoRA r=16 all-linear, batch {args.batch_size}; model hidden "
            f"{args.hidden} x {args.layers} layers (random init), {args.steps} steps ({args.warmup} warm-up), "
            f"{args.repeats} repeats"
            + (
                f"; {REAL_PROFILE}: the real model, {args.real_steps} steps (2 warm-up), {args.real_repeats} repeat(s)"
                if REAL_PROFILE in plans
                else ""
            )
        )
        for profile, p in plans.items():
            q = statistics.quantiles(p["lengths"], n=10)
            model = "the real model" if p["model"] == REAL_MODEL else "the random-init model"
            print(
                f"# {profile}: row tokens p10 {q[0]:.0f}, median {statistics.median(p['lengths']):.0f}, "
                f"p90 {q[-1]:.0f}, max {max(p['lengths'])}; {model}, batch {p['batch_size']}, "
                f"learning rate {p['learning_rate']:g}, {p['steps']} steps"
            )
        runs: list[dict[str, Any]] = []
        for repeat in range(max(p["repeats"] for p in plans.values())):
            for profile, p in plans.items():
                if repeat >= p["repeats"]:
                    continue
                for arm in p["arms"]:  # interleaved: A B C D A B C D ...
                    config = {
                        "arm": arm,
                        "profile": profile,
                        "repeat": repeat,
                        "model": str(p["model"]),
                        "data": str(p["data"]),
                        "steps": p["steps"],
                        "warmup": p["warmup"],
                        "batch_size": p["batch_size"],
                        "max_length": max_length,
                        "learning_rate": p["learning_rate"],
                        "lora_rank": 16,
                        "lora_alpha": 32,
                        "seed": 0,
                        "threads": args.threads,
                        **{k: p[k] for k in ("task", "test_data", "labels") if k in p},
                    }
                    runs.append({**config, **run_arm(config, workdir)})
                    r = runs[-1]
                    accuracy = f"  accuracy {r['accuracy']:.3f}" if "accuracy" in r else ""
                    print(
                        f"  run {repeat + 1}/{p['repeats']} {profile:14} {arm:10} {r['tokens_per_second']:9.1f} "
                        f"tok/s  waste {r['padding_waste']:6.1%}  loss {r['final_loss']:.4f}  "
                        f"rss {r['peak_rss_bytes'] / 2**20:7.1f} MiB{accuracy}",
                        flush=True,
                    )
    medians = summarize(runs, profiles)
    print(f"# {len(runs)} runs in {time.monotonic() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "medians": medians}, indent=2))
    return 0


def summarize(runs: list[dict[str, Any]], profiles: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    keys = ("tokens_per_second", "padding_waste", "final_loss", "peak_rss_bytes")
    arms = {p: CLASS_ARMS if p == CLASS_PROFILE else ARMS for p in profiles}
    medians = {
        p: {
            a: {
                k: statistics.median(r[k] for r in runs if r["profile"] == p and r["arm"] == a)
                for k in (*keys, *(("accuracy",) if p == CLASS_PROFILE else ()))
            }
            for a in arms[p]
        }
        for p in profiles
    }
    print("\n| profile | arm | real tokens/s | padding waste | final loss | peak RSS (MiB) | test accuracy |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for p in profiles:
        for a in arms[p]:
            m = medians[p][a]
            accuracy = f"{m['accuracy']:.3f}" if "accuracy" in m else "-"
            print(
                f"| {p} | {a} | {m['tokens_per_second']:.1f} | {m['padding_waste']:.1%} | {m['final_loss']:.4f} | "
                f"{m['peak_rss_bytes'] / 2**20:.1f} | {accuracy} |"
            )
    causal = [p for p in profiles if p != CLASS_PROFILE]
    if causal:
        causal_ratios(medians, causal)
    if CLASS_PROFILE in profiles:
        classification_ratios(medians[CLASS_PROFILE])
    attention = {r["attention"] for r in runs if r["arm"] == "trl-packed" and "attention" in r}
    if attention:
        print(f"\nTRL packed ran with attention {', '.join(sorted(attention))} (the model's default on this machine)")
    return medians


def ok(passed: bool) -> str:
    return "ok" if passed else "MISSED"


def causal_ratios(medians: dict[str, dict[str, dict[str, float]]], profiles: list[str]) -> None:
    print(
        "\n| profile | ours / dynamic padding | ours / group_by_length | ours / TRL packed | ours waste "
        "| RSS ours / HF | RSS ours / TRL | loss ours / HF | loss ours / TRL |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    targets = {"high-variance": 1.5, "low-variance": 1.2}
    for p in profiles:
        ours, hf, grouped, trl = (medians[p][a] for a in ("kubetune", "hf", "hf-grouped", "trl-packed"))
        speed, vs_grouped, vs_trl = (ours["tokens_per_second"] / m["tokens_per_second"] for m in (hf, grouped, trl))
        rss, rss_trl = (ours["peak_rss_bytes"] / m["peak_rss_bytes"] for m in (hf, trl))
        loss, loss_trl = (ours["final_loss"] / m["final_loss"] for m in (hf, trl))
        print(
            f"| {p} | {speed:.2f}x ({ok(speed >= targets.get(p, 1.0))} >= {targets.get(p, 1.0)}x) | "
            f"{vs_grouped:.2f}x ({ok(vs_grouped >= 1.0)} >= 1.0x) | {vs_trl:.2f}x ({ok(vs_trl >= 1.0)} >= 1.0x) | "
            f"{ours['padding_waste']:.1%} ({ok(ours['padding_waste'] <= 0.02)} <= 2%) | "
            f"{rss:.2f}x ({ok(rss <= 1.0)} <= 1.0x) | {rss_trl:.2f}x | "
            f"{loss:.3f} ({ok(abs(loss - 1) <= 0.05)} within 5%) | "
            f"{loss_trl:.3f} ({ok(abs(loss_trl - 1) <= 0.05)} within 5%) |"
        )


def classification_ratios(medians: dict[str, dict[str, float]]) -> None:
    """Packed classification against padded: speed (target 1.3x over dynamic padding), waste, memory, loss and
    test accuracy (parity: within 0.02 of dynamic padding's on ``TEST_ROWS`` held-out rows; the table gives two
    standard errors of that difference too, the sampling noise of the rows alone)."""
    ours, hf, grouped = (medians[a] for a in ("kubetune", "hf", "hf-grouped"))
    speed, vs_grouped = (ours["tokens_per_second"] / m["tokens_per_second"] for m in (hf, grouped))
    rss, loss = ours["peak_rss_bytes"] / hf["peak_rss_bytes"], ours["final_loss"] / hf["final_loss"]
    gap = ours["accuracy"] - hf["accuracy"]
    noise = 2 * math.sqrt(sum(a * (1 - a) for a in (ours["accuracy"], hf["accuracy"])) / TEST_ROWS)
    print(
        "\n| profile | ours / dynamic padding | ours / group_by_length | ours waste | RSS ours / HF | loss ours / HF "
        "| accuracy ours - HF | 2 s.e. of it |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {CLASS_PROFILE} | {speed:.2f}x ({ok(speed >= 1.3)} >= 1.3x) | {vs_grouped:.2f}x ({ok(vs_grouped >= 1.0)} "
        f">= 1.0x) | {ours['padding_waste']:.1%} | {rss:.2f}x ({ok(rss <= 1.0)} <= 1.0x) | {loss:.3f} | "
        f"{gap:+.3f} ({ok(gap >= -0.02)} >= -0.02) | {noise:.3f} |"
    )


if __name__ == "__main__":
    raise SystemExit(main())
