"""Writes examples/data/languages.jsonl, the language-identification data `make run` tunes on, from the
multilingual dialogue corpus of the PyPI package chatterbot-corpus (BSD-3-Clause):
``python hack/language_data.py PATH/TO/chatterbot_corpus/data > examples/data/languages.jsonl``.

Each row is a Chat conversation: a short system line, the user asking which language a sentence from the corpus
is in, the assistant naming it. Ten Latin-script languages, up to PER_LANGUAGE sentences of 12-90 characters
each, chosen with a fixed seed, so the file is reproducible.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import yaml

LANGUAGES = (
    "dutch",
    "english",
    "french",
    "german",
    "indonesian",
    "italian",
    "portuguese",
    "spanish",
    "swedish",
    "turkish",
)
PER_LANGUAGE = 60
SYSTEM = "You identify languages."
QUESTION = "Which language is this sentence in? Answer with the language only.\n\n{text}"


def sentences(folder: Path) -> list[str]:
    found: set[str] = set()
    for file in sorted(folder.glob("*.yml")):
        for conversation in (yaml.safe_load(file.read_text()) or {}).get("conversations") or []:
            for text in conversation:
                if isinstance(text, str) and 12 <= len(text.strip()) <= 90 and "\n" not in text.strip():
                    found.add(text.strip())
    return sorted(found)


def main(root: Path) -> None:
    rng = random.Random(15)
    rows = []
    for language in LANGUAGES:
        chosen = sentences(root / language)
        rng.shuffle(chosen)
        for text in chosen[:PER_LANGUAGE]:
            rows.append(
                {
                    "messages": [
                        {"role": "system", "content": SYSTEM},
                        {"role": "user", "content": QUESTION.format(text=text)},
                        {"role": "assistant", "content": language.capitalize()},
                    ]
                }
            )
    rng.shuffle(rows)
    for row in rows:
        print(json.dumps(row, ensure_ascii=False))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
