"""Builds ``kubetune/tiny-llama``: a 2-layer Llama with a byte-level BPE tokenizer trained locally.

No model can be downloaded here, so `make run` and the tests fine-tune this one. It is built once into
the model cache from a fixed corpus and seed, so every machine builds the same model.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import outputs

TINY_LLAMA = "kubetune/tiny-llama"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def corpus() -> list[str]:
    """Text the tokenizer is trained on: the example data and plain English words and digits."""
    root = Path(__file__).resolve().parents[3]
    lines: list[str] = []
    for path in [root / "examples" / "data" / "instructions.jsonl"]:  # fixed: the tokenizer must not drift
        for raw in path.read_text().splitlines():
            lines.extend(str(v) for v in json.loads(raw).values())
    lines += ["### Instruction:", "### Input:", "### Response:", "0 1 2 3 4 5 6 7 8 9 10 100 1000"]
    return lines


def build_tiny_llama(path: Path, vocab_size: int = 512, seed: int = 0) -> Path:
    """Write the tiny model and tokenizer to ``path`` (atomically) and return it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|bos|>", "<|eos|>", "<|unk|>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<|unk|>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<|pad|>", bos_token="<|bos|>", eos_token="<|eos|>", unk_token="<|unk|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=fast.pad_token_id,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):  # building must not move the caller's RNG: runs stay reproducible
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    tmp = path.with_name(path.name + ".tmp")
    model.save_pretrained(tmp)
    fast.save_pretrained(tmp)
    outputs.readable(tmp)  # pods running as another user read the model cache
    tmp.rename(path)
    return path


def ensure_model(path: Path, name: str | None) -> Path:
    """Return ``path``, building the tiny model there first when it is the missing tiny-llama."""
    if not path.exists() and name == TINY_LLAMA:
        path.parent.mkdir(parents=True, exist_ok=True)
        build_tiny_llama(path)
    return path
