"""Worker of test_loss_weighting: one optimizer step's gradients through ``loop.accumulate``, written as JSON.

``python loss_weighting_worker.py MODEL OUT GROUPS``: the rows (very different lengths) are split into GROUPS
micro-batches; under torchrun each rank takes its share of the micro-batches (DDP through accelerate), so
GROUPS=2 with two ranks is one micro-batch per rank.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM, AutoTokenizer

from kubetune.trainer.batches import collate, tokenize
from kubetune.trainer.formats import Example
from kubetune.trainer.step import accumulate

PROMPTS = [
    "Spell the word backwards: river\n",
    "Add 2 and 3\n",
    "What is the capital of France?\n",
    "Hi\n",
    "Name an antonym of hot\n",
    "Count from one to ten in words, please\n",
    "Sort: c b a\n",
    "x\n",
]
ANSWERS = [
    "revir",
    "5",
    "Paris is the capital of France, and it has been for a very long time indeed.",
    "Hello",
    "cold",
    "one two three four five six seven eight nine ten",
    "a b c",
    "y y y y y y y y y y y y",
]


def main(model_dir: Path, out: Path, groups: int) -> None:
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = accelerator.prepare(model)
    rows = tokenize([Example.pair(p, a) for p, a in zip(PROMPTS, ANSWERS, strict=True)], tokenizer, 128)
    size = len(rows) // groups
    chunks = [rows[i * size : (i + 1) * size] for i in range(groups)]
    mine = chunks[accelerator.process_index :: accelerator.num_processes]
    batches = [collate(chunk, tokenizer.pad_token_id) for chunk in mine]
    accumulate(model, batches, 0.0, False, accelerator)
    if accelerator.is_main_process:
        grads = {
            n: p.grad.flatten().tolist()
            for n, p in accelerator.unwrap_model(model).named_parameters()
            if p.grad is not None
        }
        out.write_text(json.dumps(grads))
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
