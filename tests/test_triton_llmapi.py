"""The ``llmapi`` Triton model on the real CPU Triton (nvidia-pytriton's bundle), driving the executing LLM-API
stand-in (tests/fake_trtllm/tensorrt_llm/llmapi: our conversion of the tiny A13B run by the reference executor).

One server serves the module: its text interface, its token interface (what the OpenAI endpoint speaks) and
``serve --with triton``'s stack on an HF checkpoint (the endpoint in front, queried with the official client).
Skipped without nvidia-pytriton.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hunyuan_trtllm.checkpoints.tokenizer import HunyuanTokenizer
from hunyuan_trtllm.errors import UserError
from hunyuan_trtllm.reference.executor import ReferenceExecutor
from hunyuan_trtllm.serve import triton_server
from hunyuan_trtllm.serve.repository import RepoOptions, write_triton_repo
from hunyuan_trtllm.serve.triton_server import TritonServer
from tests.standin import link_into_model
from tests.test_triton_server import PROMPTS, argmax_ids, generate, group_is_gone, llm_ids, post, replay, stream

pytestmark = [pytest.mark.slow, pytest.mark.skipif(importlib.util.find_spec("pytriton") is None,
                                                   reason="nvidia-pytriton is not installed")]
MAX_SEQ_LEN = 96
MODEL = "hunyuan-a13b-tiny"


def llmapi_repo(tiny, where: Path) -> Path:
    """The llmapi repository ``serve --with triton`` writes for an HF model, on the LLM-API stand-in."""
    repo = write_triton_repo(tiny["src"], where, "llmapi", 8, True, RepoOptions(tp=2, ep=2, max_seq_len=MAX_SEQ_LEN))
    link_into_model(repo / "tensorrt_llm" / "1")
    return repo


@pytest.fixture(scope="module")
def executor(tiny, tmp_path_factory) -> ReferenceExecutor:
    """What the stand-in runs: the HF checkpoint converted at tp 1 in its own dtype."""
    from hunyuan_trtllm.checkpoints.convert import convert
    from hunyuan_trtllm.checkpoints.mapping import Mapping

    return ReferenceExecutor(convert(tiny["src"], tmp_path_factory.mktemp("hf-tp1") / "ckpt", Mapping()).out_dir)


@pytest.fixture(scope="module")
def tokenizer(tiny) -> HunyuanTokenizer:
    return HunyuanTokenizer.from_model_dir(tiny["src"])


@pytest.fixture(scope="module")
def llmapi(tiny, tmp_path_factory):
    repo = llmapi_repo(tiny, tmp_path_factory.mktemp("llmapi") / "repo")
    server = TritonServer(repo, ready_timeout=90)
    with server:
        pgid, workspace = server.process.pid, server.workspace
        yield repo, server
    assert group_is_gone(pgid) and not workspace.exists()  # a clean stop
    assert not list(Path("/dev/shm").glob(f"{server.shm_prefix}*"))
    assert "successfully loaded 'tensorrt_llm'" in server.logs


@pytest.fixture(scope="module")
def endpoint(llmapi, tokenizer):
    """``serve --with triton``'s stack on the HF checkpoint: the OpenAI endpoint in front of the llmapi model."""
    from hunyuan_trtllm.serve.launch import openai_endpoint, token_backend

    repo, server = llmapi
    backend = token_backend(repo, f"127.0.0.1:{server.grpc_port}", tokenizer)
    assert (backend.max_top_logprobs, backend.guided_decoding) == (0, True)
    assert (backend.max_input_len, backend.max_seq_len) == (MAX_SEQ_LEN - 1, MAX_SEQ_LEN)
    with openai_endpoint(backend, tokenizer, MODEL, "127.0.0.1", triton_server.free_port()) as url:
        yield url


def as_list(value: object) -> list:
    """An output of the generate extension as a list (it writes a one-element tensor as a scalar)."""
    return value if isinstance(value, list) else [value]


def greedy_text(executor: ReferenceExecutor, tokenizer: HunyuanTokenizer, prompt: str, n: int) -> tuple[str, int]:
    ids = argmax_ids(executor, tokenizer.encode(prompt), n, tokenizer.eos_token_id)
    return tokenizer.decode(ids, skip_special_tokens=True), len(ids)


# ---- the model's two interfaces ------------------------------------------------------------------------------
def test_text_interface(llmapi, executor, tokenizer) -> None:
    _, server = llmapi
    for prompt in PROMPTS[:2]:
        body = {"text_input": prompt, "sampling_param_max_tokens": 6, "return_finish_reason": True}
        got = generate(server, "tensorrt_llm", body)
        want, count = greedy_text(executor, tokenizer, prompt, 6)
        assert (got["text_output"], got["finish_reason"]) == (want, "length" if count == 6 else "stop")
        events = stream(server, "tensorrt_llm", {**body, "streaming": True})
        assert "".join(e.get("text_output", "") for e in events) == want
    status, text = post(f"{server.url}/v2/models/tensorrt_llm/generate", {"text_input": ""})
    assert status == 400 and "non-empty prompt" in text


def test_token_interface_equals_stepwise_argmax(llmapi, executor, tokenizer) -> None:
    _, server = llmapi
    end = tokenizer.eos_token_id  # the LLM API's default end_id
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt)
        want = argmax_ids(executor, ids, 12, end)
        assert llm_ids(server, ids, 12) == want
        body = {"input_ids": ids, "input_lengths": [len(ids)], "request_output_len": [12], "streaming": True,
                "return_log_probs": True}
        events = stream(server, "tensorrt_llm", body)
        assert [t for e in events for t in as_list(e.get("output_ids", []))] == want  # the new tokens of each step
        log_probs = [v for e in events for v in as_list(e.get("output_log_probs", []))]
        expected = [float(logits.log_softmax(-1)[t]) for t, logits in zip(want, replay(executor, ids, want),
                                                                           strict=True)]
        assert log_probs == pytest.approx(expected, abs=1e-4)
    stop = argmax_ids(executor, ids, 12, end)[2]  # a single-token stop word ends the output and stays in it
    words = {"stop_words_list": [[stop], [1]]}
    assert as_list(llm_ids(server, ids, 12, **words)) == want[: want.index(stop) + 1]
    for body, message in (({"input_ids": [5, 6], "input_lengths": [2], "request_output_len": [0]},
                           "request_output_len must be positive"),
                          ({"input_ids": [5, 6], "input_lengths": [2], "request_output_len": [2],
                            "guided_decoding_guide_type": "xml"}, "guided_decoding_guide_type")):
        status, text = post(f"{server.url}/v2/models/tensorrt_llm/generate", body)
        assert status == 400 and message in text, text


# ---- serve --with triton on an HF checkpoint: the OpenAI endpoint in front ----------------------------------
def test_openai_chat_logprobs_and_refusals(endpoint, executor, tokenizer) -> None:
    openai = pytest.importorskip("openai", reason="the official openai client comes with the test extra")
    client = openai.OpenAI(base_url=f"{endpoint}/v1", api_key="none")
    messages = [{"role": "user", "content": "你好，Triton"}]
    prompt = tokenizer.encode(tokenizer.render_chat(messages))
    want = argmax_ids(executor, prompt, 10, tokenizer.eos_token_id, tuple(tokenizer.stop_token_ids))
    generated = [t for t in want if t not in tokenizer.stop_token_ids]  # a stop token ends the text, unseen
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0,
                                           logprobs=True, extra_body={"repetition_penalty": 1.0})
    choice = reply.choices[0]
    assert reply.usage.prompt_tokens == len(prompt) and reply.usage.completion_tokens == len(want)
    ids = {tokenizer.decode_bytes([i]): i for i in range(tokenizer.vocab_size)}
    assert [ids[bytes(e.bytes)] for e in choice.logprobs.content] == generated
    expected = [float(logits.log_softmax(-1)[t]) for t, logits in zip(want, replay(executor, prompt, want),
                                                                       strict=True)]
    assert [e.logprob for e in choice.logprobs.content] == pytest.approx(expected[: len(generated)], abs=1e-4)
    text = (getattr(choice.message, "reasoning_content", None) or "") + (choice.message.content or "")
    assert text.strip() == tokenizer.decode(generated, skip_special_tokens=True).strip()
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2, logprobs=True, top_logprobs=2)


def test_openai_json_schema_through_guided_decoding(endpoint) -> None:
    openai = pytest.importorskip("openai", reason="the official openai client comes with the test extra")
    pytest.importorskip("xgrammar", reason="xgrammar (guided decoding on CPU) is not installed")
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (validates the answer) comes with the test extra")
    client = openai.OpenAI(base_url=f"{endpoint}/v1", api_key="none")
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "enum": [1, 2]}},
              "required": ["ok", "n"], "additionalProperties": False}
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "json"}], max_tokens=40, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)


def test_serve_with_triton_listens_only_on_its_host(tiny, tmp_path, monkeypatch) -> None:
    """``serve --with triton`` on an HF checkpoint runs the image's tritonserver (here the bundled one, behind a
    ``tritonserver`` on PATH that adds what the CPU bundle needs) with the OpenAI endpoint in front. Every port
    Triton opens must be on --host (127.0.0.1 by default)."""
    import psutil

    from hunyuan_trtllm.serve.launch import run_triton_with_endpoint
    from hunyuan_trtllm.serve.triton_server import HOST

    install = triton_server.find_triton()
    backends = triton_server.prepare_backends(install, tmp_path / "backends")
    env = triton_server.server_env(install)
    prefix = f"hybind{os.getpid()}-"
    wrapper = tmp_path / "bin" / "tritonserver"
    wrapper.parent.mkdir()
    wrapper.write_text(f"#!/bin/sh\nexport LD_LIBRARY_PATH='{env['LD_LIBRARY_PATH']}' PATH='{env['PATH']}'\n"
                       f"exec '{install.binary}' --backend-directory='{backends}' --disable-auto-complete-config "
                       f"--backend-config=python,shm-region-prefix-name={prefix} \"$@\"\n")
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    port, api = triton_server.free_port(), triton_server.free_port()
    runner = ThreadPoolExecutor(1).submit(run_triton_with_endpoint, llmapi_repo(tiny, tmp_path / "repo"), tiny["src"],
                                          HOST, api, MODEL, 90, port)
    try:
        deadline, listening, process = time.monotonic() + 120, set(), None
        while time.monotonic() < deadline and not runner.done() and len(listening) < 3:
            time.sleep(0.5)
            process = next((p for p in psutil.Process().children(recursive=True)  # not the module's server
                            if f"--http-port={port}" in p.cmdline()), None)
            if process is not None:
                listening = {(c.laddr.ip, c.laddr.port) for c in process.net_connections("inet")
                             if c.status == psutil.CONN_LISTEN}
        assert process is not None and not runner.done(), runner.exception() if runner.done() else "no server"
        assert {p for _, p in listening} >= {port, port + 1, port + 2}, listening
        addresses = {ipaddress.ip_address(ip) for ip, _ in listening}  # gRPC: an IPv6 socket, IPv4-mapped
        assert {getattr(a, "ipv4_mapped", None) or a for a in addresses} == {ipaddress.ip_address(HOST)}, listening
    finally:
        if process is not None:
            os.killpg(process.pid, 2)  # the server stops: the launcher stops the endpoint and says so
        stopped = runner.exception(timeout=90)
        for region in Path("/dev/shm").glob(f"{prefix}*"):
            region.unlink(missing_ok=True)
    assert isinstance(stopped, UserError) and "tritonserver exited" in str(stopped)
