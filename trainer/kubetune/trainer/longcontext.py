"""Context-window extension: RoPE scaling of the model's config, and the passkey-retrieval check.

The scaling factor is ``targetLength`` over the model's ``max_position_embeddings``; the config's rotary
parameters get the rope type (linear, dynamic NTK, YaRN) and the original length, and ``max_position_embeddings``
becomes the target. Training then runs on packed rows, which reach the micro-batch's total length.

The passkey check (Mohtashami & Jaggi, 2023) hides "The pass key is N" at a different depth of a filler text of
the target length in each prompt and asks for it back; accuracy is the share of answers that contain N.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from kubetune.api.tuning import ContextExtension

from .errors import ConfigError
from .evaluate import generate

ROPE_TYPES = {"Linear": "linear", "Dynamic": "dynamic", "YaRN": "yarn"}
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
QUESTION = "What is the pass key? The pass key is"


def extended_config(path: Path, extension: ContextExtension, trust_remote_code: bool = False) -> Any:
    """The model's config with RoPE scaled to ``extension.targetLength``; a ConfigError when it has no RoPE."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    rope = getattr(config, "rope_parameters", None)
    original = getattr(config, "max_position_embeddings", None)
    if not isinstance(rope, dict) or "rope_theta" not in rope or not original:
        raise ConfigError(
            f"spec.contextExtension: the model ({config.model_type}) has no rotary position embeddings to scale"
        )
    if extension.target_length <= original:
        raise ConfigError(
            f"spec.contextExtension.targetLength: {extension.target_length} is not longer than the model's "
            f"context ({original} tokens)"
        )
    config.rope_parameters = {
        **rope,
        "rope_type": ROPE_TYPES[extension.rope_scaling],
        "factor": extension.target_length / original,
        "original_max_position_embeddings": original,
    }
    config.max_position_embeddings = extension.target_length
    return config


def passkey_prompts(tokenizer: Any, length: int, samples: int, seed: int = 0) -> list[tuple[str, str]]:
    """(prompt, key) pairs whose prompts are about ``length`` tokens, the key at evenly spread depths."""
    rng = random.Random(seed)
    filler_tokens = len(tokenizer(FILLER, add_special_tokens=False)["input_ids"])
    out = []
    for i in range(samples):
        key = str(rng.randint(10000, 99999))
        needle = f"The pass key is {key}. Remember it. {key} is the pass key. "
        spare = length - len(tokenizer(needle + QUESTION, add_special_tokens=False)["input_ids"]) - 16
        repeats = max(spare // filler_tokens, 1)
        before = round(repeats * (i + 0.5) / samples)
        out.append((FILLER * before + needle + FILLER * (repeats - before) + QUESTION, key))
    return out


def passkey(model: Any, tokenizer: Any, extension: ContextExtension, seed: int = 0) -> dict[str, float]:
    """Passkey-retrieval accuracy at the target length, and the prompts' mean length in tokens."""
    import torch

    prompts = passkey_prompts(tokenizer, extension.target_length, extension.passkey_samples, seed)
    model.eval()
    found, tokens = 0, 0
    with torch.no_grad():
        for prompt, key in prompts:
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            tokens += len(ids)
            new = generate(model, tokenizer, ids, 8, stop_at_eos=False)
            found += key in tokenizer.decode(new, skip_special_tokens=True)
    model.train()
    n = max(len(prompts), 1)
    return {"passkeyAccuracy": found / n, "passkeyPromptTokens": tokens / n}
