"""Data preparation at scale: ``kubetune prepare`` cold and warm against Hugging Face `datasets`, on seeded
synthetic instruction JSONL generated on the fly.

Arms, each its own process (peak RSS from ``wait4``: the largest of the process and the children it waited for):
- ``kubetune-cold``: ``kubetune prepare`` with an empty prepared-data cache: read, clean, deduplicate, split,
  tokenize, write the memory-mapped Arrow cache;
- ``kubetune-warm``: the same command again: the cache's fingerprint (data files hashed) and its mapped tables;
- ``kubetune-cold-inline`` (not in ``--quick``): ``kubetune-cold`` with ``KUBETUNE_PREP_WORKERS=0``, the tokenizer
  in the reading process instead of worker processes beside it (``tokenpool``);
- ``datasets-cold`` / ``-warm``: the field's usual path, ``load_dataset("json")`` and a batched ``.map`` that
  renders the same prompt and tokenizes prompt and response, ``num_proc`` = the cores, with an empty and then the
  same Arrow cache directory.

``start-floor`` imports what ``kubetune prepare`` imports, loads the tokenizer and exits: the start every arm
pays; ``warm_over_cold_net_of_start`` compares the two kubetune arms without it.

Rows: an instruction of 4-12 words, an input of 20-200 words (a third of the rows have none) and an output of
5-60 words, words drawn from a fixed list; the tiny Llama's byte-level BPE tokenizer; maxSeqLength 512
(Truncate). Prints a table, the ratios (cold rows/s ours / `datasets`, warm / cold, RSS / file size) and a JSON
line. ``--quick``: 2 MB, the cold and warm kubetune arms and the `datasets` cold arm.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORDS = tuple(
    " ".join(
        (
            "the of and to in is was for on that with as by at from his her this which have are were an be or had",
            "not but all one they there their been has more when who will would no out so what up said about into",
            "than them can only other time new some could these two may first then do any like my now over such our",
            "man me even most made after also did many before must through back years where much your way well down",
            "should because each just those people how too little state good very make world still own see men work",
            "long get here between both life being under never day same another know while last might us great old",
            "year off come since against go came right used take three river data model train token layer cluster",
            "node storage memory shard cache",
        )
    ).split()
)


def generate(path: Path, size: int, seed: int = 0) -> int:
    """A seeded instruction JSONL of about ``size`` bytes; returns its rows."""
    rng = random.Random(seed)
    rows = written = 0
    with path.open("w") as out:
        while written < size:

            def words(low: int, high: int) -> str:
                return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))

            row = {"instruction": words(4, 12), "input": words(20, 200) if rng.random() > 1 / 3 else ""}
            row["output"] = words(5, 60)
            line = json.dumps(row) + "\n"
            out.write(line)
            written += len(line)
            rows += 1
    return rows


def manifest(folder: Path) -> Path:
    job = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "scale"},
        "spec": {
            "model": {"cached": "kubetune/tiny-llama"},
            "data": {
                "datasets": [{"name": "rows", "pvc": {"claimName": "data", "path": "rows.jsonl"}}],
                "split": {"validationRatio": 0.01, "testRatio": 0.01, "seed": 7},
                "cleaning": {"overLength": "Truncate"},
            },
            "training": {"maxSeqLength": 512},
            "output": {"pvc": {"claimName": "data", "path": "out"}},
        },
    }
    path = folder / "job.json"
    path.write_text(json.dumps(job))
    return path


DATASETS_ARM = """
import json, os, sys, time
from datasets import load_dataset
from transformers import AutoTokenizer
data, cache, model = sys.argv[1], sys.argv[2], sys.argv[3]
tok = AutoTokenizer.from_pretrained(model)
PROMPT = "### Instruction:\\n{instruction}\\n{block}### Response:\\n"
def render(batch):
    prompts = [PROMPT.format(instruction=i, block=f"### Input:\\n{x}\\n" if x else "")
               for i, x in zip(batch["instruction"], batch["input"])]
    p = tok(prompts, add_special_tokens=False)["input_ids"]
    r = tok(batch["output"], add_special_tokens=False)["input_ids"]
    ids = [([tok.bos_token_id] + a + b + [tok.eos_token_id])[:512] for a, b in zip(p, r)]
    labels = [([-100] * (len(a) + 1) + b + [tok.eos_token_id])[:512] for a, b in zip(p, r)]
    return {"input_ids": ids, "labels": labels}
rows = load_dataset("json", data_files=data, split="train", cache_dir=cache)
out = rows.map(render, batched=True, num_proc=int(os.environ.get("ARM_PROCS", "1")), remove_columns=rows.column_names)
print(json.dumps({"rows": len(out)}))
"""


INLINE = {"KUBETUNE_PREP_WORKERS": "0"}


def arms(folder: Path, quick: bool, model: Path) -> list[tuple[str, list[str], dict[str, str]]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(str(ROOT / p) for p in ("api", "operator", "trainer"))
    ours = [sys.executable, "-m", "kubetune.trainer", "prepare", str(manifest(folder)), f"--volume=data={folder}"]
    ours += ["--output", str(folder / "out")]
    script = folder / "datasets_arm.py"
    script.write_text(DATASETS_ARM)
    theirs = [sys.executable, str(script), str(folder / "rows.jsonl"), str(folder / "hf-cache"), str(model)]
    hf_env = {**env, "ARM_PROCS": str(os.cpu_count() or 1), "HF_DATASETS_CACHE": str(folder / "hf-cache")}
    load = f"import kubetune.trainer.dataprep as d, pyarrow, pathlib; d.load_tokenizer(pathlib.Path({str(model)!r}))"
    floor = [sys.executable, "-c", load]
    chosen = [("start-floor", floor, env), ("kubetune-cold", ours, env), ("kubetune-warm", ours, env)]
    chosen.append(("datasets-cold", theirs, hf_env))
    if quick:
        return chosen
    # The same preparation with the tokenizer in the reading process (no worker processes): what they add.
    inline = [*ours[:-1], str(folder / "out-inline")]
    return [*chosen, ("datasets-warm", theirs, hf_env), ("kubetune-cold-inline", inline, {**env, **INLINE})]


def one_size(size: int, quick: bool, model: Path) -> list[dict[str, Any]]:
    """Every arm on a fresh file of ``size`` bytes; each arm in a fresh interpreter."""
    results = []
    with tempfile.TemporaryDirectory(prefix="kubetune-scale-") as tmp:
        folder = Path(tmp)
        rows = generate(folder / "rows.jsonl", size)
        for name, command, env in arms(folder, quick, model):
            # Each arm in a process of its own, whose own wait4 gives that arm's peak RSS alone.
            wrapper = [sys.executable, "-c", PEAK, *command]
            out = subprocess.run(wrapper, env=env, cwd=ROOT, capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"{name}: exit {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
            figures = json.loads(out.stdout.strip().splitlines()[-1])
            results.append({"arm": name, "megabytes": round(size / 1e6, 1), "rows": rows, **figures})
        shutil.rmtree(folder / "hf-cache", ignore_errors=True)
    return results


PEAK = """
import json, os, subprocess, sys, time
start = time.monotonic()
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
err = child.stderr.read()
_, status, usage = os.wait4(child.pid, 0)
if status:
    sys.stderr.write(err.decode()[-3000:]); sys.exit(1)
print(json.dumps({"seconds": round(time.monotonic() - start, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}))
"""


def report(results: list[dict[str, Any]]) -> dict[str, Any]:
    print("| MB | rows | arm | seconds | rows/s | peak RSS (MiB) | RSS / file |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for r in results:
        r["rows_per_second"] = round(r["rows"] / r["seconds"], 1)
        ratio = r["peak_rss_mib"] * 1.048576 / r["megabytes"]
        print(
            f"| {r['megabytes']} | {r['rows']} | {r['arm']} | {r['seconds']:.1f} | {r['rows_per_second']} | "
            f"{r['peak_rss_mib']:.0f} | {ratio:.1f}x |"
        )
    ratios: dict[str, Any] = {}
    for size in sorted({r["megabytes"] for r in results}):
        by = {r["arm"]: r for r in results if r["megabytes"] == size}
        cold, warm, hf, floor = by["kubetune-cold"], by["kubetune-warm"], by["datasets-cold"], by["start-floor"]
        net = max(cold["seconds"] - floor["seconds"], 1e-9)
        ratios[str(size)] = {
            "cold_rows_per_second_ours_over_datasets": round(cold["rows_per_second"] / hf["rows_per_second"], 2),
            "warm_over_cold_seconds": round(warm["seconds"] / cold["seconds"], 3),
            "warm_over_cold_net_of_start": round(max(warm["seconds"] - floor["seconds"], 0) / net, 3),
            "peak_rss_ours_over_datasets": round(cold["peak_rss_mib"] / hf["peak_rss_mib"], 2),
        }
        if inline := by.get("kubetune-cold-inline"):
            ratios[str(size)]["cold_inline_over_cold_seconds"] = round(inline["seconds"] / cold["seconds"], 2)
        print(f"{size} MB: " + ", ".join(f"{k} {v}" for k, v in ratios[str(size)].items()))
    return {"results": results, "ratios": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 MB, three arms: keeps the benchmark working")
    parser.add_argument("--sizes", default="200,1000", help="file sizes in MB, comma-separated")
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT / p) for p in ("api", "trainer")]
    from kubetune.trainer.local import Volumes
    from kubetune.trainer.tiny import TINY_LLAMA, ensure_model

    model = ensure_model(Volumes().model_cache / TINY_LLAMA, TINY_LLAMA)
    sizes = [2e6] if args.quick else [float(s) * 1e6 for s in args.sizes.split(",")]
    results = [r for size in sizes for r in one_size(int(size), args.quick, model)]
    print(json.dumps(report(results)))


if __name__ == "__main__":
    main()
