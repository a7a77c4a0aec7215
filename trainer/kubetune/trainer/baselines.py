"""The few-shot baseline: each test prompt preceded by k solved training examples, for the base model.

Results then show the fine-tuned model beside the base model few-shot and zero-shot (the plain baseline).
The same k examples (seeded) precede every test prompt; a prompt longer than the budget loses its oldest
tokens, never the answer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from kubetune.api.training import FewShot

from .batches import IGNORE, Tokenized, encode
from .formats import Example

SEPARATOR = "\n\n"


def shots(train: Sequence[Example], few_shot: FewShot) -> list[Example]:
    """The k training examples every prompt gets (seeded), in a fixed order."""
    return random.Random(few_shot.seed).sample(train, min(few_shot.k, len(train)))


def prefix(solved: list[Example]) -> str:
    """The text every few-shot prompt starts with: each solved example's prompt and answer."""
    return "".join(s.prompt + s.target.rstrip() + SEPARATOR for s in solved)


def with_shots(example: Example, solved: list[Example]) -> Example:
    """``example`` with the solved examples (prompt and answer) in front of its prompt."""
    return Example(
        [(prefix(solved) + example.prompt, False), (example.target, True)], example.source, example.row, eos=example.eos
    )


def tokenize_left(examples: list[Example], tokenizer: Any, max_len: int) -> list[Tokenized]:
    """Encoded rows cut to their last ``max_len`` tokens (the answer stays; the oldest shots go)."""
    rows = []
    for example in examples:
        ids, labels = encode(example, tokenizer)
        ids, labels = ids[-max_len:], labels[-max_len:]
        if any(label != IGNORE for label in labels):
            rows.append((ids, labels))
    return rows
