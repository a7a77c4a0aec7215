"""GPU fine-tuning throughput of a Llama-3-8B-shaped model (random init: throughput needs no weights).

    python -m benchmarks.gpu_throughput                  # on a GPU: LoRA on the full 8B shape, then full fine-tuning
    python -m benchmarks.gpu_throughput --quick          # a tiny shape on whatever device there is: that it runs

For each method it reports tokens/s per GPU (warm-up steps excluded), peak GPU memory and MFU against the dense
BF16 peak of the card (H100 SXM: 989 TFLOP/s; ``--peak-tflops`` for others). FLOPs per token: 6N for full
fine-tuning and 4N for LoRA (no weight gradients for the frozen base), N the parameters outside the input
embedding, plus attention's 12·layers·hidden·seq (6 for LoRA's missing weight-gradient share is not subtracted
there). Full fine-tuning of all 32 layers needs more than one 80 GB card with AdamW (weights, gradients and two
optimizer states), so ``--full-layers`` (default 8) keeps the 8B layer shape with fewer layers; MFU uses that N.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

LLAMA3_8B = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
}
TINY = {
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
}


def measure(
    shape: dict[str, Any],
    method: str,
    layers: int,
    batch: int,
    seq: int,
    steps: int,
    warmup: int,
    peak_tflops: float,
    checkpointing: bool,
) -> dict[str, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    config = LlamaConfig(**{**shape, "num_hidden_layers": layers})
    torch.manual_seed(0)
    with device:
        model = LlamaForCausalLM(config).to(dtype)
    if checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    embedding = model.get_input_embeddings().weight.numel()
    n = sum(p.numel() for p in model.parameters()) - embedding
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        )
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, fused=cuda)
    ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter())
    seconds = times[-1] - times[warmup - 1]
    tokens_per_second = batch * seq * (steps - warmup) / seconds
    per_token = (6 if method == "full" else 4) * n + 12 * layers * config.hidden_size * seq
    mfu = tokens_per_second * per_token / (peak_tflops * 1e12) if cuda else None
    return {
        "method": method,
        "layers": layers,
        "params_non_embedding": n,
        "trainable": sum(p.numel() for p in trainable),
        "batch": batch,
        "seq": seq,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "tokens_per_second_per_gpu": round(tokens_per_second, 1),
        "step_seconds": round(seconds / (steps - warmup), 4),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "mfu": round(mfu, 4) if mfu is not None else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shape, 3 steps: that it runs")
    parser.add_argument("--methods", default="lora,full")
    parser.add_argument("--lora-layers", type=int, default=32)
    parser.add_argument("--full-layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense BF16 peak of one GPU")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args(argv)
    shape = LLAMA3_8B
    if args.quick:
        shape, args.lora_layers, args.full_layers, args.batch, args.seq, args.steps, args.warmup = (
            TINY,
            2,
            2,
            2,
            64,
            4,
            1,
        )
    print(
        f"# GPU throughput: Llama-3-8B shape {'(tiny: --quick)' if args.quick else ''}, batch {args.batch} x "
        f"seq {args.seq}, {args.steps} steps ({args.warmup} warm-up), peak {args.peak_tflops} TFLOP/s"
    )
    print("| method | layers | params (non-embedding) | trainable | tokens/s per GPU | peak memory (GiB) | MFU |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    results = []
    for method in args.methods.split(","):
        layers = args.lora_layers if method == "lora" else args.full_layers
        r = measure(
            shape,
            method,
            layers,
            args.batch,
            args.seq,
            args.steps,
            args.warmup,
            args.peak_tflops,
            args.gradient_checkpointing,
        )
        results.append(r)
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a (cpu)"
        print(
            f"| {method} | {layers} | {r['params_non_embedding'] / 1e9:.3f} B | {r['trainable'] / 1e6:.1f} M | "
            f"{r['tokens_per_second_per_gpu']:.1f} | {r['peak_memory_gib'] or 'n/a'} | {mfu} |",
            flush=True,
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
