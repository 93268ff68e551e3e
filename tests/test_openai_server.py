"""The OpenAI endpoint over an in-process token backend (the real-Triton path is in test_triton_openai.py)."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.testclient import TestClient

from hunyuan_trtllm.checkpoints.convert import convert
from hunyuan_trtllm.checkpoints.mapping import Mapping
from hunyuan_trtllm.checkpoints.tokenizer import HunyuanTokenizer
from hunyuan_trtllm.reference.executor import ReferenceExecutor
from hunyuan_trtllm.serve.generation import GenerationParams
from hunyuan_trtllm.serve.openai_server import create_app
from hunyuan_trtllm.serve.reference_decoding import Generation, SamplingParams

MODEL = "hunyuan-tiny"


class ExecutorBackend:
    """Generates with the reference executor in this process; replays scripted tokens when given some."""

    def __init__(self, ckpt, max_input_len: int = 64, max_seq_len: int = 96, script: list[int] | None = None):
        self.executor = ReferenceExecutor(ckpt)
        self.max_input_len, self.max_seq_len, self.script = max_input_len, max_seq_len, script
        self.end_id = self.executor.config["hunyuan"]["eos_token_ids"][0]

    async def ready(self) -> bool:
        return True

    async def stream(self, prompt_ids, params: GenerationParams):
        if self.script is not None:
            for token in self.script[: params.max_tokens]:
                yield [token]
            return
        sampling = SamplingParams(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                                  seed=params.seed or 0)
        sequence = Generation(list(prompt_ids), params.max_tokens, self.end_id, sampling)
        while not sequence.finished:
            token = await asyncio.to_thread(sequence.step, self.executor)
            if token is not None:
                yield [token]


@pytest.fixture(scope="module")
def served(tiny_models, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("ckpt") / "tp2"
    convert(tiny_models["a13b"], ckpt, Mapping(tp=2, moe_ep=2), dtype="float32")
    tokenizer = HunyuanTokenizer.from_model_dir(tiny_models["a13b"])
    return ckpt, tokenizer


def client(served, **backend_kwargs) -> TestClient:
    ckpt, tokenizer = served
    return TestClient(create_app(ExecutorBackend(ckpt, **backend_kwargs), tokenizer, MODEL))


def test_models_health_metrics(served):
    c = client(served)
    assert c.get("/v1/models").json()["data"][0]["id"] == MODEL
    assert c.get("/health").status_code == 200
    c.post("/v1/completions", json={"model": MODEL, "prompt": "hello", "max_tokens": 2, "temperature": 0})
    assert "hunyuan_completion_tokens_total 2.0" in c.get("/metrics").text


def test_greedy_completion_equals_stepwise_argmax(served):
    ckpt, tokenizer = served
    executor = ReferenceExecutor(ckpt)
    prompt = tokenizer.encode("The quick brown fox")
    ids = list(prompt)
    for _ in range(6):  # a plain step-by-step argmax over the executor, no cache
        ids.append(int(executor.forward(ids)[-1].argmax()))
    expected = tokenizer.decode(ids[len(prompt):])
    body = client(served).post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 6,
                                                        "temperature": 0}).json()
    assert body["choices"][0]["text"] == expected and body["usage"]["completion_tokens"] == 6
    assert body["choices"][0]["finish_reason"] == "length"


def test_streaming_equals_non_streaming(served):
    c = client(served)
    request = {"model": MODEL, "messages": [{"role": "user", "content": "你好, world"}], "max_tokens": 8,
               "temperature": 0}
    whole = c.post("/v1/chat/completions", json=request).json()
    with c.stream("POST", "/v1/chat/completions", json={**request, "stream": True,
                                                        "stream_options": {"include_usage": True}}) as r:
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join((ch["choices"][0]["delta"].get("content") or "") + (ch["choices"][0]["delta"].get(
        "reasoning_content") or "") for ch in chunks if ch["choices"])
    message = whole["choices"][0]["message"]
    assert text == (message["reasoning_content"] or "") + message["content"]
    assert chunks[-1]["usage"] == whole["usage"]


def test_reasoning_and_tool_calls_are_parsed(served):
    ckpt, tokenizer = served
    output = ('<think>\nThe user wants weather.\n</think>\n<answer>\n<tool_calls>[{"name": "get_weather", '
              '"arguments": {"city": "深圳"}}]</tool_calls>\n</answer>')
    script = tokenizer.encode(output) + [tokenizer.eos_token_id]
    c = client(served, script=script, max_input_len=2048, max_seq_len=4096)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    request = {"model": MODEL, "messages": [{"role": "user", "content": "weather?"}], "tools": tools,
               "max_tokens": 400}
    message = c.post("/v1/chat/completions", json=request).json()["choices"][0]
    assert message["finish_reason"] == "tool_calls"
    assert message["message"]["reasoning_content"] == "The user wants weather."
    call = message["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "深圳"}


def test_stop_strings_and_tokens(served):
    ckpt, tokenizer = served
    script = tokenizer.encode("alpha beta gamma") + [tokenizer.eos_token_id] + tokenizer.encode(" never")
    c = client(served, script=script, max_input_len=2048, max_seq_len=4096)
    body = c.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 50}).json()
    assert body["choices"][0]["text"] == "alpha beta gamma" and body["choices"][0]["finish_reason"] == "stop"
    body = c.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 50, "stop": [" gam"]}).json()
    assert body["choices"][0]["text"] == "alpha beta"


@pytest.mark.parametrize(
    ("payload", "status", "fragment"),
    [
        ({"model": MODEL, "prompt": ""}, 400, "empty"),
        ({"model": MODEL, "prompt": "a " * 200}, 400, "at most 64"),
        ({"model": MODEL, "prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
        ({"model": "gpt-4", "prompt": "hi"}, 404, "does not exist"),
        ({"model": MODEL, "prompt": "hi", "n": 2}, 400, "n=1"),
        ({"prompt": "hi"}, 400, "model"),
    ],
)
def test_bad_requests_get_4xx_and_server_keeps_serving(served, payload, status, fragment):
    c = client(served)
    response = c.post("/v1/completions", json=payload)
    assert response.status_code == status and fragment in response.json()["error"]["message"]
    bad_json = c.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400
    ok = c.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 1})
    assert ok.status_code == 200
