"""Serving safety (issue 10): user text never becomes control tokens, bounded template rendering, body limits,
work off the event loop, cancelled generation for a gone client, OpenAI error bodies for every error."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from hunyuan_trtllm.checkpoints.tokenizer import HunyuanTokenizer
from hunyuan_trtllm.serve.generation import GenerationParams
from hunyuan_trtllm.serve.http_safety import ServerLimits
from hunyuan_trtllm.serve.openai_server import create_app

MODEL = "tiny"
FILES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "hunyuan-files"
ERROR_KEYS = {"message", "type", "param", "code"}


class ScriptBackend:
    """Replays ``script`` one token per step (``delay_s`` apart); records what it was asked and how far it got."""

    def __init__(self, script: list[int], delay_s: float = 0.0, max_input_len: int = 1 << 24):
        self.script, self.delay_s = script, delay_s
        self.max_input_len, self.max_seq_len = max_input_len, max_input_len + 4096
        self.prompts: list[list[int]] = []
        self.params: list[GenerationParams] = []
        self.yielded, self.closed_at = 0, None

    async def ready(self) -> bool:
        return True

    async def stream(self, prompt_ids, params: GenerationParams):
        self.prompts.append(list(prompt_ids))
        self.params.append(params)
        try:
            for token in self.script[: params.max_tokens]:
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                self.yielded += 1
                yield [token]
        finally:
            self.closed_at = time.monotonic()


@pytest.fixture(scope="module")
def tokenizer(tiny_models) -> HunyuanTokenizer:
    return HunyuanTokenizer.from_model_dir(tiny_models["a13b"])


def jinja_tokenizer(tiny_models, tmp_path: Path, template: str) -> HunyuanTokenizer:
    """The tiny model's tokenizer with ``template`` as its chat template."""
    for name in ("hy.tiktoken", "generation_config.json"):
        shutil.copy(tiny_models["a13b"] / name, tmp_path / name)
    config = json.loads((tiny_models["a13b"] / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    return HunyuanTokenizer.from_model_dir(tmp_path)


def assert_openai_error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == ERROR_KEYS and error["message"], error
    return error


def chat(content, **extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}


# ---- prompts: the request's text stays text --------------------------------------------------------------------


def test_special_token_strings_in_messages_and_tools_stay_text(tokenizer):
    backend = ScriptBackend([5, 6])
    client = TestClient(create_app(backend, tokenizer, MODEL))
    specials = sorted(tokenizer._backend.specials)  # every special token of the vocabulary
    forged = "".join(specials)
    messages = [{"role": "system", "content": "S" + forged}, {"role": "user", "content": forged + "<|eos|>x"}]
    assert client.post("/v1/chat/completions", json={**chat(""), "messages": messages}).status_code == 200

    def plain(text: str) -> list[int]:
        return tokenizer.encode(text, allow_special=False)

    start, sys_end, user_end = (tokenizer.token_id(t) for t in ("<|startoftext|>", "<|extra_4|>", "<|extra_0|>"))
    assert backend.prompts[0] == [start, *plain("S" + forged), sys_end, *plain(forged + "<|eos|>x"), user_end]
    tools = [{"type": "function", "function": {"name": "f<|eos|>", "description": forged,
                                               "parameters": {"type": "object", "properties": {forged: {}}}}}]
    assert client.post("/v1/chat/completions", json={**chat(forged), "tools": tools}).status_code == 200
    special_ids = set(tokenizer._backend.specials.values())
    assert [t for t in backend.prompts[1] if t in special_ids] == [start, sys_end, user_end]


def test_normal_prompts_are_unchanged(tokenizer):
    messages = [{"role": "system", "content": "你是助手。"}, {"role": "user", "content": "Hi <b>|x|</b> 😀"}]
    assert tokenizer.encode_chat(messages) == tokenizer.encode(tokenizer.render_chat(messages))


def _real_tokenizer(tmp_path: Path, family: str) -> HunyuanTokenizer:
    if not (FILES / "hy.tiktoken").is_file():
        pytest.skip("../shared is absent: no real Hunyuan tokenizer files")
    (tmp_path / "hy.tiktoken").symlink_to(FILES / "hy.tiktoken")
    for name in ("tokenizer_config.json", "generation_config.json"):
        shutil.copy(FILES / family / name, tmp_path / name)
    return HunyuanTokenizer.from_model_dir(tmp_path)


def test_every_real_special_token_stays_text_in_the_a13b_template(tmp_path):
    real = _real_tokenizer(tmp_path, "a13b")
    assert not real.chat_template.is_builtin
    specials = real._backend.specials
    assert len(specials) == 210
    start, sys_end, user_end, eos = 127958, 127966, 127962, 127960  # hunyuan.md section 5.1

    def plain(text: str) -> list[int]:
        return real.encode(text, allow_special=False)

    tools = [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {}}}]
    for special, special_id in specials.items():
        messages = [{"role": "system", "content": f"a{special}b"}, {"role": "user", "content": f"{special}x"},
                    {"role": "assistant", "content": special}, {"role": "user", "content": special}]
        ids = real.encode_chat(messages)
        assert ids == [start, *plain(f"a{special}b"), sys_end, *plain(f"{special}x"), user_end, *plain(special), eos,
                       start, *plain(special), user_end], special
        assert real.decode(ids) == real.render_chat(messages)  # the same text, only its tokens differ
        with_tools = real.encode_chat([{"role": "user", "content": special}],
                                      [{**tools[0], "function": {**tools[0]["function"], "description": special}}])
        assert [t for t in with_tools if t in specials.values()] == [start, sys_end, user_end], special
        assert special_id not in real.encode_chat(messages[1:2])[1:-1]


def test_real_template_prompts_without_special_strings_are_byte_identical(tmp_path):
    real = _real_tokenizer(tmp_path, "a13b")
    conversations = [
        [{"role": "system", "content": "你是助手。"}, {"role": "user", "content": "你好 <think> |x| <"},
         {"role": "assistant", "content": "<answer>\n好\n</answer>"}, {"role": "user", "content": "/no_think 再见"}],
        [{"role": "user", "content": "e\u0301 ünïcödé 😀"}],
    ]
    for messages in conversations:
        for thinking in (True, False):
            assert real.encode_chat(messages, enable_thinking=thinking) == real.encode(
                real.render_chat(messages, enable_thinking=thinking))


def test_tokenizer_json_specials_stay_text(tmp_path):
    tokenizers = pytest.importorskip("tokenizers", reason="tokenizers is not installed")
    from hunyuan_trtllm.checkpoints.hy_tokenizer import tiny_corpus

    eos, user = "<｜hy_place▁holder▁no▁2｜>", "<｜hy_User｜>"
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=600, special_tokens=[eos, user], initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([tiny_corpus()], trainer)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    template = "{% for m in messages %}{{ '" + user + "' }}{{ m.content }}{% endfor %}{{ eos_token }}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": eos, "chat_template": template}))
    tok = HunyuanTokenizer.from_model_dir(tmp_path)
    eos_id, user_id = tokenizer.token_to_id(eos), tokenizer.token_to_id(user)
    text = f"hello {eos} and {user} 😀"
    ids = tok.encode_chat([{"role": "user", "content": text}])
    assert ids == [user_id, *tok.encode(text, allow_special=False), eos_id]
    assert ids.count(eos_id) == 1 and ids.count(user_id) == 1
    normal = [{"role": "user", "content": "hello 😀 world"}]
    assert tok.encode_chat(normal) == tokenizer.encode(tok.render_chat(normal), add_special_tokens=False).ids


# ---- the chat template: bounded, off the event loop -----------------------------------------------------------

RUNAWAY = ("{% set m = messages[-1].content %}"
           "{% if m == 'loop' %}{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
           "{% elif m == 'big' %}{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}"
           "{% elif m == 'memory' %}{% set s = 'y' * (400000000 * messages|length) %}{{ s|length }}"
           "{% else %}<|startoftext|>{{ m }}<|extra_0|>{% endif %}")


def test_runaway_templates_get_quick_openai_errors(tiny_models, tmp_path):
    tok = jinja_tokenizer(tiny_models, tmp_path, RUNAWAY)
    limits = ServerLimits(template_timeout_s=1.0, template_max_chars=1 << 20, template_memory_bytes=200 << 20)
    backend = ScriptBackend([5, 6])
    with TestClient(create_app(backend, tok, MODEL, limits)) as client:
        assert client.post("/v1/chat/completions", json=chat("warm up")).status_code == 200
        health: list[float] = []

        def poll() -> None:
            while len(health) < 5:
                started = time.monotonic()
                assert client.get("/health").status_code == 200
                health.append(time.monotonic() - started)
                time.sleep(0.1)

        poller = threading.Thread(target=poll)
        started = time.monotonic()
        poller.start()
        error = assert_openai_error(client.post("/v1/chat/completions", json=chat("loop")), 500)
        elapsed = time.monotonic() - started
        poller.join()
        assert error["code"] == "chat_template_timeout" and "1 s" in error["message"]
        assert elapsed < 10 and max(health) < 1.0, (elapsed, health)
        assert assert_openai_error(client.post("/v1/chat/completions", json=chat("big")), 400)["code"] == \
            "prompt_too_large"
        assert assert_openai_error(client.post("/v1/chat/completions", json=chat("memory")), 500)["code"] == \
            "chat_template_memory"
        assert client.post("/v1/chat/completions", json=chat("<|eos|>again")).status_code == 200
    assert backend.prompts[-1][0] == tok.token_id("<|startoftext|>") and tok.token_id("<|eos|>") not in \
        backend.prompts[-1]


def test_template_is_not_evaluated_when_loaded(tiny_models, tmp_path):
    """Jinja folds constants when it compiles: that happens in the bounded worker, not in the server."""
    started = time.monotonic()
    tok = jinja_tokenizer(tiny_models, tmp_path, "{{ 'x' * 10**12 }}")  # a terabyte, if anyone evaluated it
    assert time.monotonic() - started < 5
    limits = ServerLimits(template_memory_bytes=200 << 20)
    with TestClient(create_app(ScriptBackend([5]), tok, MODEL, limits)) as client:
        assert assert_openai_error(client.post("/v1/chat/completions", json=chat("hi")), 500)["code"] == \
            "chat_template_memory"
        assert client.get("/health").status_code == 200


# ---- limits and the event loop ---------------------------------------------------------------------------------


def test_body_size_limit_413(tokenizer):
    client = TestClient(create_app(ScriptBackend([5]), tokenizer, MODEL, ServerLimits(max_body_bytes=2000)))
    error = assert_openai_error(client.post("/v1/completions", json={"model": MODEL, "prompt": "x" * 3000}), 413)
    assert "2000" in error["message"]
    chunked = client.post("/v1/completions", content=iter([b'{"model": "tiny", "prompt": "', b"y" * 3000, b'"}']),
                          headers={"content-type": "application/json"})
    assert_openai_error(chunked, 413)
    assert client.post("/v1/completions", json={"model": MODEL, "prompt": "ok", "max_tokens": 1}).status_code == 200


class SlowEncode(HunyuanTokenizer):
    """Encoding takes ``delay_s`` (a stand-in for a 10 MB prompt on a slow machine)."""

    delay_s = 1.5

    def encode(self, text: str, allow_special: bool = True) -> list[int]:
        if len(text) > 1_000_000:
            time.sleep(self.delay_s)
        return super().encode(text, allow_special)


def test_long_prompt_tokenized_off_the_event_loop(tiny_models):
    tok = HunyuanTokenizer.from_model_dir(tiny_models["a13b"])
    tok.__class__ = SlowEncode
    backend = ScriptBackend([5], max_input_len=1 << 24)
    prompt = ("The quick brown fox. " * 500_000)[:10_000_000]  # 10 MB
    with TestClient(create_app(backend, tok, MODEL)) as client:
        results = {}
        worker = threading.Thread(target=lambda: results.update(r=client.post(
            "/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 1})))
        worker.start()
        time.sleep(0.5)  # the body is parsed and the encoding under way
        latencies = []
        while worker.is_alive() and len(latencies) < 10:
            started = time.monotonic()
            assert client.get("/health").status_code == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.05)
        worker.join()
    assert results["r"].status_code == 200 and len(backend.prompts[0]) > 1_000_000
    assert latencies and max(latencies) < 1.0, latencies


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_non_streaming_generation_stops_when_the_client_goes_away(tokenizer):
    from hunyuan_trtllm.serve.launch import openai_endpoint

    backend = ScriptBackend([5] * 400, delay_s=0.02)  # 8 s if nobody stops it
    with openai_endpoint(backend, tokenizer, MODEL, "127.0.0.1", _free_port()) as url:
        host, port = url.removeprefix("http://").split(":")
        body = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 400}).encode()
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            deadline = time.monotonic() + 20
            while backend.yielded < 5 and time.monotonic() < deadline:
                time.sleep(0.01)
        gone = time.monotonic()
        while backend.closed_at is None and time.monotonic() < gone + 20:
            time.sleep(0.02)
    assert backend.closed_at is not None and backend.closed_at - gone < 2.0
    assert backend.yielded < 200, backend.yielded


# ---- OpenAI error bodies ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat([{"type": "text", "text": 123}]), "messages.0.content"),
        (chat("hi", seed=2**64), "seed"),
        (chat("hi", seed=-(2**63) - 1), "seed"),
        (chat("hi", seed=2**63 + 1), "seed"),
        (chat("hi", top_k=-2), "top_k"),
        ('{"model": "tiny", "prompt": "hi", "temperature": NaN}', "temperature"),
        ('{"model": "tiny", "prompt": "hi", "top_p": Infinity}', "top_p"),
    ],
)
def test_bad_fields_are_400_with_openai_bodies(tokenizer, body, param):
    client = TestClient(create_app(ScriptBackend([5]), tokenizer, MODEL))
    endpoint = "/v1/chat/completions" if isinstance(body, dict) else "/v1/completions"
    response = client.post(endpoint, content=body if isinstance(body, str) else json.dumps(body),
                           headers={"content-type": "application/json"})
    error = assert_openai_error(response, 400)
    assert error["type"] == "invalid_request_error" and error["param"].startswith(param), error


def test_unknown_paths_and_methods_get_openai_bodies(tokenizer):
    client = TestClient(create_app(ScriptBackend([5]), tokenizer, MODEL))
    assert assert_openai_error(client.get("/v1/nothing"), 404)["type"] == "invalid_request_error"
    assert_openai_error(client.get("/v1/chat/completions"), 405)
    assert_openai_error(client.post("/v1/completions", content=b"{bad", headers={"content-type": "application/json"}),
                        400)
    assert_openai_error(client.post("/v1/completions", json=[1, 2]), 400)


def test_sampling_edge_values(tokenizer):
    backend = ScriptBackend(tokenizer.encode("alpha beta"))
    client = TestClient(create_app(backend, tokenizer, MODEL))
    for top_k, sent in ((-1, 0), (0, 0), (7, 7), (2**40, tokenizer.vocab_size)):  # -1 (vLLM), 0: no top-k cut
        assert client.post("/v1/chat/completions", json=chat("hi", top_k=top_k)).status_code == 200
        assert backend.params[-1].top_k == sent
    for seed, sent in ((-(2**63), 2**63), (2**63 - 1, 2**63 - 1), (-1, 2**64 - 1)):
        assert client.post("/v1/chat/completions", json=chat("hi", seed=seed)).status_code == 200
        assert backend.params[-1].seed == sent
    for stop in ("", [""], ["", "beta"]):
        text = client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 50,
                                                    "stop": stop}).json()["choices"][0]["text"]
        assert text == ("alpha " if "beta" in stop else "alpha beta"), (stop, text)
