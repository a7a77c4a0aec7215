"""Row formats: how one cleaned row of Instruction, Chat, Completion or Classification data becomes an Example.

An Example is a list of text parts, each marked as trained on (the response, assistant turns, completion text)
or not (prompts, user and system turns). A row that cannot become an Example gives the reason it is dropped,
which the prep report counts.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubetune.api import DataFormat
from kubetune.api.data import Data

Row = dict[str, Any]
ChatRenderer = Callable[[list[dict[str, str]], bool], str]
"""Renders messages with the tokenizer's chat template: (messages, add_generation_prompt) -> text."""

INSTRUCTION_TEMPLATE = "### Instruction:\n{instruction}\n{input_block}### Response:\n"
_SPACES = re.compile(r"\s+")
_ROLES = ("system", "user", "assistant")


@dataclass
class Example:
    """One cleaned example: text parts marked trained-on or not, where it came from, and its label."""

    parts: list[tuple[str, bool]]
    source: str
    row: int
    label: str | None = None
    eos: bool = True
    """Append the end-of-sequence token (chat templates write their own)."""
    raw: Row | None = field(default=None, repr=False, compare=False)
    """The row it was made from (augmentation perturbs the row's inputs and formats it again)."""

    @property
    def key(self) -> str:
        """What deduplication and the overlap check compare: the lower-cased text and the label."""
        return "\x00".join(text for text, _ in self.parts).lower() + "\x00" + (self.label or "")

    @functools.cached_property
    def digest(self) -> bytes:
        """A 16-byte hash of ``key``: what deduplication keeps and what the row's split is drawn from."""
        return hashlib.blake2b(self.key.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    @classmethod
    def pair(cls, prompt: str, target: str, source: str = "", row: int = 0) -> Example:
        """A prompt (not trained on) followed by a target (trained on)."""
        return cls([(prompt, False), (target, True)] if prompt else [(target, True)], source, row)

    @property
    def prompt(self) -> str:
        """Everything before the last trained part: what generation starts from at evaluation."""
        last = max(i for i, (_, trained) in enumerate(self.parts) if trained)
        return "".join(text for text, _ in self.parts[:last])

    @property
    def target(self) -> str:
        """The last trained part: the reference answer at evaluation."""
        return [text for text, trained in self.parts if trained][-1]


def normalize(text: str) -> str:
    """Collapse runs of whitespace and strip the ends."""
    return _SPACES.sub(" ", text).strip()


def to_example(row: Row, data: Data, source: str, number: int, chat: ChatRenderer | None) -> Example | str:
    """The row as an Example, or the reason (a camelCase word) it is dropped."""
    example = _to_example(row, data, source, number, chat)
    if isinstance(example, Example):
        example.raw = row
    return example


def required_columns(data: Data) -> dict[str, str]:
    """The columns a row of the spec's format must have: column name -> the spec field naming it."""
    fields = data.fields
    names = {
        DataFormat.INSTRUCTION: ("instruction", "response"),
        DataFormat.COMPLETION: ("text",),
        DataFormat.CLASSIFICATION: ("text", "label"),
        DataFormat.CHAT: ("messages",),
    }[data.format]
    return {getattr(fields, name): f"spec.data.fields.{name}" for name in names}


def _text_columns(data: Data) -> tuple[str, ...]:
    """The columns the format reads as text: a list or an object there is a wrong type, not text."""
    fields = data.fields
    return {
        DataFormat.INSTRUCTION: (fields.instruction, fields.input, fields.response, fields.system),
        DataFormat.COMPLETION: (fields.text,),
        DataFormat.CLASSIFICATION: (fields.text, fields.label),
        DataFormat.CHAT: (),
    }[data.format]


def _to_example(row: Row, data: Data, source: str, number: int, chat: ChatRenderer | None) -> Example | str:
    clean: Callable[[str], str] = normalize if data.cleaning.normalize_whitespace else str.strip
    fields = data.fields
    if any(isinstance(row.get(column), dict | list | bytes) for column in _text_columns(data)):
        return "wrongType"

    def get(key: str) -> str:
        value = row.get(key)
        return "" if value is None else clean(str(value))

    if data.format == DataFormat.INSTRUCTION:
        instruction, extra, response = get(fields.instruction), get(fields.input), get(fields.response)
        if not instruction:
            return "emptyInstruction"
        if not response:
            return "emptyResponse"
        if data.use_chat_template:
            assert chat is not None, "useChatTemplate needs the tokenizer's chat template"
            return _chat_example(
                instruction_messages(instruction, extra, get(fields.system), response), clean, source, number, chat
            )
        template = data.prompt_template or INSTRUCTION_TEMPLATE
        input_block = f"### Input:\n{extra}\n" if extra else ""
        prompt = template.format(
            instruction=instruction, input=extra, input_block=input_block, system=get(fields.system)
        )
        return Example.pair(prompt, response, source, number)
    if data.format == DataFormat.COMPLETION:
        text = get(fields.text)
        return Example.pair("", text, source, number) if text else "emptyText"
    if data.format == DataFormat.CLASSIFICATION:
        text, label = get(fields.text), get(fields.label)
        if not text:
            return "emptyText"
        if not label:
            return "emptyLabel"
        return Example([(text, False)], source, number, label=label, eos=False)
    assert chat is not None, "Chat rows need the tokenizer's chat template"
    return _chat_example(row.get(fields.messages), clean, source, number, chat)


def instruction_messages(instruction: str, extra: str, system: str, response: str | None) -> list[dict[str, str]]:
    """An Instruction row as chat turns (useChatTemplate): system, then the user's instruction and input, then
    the assistant's response (left out when None: a prompt to answer)."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": f"{instruction}\n\n{extra}" if extra else instruction})
    if response is not None:
        messages.append({"role": "assistant", "content": response})
    return messages


def _chat_example(
    value: Any, clean: Callable[[str], str], source: str, number: int, render: ChatRenderer
) -> Example | str:
    """Each turn rendered with the chat template; assistant turns (without their header) are trained on."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return "invalidMessages"
    if not isinstance(value, list) or not value:
        return "invalidMessages"
    messages = []
    for message in value:
        if not isinstance(message, dict) or message.get("role") not in _ROLES or message.get("content") is None:
            return "invalidMessages"
        content = clean(str(message["content"]))
        if not content:
            return "emptyMessage"
        messages.append({"role": str(message["role"]), "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        return "noAssistantTurn"
    parts: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            header = render(messages[:i], True)
            if not header.startswith(done):
                return "chatTemplateNotPrefixStable"
            parts.append((header[len(done) :], False))
            done = header
        text = render(messages[: i + 1], False)
        if not text.startswith(done):
            return "chatTemplateNotPrefixStable"
        parts.append((text[len(done) :], message["role"] == "assistant"))
        done = text
    parts = [(text, trained) for text, trained in parts if text]
    while not parts[-1][1]:  # turns after the last assistant turn teach nothing
        parts.pop()
    return Example(parts, source, number, eos=False)
