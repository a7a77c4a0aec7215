"""The OpenAI-compatible server on a tuned tiny Llama: completions match the model's own greedy output, chat uses
the job's prompt format, bad requests name the parameter, and the metrics count requests and tokens."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import parse_job
from kubetune.trainer.local import Volumes
from kubetune.trainer.serve import Model, serve
from tests.trainer.conftest import DATA, Runner, fast_job

PROMPT = "### Instruction:\nSpell the word backwards.\n### Input:\nriver\n### Response:\n"


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("serve")
    doc = fast_job("served").set("spec.training.maxSteps", 6).set("spec.output", {"pvc": {"claimName": "out"}}).build()
    import yaml

    from kubetune.trainer.cli import main

    (tmp / "job.yaml").write_text(yaml.safe_dump(doc))
    assert main(["run", str(tmp / "job.yaml"), "--output", str(tmp / "out"), "--volume", f"data={DATA}"]) == 0
    model = Model(parse_job(doc), Volumes(claims={"data": DATA}), tmp / "out", merged=False)
    server = serve(model, 0, limit=32, address="127.0.0.1")
    yield model, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_completion_is_the_tuned_models_greedy_answer(served: Any) -> None:
    import torch

    model, url = served
    code, body = post(f"{url}/v1/completions", {"model": "served", "prompt": PROMPT, "max_tokens": 8})
    assert code == 200 and body["object"] == "text_completion" and body["model"] == "served"
    tokenizer = model.tokenizer
    ids = [tokenizer.bos_token_id] + tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        ends = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
        out = model.model.generate(input_ids=torch.tensor([ids]), max_new_tokens=8, do_sample=False, **ends)
    assert body["choices"][0]["text"] == tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(ids) and usage["total_tokens"] == len(ids) + usage["completion_tokens"]


def test_chat_uses_the_jobs_instruction_format(served: Any) -> None:
    model, url = served
    messages = [{"role": "user", "content": "Spell the word backwards."}]
    code, body = post(f"{url}/v1/chat/completions", {"messages": messages, "max_tokens": 4})
    assert code == 200 and body["choices"][0]["message"]["role"] == "assistant"
    assert model.chat_prompt(messages) == "### Instruction:\nSpell the word backwards.\n### Response:\n"


def test_bad_requests_name_the_parameter_and_metrics_count(served: Any) -> None:
    _, url = served
    assert post(f"{url}/v1/completions", {"prompt": 3})[1]["error"]["param"] == "prompt"
    code, body = post(f"{url}/v1/completions", {"prompt": "x", "max_tokens": 10_000})
    assert code == 400 and body["error"]["param"] == "max_tokens" and "1 to 32" in body["error"]["message"]
    assert post(f"{url}/v1/chat/completions", {"model": "other", "messages": []})[1]["error"]["param"] == "model"
    with urllib.request.urlopen(f"{url}/v1/models") as response:
        assert json.loads(response.read())["data"][0]["id"] == "served"
    with urllib.request.urlopen(f"{url}/metrics") as response:
        text = response.read().decode()
    assert 'kubetune_serve_requests_total{code="400",endpoint="completions"} 2.0' in text
    assert 'kubetune_serve_tokens_total{kind="completion"}' in text
    assert "kubetune_serve_request_duration_seconds_bucket" in text


def test_serving_an_unfinished_output_is_a_configuration_error(run_job: Runner, tmp_path: Path) -> None:
    import yaml

    from kubetune.trainer.cli import main

    doc = fast_job("nothing").set("spec.output", {"pvc": {"claimName": "out"}}).build()
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(doc))
    assert (
        main(["serve", str(tmp_path / "job.yaml"), "--output", str(tmp_path / "none"), f"--volume=data={DATA}"]) == 78
    )
