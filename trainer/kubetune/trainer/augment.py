"""Scarce-data augmentation: seeded word-level noise on a row's inputs (word dropout, adjacent swaps, random
replacement words), and NEFTune noise on the input embeddings while training.

Only what the model reads is perturbed, never what it learns to answer: the instruction and input of
Instruction rows, the text of Classification rows, the user turns of Chat rows. The perturbed row is formatted
again like any other row, so prompt templates and chat templates stay intact. Completion rows have no input;
NEFTune (``spec.training.neftuneNoiseAlpha``) is their augmentation.
"""

from __future__ import annotations

import math
import random
from typing import Any

from kubetune.api import DataFormat
from kubetune.api.data import Augmentation, Data

from .errors import ConfigError
from .formats import ChatRenderer, Example, Row, to_example


def perturb(text: str, knobs: Augmentation, rng: random.Random, vocabulary: list[str]) -> str:
    """``text`` with words dropped, replaced and swapped with their neighbour, each with its probability;
    at least one word is kept."""
    words = text.split()
    out = []
    for word in words:
        if rng.random() < knobs.word_dropout:
            continue
        if vocabulary and rng.random() < knobs.token_noise:
            word = rng.choice(vocabulary)
        out.append(word)
    if not out and words:
        out = [rng.choice(words)]
    i = 0
    while i < len(out) - 1:
        if rng.random() < knobs.word_swap:
            out[i], out[i + 1] = out[i + 1], out[i]
            i += 1
        i += 1
    return " ".join(out)


def _input_keys(data: Data) -> tuple[str, ...]:
    fields = data.fields
    return {
        DataFormat.INSTRUCTION: (fields.instruction, fields.input),
        DataFormat.CLASSIFICATION: (fields.text,),
        DataFormat.CHAT: (fields.messages,),
    }.get(data.format, ())


def _perturb_row(row: Row, data: Data, knobs: Augmentation, rng: random.Random, vocabulary: list[str]) -> Row:
    noisy = dict(row)
    for key in _input_keys(data):
        value = row.get(key)
        if data.format == DataFormat.CHAT and isinstance(value, list):
            noisy[key] = [
                {**m, "content": perturb(str(m.get("content", "")), knobs, rng, vocabulary)}
                if isinstance(m, dict) and m.get("role") == "user"
                else m
                for m in value
            ]
        elif isinstance(value, str) and value:
            noisy[key] = perturb(value, knobs, rng, vocabulary)
    return noisy


def augment(train: list[Example], data: Data, chat: ChatRenderer | None) -> tuple[list[Example], int]:
    """The training examples plus ``copies`` perturbed copies of each (a copy that came out unchanged, or that
    the row filters would drop, is left out); returns them and the number added."""
    knobs = data.augmentation
    assert knobs is not None
    if not _input_keys(data):
        raise ConfigError(
            f"spec.data.augmentation: {data.format} rows have no input to perturb; "
            "use spec.training.neftuneNoiseAlpha for Completion data"
        )
    rng = random.Random(knobs.seed)
    vocabulary = sorted(
        {word for example in train for text, trained in example.parts if not trained for word in text.split()}
    )
    seen = {example.key for example in train}
    added: list[Example] = []
    for _ in range(knobs.copies):
        for example in train:
            if example.raw is None:
                continue
            noisy = to_example(
                _perturb_row(example.raw, data, knobs, rng, vocabulary), data, example.source, example.row, chat
            )
            if isinstance(noisy, Example) and noisy.key not in seen:
                noisy.label = example.label
                seen.add(noisy.key)
                added.append(noisy)
    return train + added, len(added)


def add_neftune(model: Any, alpha: float) -> Any:
    """NEFTune (Jain et al., 2023): while the model trains, uniform noise in [-m, m], m = alpha / sqrt(L * d),
    is added to the input embeddings (L: sequence length, d: width). Evaluation and generation see none.
    Returns the hook's handle."""
    import torch

    def hook(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        magnitude = alpha / math.sqrt(output.size(-2) * output.size(-1))
        return output + torch.zeros_like(output).uniform_(-magnitude, magnitude)

    return model.get_input_embeddings().register_forward_hook(hook)
