"""A small OpenAI-compatible inference server for a tuned model (``kubetune serve``), on transformers.

Endpoints: ``POST /v1/completions`` and ``POST /v1/chat/completions`` (greedy or sampled, ``max_tokens``,
``temperature``, ``top_p``, ``stop``, ``seed``), ``GET /v1/models``, ``GET /health``, and ``GET /metrics``
(``kubetune_serve_requests_total``, ``kubetune_serve_request_duration_seconds``, ``kubetune_serve_tokens_total``).
Requests are answered one at a time (one model, one lock): this is the CPU and small-GPU path; ``deploy.engine:
VLLM`` selects a vLLM image for throughput.

The model is the adapter on its base model, or the merged model (``--merged``, and always after stages).
Chat messages are formatted the way the job trained: its chat template (Chat data), its instruction prompt with
the last user message (Instruction data), or the contents joined (Completion data).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from kubetune.api import DataFormat, FineTuneJob, MethodType

from .evaluate import generate, prompt_ids
from .formats import INSTRUCTION_TEMPLATE
from .local import Volumes, handed_on
from .model import load_tokenizer


class BadRequestError(Exception):
    """A request the API rejects (400), naming the parameter."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "kubetune_serve_requests",
            "Requests by endpoint and status code.",
            ("endpoint", "code"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "kubetune_serve_request_duration_seconds",
            "Request latency by endpoint.",
            ("endpoint",),
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.tokens = Counter(
            "kubetune_serve_tokens",
            "Tokens read (prompt) and generated (completion).",
            ("kind",),
            registry=self.registry,
        )


def model_dir(job: FineTuneJob, out: Path, merged: bool) -> tuple[Path, Path | None]:
    """(model directory, adapter directory or None) of a finished job's outputs."""
    spec = job.spec
    if spec.method.type == MethodType.FULL or merged or spec.stages:
        return handed_on(out, "spec.deploy.merged"), None
    return Path(), out / "adapter"


class Model:
    """The tuned model and its tokenizer, and how the job formats chat messages."""

    def __init__(self, job: FineTuneJob, volumes: Volumes, out: Path, merged: bool) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        path, adapter = model_dir(job, out, merged)
        base = volumes.model(job.spec.model) if adapter is not None else path
        self.tokenizer = load_tokenizer(base, job.spec.model.trust_remote_code)
        model: Any = AutoModelForCausalLM.from_pretrained(base, trust_remote_code=job.spec.model.trust_remote_code)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter)
        self.model = model.eval()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.job, self.name = job, job.name
        self.lock = threading.Lock()

    def chat_prompt(self, messages: Any) -> str:
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise BadRequestError("messages must be a non-empty list of {role, content} objects", "messages")
        data = self.job.spec.data
        if (data.format == DataFormat.CHAT or data.use_chat_template) and getattr(
            self.tokenizer, "chat_template", None
        ):
            return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        users = [str(m.get("content", "")) for m in messages if m.get("role") == "user"]
        if data.format == DataFormat.INSTRUCTION:
            system = next((str(m.get("content", "")) for m in messages if m.get("role") == "system"), "")
            template = data.prompt_template or INSTRUCTION_TEMPLATE
            return template.format(instruction=users[-1] if users else "", input="", input_block="", system=system)
        return "\n".join(str(m.get("content", "")) for m in messages)

    def complete(self, prompt: str, body: dict[str, Any], limit: int) -> tuple[str, str, int, int]:
        """(text, finish_reason, prompt tokens, completion tokens) of one greedy or sampled completion."""
        import torch

        max_tokens = body.get("max_tokens", body.get("max_completion_tokens", 16))
        if not isinstance(max_tokens, int) or not 1 <= max_tokens <= limit:
            raise BadRequestError(f"max_tokens must be an integer from 1 to {limit}", "max_tokens")
        temperature = body.get("temperature", 0.0)
        if not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
            raise BadRequestError("temperature must be a number from 0 to 2", "temperature")
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        ids = prompt_ids(self.tokenizer, prompt)
        sampling: dict[str, Any] = {}
        if temperature > 0:
            sampling = {"do_sample": True, "temperature": float(temperature), "top_p": float(body.get("top_p", 1.0))}
        with self.lock, torch.no_grad():
            if isinstance(body.get("seed"), int):
                torch.manual_seed(body["seed"])
            new = generate(self.model, self.tokenizer, ids, max_tokens, **sampling)
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        finish = "stop" if self.tokenizer.eos_token_id in new else "length"
        for marker in stop:
            if isinstance(marker, str) and marker and marker in text:
                text, finish = text[: text.index(marker)], "stop"
        return text, finish, len(ids), len(new)


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def answer(model: Model, endpoint: str, body: dict[str, Any], limit: int, metrics: ServeMetrics) -> dict[str, Any]:
    """The OpenAI-style response to one completion or chat request."""
    if body.get("model") not in (None, model.name):
        raise BadRequestError(
            f"model {body.get('model')!r} is not served here; this server serves {model.name!r}", "model"
        )
    if endpoint == "chat":
        text, finish, used, made = model.complete(model.chat_prompt(body.get("messages")), body, limit)
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish,
        }
        kind = "chat.completion"
    else:
        prompt = body.get("prompt")
        prompt = prompt[0] if isinstance(prompt, list) and len(prompt) == 1 else prompt
        if not isinstance(prompt, str):
            raise BadRequestError("prompt must be a string (or a list of one string)", "prompt")
        text, finish, used, made = model.complete(prompt, body, limit)
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        kind = "text_completion"
    metrics.tokens.labels(kind="prompt").inc(used)
    metrics.tokens.labels(kind="completion").inc(made)
    return {
        "id": f"kt-{uuid.uuid4().hex[:24]}",
        "object": kind,
        "created": int(time.time()),
        "model": model.name,
        "choices": [choice],
        "usage": _usage(used, made),
    }


def serve(model: Model, port: int, limit: int, address: str = "") -> ThreadingHTTPServer:
    """Start the API on ``address:port`` in a background thread; returns the server (``server_address``)."""
    metrics = ServeMetrics()

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path.startswith("/metrics"):
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif self.path.startswith("/health"):
                self._send(200, b'{"status":"ok"}')
            elif self.path.startswith("/v1/models"):
                listed = {"object": "list", "data": [{"id": model.name, "object": "model", "owned_by": "kubetune"}]}
                self._send(200, json.dumps(listed).encode())
            else:
                self._send(
                    404, json.dumps({"error": {"message": f"no route {self.path}", "type": "not_found"}}).encode()
                )

        def do_POST(self) -> None:
            endpoint = {"/v1/completions": "completions", "/v1/chat/completions": "chat"}.get(self.path.split("?")[0])
            if endpoint is None:
                self._send(
                    404, json.dumps({"error": {"message": f"no route {self.path}", "type": "not_found"}}).encode()
                )
                return
            started, code = time.perf_counter(), 200
            try:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except json.JSONDecodeError as error:
                    raise BadRequestError(f"the body is not JSON: {error.msg}") from error
                if not isinstance(body, dict):
                    raise BadRequestError("the body must be a JSON object")
                if body.get("stream"):
                    raise BadRequestError("stream is not supported by this server", "stream")
                result = json.dumps(answer(model, endpoint, body, limit, metrics)).encode()
            except BadRequestError as error:
                code = 400
                result = json.dumps(
                    {"error": {"message": str(error), "type": "invalid_request_error", "param": error.param}}
                ).encode()
            self._send(code, result)
            metrics.requests.labels(endpoint=endpoint, code=str(code)).inc()
            metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - started)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((address, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
