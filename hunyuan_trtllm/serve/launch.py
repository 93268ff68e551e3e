"""Start the serving stacks: Triton (+ the OpenAI endpoint in front of it) or trtllm-serve, and stop them cleanly."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import yaml
from rich.console import Console

from hunyuan_trtllm.checkpoints.tokenizer import HunyuanTokenizer
from hunyuan_trtllm.errors import UserError
from hunyuan_trtllm.serve.generation import TokenBackend
from hunyuan_trtllm.serve.http_safety import ServerLimits
from hunyuan_trtllm.serve.openai_fields import MAX_TOP_LOGPROBS
from hunyuan_trtllm.serve.openai_server import create_app
from hunyuan_trtllm.serve.pbtxt import parse
from hunyuan_trtllm.serve.process import start_process_group, stop_process_group, wait_ready
from hunyuan_trtllm.serve.repository import RepoOptions, read_engine_facts, write_triton_repo
from hunyuan_trtllm.serve.triton_backend import TritonTokenBackend
from hunyuan_trtllm.serve.trtllm_serve import (
    ServeOptions,
    detect_target,
    serving_limits,
    trtllm_serve_command,
    write_llm_api_options,
)
from hunyuan_trtllm.serve.trtllm_serve_backend import TrtllmServeTokenBackend

console = Console(stderr=True)  # status lines; stdout stays for what programs read


@dataclass(frozen=True)
class Endpoint:
    """A running OpenAI endpoint: where it listens and what it serves."""

    url: str
    model: str
    triton_url: str | None = None
    triton_grpc: str | None = None  # host:port of Triton's gRPC (what the endpoint talks to)


def _limits(repo: Path) -> tuple[int, int]:
    """(max_input_len, max_seq_len) of a generated repository's ``tensorrt_llm`` model."""
    meta = json.loads((repo / "repo.json").read_text())
    source = Path(meta["source"])
    if meta["flavor"] == "engine":
        facts = read_engine_facts(source)
        return facts.max_input_len, facts.max_seq_len
    if meta["flavor"] == "llmapi":  # the PyTorch backend's limits, as for trtllm-serve, from the LLM's arguments
        settings = yaml.safe_load((repo / "tensorrt_llm" / "1" / "model.yaml").read_text(encoding="utf-8"))
        options = ServeOptions(max_seq_len=settings.get("max_seq_len"),
                               max_num_tokens=settings.get("max_num_tokens", ServeOptions.max_num_tokens))
        return serving_limits(detect_target(source), options)
    where = repo / "tensorrt_llm" / "config.pbtxt"
    params = parse(where.read_text(), str(where)).parameters
    return int(params["max_input_len"].string_value), int(params["max_seq_len"].string_value)


def token_backend(repo: Path, grpc_url: str, tokenizer: HunyuanTokenizer) -> TritonTokenBackend:
    """The endpoint's backend for a generated repository served at ``grpc_url``, with what its ``tensorrt_llm``
    model offers: log probabilities and guided decoding everywhere (xgrammar: TensorRT-LLM's executor, the
    LLM API's ``guided_decoding_backend``, or the reference model on CPU); top-k alternatives only from the
    reference model (TensorRT-LLM's C++ model and the llmapi model have no such output)."""
    max_input_len, max_seq_len = _limits(repo)
    flavor = json.loads((repo / "repo.json").read_text())["flavor"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return TritonTokenBackend(grpc_url, max_input_len, max_seq_len, tokenizer.eos_token_id, pad,
                              max_top_logprobs=MAX_TOP_LOGPROBS if flavor == "reference" else 0,
                              guided_decoding=True)


@contextlib.contextmanager
def openai_endpoint(backend: TritonTokenBackend, tokenizer: HunyuanTokenizer, model: str, host: str,
                    port: int, limits: ServerLimits | None = None) -> Iterator[str]:
    """Run the OpenAI endpoint (uvicorn) in a thread for the duration of the ``with`` block; yields its URL."""
    import uvicorn

    app = create_app(backend, tokenizer, model, limits)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port,
                                           log_level="warning", lifespan="off", timeout_graceful_shutdown=3))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise UserError(f"the OpenAI endpoint could not listen on {host}:{port}")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        app.state.prompts.close()  # the chat template's worker processes


@contextlib.contextmanager
def reference_stack(ckpt: Path, tokenizer_dir: Path, host: str, port: int, model: str,
                    max_batch_size: int | None = None, max_seq_len: int | None = None,
                    limits: ServerLimits | None = None) -> Iterator[Endpoint]:
    """A converted checkpoint served on CPU: reference repository -> bundled Triton -> OpenAI endpoint."""
    from hunyuan_trtllm.serve.triton_server import TritonServer

    tokenizer = HunyuanTokenizer.from_model_dir(tokenizer_dir)
    work = Path(tempfile.mkdtemp(prefix="hunyuan-serve-"))
    try:
        options = RepoOptions(tokenizer_dir=tokenizer_dir, max_seq_len=max_seq_len)
        repo = write_triton_repo(ckpt, work / "repo", "reference", max_batch_size=max_batch_size, options=options)
        with TritonServer(repo) as triton:
            backend = token_backend(repo, f"127.0.0.1:{triton.grpc_port}", tokenizer)
            with openai_endpoint(backend, tokenizer, model, host, port, limits) as url:
                yield Endpoint(url, model, triton.url, f"127.0.0.1:{triton.grpc_port}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_trtllm_serve(target_dir: Path, options: ServeOptions, work: Path, ready_timeout: float,
                     tokenizer_dir: Path, model: str, backend_port: int, backend_url: str | None = None,
                     limits: ServerLimits | None = None) -> None:
    """trtllm-serve on ``127.0.0.1:backend_port`` (or one already running at ``backend_url``) with the Hunyuan-aware
    OpenAI endpoint in front on ``options.host:options.port``, until Ctrl-C. The endpoint's ``/health`` is 200 only
    once trtllm-serve's is."""
    target = detect_target(target_dir)
    inner = replace(options, host="127.0.0.1", port=backend_port)  # only our endpoint talks to trtllm-serve
    extra = write_llm_api_options(target, inner, work / "extra_llm_api_options.yaml")  # refuses bad options first
    command = trtllm_serve_command(target, inner, extra)
    if backend_url is None and shutil.which(command[0]) is None:
        raise UserError("trtllm-serve not found: run inside nvcr.io/nvidia/tensorrt-llm/release:1.2.1 (or the "
                        "tritonserver:26.07-trtllm-python-py3 image), or install the 'trtllm' extra on a GPU host")
    tokenizer = HunyuanTokenizer.from_model_dir(tokenizer_dir)
    max_input_len, max_seq_len = serving_limits(target, options)
    process = None
    if backend_url is None:
        console.print(f"[bold]starting[/] {' '.join(command)}")
        process = start_process_group(command)
        backend_url = f"http://127.0.0.1:{backend_port}"
    backend = TrtllmServeTokenBackend(backend_url, max_input_len, max_seq_len, options.guided_decoding)
    _front(backend, tokenizer, model, options.host, options.port, limits, process, f"{backend_url}/health",
           ready_timeout, f"trtllm-serve ({target.backend} backend) {backend_url}", "trtllm-serve")


def _front(backend: TokenBackend, tokenizer: HunyuanTokenizer, model: str, host: str, port: int,
           limits: ServerLimits | None, process: subprocess.Popen | None, ready_url: str, ready_timeout: float,
           behind: str, server: str) -> None:
    """Run the OpenAI endpoint in front of ``backend`` until Ctrl-C or until ``process`` (the server behind it,
    when we started it) exits; then stop that server."""
    try:
        with openai_endpoint(backend, tokenizer, model, host, port, limits) as url:
            if process is not None:
                wait_ready(process, ready_url, ready_timeout)
            console.print(f"[green]ready[/] OpenAI endpoint: {url}/v1 (model '{model}'); {behind}  (Ctrl-C to stop)")
            try:
                while process is None or process.poll() is None:
                    time.sleep(1 if process is not None else 3600)
            except KeyboardInterrupt:
                console.print("stopping ...")
                return
        raise UserError(f"{server} exited with code {process.returncode}")
    finally:
        if process is not None:
            stop_process_group(process)


def triton_environment(repo: Path) -> dict[str, str]:
    """The server's environment: a multi-GPU ``engine`` repository runs in the C++ backend's orchestrator mode
    (``TRTLLM_ORCHESTRATOR=1``: one tritonserver spawns a worker per rank through ``executor_worker_path``; the
    default leader mode would need one tritonserver per rank under mpirun)."""
    meta = json.loads((repo / "repo.json").read_text(encoding="utf-8"))
    env = dict(os.environ)
    if meta["flavor"] == "engine" and meta.get("world_size", 1) > 1:
        env["TRTLLM_ORCHESTRATOR"] = "1"
    return env


def check_listen(host: str, ports: list[int]) -> None:
    """One :class:`UserError` line, before anything starts, when ``host`` cannot listen on one of ``ports``."""
    for port in ports:
        if not 1 <= port <= 65535:
            raise UserError(f"port {port} is not a TCP port (1-65535)")
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None


def url_host(host: str) -> str:
    """Where a local client reaches a server bound to ``host`` (a wildcard is reached on loopback), URL-ready."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def system_triton_command(repo: Path, host: str, http_port: int) -> list[str]:
    """The image's ``tritonserver`` on ``repo``: HTTP, gRPC and metrics all bound to ``host``."""
    return ["tritonserver", f"--model-repository={repo}",
            f"--http-address={host}", f"--http-port={http_port}",
            f"--grpc-address={host}", f"--grpc-port={http_port + 1}",
            f"--metrics-address={host}", f"--metrics-port={http_port + 2}"]


def run_triton_with_endpoint(repo: Path, tokenizer_dir: Path, host: str, port: int, model: str,
                             ready_timeout: float, http_port: int, grpc_url: str | None = None,
                             limits: ServerLimits | None = None) -> None:
    """The production path: the image's ``tritonserver`` on an ``engine`` or ``llmapi`` repository (or one already
    running at ``grpc_url``, e.g. the multi-node leader's rank 0) with the Hunyuan-aware OpenAI endpoint in front, on
    ``host:port``, until Ctrl-C. The endpoint's ``/health`` is 200 only once Triton's ``tensorrt_llm`` is ready.
    Triton's own ports are bound to ``host`` too."""
    tokenizer = HunyuanTokenizer.from_model_dir(tokenizer_dir)
    process = None
    if grpc_url is None:
        if shutil.which("tritonserver") is None:
            raise UserError("tritonserver not found: run inside nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3, "
                            "or use --dry-run for the CPU reference server")
        command = system_triton_command(repo, host, http_port)
        console.print(f"[bold]starting[/] {' '.join(command)}")
        process = start_process_group(command, triton_environment(repo))
        grpc_url = f"{url_host(host)}:{http_port + 1}"
    backend = token_backend(repo, grpc_url, tokenizer)
    _front(backend, tokenizer, model, host, port, limits, process, f"http://{url_host(host)}:{http_port}/v2/health/ready",
           ready_timeout, f"Triton gRPC {grpc_url}", "tritonserver")

