"""A real Triton server (pytriton's bundled tritonserver, CPU) on generated repositories of a tiny converted A13B.

One server on the ``reference`` repository serves the whole module; a short-lived one checks a failing start (the
``llmapi`` model and ``serve --with triton``: tests/test_triton_llmapi.py). Skipped without nvidia-pytriton.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hunyuan_trtllm.checkpoints.tokenizer import HunyuanTokenizer
from hunyuan_trtllm.errors import UserError
from hunyuan_trtllm.reference.executor import ReferenceExecutor
from hunyuan_trtllm.serve import triton_server
from hunyuan_trtllm.serve.repository import RepoOptions, write_triton_repo
from hunyuan_trtllm.serve.triton_server import TritonServer, TritonServerError

needs_pytriton = pytest.mark.skipif(importlib.util.find_spec("pytriton") is None,
                                    reason="nvidia-pytriton is not installed (pip install nvidia-pytriton==0.7.0)")
pytestmark = pytest.mark.slow
MAX_INPUT_LEN = 32
PROMPTS = ["The tiny corpus", "你好，世界。", "A model reads tokens, not letters.", "<|startoftext|>hello"]
HTTP_TIMEOUT_S = 60


# ---- HTTP helpers --------------------------------------------------------------------------------------------
def post(url: str, body: dict) -> tuple[int, str]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def generate(server: TritonServer, model: str, body: dict) -> dict:
    status, text = post(f"{server.url}/v2/models/{model}/generate", body)
    assert status == 200, text
    return json.loads(text)


def stream(server: TritonServer, model: str, body: dict) -> list[dict]:
    """The SSE events of ``generate_stream`` with ``stream`` set."""
    status, text = post(f"{server.url}/v2/models/{model}/generate_stream", {**body, "stream": True})
    assert status == 200, text
    events = [json.loads(line[len("data: "):]) for line in text.splitlines() if line.startswith("data: ")]
    assert events and not [e for e in events if "error" in e], events
    return events


def llm_ids(server: TritonServer, prompt: list[int], n: int, **sampling: object) -> list[int]:
    """Output ids of the tensorrt_llm model called directly (no end id, no stop words)."""
    body = {"input_ids": prompt, "input_lengths": [len(prompt)], "request_output_len": [n], **sampling}
    return generate(server, "tensorrt_llm", body)["output_ids"]


def group_is_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


# ---- fixtures ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def executor(tiny) -> ReferenceExecutor:
    return ReferenceExecutor(tiny["ckpt"])


@pytest.fixture(scope="module")
def tokenizer(tiny) -> HunyuanTokenizer:
    return HunyuanTokenizer.from_model_dir(tiny["src"])


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    repo = write_triton_repo(tiny["ckpt"], tmp_path_factory.mktemp("triton") / "repo", "reference", 4, True,
                             RepoOptions(tokenizer_dir=tiny["src"], max_input_len=MAX_INPUT_LEN, max_seq_len=96))
    started = time.monotonic()
    with TritonServer(repo, ready_timeout=90) as running:
        print(f"\nreference repository ready in {time.monotonic() - started:.1f} s")
        pgid = running.process.pid
        yield running
    assert group_is_gone(pgid)


def argmax_ids(executor: ReferenceExecutor, prompt: list[int], n: int, end: int = -1,
               stops: tuple[int, ...] = ()) -> list[int]:
    """Plain step-by-step greedy decoding: the prompt once, then one token per forward."""
    cache, tokens = executor.new_cache(), []
    logits = executor.forward(prompt, cache)[-1]
    while len(tokens) < n:
        token = int(logits.argmax())
        if token == end:
            break
        tokens.append(token)
        if token in stops:
            break
        logits = executor.forward([token], cache)[-1]
    return tokens


def replay(executor: ReferenceExecutor, prompt: list[int], tokens: list[int]) -> list:
    """The logits each of ``tokens`` was chosen from."""
    cache = executor.new_cache()
    logits = [executor.forward(prompt, cache)[-1]]
    logits += [executor.forward([token], cache)[-1] for token in tokens[:-1]]
    return logits


def expected_text(executor: ReferenceExecutor, tokenizer: HunyuanTokenizer, prompt: str, n: int) -> str:
    """What the pipeline must answer: greedy ids ending at <|eos|> (dropped) or another stop id (kept, special)."""
    end = tokenizer.eos_token_id
    stops = tuple(t for t in tokenizer.stop_token_ids if t != end)
    ids = argmax_ids(executor, tokenizer.encode(prompt), n, end, stops)
    return tokenizer.decode(ids, skip_special_tokens=True)


# ---- the reference repository --------------------------------------------------------------------------------
@needs_pytriton
def test_greedy_ids_equal_stepwise_argmax(server, executor, tokenizer) -> None:
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt)
        assert llm_ids(server, ids, 12) == argmax_ids(executor, ids, 12)
        want = expected_text(executor, tokenizer, prompt, 12)
        assert generate(server, "ensemble", {"text_input": prompt, "max_tokens": 12})["text_output"] == want
        assert generate(server, "tensorrt_llm_bls", {"text_input": prompt, "max_tokens": 12})["text_output"] == want


@needs_pytriton
def test_greedy_with_the_prompt_and_token_counts(server, executor, tokenizer) -> None:
    prompt = PROMPTS[0]
    got = generate(server, "ensemble", {"text_input": prompt, "max_tokens": 5, "exclude_input_in_output": False,
                                        "return_num_input_tokens": True, "return_num_output_tokens": True})
    assert got["text_output"] == prompt + expected_text(executor, tokenizer, prompt, 5)
    assert (got["num_input_tokens"], got["num_output_tokens"]) == (len(tokenizer.encode(prompt)), 5)


@needs_pytriton
def test_streamed_chunks_concatenate_to_the_text(server, executor, tokenizer) -> None:
    for prompt in PROMPTS:
        body = {"text_input": prompt, "max_tokens": 12}
        want = generate(server, "tensorrt_llm_bls", body)["text_output"]
        assert "".join(e["text_output"] for e in stream(server, "tensorrt_llm_bls", body)) == want
        ids = argmax_ids(executor, tokenizer.encode(prompt), 12, tokenizer.eos_token_id)
        chunks = [e["text_output"] for e in stream(server, "ensemble", body)]
        assert "".join(chunks) == "".join(tokenizer.decode([t], skip_special_tokens=True) for t in ids)


@needs_pytriton
def test_bls_never_splits_a_character(server) -> None:
    """Sampled Chinese: the ensemble's per-chunk decoding breaks characters, the BLS stream never does."""
    split = 0
    for seed in range(6):
        body = {"text_input": "你好，世界。模型", "max_tokens": 24, "top_k": 50, "temperature": 1.0, "seed": seed}
        whole = generate(server, "ensemble", body)["text_output"]
        assert generate(server, "tensorrt_llm_bls", body)["text_output"] == whole
        assert "".join(e["text_output"] for e in stream(server, "tensorrt_llm_bls", body)) == whole
        split += "".join(e["text_output"] for e in stream(server, "ensemble", body)) != whole
    assert split  # at least one seed put a character across tokens


@needs_pytriton
def test_sampling_honours_seed_temperature_top_k_top_p(server, executor, tokenizer) -> None:
    prompt = tokenizer.encode(PROMPTS[2])
    sampled = {"runtime_top_k": 8, "temperature": 1.5}
    first = llm_ids(server, prompt, 16, seed=11, **sampled)
    assert llm_ids(server, prompt, 16, seed=11, **sampled) == first
    assert llm_ids(server, prompt, 16, seed=12, **sampled) != first
    assert llm_ids(server, prompt, 16, seed=11, runtime_top_k=1, temperature=1.5) == argmax_ids(executor, prompt, 16)
    nucleus = llm_ids(server, prompt, 16, seed=5, runtime_top_p=0.5, temperature=0.7)
    for token, logits in zip(first, replay(executor, prompt, first), strict=True):
        assert token in logits.topk(8).indices.tolist()
    for token, logits in zip(nucleus, replay(executor, prompt, nucleus), strict=True):
        probs = (logits / 0.7).softmax(-1)
        assert probs[probs > probs[token]].sum() < 0.5  # inside the smallest set reaching top_p


@needs_pytriton
def test_bad_requests_get_4xx_and_the_server_keeps_serving(server) -> None:
    long_prompt = "tokens " * (MAX_INPUT_LEN + 10)
    bad = [
        ("ensemble", {"text_input": "", "max_tokens": 4}, "text_input is empty"),
        ("tensorrt_llm_bls", {"text_input": "", "max_tokens": 4}, "text_input is empty"),
        ("ensemble", {"text_input": long_prompt, "max_tokens": 4}, f"at most {MAX_INPUT_LEN}"),
        ("tensorrt_llm_bls", {"text_input": long_prompt, "max_tokens": 4}, f"at most {MAX_INPUT_LEN}"),
        ("ensemble", {"text_input": "hello", "max_tokens": 0}, "max_tokens must be positive"),
        ("ensemble", {"text_input": "hello", "max_tokens": -3}, "max_tokens must be positive"),
        ("tensorrt_llm", {"input_ids": list(range(5, 45)), "input_lengths": [40], "request_output_len": [2]},
         "max_input_len is 32"),
        ("tensorrt_llm", {"input_ids": [5, 6], "input_lengths": [2], "request_output_len": [0]},
         "request_output_len must be positive"),
        ("ensemble", {"text_input": "hello", "max_tokens": 4, "beam_width": 2}, "not supported"),
        ("no_such_model", {"text_input": "hello", "max_tokens": 4}, "unknown model"),
    ]
    for model, body, message in bad:
        status, text = post(f"{server.url}/v2/models/{model}/generate", body)
        assert 400 <= status < 500 and message in text, (model, body, status, text)
    with urllib.request.urlopen(f"{server.url}/v2/health/ready", timeout=HTTP_TIMEOUT_S) as response:
        assert response.status == 200
    assert generate(server, "ensemble", {"text_input": "hello", "max_tokens": 3})["text_output"] is not None


@needs_pytriton
def test_eight_concurrent_streams_match_one_by_one(server) -> None:
    bodies = [{"text_input": f"{PROMPTS[i % 4]} {i}", "max_tokens": 20, **({"top_k": 20, "seed": i} if i % 2 else {})}
              for i in range(8)]

    def text(body: dict) -> str:
        return "".join(e["text_output"] for e in stream(server, "tensorrt_llm_bls", body))

    started = time.monotonic()
    one_by_one = [text(body) for body in bodies]
    sequential = time.monotonic() - started
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(text, bodies, timeout=HTTP_TIMEOUT_S))
    print(f"\n8 streams x 20 tokens: one by one {sequential:.2f} s, concurrently {time.monotonic() - started:.2f} s")
    assert together == one_by_one


@needs_pytriton
def test_a_failing_model_raises_with_the_log(tiny, tmp_path) -> None:
    repo = write_triton_repo(tiny["ckpt"], tmp_path / "repo", "reference", 2, True,
                             RepoOptions(tokenizer_dir=tiny["src"]))
    model = repo / "postprocessing" / "1" / "model.py"
    model.write_text(model.read_text().replace("def initialize(self, args: dict) -> None:",
                                               "def initialize(self, args: dict) -> None:\n"
                                               "        raise RuntimeError('tokenizer exploded')"))
    server = TritonServer(repo, ready_timeout=60)
    with pytest.raises(TritonServerError, match="tokenizer exploded"):
        server.start()
    assert server.process is None and server.workspace is None


def test_missing_pytriton_is_a_user_error(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pytriton" else real(name, *a))
    with pytest.raises(UserError, match="nvidia-pytriton is not installed"):
        triton_server.find_triton()
    with pytest.raises(UserError, match="pip install nvidia-pytriton"):
        TritonServer(Path(".")).start()
