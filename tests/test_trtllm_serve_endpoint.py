"""`serve --with trtllm-serve` end to end: the official `openai` client -> our Hunyuan-aware endpoint -> the
executing trtllm-serve stand-in (tests/fake_trtllm/tensorrt_llm/commands/serve.py: 1.2.x's command line and
/v1/completions protocol over the LLM-API stand-in, which runs the reference executor) -> tokens.

One server per module, started through the real CLI; greedy output is checked against a plain argmax over the
reference executor, guided decoding and tool-call parsing against their schemas."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from hunyuan_trtllm.checkpoints.convert import convert
from hunyuan_trtllm.checkpoints.mapping import Mapping
from hunyuan_trtllm.checkpoints.tokenizer import HunyuanTokenizer
from hunyuan_trtllm.reference.executor import ReferenceExecutor
from tests.standin import FAKE_TRTLLM
from tests.test_serve_cli import free_port

openai = pytest.importorskip("openai", reason="the official openai client comes with the test extra")
pytest.importorskip("xgrammar", reason="xgrammar (guided decoding on CPU) is not installed")

MODEL = "hunyuan-tiny"
SHIM = textwrap.dedent("""\
    #!{python}
    import sys
    sys.path.insert(0, {fake!r})
    from tensorrt_llm.commands.serve import main
    main()
""")
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "深圳"]}}, "required": ["city"]}}}]


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@pytest.fixture(scope="module")
def stack(tiny_models, tmp_path_factory):
    """`hunyuan-trtllm serve TINY --with trtllm-serve` with the stand-in first on PATH; yields its URLs."""
    work = tmp_path_factory.mktemp("trtllm-serve")
    (work / "bin").mkdir()
    shim = work / "bin" / "trtllm-serve"
    shim.write_text(SHIM.format(python=sys.executable, fake=str(FAKE_TRTLLM)))
    shim.chmod(0o755)
    port, inner = free_port(), free_port()
    env = {**os.environ, "PATH": f"{work / 'bin'}:{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [sys.executable, "-m", "hunyuan_trtllm", "serve", str(tiny_models["a13b"]), "--with", "trtllm-serve",
         "--port", str(port), "--trtllm-port", str(inner), "--model-name", MODEL, "--ready-timeout", "300"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url, seen = f"http://127.0.0.1:{port}", set()
    try:
        deadline = time.monotonic() + 300
        while (status := _status(f"{url}/health")) != 200:
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0]
            seen.add(status)
            time.sleep(0.2)
        yield {"url": url, "inner": inner, "not_ready_seen": 503 in seen, "process": process}
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            output = process.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output = process.communicate()[0]
        leftovers = subprocess.run(["pgrep", "-g", str(process.pid)], capture_output=True, text=True).stdout.split()
        assert not leftovers, output


@pytest.fixture(scope="module")
def client(stack):
    return openai.OpenAI(base_url=f"{stack['url']}/v1", api_key="none", max_retries=0)


def test_readiness_waits_and_trtllm_serve_listens_on_loopback_only(stack):
    assert stack["not_ready_seen"]  # /health said 503 while trtllm-serve was still building its LLM
    listening = {c.laddr.ip for proc in psutil.Process(stack["process"].pid).children(recursive=True)
                 for c in proc.net_connections("tcp") if c.status == psutil.CONN_LISTEN and
                 c.laddr.port == stack["inner"]}
    assert listening == {"127.0.0.1"}


def test_greedy_tokens_equal_the_reference_executor(client, tiny_models, tmp_path):
    ckpt = convert(tiny_models["a13b"], tmp_path / "ckpt", Mapping(), dtype="float32").out_dir
    executor, tokenizer = ReferenceExecutor(ckpt), HunyuanTokenizer.from_model_dir(tiny_models["a13b"])
    prompt = tokenizer.encode("The quick brown fox")
    ids = list(prompt)
    for _ in range(6):  # a plain step-by-step argmax over the executor, no cache
        ids.append(int(executor.forward(ids)[-1].argmax()))
    reply = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0,
                                      extra_body={"repetition_penalty": 1.0})
    assert reply.choices[0].text == tokenizer.decode(ids[len(prompt):])
    assert reply.usage.completion_tokens == 6 and reply.choices[0].finish_reason == "length"
    streamed = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0, stream=True,
                                         extra_body={"repetition_penalty": 1.0})
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == reply.choices[0].text


def test_json_schema_through_trtllm_serve_guided_decoding(client):
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (validates the answer) comes with the test extra")
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "enum": [1, 2]}},
              "required": ["ok", "n"], "additionalProperties": False}
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "json please"}], max_tokens=60, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)


def test_named_tool_choice_is_parsed_into_that_call(client):
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "weather"}], max_tokens=80, temperature=0, tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0].function
    assert call.name == "get_weather" and json.loads(call.arguments)["city"] in ("Paris", "深圳")


def test_logprobs_are_refused_not_ignored(client):
    messages = [{"role": "user", "content": "hi"}]
    for kwargs in ({"logprobs": True}, {"logprobs": True, "top_logprobs": 2}):
        with pytest.raises(openai.BadRequestError, match="returns no log probabilities"):
            client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2, **kwargs)
    with pytest.raises(openai.BadRequestError, match="returns no log probabilities"):
        client.completions.create(model=MODEL, prompt="hi", max_tokens=2, logprobs=1)


def test_metrics_and_reasoning_fields_on_this_path(stack, client):
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "/no_think hi"}],
                                           max_tokens=4, temperature=0)
    assert reply.choices[0].message.role == "assistant" and reply.usage.completion_tokens >= 1
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=0)
    with urllib.request.urlopen(f"{stack['url']}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert 'hunyuan_requests_total{endpoint="chat",status="200"}' in metrics
    assert 'hunyuan_requests_total{endpoint="chat",status="400"}' in metrics


def test_a_seed_reproduces_a_sample_and_no_seed_draws_a_new_one(client):
    request = {"model": MODEL, "prompt": "hello there", "max_tokens": 12, "temperature": 1.0, "top_p": 1.0,
               "extra_body": {"top_k": 0}}
    seeded = [client.completions.create(**request, seed=7).choices[0].text for _ in range(2)]
    assert seeded[0] == seeded[1]
    # TensorRT-LLM seeds a request without one with 0: the endpoint sends a random seed instead
    unseeded = {client.completions.create(**request).choices[0].text for _ in range(3)}
    assert len(unseeded) > 1
