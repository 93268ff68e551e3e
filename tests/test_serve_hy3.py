"""Hy3 served end to end on CPU: synthetic tiny Hy3 -> convert -> ``hunyuan-trtllm serve --dry-run`` (one server
for the module) -> the official ``openai`` client; and a fixture model output with a tool call, replayed through
real Triton, coming back as ``tool_calls``. Slow on 2 cores (two Triton servers)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("pytriton", reason="nvidia-pytriton (the Triton server bundled for CPU tests) is not installed")
openai = pytest.importorskip("openai", reason="the official openai client (test extra) is not installed")

from hunyuan_trtllm.checkpoints.tokenizer import HunyuanTokenizer  # noqa: E402
from hunyuan_trtllm.serve.hy3_output import parse_hy3_output  # noqa: E402

from .test_serve_end_to_end import REPLAY_MODEL, free_port, greedy  # noqa: E402

MODEL = "hy3-tiny"
WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "Weather forecast",
                                             "parameters": {"type": "object", "properties": {
                                                 "city": {"type": "string"}, "days": {"type": "integer"}}}}}]


@pytest.fixture(scope="module")
def hy3(tmp_path_factory):
    """The tiny synthetic Hy3 (its own dir holds the Hy3-style tokenizer) and its float32 TP2 x EP2 conversion."""
    from hunyuan_trtllm.checkpoints.convert import convert
    from hunyuan_trtllm.checkpoints.mapping import Mapping
    from hunyuan_trtllm.synth.checkpoint import synth_checkpoint

    base = tmp_path_factory.mktemp("hy3-serve")
    synth_checkpoint(base / "src", "hy3", preset="tiny", dtype="float32")
    convert(base / "src", base / "ckpt", Mapping(tp=2, moe_ep=2), dtype="float32")
    return {"src": base / "src", "ckpt": base / "ckpt", "tokenizer": HunyuanTokenizer.from_model_dir(base / "src")}


@pytest.fixture(scope="module")
def server(hy3, tmp_path_factory):
    """``serve --dry-run`` as a user runs it, shared by the module's tests; stopped with Ctrl-C at the end."""
    port = free_port()
    env = {**os.environ, "TMPDIR": str(tmp_path_factory.mktemp("serve-tmp"))}
    process = subprocess.Popen([sys.executable, "-m", "hunyuan_trtllm", "serve", str(hy3["ckpt"]), "--dry-run",
                                "--port", str(port), "--model-name", MODEL], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        os.killpg(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 0, output
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def expected_reply(hy3, messages, effort: str, steps: int):
    """Prompt ids, and what a step-by-step argmax over the reference executor says, parsed as Hy3 output."""
    tokenizer = hy3["tokenizer"]
    prompt_ids = tokenizer.encode(tokenizer.hy3.render(messages, reasoning_effort=effort))
    ids = greedy(hy3["ckpt"], prompt_ids, steps)
    cut = next((i for i, t in enumerate(ids) if t in tokenizer.stop_token_ids), len(ids))
    text = tokenizer.decode(ids[:cut])
    return prompt_ids, ids[:cut], parse_hy3_output(text, tokenizer.hy3.tokens, effort)


@pytest.mark.parametrize("effort", ["no_think", "high"])
def test_greedy_chat_equals_the_reference_argmax(server, hy3, effort):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello, Hy3 你好"}]
    prompt_ids, ids, expected = expected_reply(hy3, messages, effort, 8)
    extra = {} if effort == "no_think" else {"extra_body": {"reasoning_effort": effort}}
    reply = server.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0, **extra)
    message = reply.choices[0].message
    assert ids and reply.usage.prompt_tokens == len(prompt_ids)
    assert reply.usage.completion_tokens in (len(ids), len(ids) + 1)  # + the stop token when one was generated
    assert (getattr(message, "reasoning_content", None), message.content) == (expected.reasoning_content,
                                                                              expected.content)
    stream = server.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0,
                                            stream=True, **extra)
    reasoning, content = "", ""
    for chunk in stream:
        if chunk.choices:
            reasoning += getattr(chunk.choices[0].delta, "reasoning_content", None) or ""
            content += chunk.choices[0].delta.content or ""
    assert (reasoning or None, content or None) == (expected.reasoning_content, expected.content)


def test_reasoning_effort_reaches_the_prompt_and_bad_values_are_refused(server, hy3):
    tokenizer = hy3["tokenizer"]
    messages = [{"role": "user", "content": "2+2?"}]
    for effort, via in (("low", {"chat_template_kwargs": {"reasoning_effort": "low"}}),
                        ("high", {"reasoning_effort": "high"}), ("no_think", {})):
        reply = server.chat.completions.create(model=MODEL, messages=messages, max_tokens=1, temperature=0,
                                               extra_body=via)
        prompt = tokenizer.hy3.render(messages, reasoning_effort=effort)
        assert reply.usage.prompt_tokens == len(tokenizer.encode(prompt)), effort
    assert len(tokenizer.encode(tokenizer.hy3.render(messages, reasoning_effort="high"))) != len(
        tokenizer.encode(tokenizer.hy3.render(messages)))  # the efforts' prompts really differ
    with pytest.raises(openai.BadRequestError, match="reasoning_effort"):
        server.chat.completions.create(model=MODEL, messages=messages, max_tokens=1,
                                       extra_body={"reasoning_effort": "medium"})


def test_tool_call_from_fixture_output(hy3, tmp_path):
    """Hy3's worked example (hy3.md d.3) replayed as the model's tokens; Triton, the endpoint and client are real."""
    from hunyuan_trtllm.serve.launch import TritonTokenBackend, openai_endpoint
    from hunyuan_trtllm.serve.repository import RepoOptions, write_triton_repo
    from hunyuan_trtllm.serve.triton_server import TritonServer

    tokenizer = hy3["tokenizer"]
    t = tokenizer.hy3.tokens
    output = (f"Need the weather.{t.tag('think', True)}I'll look that up.{t.tag('tool_calls')}\n"
              f"{t.tag('tool_call')}get_weather{t.tag('tool_sep')}\n{t.tag('arg_key')}city{t.tag('arg_key', True)}\n"
              f"{t.tag('arg_value')}北京{t.tag('arg_value', True)}\n{t.tag('arg_key')}days{t.tag('arg_key', True)}\n"
              f"{t.tag('arg_value')}3{t.tag('arg_value', True)}\n{t.tag('tool_call', True)}\n"
              f"{t.tag('tool_calls', True)}")
    script = tokenizer.encode(output) + [tokenizer.eos_token_id]
    repo = write_triton_repo(hy3["ckpt"], tmp_path / "repo", "reference",
                             options=RepoOptions(tokenizer_dir=hy3["src"], max_seq_len=4096))
    (repo / "tensorrt_llm" / "1" / "model.py").write_text(REPLAY_MODEL.format(script=script))
    with TritonServer(repo) as triton:
        backend = TritonTokenBackend(f"127.0.0.1:{triton.grpc_port}", 4000, 4096, tokenizer.eos_token_id,
                                     tokenizer.pad_token_id)
        with openai_endpoint(backend, tokenizer, MODEL, "127.0.0.1", free_port()) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
            messages = [{"role": "user", "content": "北京天气?"}]
            reply = client.chat.completions.create(model=MODEL, messages=messages, tools=WEATHER, max_tokens=200,
                                                   extra_body={"reasoning_effort": "high"})
            choice = reply.choices[0]
            assert choice.finish_reason == "tool_calls"
            assert choice.message.reasoning_content == "Need the weather."
            assert choice.message.content == "I'll look that up."
            [call] = choice.message.tool_calls
            assert call.function.name == "get_weather"
            assert json.loads(call.function.arguments) == {"city": "北京", "days": 3}  # typed by the schema
            stream = client.chat.completions.create(model=MODEL, messages=messages, tools=WEATHER, max_tokens=200,
                                                    stream=True, extra_body={"reasoning_effort": "high"})
            calls, content = [], ""
            for chunk in stream:
                if chunk.choices:
                    calls += chunk.choices[0].delta.tool_calls or []
                    content += chunk.choices[0].delta.content or ""
            assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
                ("get_weather", {"city": "北京", "days": 3})]
            assert content == "I'll look that up."


def test_triton_repositories_for_hy3(hy3, tmp_path):
    """The three Triton flavors for Hy3: an engine directory (Hy3's engine config), the converted checkpoint
    (reference) and the Hugging Face checkpoint on the PyTorch backend (llmapi, importing the Hy3 module)."""
    import yaml

    from hunyuan_trtllm.serve.repository import RepoOptions, write_triton_repo
    from hunyuan_trtllm.serve.triton_validate import validate_repo
    from hunyuan_trtllm.serve.trtllm_serve import pytorch_plugin_dir

    from .test_triton_repo import PIPELINE, fake_engine

    engine = fake_engine(tmp_path / "engine-dir")
    config = json.loads((engine / "config.json").read_text())
    config["pretrained_config"]["architecture"] = "HYV3ForCausalLM"
    (engine / "config.json").write_text(json.dumps(config))
    options = RepoOptions(tokenizer_dir=hy3["src"], max_input_len=32, max_seq_len=96)
    repos = {"engine": write_triton_repo(engine, tmp_path / "engine", "engine", None, True, options),
             "reference": write_triton_repo(hy3["ckpt"], tmp_path / "reference", "reference", 4, True, options),
             "llmapi": write_triton_repo(hy3["src"], tmp_path / "llmapi", "llmapi", 8, True, RepoOptions(tp=2, ep=2))}
    for flavor, repo in repos.items():
        assert validate_repo(repo) == (["tensorrt_llm"] if flavor == "llmapi" else PIPELINE), flavor
        assert json.loads((repo / "repo.json").read_text())["flavor"] == flavor
    settings = yaml.safe_load((repos["llmapi"] / "tensorrt_llm" / "1" / "model.yaml").read_text())
    assert settings["triton_config"]["custom_module_dirs"] == [str(pytorch_plugin_dir("HYV3ForCausalLM"))]
