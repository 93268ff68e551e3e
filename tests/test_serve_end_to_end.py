"""The whole serving stack on CPU: generated reference repository -> real Triton (nvidia-pytriton) -> OpenAI
endpoint -> the official ``openai`` client; and ``hunyuan-trtllm serve --dry-run`` as a user runs it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("pytriton", reason="nvidia-pytriton (the Triton server bundled for CPU tests) is not installed")
openai = pytest.importorskip("openai", reason="the official openai client (test extra) is not installed")

from hunyuan_trtllm.checkpoints.tokenizer import HunyuanTokenizer  # noqa: E402
from hunyuan_trtllm.reference.executor import ReferenceExecutor  # noqa: E402
from hunyuan_trtllm.serve.launch import reference_stack  # noqa: E402

MODEL = "hunyuan-a13b-tiny"

REPLAY_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils

SCRIPT = {script}


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            limit = int(pb_utils.get_input_tensor_by_name(request, "request_output_len").as_numpy().reshape(-1)[0])
            for token in SCRIPT[:limit]:
                sender.send(pb_utils.InferenceResponse([
                    pb_utils.Tensor("output_ids", np.array([[[token]]], dtype=np.int32)),
                    pb_utils.Tensor("sequence_length", np.array([[1]], dtype=np.int32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoint(tiny):
    return tiny["ckpt"]


@pytest.fixture(scope="module")
def stack(checkpoint, tiny_models):
    with reference_stack(checkpoint, tiny_models["a13b"], "127.0.0.1", free_port(), MODEL) as endpoint:
        yield endpoint


def greedy(checkpoint, prompt_ids: list[int], steps: int) -> list[int]:
    """A plain step-by-step argmax over the reference executor (no cache)."""
    executor, ids = ReferenceExecutor(checkpoint), list(prompt_ids)
    for _ in range(steps):
        ids.append(int(executor.forward(ids)[-1].argmax()))
    return ids[len(prompt_ids):]


def test_chat_through_real_triton_matches_greedy_reference(stack, checkpoint, tiny_models):
    tokenizer = HunyuanTokenizer.from_model_dir(tiny_models["a13b"])
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "你好，Triton"}]
    prompt_ids = tokenizer.encode(tokenizer.render_chat(messages))
    expected_ids = greedy(checkpoint, prompt_ids, 10)
    cut = next((i for i, t in enumerate(expected_ids) if t in tokenizer.stop_token_ids), len(expected_ids))
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="none")
    assert [m.id for m in client.models.list().data] == [MODEL]
    plain = {"repetition_penalty": 1.0}  # generation_config.json's 1.05 applies otherwise, as in vLLM
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0,
                                           extra_body=plain)
    raw = tokenizer.decode(expected_ids[:cut])
    choice = reply.choices[0]
    assert (getattr(choice.message, "reasoning_content", None) or "") + (choice.message.content or "") == raw.strip(
        "\n") or choice.message.content == raw
    assert reply.usage.prompt_tokens == len(prompt_ids)
    chunks = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0,
                                            stream=True, stream_options={"include_usage": True}, extra_body=plain)
    streamed, usage = "", None
    for chunk in chunks:
        if chunk.choices:
            delta = chunk.choices[0].delta
            streamed += (getattr(delta, "reasoning_content", None) or "") + (delta.content or "")
        usage = chunk.usage or usage
    assert streamed == (getattr(choice.message, "reasoning_content", None) or "") + (choice.message.content or "")
    assert usage.completion_tokens == reply.usage.completion_tokens


def test_sampling_is_seeded(stack):
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="none")

    def sample(seed: int) -> str:
        return client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=12, temperature=1.0,
                                         top_p=0.9, seed=seed).choices[0].text

    assert sample(7) == sample(7)
    assert len({sample(s) for s in range(4)}) > 1


def test_32_concurrent_streams_equal_sequential(stack):
    prompts = [f"Prompt number {i}: 数字 {i}" for i in range(32)]
    client = openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key="none")

    async def one(prompt: str) -> str:
        stream = await client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0,
                                                 stream=True, extra_body={"skip_special_tokens": False})
        return "".join([chunk.choices[0].text async for chunk in stream if chunk.choices])

    async def run() -> tuple[list[str], list[str]]:
        sequential = [await one(p) for p in prompts]
        concurrent = await asyncio.gather(*(one(p) for p in prompts))
        return sequential, list(concurrent)

    sequential, concurrent = asyncio.run(run())
    assert concurrent == sequential and all(sequential)


def test_bad_requests_keep_the_server_serving(stack):
    def post(body: bytes) -> int:
        request = urllib.request.Request(f"{stack.url}/v1/chat/completions", data=body,
                                         headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    good = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert post(b"{malformed") == 400
    assert post(json.dumps({**good, "model": "nope"}).encode()) == 404
    assert post(json.dumps({**good, "max_tokens": 0}).encode()) == 400
    assert post(json.dumps({**good, "messages": [{"role": "user", "content": "x " * 40000}]}).encode()) == 400
    assert post(json.dumps(good).encode()) == 200


def test_tool_call_from_fixture_output(checkpoint, tiny_models, tmp_path):
    """The model's part is replayed from a fixture output; Triton, the endpoint and the client are real."""
    from hunyuan_trtllm.serve.launch import TritonTokenBackend, openai_endpoint
    from hunyuan_trtllm.serve.repository import RepoOptions, write_triton_repo
    from hunyuan_trtllm.serve.triton_server import TritonServer

    tokenizer = HunyuanTokenizer.from_model_dir(tiny_models["a13b"])
    output = ('<think>\nNeed the weather.\n</think>\n<answer>\n<tool_calls>[{"name": "get_weather", "arguments": '
              '{"city": "深圳"}}]</tool_calls>\n</answer>')
    script = tokenizer.encode(output) + [tokenizer.eos_token_id]
    repo = write_triton_repo(checkpoint, tmp_path / "repo", "reference",
                             options=RepoOptions(tokenizer_dir=tiny_models["a13b"], max_seq_len=4096))
    (repo / "tensorrt_llm" / "1" / "model.py").write_text(REPLAY_MODEL.format(script=script))
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    with TritonServer(repo) as triton:
        backend = TritonTokenBackend(f"127.0.0.1:{triton.grpc_port}", 4000, 4096, tokenizer.eos_token_id,
                                     tokenizer.pad_token_id)
        with openai_endpoint(backend, tokenizer, MODEL, "127.0.0.1", free_port()) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
            messages = [{"role": "user", "content": "深圳天气?"}]
            reply = client.chat.completions.create(model=MODEL, messages=messages, tools=tools, max_tokens=200)
            choice = reply.choices[0]
            assert choice.finish_reason == "tool_calls"
            assert choice.message.tool_calls[0].function.name == "get_weather"
            assert json.loads(choice.message.tool_calls[0].function.arguments) == {"city": "深圳"}
            assert choice.message.reasoning_content == "Need the weather."
            stream = client.chat.completions.create(model=MODEL, messages=messages, tools=tools, max_tokens=200,
                                                    stream=True)
            calls = [c for chunk in stream if chunk.choices for c in (chunk.choices[0].delta.tool_calls or [])]
            assert [c.function.name for c in calls] == ["get_weather"]


def test_serve_dry_run_command(checkpoint, tmp_path):
    port = free_port()
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    process = subprocess.Popen([sys.executable, "-m", "hunyuan_trtllm", "serve", str(checkpoint), "--dry-run",
                                "--port", str(port), "--model-name", MODEL], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=4, temperature=0)
        assert reply.usage.completion_tokens >= 1
        os.killpg(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, output
    assert "ready" in output and f"http://127.0.0.1:{port}/v1" in output
    leftovers = subprocess.run(["pgrep", "-g", str(process.pid)], capture_output=True, text=True).stdout.split()
    assert not leftovers
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("hunyuan-", "hy-triton-"))]


def test_disconnected_non_streaming_request_is_cancelled_in_triton(checkpoint, tiny_models, tmp_path):
    """A client that goes away mid-generation (non-streaming) cancels its Triton request: the reference model
    stops at its next step and logs how far it got."""
    from hunyuan_trtllm.serve.launch import TritonTokenBackend, openai_endpoint
    from hunyuan_trtllm.serve.repository import RepoOptions, write_triton_repo
    from hunyuan_trtllm.serve.triton_server import TritonServer

    tokenizer = HunyuanTokenizer.from_model_dir(tiny_models["a13b"])
    repo = write_triton_repo(checkpoint, tmp_path / "repo", "reference",
                             options=RepoOptions(tokenizer_dir=tiny_models["a13b"], max_seq_len=4096))
    max_tokens = 4000
    with TritonServer(repo) as triton:
        backend = TritonTokenBackend(f"127.0.0.1:{triton.grpc_port}", 64, 4096, tokenizer.eos_token_id,
                                     tokenizer.pad_token_id)
        with openai_endpoint(backend, tokenizer, MODEL, "127.0.0.1", free_port()) as url:
            host, port = url.removeprefix("http://").split(":")
            body = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": max_tokens, "temperature": 0}).encode()
            with socket.create_connection((host, int(port))) as sock:
                sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
                sock.settimeout(3.0)
                with pytest.raises(TimeoutError):  # still generating: no answer yet
                    sock.recv(1)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and "request cancelled after" not in triton.log_tail(200):
                time.sleep(0.2)
        log = triton.log_tail(200)
    cancelled = re.search(r"request cancelled after (\d+) tokens", log)
    assert cancelled and 0 < int(cancelled.group(1)) < max_tokens - 1, log


# ---- OpenAI conformance through the real Triton (issue 13) ----------------------------------------------------
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "深圳"]}}, "required": ["city"],
    "additionalProperties": False}}}]


def by_bytes(tokenizer: HunyuanTokenizer) -> dict[bytes, int]:
    return {tokenizer.decode_bytes([i]): i for i in range(tokenizer.vocab_size)}


def test_logprobs_are_log_softmax_of_the_reference_logits(stack, checkpoint, tiny_models):
    tokenizer = HunyuanTokenizer.from_model_dir(tiny_models["a13b"])
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="none")
    messages = [{"role": "user", "content": "logprobs"}]
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0.8, seed=11,
                                           logprobs=True, top_logprobs=2)
    entries = reply.choices[0].logprobs.content
    ids, executor = by_bytes(tokenizer), ReferenceExecutor(checkpoint)
    sequence = tokenizer.encode(tokenizer.render_chat(messages))
    assert entries and len(entries) <= reply.usage.completion_tokens
    for entry in entries:
        expected = executor.forward(sequence)[-1].float().log_softmax(-1)
        token = ids[bytes(entry.bytes)]
        assert abs(entry.logprob - float(expected[token])) < 1e-4
        assert [ids[bytes(t.bytes)] for t in entry.top_logprobs] == expected.topk(2).indices.tolist()
        sequence.append(token)
    text = client.completions.create(model=MODEL, prompt="Once", max_tokens=4, temperature=0, logprobs=1,
                                     extra_body={"repetition_penalty": 1.0, "skip_special_tokens": False})
    logprobs = text.choices[0].logprobs
    assert "".join(logprobs.tokens) == text.choices[0].text and len(logprobs.token_logprobs) == 4
    assert all(max(top.values()) == pytest.approx(lp, abs=1e-6)  # greedy: the sampled token is the best one
               for top, lp in zip(logprobs.top_logprobs, logprobs.token_logprobs, strict=True))


def test_json_schema_and_named_tool_choice_through_guided_decoding(stack):
    pytest.importorskip("xgrammar", reason="xgrammar (guided decoding on CPU) is not installed")
    jsonschema = pytest.importorskip("jsonschema")
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="none")
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "enum": [1, 2]}},
              "required": ["ok", "n"], "additionalProperties": False}
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "json"}], max_tokens=60, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "weather"}], max_tokens=80, temperature=0.7, seed=1,
        tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls[0].function.name == "get_weather"
    assert json.loads(choice.message.tool_calls[0].function.arguments)["city"] in ("Paris", "深圳")


def test_echo_and_refusals_with_the_official_client(stack, tiny_models):
    tokenizer = HunyuanTokenizer.from_model_dir(tiny_models["a13b"])
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="none")
    prompt = tokenizer.encode("Echo me")
    stream = client.completions.create(model=MODEL, prompt=prompt, max_tokens=3, temperature=0, echo=True,
                                       stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream if chunk.choices).startswith("Echo me")
    whole = client.completions.create(model=MODEL, prompt=prompt, max_tokens=3, temperature=0, echo=True)
    assert whole.choices[0].text.startswith("Echo me")
    messages = [{"role": "user", "content": "hi"}]
    for kwargs in ({"max_tokens": 10**6}, {"max_tokens": 2, "stream_options": {"include_usage": True}}):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=MODEL, messages=messages, **kwargs)
    metrics = urllib.request.urlopen(f"{stack.url}/metrics", timeout=30).read().decode()
    assert 'hunyuan_requests_total{endpoint="chat",status="400"}' in metrics


def test_serve_with_triton_fronts_a_running_triton(stack, tiny_models, tmp_path):
    """The production path (`serve ENGINES --with triton`): our endpoint in front of Triton's tensorrt_llm over gRPC
    (here the reference model stands in for TensorRT-LLM's C++ backend, with the same tensors)."""
    engines = tmp_path / "engines"
    engines.mkdir()
    build = {"max_batch_size": 4, "max_input_len": 200, "max_seq_len": 256, "max_beam_width": 1,
             "plugin_config": {"use_paged_context_fmha": True}}
    pretrained = {"architecture": "HunYuanMoEV1ForCausalLM", "dtype": "float32", "logits_dtype": "float32",
                  "mapping": {"tp_size": 1, "pp_size": 1, "world_size": 1}}
    (engines / "config.json").write_text(json.dumps({"build_config": build, "pretrained_config": pretrained}))
    (engines / "rank0.engine").write_bytes(b"")
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "hunyuan_trtllm", "serve", str(engines), "--with", "triton",
                                "--triton-grpc", stack.triton_grpc, "--tokenizer", str(tiny_models["a13b"]),
                                "--port", str(port), "--model-name", MODEL], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=4, temperature=0)
        assert reply.usage.completion_tokens >= 1 and reply.choices[0].finish_reason in ("stop", "length")
        os.killpg(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert "OpenAI endpoint" in output and process.returncode == 0, output
