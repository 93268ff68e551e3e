"""The OpenAI endpoint over an in-process token backend (the real-Triton path is in test_triton_openai.py)."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch
from fastapi.testclient import TestClient

from hunyuan_trtllm.checkpoints.convert import convert
from hunyuan_trtllm.checkpoints.mapping import Mapping
from hunyuan_trtllm.checkpoints.tokenizer import HunyuanTokenizer
from hunyuan_trtllm.reference.executor import ReferenceExecutor
from hunyuan_trtllm.serve.generation import GenerationParams, TokenStep
from hunyuan_trtllm.serve.guided import GrammarFactory
from hunyuan_trtllm.serve.openai_server import create_app
from hunyuan_trtllm.serve.reference_decoding import Generation, SamplingParams

MODEL = "hunyuan-tiny"


class ExecutorBackend:
    """Generates with the reference executor in this process, as the reference Triton model does (penalties,
    log probabilities, guided decoding); replays scripted tokens when given some; records the last params."""

    max_top_logprobs, guided_decoding = 20, True

    def __init__(self, ckpt, max_input_len: int = 64, max_seq_len: int = 96, script: list[int] | None = None,
                 tokenizer_dir=None):
        self.executor = ReferenceExecutor(ckpt)
        self.max_input_len, self.max_seq_len, self.script = max_input_len, max_seq_len, script
        self.end_id = self.executor.config["hunyuan"]["eos_token_ids"][0]
        self.tokenizer_dir, self.params = tokenizer_dir, None

    async def ready(self) -> bool:
        return True

    async def stream(self, prompt_ids, params: GenerationParams):
        self.params = params
        if self.script is not None:
            for token in self.script[: params.max_tokens]:
                yield [token]
            return
        sampling = SamplingParams(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                                  seed=params.seed or 0, repetition_penalty=params.repetition_penalty,
                                  presence_penalty=params.presence_penalty, frequency_penalty=params.frequency_penalty)
        guide = None if params.guide is None else GrammarFactory(self.tokenizer_dir, self.executor.vocab).matcher(
            params.guide)
        sequence = Generation(list(prompt_ids), params.max_tokens, self.end_id, sampling, log_probs=params.logprobs,
                              top_log_probs=params.top_logprobs, guide=guide)
        while not sequence.finished:
            token = await asyncio.to_thread(sequence.step, self.executor)
            if token is not None:
                n = len(sequence.tokens) - 1
                yield TokenStep([token], sequence.token_log_probs[n:] or None, sequence.top[n:] or None)


@pytest.fixture(scope="module")
def served(tiny_models, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("ckpt") / "tp2"
    convert(tiny_models["a13b"], ckpt, Mapping(tp=2, moe_ep=2), dtype="float32")
    tokenizer = HunyuanTokenizer.from_model_dir(tiny_models["a13b"])
    return ckpt, tokenizer


def client(served, **backend_kwargs) -> TestClient:
    ckpt, tokenizer = served
    return TestClient(create_app(ExecutorBackend(ckpt, **backend_kwargs), tokenizer, MODEL))


def app_and_backend(served, tiny_models, **backend_kwargs) -> tuple[TestClient, ExecutorBackend]:
    ckpt, tokenizer = served
    backend = ExecutorBackend(ckpt, tokenizer_dir=tiny_models["a13b"], **backend_kwargs)
    return TestClient(create_app(backend, tokenizer, MODEL)), backend


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
                                                        "temperature": 0, "repetition_penalty": 1.0}).json()
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


# ---- conformance (issue 13): each of these failed before -----------------------------------------------------
def post(c: TestClient, path: str, body: dict) -> tuple[int, dict]:
    response = c.post(path, json={"model": MODEL, **body})
    return response.status_code, response.json()


def sse(c: TestClient, path: str, body: dict) -> list[dict]:
    with c.stream("POST", path, json={"model": MODEL, "stream": True, **body}) as response:
        assert response.status_code == 200
        lines = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def chat_text(chunks: list[dict]) -> str:
    return "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch["choices"])


def test_generation_config_defaults_apply_when_the_request_has_none(served, tiny_models):
    c, backend = app_and_backend(served, tiny_models, script=[5])
    post(c, "/v1/completions", {"prompt": "hi", "max_tokens": 1})
    p = backend.params  # the tiny model's generation_config.json: A13B's values
    assert (p.temperature, p.top_k, p.top_p, p.repetition_penalty) == (0.7, 20, 0.8, 1.05)
    post(c, "/v1/completions", {"prompt": "hi", "max_tokens": 1, "temperature": 0.3, "top_p": 0.5})
    p = backend.params
    assert (p.temperature, p.top_k, p.top_p, p.repetition_penalty) == (0.3, 20, 0.5, 1.05)
    post(c, "/v1/completions", {"prompt": "hi", "max_tokens": 1, "temperature": 0, "repetition_penalty": 1.0})
    assert (backend.params.top_k, backend.params.repetition_penalty) == (1, 1.0)


@pytest.mark.parametrize(("body", "param"), [
    ({"prompt": "hi", "max_tokens": 96}, "max_tokens"),  # a 96-token context
    ({"prompt": "hi", "max_tokens": 2, "stream_options": {"include_usage": True}}, "stream_options"),
    ({"prompt": "hi", "max_tokens": 2, "logprobs": 21}, "logprobs"),
    ({"prompt": "hi", "max_tokens": 2, "logprobs": 1, "echo": True}, "echo"),
])
def test_unsupported_or_invalid_fields_are_400_with_an_openai_body(served, tiny_models, body, param):
    c, _ = app_and_backend(served, tiny_models, script=[5])
    status, error = post(c, "/v1/completions", body)
    assert status == 400 and error["error"]["param"] == param and error["error"]["type"] == "invalid_request_error"


def test_fields_a_backend_cannot_honour_are_refused(served, tiny_models):
    c, backend = app_and_backend(served, tiny_models, script=[5], max_input_len=2048, max_seq_len=4096)
    backend.max_top_logprobs, backend.guided_decoding = 0, False  # TensorRT-LLM's C++ backend
    messages = [{"role": "user", "content": "hi"}]
    for extra, param in (({"logprobs": True, "top_logprobs": 2}, "top_logprobs"),
                         ({"top_logprobs": 2}, "top_logprobs"),
                         ({"response_format": {"type": "json_object"}}, "response_format"),
                         ({"tool_choice": "required", "tools": TOOLS}, "tool_choice")):
        status, error = post(c, "/v1/chat/completions", {"messages": messages, "max_tokens": 2, **extra})
        assert status == 400 and error["error"]["param"] == param, extra


def test_special_tokens_never_reach_content_by_default(served, tiny_models):
    ckpt, tokenizer = served
    script = tokenizer.encode("hi") + [tokenizer.token_id("<|extra_62|>")] + tokenizer.encode(" there") + [
        tokenizer.eos_token_id]
    c, _ = app_and_backend(served, tiny_models, script=script, max_input_len=2048, max_seq_len=4096)
    body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 50}
    assert post(c, "/v1/chat/completions", body)[1]["choices"][0]["message"]["content"] == "hi there"
    assert chat_text(sse(c, "/v1/chat/completions", body)) == "hi there"
    kept = post(c, "/v1/chat/completions", {**body, "skip_special_tokens": False})[1]
    assert kept["choices"][0]["message"]["content"] == "hi<|extra_62|> there"


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "深圳"]}}, "required": ["city"],
    "additionalProperties": False}}}]


@pytest.mark.parametrize("output", ["助手：你好，我在。", "<answer>\n助手：你好，我在。\n</answer>"])
def test_assistant_prefix_is_stripped_from_plain_replies_with_tools(served, tiny_models, output):
    ckpt, tokenizer = served
    c, _ = app_and_backend(served, tiny_models, script=tokenizer.encode(output) + [tokenizer.eos_token_id],
                           max_input_len=2048, max_seq_len=4096)
    body = {"messages": [{"role": "user", "content": "在吗"}], "tools": TOOLS, "max_tokens": 50}
    assert post(c, "/v1/chat/completions", body)[1]["choices"][0]["message"]["content"] == "你好，我在。"
    assert chat_text(sse(c, "/v1/chat/completions", body)) == "你好，我在。"
    no_tools = {**body, "tools": None}
    assert post(c, "/v1/chat/completions", no_tools)[1]["choices"][0]["message"]["content"] == "助手：你好，我在。"


def test_unopened_answer_close_never_reaches_the_client(served, tiny_models):
    ckpt, tokenizer = served
    script = tokenizer.encode("Hello there\n</answer>") + [tokenizer.eos_token_id]
    c, _ = app_and_backend(served, tiny_models, script=script, max_input_len=2048, max_seq_len=4096)
    body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 50}
    assert post(c, "/v1/chat/completions", body)[1]["choices"][0]["message"]["content"] == "Hello there"
    assert chat_text(sse(c, "/v1/chat/completions", body)) == "Hello there"


def test_echo_for_token_id_prompts_and_streaming(served, tiny_models):
    ckpt, tokenizer = served
    c, _ = app_and_backend(served, tiny_models, script=tokenizer.encode(" world"))
    prompt_ids = tokenizer.encode("Hello")
    for prompt in ("Hello", prompt_ids):
        body = {"prompt": prompt, "max_tokens": 50, "echo": True}
        assert post(c, "/v1/completions", body)[1]["choices"][0]["text"] == "Hello world"
        chunks = sse(c, "/v1/completions", body)
        assert "".join(ch["choices"][0]["text"] for ch in chunks if ch["choices"]) == "Hello world"


def test_chat_logprobs_are_log_softmax_of_the_executor_logits(served, tiny_models):
    ckpt, tokenizer = served
    c, _ = app_and_backend(served, tiny_models)
    # penalties change the sampling distribution, never the reported log probabilities (the model's own)
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "temperature": 0.9, "seed": 3,
            "logprobs": True, "top_logprobs": 3, "chat_template_kwargs": {"enable_thinking": False},
            "presence_penalty": 1.0, "frequency_penalty": 0.5}
    status, reply = post(c, "/v1/chat/completions", body)
    assert status == 200
    content = reply["choices"][0]["logprobs"]["content"]
    prompt = tokenizer.encode(tokenizer.render_chat(body["messages"], enable_thinking=False))
    by_bytes = {tuple(tokenizer.decode_bytes([i])): i for i in range(tokenizer.vocab_size)}
    assert len(content) == reply["usage"]["completion_tokens"] - (reply["choices"][0]["finish_reason"] == "stop")
    executor, sequence = ReferenceExecutor(ckpt), list(prompt)
    for entry in content:
        token = by_bytes[tuple(entry["bytes"])]
        expected = executor.forward(sequence)[-1].float().log_softmax(-1)
        assert abs(entry["logprob"] - float(expected[token])) < 1e-4
        best = expected.topk(3)
        assert [by_bytes[tuple(t["bytes"])] for t in entry["top_logprobs"]] == best.indices.tolist()
        assert [t["logprob"] for t in entry["top_logprobs"]] == pytest.approx(best.values.tolist(), abs=1e-4)
        sequence.append(token)
    streamed = [e for ch in sse(c, "/v1/chat/completions", body) if ch["choices"]
                for e in (ch["choices"][0].get("logprobs") or {}).get("content", [])]
    assert streamed == content  # the same seed: the same tokens, each reported once


def test_json_schema_output_parses_and_validates(served, tiny_models):
    pytest.importorskip("xgrammar", reason="xgrammar (guided decoding on CPU) is not installed")
    jsonschema = pytest.importorskip("jsonschema")
    c, _ = app_and_backend(served, tiny_models, max_input_len=2048, max_seq_len=4096)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "enum": [1, 2]}},
              "required": ["ok", "n"], "additionalProperties": False}
    body = {"messages": [{"role": "user", "content": "json please"}], "max_tokens": 60, "temperature": 0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}
    status, reply = post(c, "/v1/chat/completions", body)
    assert status == 200, reply
    jsonschema.validate(json.loads(reply["choices"][0]["message"]["content"]), schema)


def test_named_tool_choice_yields_that_call(served, tiny_models):
    pytest.importorskip("xgrammar", reason="xgrammar (guided decoding on CPU) is not installed")
    c, _ = app_and_backend(served, tiny_models, max_input_len=2048, max_seq_len=4096)
    body = {"messages": [{"role": "user", "content": "weather"}], "max_tokens": 80, "temperature": 0,
            "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    status, reply = post(c, "/v1/chat/completions", body)
    choice = reply["choices"][0]
    assert status == 200 and choice["finish_reason"] == "tool_calls", reply
    call = choice["message"]["tool_calls"][0]["function"]
    assert call["name"] == "get_weather" and json.loads(call["arguments"])["city"] in ("Paris", "深圳")
    chunks = sse(c, "/v1/chat/completions", body)
    calls = [tc for ch in chunks if ch["choices"] for tc in ch["choices"][0]["delta"].get("tool_calls") or []]
    assert [tc["function"]["name"] for tc in calls] == ["get_weather"]


def test_metrics_count_every_status_and_time_the_first_token(served, tiny_models):
    c, _ = app_and_backend(served, tiny_models, script=[5, 6])
    post(c, "/v1/completions", {"prompt": "hi", "max_tokens": 2})
    post(c, "/v1/completions", {"prompt": "hi", "max_tokens": 0})
    c.post("/v1/completions", json={"model": "nope", "prompt": "hi"})
    text = c.get("/metrics").text
    for status in ("200", "400", "404"):
        assert f'hunyuan_requests_total{{endpoint="completions",status="{status}"}} 1.0' in text
    assert 'hunyuan_time_to_first_token_seconds_count{endpoint="completions"} 1.0' in text
    assert 'hunyuan_request_seconds_count{endpoint="completions"} 1.0' in text


def test_xgrammar_tokenizer_info_for_the_cpp_backend_is_lossless(tmp_path):
    """The engine repository's xgrammar_tokenizer_info.json (read by TensorRT-LLM's C++ backend): byte-level spelled
    tokens + a ByteLevel tokenizer_str constrain exactly like the raw token bytes, for the real hy.tiktoken."""
    xgr = pytest.importorskip("xgrammar", reason="xgrammar (guided decoding on CPU) is not installed")
    from hunyuan_trtllm.serve.guided import xgrammar_tokenizer_info
    from tests.conftest import SHARED

    files = SHARED / "fixtures" / "hunyuan-files"
    if not (files / "hy.tiktoken").is_file():
        pytest.skip("../shared is absent: no real Hunyuan tokenizer")
    (tmp_path / "hy.tiktoken").symlink_to(files / "hy.tiktoken")
    for name in ("tokenizer_config.json", "generation_config.json"):
        (tmp_path / name).write_bytes((files / "a13b" / name).read_bytes())
    tokenizer = HunyuanTokenizer.from_model_dir(tmp_path)
    info = json.loads(json.dumps(xgrammar_tokenizer_info(tokenizer)))  # survives JSON (valid UTF-8 only)
    detected = xgr.TokenizerInfo._detect_metadata_from_hf(info["tokenizer_str"])
    assert detected["vocab_type"] == xgr.VocabType.BYTE_LEVEL
    special = tokenizer.special_ids
    raw = [b"" if i in special else tokenizer.decode_bytes([i]) for i in range(tokenizer.vocab_size)]
    infos = [xgr.TokenizerInfo(info["encoded_vocab"], vocab_type=xgr.VocabType.BYTE_LEVEL,
                               stop_token_ids=info["stop_token_ids"]),
             xgr.TokenizerInfo(raw, vocab_type=xgr.VocabType.RAW, stop_token_ids=info["stop_token_ids"])]
    assert infos[0].decoded_vocab == infos[1].decoded_vocab
    schema = json.dumps({"type": "object", "properties": {"城市": {"type": "string"}}, "required": ["城市"]})
    matchers = [xgr.GrammarMatcher(xgr.GrammarCompiler(i, max_threads=1).compile_json_schema(schema)) for i in infos]
    masks = [xgr.allocate_token_bitmask(1, tokenizer.vocab_size) for _ in infos]
    for token in tokenizer.encode('{"城市": "深圳'):
        for matcher, mask in zip(matchers, masks, strict=True):
            matcher.fill_next_token_bitmask(mask)
        assert torch.equal(masks[0], masks[1]) and masks[0].any()
        assert all(matcher.accept_token(token) for matcher in matchers)


def test_metrics_count_server_errors(served, tiny_models):
    ckpt, tokenizer = served

    class Broken(ExecutorBackend):
        async def stream(self, prompt_ids, params):
            raise RuntimeError("backend down")
            yield []

    c = TestClient(create_app(Broken(ckpt), tokenizer, MODEL), raise_server_exceptions=False)
    assert c.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2}).status_code == 500
    assert 'hunyuan_requests_total{endpoint="completions",status="500"} 1.0' in c.get("/metrics").text
