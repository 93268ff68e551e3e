"""A real Triton server (pytriton's bundled tritonserver, CPU) on generated repositories of a tiny converted A13B.

One server on the ``reference`` repository serves the whole module; two short-lived ones check the ``llmapi``
model (with a stand-in ``tensorrt_llm`` package) and a failing start. Skipped without nvidia-pytriton.
"""

from __future__ import annotations

import importlib.util
import ipaddress
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


# ---- the llmapi repository, with a stand-in tensorrt_llm package ----------------------------------------------
FAKE_TRTLLM = {
    "__init__.py": '''
class SamplingParams:
    def __init__(self, max_tokens=16, **kwargs):
        self.max_tokens = max_tokens
        self.kwargs = kwargs


class _Output:
    def __init__(self, text, diff):
        self.text, self.text_diff = text, diff
        self.finish_reason, self.stop_reason, self.cumulative_logprob = "length", None, -1.5


class _Request:
    def __init__(self, pieces):
        self.pieces = pieces

    def __aiter__(self):
        return self._steps()

    async def _steps(self):
        for i, piece in enumerate(self.pieces):
            yield type("RequestOutput", (), {"outputs": [_Output("".join(self.pieces[: i + 1]), piece)]})

    async def aresult(self):
        return type("RequestOutput", (), {"outputs": [_Output("".join(self.pieces), "")]})

    def abort(self):
        pass


class LLM:
    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def generate_async(self, prompt, sampling, streaming=False):
        words = [f"tp{self.kwargs['tensor_parallel_size']}ep{self.kwargs['moe_expert_parallel_size']}"]
        words += prompt.split()
        return _Request([w + " " for w in words[: sampling.max_tokens]])

    def shutdown(self):
        pass
''',
    "llmapi/__init__.py": "",
    "llmapi/llm_args.py": "def update_llm_args_with_extra_dict(args, extra):\n    return {**args, **extra}\n",
}


def llmapi_repo(tiny, where: Path) -> Path:
    """The llmapi repository ``serve --with triton`` writes for an HF model, with the stand-in TensorRT-LLM."""
    repo = write_triton_repo(tiny["src"], where, "llmapi", 8, True, RepoOptions(tp=2, ep=2))
    for name, text in FAKE_TRTLLM.items():  # the model directory is on the stub's sys.path
        path = repo / "tensorrt_llm" / "1" / "tensorrt_llm" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return repo


@needs_pytriton
def test_llmapi_model_and_a_clean_stop(tiny, tmp_path) -> None:
    repo = llmapi_repo(tiny, tmp_path / "llmapi")
    server = TritonServer(repo, ready_timeout=60)
    with server:
        pgid, workspace = server.process.pid, server.workspace
        body = {"text_input": "one two three", "sampling_param_max_tokens": 3, "return_finish_reason": True}
        got = generate(server, "tensorrt_llm", body)
        assert (got["text_output"], got["finish_reason"]) == ("tp2ep2 one two ", "length")
        events = stream(server, "tensorrt_llm", {**body, "streaming": True})
        assert [e["text_output"] for e in events if "text_output" in e] == ["tp2ep2 ", "one ", "two "]
        status, text = post(f"{server.url}/v2/models/tensorrt_llm/generate", {"text_input": ""})
        assert status == 400 and "non-empty prompt" in text
    assert group_is_gone(pgid) and not workspace.exists()
    assert not list(Path("/dev/shm").glob(f"{server.shm_prefix}*"))
    assert "successfully loaded 'tensorrt_llm'" in server.logs


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


@needs_pytriton
def test_serve_with_triton_listens_only_on_its_host(tiny, tmp_path, monkeypatch) -> None:
    """``serve --with triton`` runs the image's tritonserver: here the bundled one, behind a ``tritonserver`` on
    PATH that adds what the CPU bundle needs. Every port it opens must be on --host (127.0.0.1 by default)."""
    import psutil

    from hunyuan_trtllm.serve.launch import run_system_triton
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
    port = triton_server.free_port()
    runner = ThreadPoolExecutor(1).submit(run_system_triton, llmapi_repo(tiny, tmp_path / "repo"), 90, port)
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
            os.killpg(process.pid, 2)  # Ctrl-C: run_system_triton stops the server group and returns
        runner.result(timeout=90)
        for region in Path("/dev/shm").glob(f"{prefix}*"):
            region.unlink(missing_ok=True)
