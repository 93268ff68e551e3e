"""Serving subcommands: triton-repo and serve."""

from __future__ import annotations

import json
import signal
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hunyuan_trtllm.cli.app import cli, console, print_json, print_table
from hunyuan_trtllm.errors import UserError

if TYPE_CHECKING:
    from hunyuan_trtllm.serve.http_safety import ServerLimits

FLAVOR_HELP = "engine: TensorRT-LLM 1.2.1 engines; llmapi: PyTorch backend (HF checkpoint); reference: CPU emulation"


def _kind(path: Path) -> str:
    """'engine', 'checkpoint' (converted TensorRT-LLM checkpoint) or 'hf' (Hugging Face model)."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise UserError(f"{path}: no readable config.json (expected engines, a converted checkpoint or an HF model)") \
            from None
    if "build_config" in config:
        return "engine"
    return "checkpoint" if "mapping" in config and "architecture" in config else "hf"


@cli.command("triton-repo")
@click.argument("source", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Repository to write.")
@click.option("--flavor", type=click.Choice(["auto", "engine", "llmapi", "reference"]), default="auto",
              show_default=True, help=FLAVOR_HELP + "; auto picks from SOURCE.")
@click.option("--tokenizer", type=click.Path(path_type=Path), default=None,
              help="Hugging Face model dir with the tokenizer (default: the engine/checkpoint's own record).")
@click.option("--max-batch-size", type=int, default=None, help="Default: the engine's (engine flavor).")
@click.option("--streaming/--no-streaming", default=True, show_default=True, help="Decoupled streaming models.")
@click.option("--tp", default=1, show_default=True, help="llmapi: tensor_parallel_size.")
@click.option("--ep", default=1, show_default=True, help="llmapi: moe_expert_parallel_size.")
@click.option("--trust-remote-code", is_flag=True,
              help="llmapi: let TensorRT-LLM execute the checkpoint's own Python code (e.g. its tokenizer class).")
@click.option("--overwrite", is_flag=True, help="Replace an existing repository.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for programs.")
def triton_repo(source: Path, out: Path, flavor: str, tokenizer: Path | None, max_batch_size: int | None,
                streaming: bool, tp: int, ep: int, trust_remote_code: bool, overwrite: bool, as_json: bool) -> None:
    """Write a Triton model repository for SOURCE; every config.pbtxt is validated against Triton's protobuf.

    \b
    Examples:
      hunyuan-trtllm triton-repo engines/ -o repo --tokenizer ./Hunyuan-A13B-Instruct       # engine flavor
      hunyuan-trtllm triton-repo ./Hunyuan-A13B-Instruct -o repo --tp 8 --ep 8             # llmapi flavor
      hunyuan-trtllm triton-repo ckpt/ -o repo --flavor reference                          # CPU reference
    """
    from hunyuan_trtllm.checkpoints.provenance import default_tokenizer_dir
    from hunyuan_trtllm.serve.repository import RepoOptions, write_triton_repo

    kind = _kind(source)
    if flavor == "auto":
        flavor = {"engine": "engine", "checkpoint": "reference", "hf": "llmapi"}[kind]
    if flavor in ("engine", "reference") and tokenizer is None:
        tokenizer = source / "tokenizer" if (source / "tokenizer").is_dir() else None
        tokenizer = tokenizer or (default_tokenizer_dir(source) if kind == "checkpoint" else source)
    options = RepoOptions(tokenizer_dir=tokenizer, tp=tp, ep=ep, trust_remote_code=trust_remote_code)
    repo = write_triton_repo(source, out, flavor, max_batch_size, streaming, options, overwrite)
    meta = json.loads((repo / "repo.json").read_text())
    models = sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file())
    if as_json:
        print_json({"repository": str(repo), "models": models, **meta})
        return
    print_table(f"Triton repository {repo}", [("flavor", flavor), ("models", ", ".join(models)),
                                              ("world size", meta.get("world_size")), ("streaming", streaming),
                                              ("validated", "every config.pbtxt parses as Triton's ModelConfig")])


@cli.command()
@click.argument("source", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--with", "runner", type=click.Choice(["trtllm-serve", "triton"]), default="trtllm-serve",
              show_default=True, help="The server to run (on a GPU host / NVIDIA image).")
@click.option("--dry-run", is_flag=True,
              help="Serve on this CPU: the reference flavor in the Triton bundled with nvidia-pytriton.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address every server started binds to (the OpenAI endpoint; with --with triton, Triton's HTTP, "
                   "gRPC and metrics ports).")
@click.option("--port", default=8000, show_default=True, help="Port of the OpenAI endpoint.")
@click.option("--model-name", default=None, help="Model id in /v1/models (default: the directory name).")
@click.option("--tokenizer", type=click.Path(path_type=Path), default=None, help="HF model dir with the tokenizer.")
@click.option("--tp", default=1, show_default=True, help="Tensor parallel size (PyTorch backend).")
@click.option("--ep", default=1, show_default=True, help="Expert parallel size (PyTorch backend).")
@click.option("--pp", default=1, show_default=True, help="Pipeline parallel size (PyTorch backend).")
@click.option("--max-batch-size", default=64, show_default=True)
@click.option("--max-num-tokens", default=8192, show_default=True)
@click.option("--max-seq-len", type=int, default=None, help="Default: the model's.")
@click.option("--kv-cache-dtype", type=click.Choice(["auto", "fp8"]), default="auto", show_default=True)
@click.option("--attention-dp", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True)
@click.option("--trust-remote-code", is_flag=True,
              help="Let TensorRT-LLM execute the checkpoint's own Python code (e.g. its tokenizer class).")
@click.option("--triton-port", default=8001, show_default=True,
              help="--with triton: Triton's HTTP port (gRPC, metrics: the next two); OpenAI: --port.")
@click.option("--triton-grpc", default=None, metavar="HOST:PORT",
              help="--with triton: front a Triton that is already running (e.g. a multi-node rank 0) instead of "
                   "starting one.")
@click.option("--trtllm-port", default=8001, show_default=True,
              help="--with trtllm-serve: the port trtllm-serve listens on, on 127.0.0.1 (the OpenAI endpoint on "
                   "--port fronts it).")
@click.option("--trtllm-url", default=None, metavar="URL",
              help="--with trtllm-serve: front a trtllm-serve that is already running (e.g. a multi-node rank 0, "
                   "http://127.0.0.1:8001) instead of starting one.")
@click.option("--guided-decoding/--no-guided-decoding", default=True, show_default=True,
              help="--with trtllm-serve: run TensorRT-LLM's xgrammar guided decoding (response_format, forced tool "
                   "calls); without it those fields get a 400.")
@click.option("--ready-timeout", default=1800.0, show_default=True, help="Seconds to wait for the server.")
@click.option("--max-request-mb", default=32.0, show_default=True,
              help="OpenAI endpoint: larger request bodies get a 413.")
@click.option("--template-timeout", default=5.0, show_default=True,
              help="OpenAI endpoint: seconds the chat template may take to render a prompt.")
def serve(source: Path, runner: str, dry_run: bool, host: str, port: int, model_name: str | None,
          tokenizer: Path | None, tp: int, ep: int, pp: int, max_batch_size: int, max_num_tokens: int,
          max_seq_len: int | None, kv_cache_dtype: str, attention_dp: str, trust_remote_code: bool,
          triton_port: int, triton_grpc: str | None, trtllm_port: int, trtllm_url: str | None,
          guided_decoding: bool, ready_timeout: float, max_request_mb: float, template_timeout: float) -> None:
    """Serve SOURCE (engines, a converted checkpoint or an HF model) behind an OpenAI-compatible endpoint.

    \b
    Examples:
      hunyuan-trtllm serve ./Hunyuan-A13B-Instruct --tp 8 --ep 8            # trtllm-serve, PyTorch backend
      hunyuan-trtllm serve engines/ --with trtllm-serve                     # TensorRT backend (1.2.1)
      hunyuan-trtllm serve engines/ --trtllm-url http://127.0.0.1:8001      # front a running trtllm-serve
      hunyuan-trtllm serve engines/ --with triton --tokenizer ./Hunyuan-A13B-Instruct   # OpenAI on :8000
      hunyuan-trtllm serve ./Hunyuan-A13B-Instruct --with triton --tp 8 --ep 8   # llmapi model, OpenAI on :8000
      hunyuan-trtllm serve ckpt/ --dry-run --port 8000                      # CPU, real Triton, no GPU
    """
    from hunyuan_trtllm.serve.http_safety import ServerLimits
    from hunyuan_trtllm.serve.launch import check_listen
    from hunyuan_trtllm.serve.trtllm_serve import ServeOptions

    if trtllm_url is not None and (dry_run or runner != "trtllm-serve"):
        raise UserError("--trtllm-url fronts a running trtllm-serve: use it with --with trtllm-serve")
    if triton_grpc is not None and (dry_run or runner != "triton"):
        raise UserError("--triton-grpc fronts a running Triton: use it with --with triton")
    if dry_run or (runner == "triton" and triton_grpc is not None):  # no server of ours behind the endpoint
        check_listen(host, [port])
    elif runner == "triton":
        check_listen(host, [port, *(triton_port + i for i in range(3))])
    else:
        check_listen(host, [port])
        if trtllm_url is None:
            check_listen("127.0.0.1", [trtllm_port])
    if max_request_mb <= 0 or template_timeout <= 0:
        raise UserError("--max-request-mb and --template-timeout must be positive")
    limits = ServerLimits(max_body_bytes=int(max_request_mb * 2**20), template_timeout_s=template_timeout)
    signal.signal(signal.SIGTERM, _interrupt)  # `docker stop` / Kubernetes: shut down like Ctrl-C, cleaning up
    name = model_name or source.resolve().name
    if dry_run:
        _dry_run(source, tokenizer, host, port, name, max_seq_len, limits)
        return
    if runner == "trtllm-serve":
        from hunyuan_trtllm.serve.launch import run_trtllm_serve

        options = ServeOptions(host=host, port=port, tp=tp, ep=ep, pp=pp, max_batch_size=max_batch_size,
                               max_num_tokens=max_num_tokens, max_seq_len=max_seq_len,
                               kv_cache_dtype=kv_cache_dtype, attention_dp=attention_dp,
                               trust_remote_code=trust_remote_code, guided_decoding=guided_decoding)
        kind = _kind(source)
        own = source / "tokenizer" if kind == "engine" and (source / "tokenizer").is_dir() else source
        with tempfile.TemporaryDirectory(prefix="hunyuan-trtllm-serve-") as work:
            run_trtllm_serve(source, options, Path(work), ready_timeout, tokenizer or own, name, trtllm_port,
                             trtllm_url, limits)
        return
    from hunyuan_trtllm.serve.launch import run_triton_with_endpoint
    from hunyuan_trtllm.serve.repository import RepoOptions, write_triton_repo

    kind = _kind(source)
    if kind == "checkpoint":
        raise UserError(f"{source}: a converted checkpoint; build engines first, or use --dry-run to serve it on CPU")
    flavor = "engine" if kind == "engine" else "llmapi"
    with tempfile.TemporaryDirectory(prefix="hunyuan-triton-") as work:
        options = RepoOptions(tokenizer_dir=tokenizer or source, tp=tp, ep=ep, pp=pp, max_seq_len=max_seq_len,
                              trust_remote_code=trust_remote_code)
        repo = write_triton_repo(source, Path(work) / "repo", flavor, options=options)
        # the Hunyuan-aware OpenAI endpoint in front of Triton's tensorrt_llm (gRPC, token ids on both flavors)
        own = source / "tokenizer" if (source / "tokenizer").is_dir() else source
        run_triton_with_endpoint(repo, tokenizer or own, host, port, name, ready_timeout, triton_port, triton_grpc,
                                 limits)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _dry_run(source: Path, tokenizer: Path | None, host: str, port: int, name: str, max_seq_len: int | None,
             limits: ServerLimits) -> None:
    from hunyuan_trtllm.checkpoints.provenance import default_tokenizer_dir
    from hunyuan_trtllm.serve.launch import reference_stack

    kind = _kind(source)
    if kind == "engine":
        raise UserError(f"{source}: engines need a GPU; --dry-run serves a converted checkpoint or an HF model")
    with tempfile.TemporaryDirectory(prefix="hunyuan-dry-run-") as work:
        ckpt = source
        if kind == "hf":
            from hunyuan_trtllm.checkpoints.convert import convert
            from hunyuan_trtllm.checkpoints.mapping import Mapping

            console.print(f"converting {source} for the CPU reference (tp 1)")
            ckpt = convert(source, Path(work) / "ckpt", Mapping()).out_dir
            tokenizer = tokenizer or source
        tokenizer = tokenizer or default_tokenizer_dir(ckpt)
        console.print("starting Triton (nvidia-pytriton's bundled server, CPU, reference flavor) ...")
        with reference_stack(ckpt, tokenizer, host, port, name, max_seq_len=max_seq_len, limits=limits) as endpoint:
            console.print(f"[green]ready[/] OpenAI endpoint: {endpoint.url}/v1 (model '{name}'); "
                          f"Triton: {endpoint.triton_url}  (Ctrl-C to stop)")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                console.print("stopping ...")
