"""Deployments from a plan: what runs in the containers, where the files live, and how the output is written.

A plan (``hunyuan-trtllm plan ... --json``, :mod:`hunyuan_trtllm.builder.planner`) is reduced to a
:class:`DeploySpec`: the recommended layout (tp, pp, MoE EP, nodes), dtype, KV-cache dtype and sequence length,
plus the user's deployment options. :mod:`hunyuan_trtllm.deploy.compose` and :mod:`hunyuan_trtllm.deploy.kubernetes`
turn it into files. Every container runs this project's own commands, in this order:

1. ``hunyuan-trtllm deploy fetch MODEL --link /cache/models/NAME`` (a Hugging Face repo id into the HF cache);
2. ``hunyuan-trtllm convert`` into ``/engines/NAME/LAYOUT/ckpt`` (skipped once its ``config.json`` exists);
3. ``hunyuan-trtllm build`` into ``/engines/NAME/LAYOUT/engine-...`` (likewise);
4. ``hunyuan-trtllm serve ENGINE --with triton|trtllm-serve`` on one node, or on several nodes an MPI world of
   tp x pp ranks started by the leader (:mod:`hunyuan_trtllm.deploy.mpi_launch`).

Ports: 8000 is the OpenAI API on both backends: our Hunyuan-aware endpoint (reasoning and tool-call parsing, the
model's chat template; its ``/health`` answers 200 only once the model is ready, its ``/metrics`` has the request
metrics) in front of Triton, whose own HTTP, gRPC and metrics ports are 8001-8003, or in front of trtllm-serve,
which listens on the container's loopback (8001) only.

The directories carry the layout in their names, so changing the plan never reuses a stale checkpoint or engine.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hunyuan_trtllm import __version__
from hunyuan_trtllm.checkpoints.output_dir import check_not_an_input, check_replaceable
from hunyuan_trtllm.checkpoints.safetensors_io import atomic_output_dir
from hunyuan_trtllm.errors import UserError

CACHE_DIR = "/cache"  # volume: the Hugging Face cache (HF_HOME) and the model links
HF_HOME = f"{CACHE_DIR}/huggingface"
MODELS_DIR = f"{CACHE_DIR}/models"
HOST_MODELS_DIR = "/models"  # compose: a host model directory, mounted read-only
ENGINES_DIR = "/engines"  # volume: converted checkpoints, engines, generated Triton repositories
HTTP_PORT = 8000  # the OpenAI endpoint: ours, in front of Triton or of trtllm-serve
TRITON_HTTP_PORT, GRPC_PORT, METRICS_PORT = 8001, 8002, 8003  # Triton behind the endpoint
TRTLLM_SERVE_PORT = 8001  # trtllm-serve behind the endpoint, on the container's loopback only
BACKENDS = ("triton", "trtllm-serve")
FP8_SCALES = ("auto", "source", "calibrate")
MAX_DEFAULT_BATCH = 256
# Weights for a plan made from a preset: Tencent's releases (Hunyuan-Large's repo holds several models).
PRESET_MODELS: dict[str, dict[str, str]] = {
    "hunyuan-a13b": {"bf16": "tencent/Hunyuan-A13B-Instruct", "fp8": "tencent/Hunyuan-A13B-Instruct-FP8"},
    "hunyuan-7b": {"bf16": "tencent/Hunyuan-7B-Instruct", "fp8": "tencent/Hunyuan-7B-Instruct-FP8"},
    "hy3": {"bf16": "tencent/Hy3", "fp8": "tencent/Hy3-FP8"},
    "hy3-fp8": {"bf16": "tencent/Hy3", "fp8": "tencent/Hy3-FP8"},
}


@dataclass(frozen=True)
class DeployOptions:
    """What the user chooses beyond the plan (None: derive it from the plan)."""

    model: str | None = None  # HF repo id; compose: or a host directory; k8s: or a path under /cache
    name: str | None = None  # DNS-1123 name of the deployment (default: from the model name)
    backend: str = "triton"  # triton | trtllm-serve
    build_image: str = f"hunyuan-trtllm-build:{__version__}"
    serve_image: str = f"hunyuan-trtllm-serve:{__version__}"
    max_batch_size: int | None = None  # default: the plan's concurrent full-length sequences, at most 256
    max_num_tokens: int = 8192
    fp8_scales: str = "auto"  # auto: from an FP8 source (name contains "fp8"), else calibrate on the GPU
    startup_timeout_s: int = 3600  # engine load before the server answers
    workers: int | None = None  # convert/build worker processes (default: the GPUs of one node)


@dataclass(frozen=True)
class DeploySpec:
    """One deployment: the plan's layout, the model's location and the options, validated."""

    name: str
    model: str
    architecture: str
    total_params: int
    gpu_name: str
    dtype: str  # bf16 | fp8
    kv_cache_fp8: bool
    max_seq_len: int
    tp: int
    pp: int
    ep: int
    nodes: int
    gpus_per_node: int  # GPUs each container / pod gets
    max_batch_size: int
    options: DeployOptions

    @property
    def world_size(self) -> int:
        return self.tp * self.pp

    @property
    def layout_dir(self) -> str:
        kv = "-kvfp8" if self.kv_cache_fp8 else ""
        return f"{ENGINES_DIR}/{self.name}/{self.dtype}{kv}-tp{self.tp}-ep{self.ep}-pp{self.pp}"

    @property
    def ckpt_dir(self) -> str:
        return f"{self.layout_dir}/ckpt"

    @property
    def engine_dir(self) -> str:
        o = self.options
        return f"{self.layout_dir}/engine-seq{self.max_seq_len}-batch{self.max_batch_size}-tok{o.max_num_tokens}"

    @property
    def model_dir(self) -> str:
        """Where the containers read the Hugging Face files: the fetched repo's link, a path already on the cache
        volume, or (compose) the host directory bind-mounted under /models."""
        if is_repo_id(self.model):
            return f"{MODELS_DIR}/{self.name}"
        return self.model if self.model.startswith(f"{CACHE_DIR}/") else f"{HOST_MODELS_DIR}/{self.name}"

    @property
    def calibrate(self) -> bool:
        """FP8 scales by calibration (built-in set, on the GPU) rather than from an FP8 source."""
        if self.dtype != "fp8" or self.options.fp8_scales == "source":
            return False
        return self.options.fp8_scales == "calibrate" or "fp8" not in self.model.lower()

    @property
    def workers(self) -> int:
        return self.options.workers or min(self.gpus_per_node, self.world_size)


def load_plan(path: Path) -> dict[str, Any]:
    """A plan JSON file as a dict; a one-line error naming the file otherwise."""
    try:
        plan = json.loads(path.read_text())
    except OSError as exc:
        raise UserError(f"{path}: cannot read the plan ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a plan JSON file ({exc})") from None
    if not isinstance(plan, dict):
        raise UserError(f"{path}: not a plan JSON file (expected an object, as `hunyuan-trtllm plan --json` writes)")
    return plan


def _field(data: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    """``data[key]`` (dotted for nested), checked for type; errors name the key and ``where``."""
    value: Any = data
    for i, part in enumerate(key.split(".")):
        if not isinstance(value, dict) or part not in value:
            raise UserError(f"{where}: missing key '{'.'.join(key.split('.')[:i + 1])}'")
        value = value[part]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise UserError(f"{where}: key '{key}' has the wrong type ({type(value).__name__})")
    return value


def _positive(data: dict[str, Any], key: str, where: str) -> int:
    value = _field(data, key, where, int)
    if value < 1:
        raise UserError(f"{where}: key '{key}' must be at least 1 (got {value})")
    return value


def _no_fit_reason(plan: dict[str, Any]) -> str:
    """Why no layout fits, from the layouts' own reasons."""
    layouts = plan.get("layouts") if isinstance(plan.get("layouts"), list) else []
    reasons = list(dict.fromkeys(str(lay["reason"]) for lay in layouts if isinstance(lay, dict) and lay.get("reason")))
    return "; ".join(reasons[:3]) or "no layout fits"


def dns_name(text: str, where: str) -> str:
    """A DNS-1123 label (lower-case alphanumerics and '-', at most 40 characters, room for pod suffixes)."""
    name = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-")
    if not name:
        raise UserError(f"{where}: '{text}' gives no usable name; pass --name")
    return name


def _model(plan: dict[str, Any], options: DeployOptions, dtype: str, where: str) -> str:
    """The weights to deploy: --model, else the plan's MODEL, else the preset's Tencent release."""
    if options.model:
        return options.model
    source = _field(plan, "source", where, str)
    if not source.startswith("preset:"):
        return source
    preset = source.removeprefix("preset:")
    if preset not in PRESET_MODELS:
        raise UserError(f"{where}: the plan is for preset '{preset}', which names no single checkpoint; pass --model "
                        "(a Hugging Face repo id, or a model directory)")
    return PRESET_MODELS[preset][dtype]


def deploy_spec(plan: dict[str, Any], where: str, options: DeployOptions) -> DeploySpec:
    """Validate ``plan`` (from ``where``: a file name or "the plan flags") and combine it with ``options``."""
    if options.backend not in BACKENDS:
        raise UserError(f"--backend must be one of {', '.join(BACKENDS)}")
    if options.fp8_scales not in FP8_SCALES:
        raise UserError(f"--fp8-scales must be one of {', '.join(FP8_SCALES)}")
    if "recommended" not in plan:
        raise UserError(f"{where}: missing key 'recommended'")
    if plan["recommended"] is None:
        raise UserError(f"{where}: the plan does not fit: {_no_fit_reason(plan)}")
    dtype = _field(plan, "dtype", where, str)
    if dtype not in ("bf16", "fp8"):
        raise UserError(f"{where}: key 'dtype' must be bf16 or fp8 (got {dtype!r})")
    kv = _field(plan, "kv_cache_dtype", where, (str, type(None)))
    if kv == "fp8" and dtype != "fp8":
        raise UserError(f"{where}: an FP8 KV cache needs FP8 weights here (convert writes KV scales with --dtype fp8)")
    rec = "recommended"
    tp, pp, ep, moe_tp = (_positive(plan, f"{rec}.{k}", where) for k in ("tp", "pp", "moe_ep", "moe_tp"))
    if ep * moe_tp != tp:
        raise UserError(f"{where}: recommended moe_ep {ep} x moe_tp {moe_tp} != tp {tp}")
    nodes = _positive(plan, f"{rec}.nodes", where)
    if (tp * pp) % nodes:
        raise UserError(f"{where}: world size {tp * pp} does not split evenly over {nodes} nodes")
    per_node = tp * pp // nodes
    if per_node > _positive(plan, "gpus_per_node", where):
        raise UserError(f"{where}: {per_node} ranks per node exceed gpus_per_node {plan['gpus_per_node']}")
    concurrent = _field(plan, f"{rec}.max_concurrent_sequences", where, int)
    batch = min(max(concurrent, 1), MAX_DEFAULT_BATCH) if options.max_batch_size is None else options.max_batch_size
    if batch < 1 or options.max_num_tokens < 1:
        raise UserError("--max-batch-size and --max-num-tokens must be at least 1")
    model = _model(plan, options, dtype, where)
    return DeploySpec(
        name=dns_name(options.name or Path(model).name, "--name" if options.name else "the model name"),
        model=model, architecture=_field(plan, "model.architecture", where, str),
        total_params=_positive(plan, "model.total_params", where), gpu_name=_field(plan, "gpu.name", where, str),
        dtype=dtype, kv_cache_fp8=kv == "fp8", max_seq_len=_positive(plan, "max_seq_len", where),
        tp=tp, pp=pp, ep=ep, nodes=nodes, gpus_per_node=per_node, max_batch_size=batch, options=options,
    )


def is_repo_id(model: str) -> bool:
    """A Hugging Face repo id (owner/name) rather than a path."""
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", model)) and not model.startswith(".")


def fetch_command(spec: DeploySpec) -> list[str]:
    """Download a repo id into the HF cache and link it at :attr:`DeploySpec.model_dir`."""
    return ["hunyuan-trtllm", "deploy", "fetch", spec.model, "--link", spec.model_dir]


def convert_command(spec: DeploySpec) -> list[str]:
    command = ["hunyuan-trtllm", "convert", spec.model_dir, "-o", spec.ckpt_dir, "--tp", str(spec.tp),
               "--ep", str(spec.ep), "--pp", str(spec.pp), "--workers", str(spec.workers), "--quiet"]
    if spec.dtype == "bf16":
        return command + ["--dtype", "bfloat16"]
    command += ["--dtype", "fp8"] + (["--kv-cache-dtype", "fp8"] if spec.kv_cache_fp8 else [])
    return command + (["--calib-builtin", "--calib-device", "cuda"] if spec.calibrate else [])


def build_command(spec: DeploySpec) -> list[str]:
    return ["hunyuan-trtllm", "build", spec.ckpt_dir, "-o", spec.engine_dir, "--max-seq-len", str(spec.max_seq_len),
            "--max-batch-size", str(spec.max_batch_size), "--max-num-tokens", str(spec.options.max_num_tokens),
            "--workers", str(spec.workers), "--timing-cache", f"{ENGINES_DIR}/{spec.name}/timing.cache", "--quiet"]


def unless_done(output_dir: str, command: list[str]) -> list[str]:
    """Run ``command`` unless ``output_dir/config.json`` exists (written last: the step finished before)."""
    return ["/bin/sh", "-c", f"test -f {shlex.quote(output_dir + '/config.json')} || exec {shlex.join(command)}"]


def serve_command(spec: DeploySpec) -> list[str]:
    """The single-node server: ``hunyuan-trtllm serve`` on the engines, the OpenAI endpoint on 8000 listening on
    every interface of the container, in front of Triton's HTTP/gRPC/metrics on 8001-8003 or of trtllm-serve on
    the container's 127.0.0.1:8001.

    ``build`` copies the tokenizer into ``ENGINE/tokenizer``, where trtllm-serve looks for it."""
    engine, timeout = spec.engine_dir, str(spec.options.startup_timeout_s)
    if spec.options.backend == "triton":
        return ["hunyuan-trtllm", "serve", engine, "--with", "triton", "--tokenizer", f"{engine}/tokenizer",
                "--host", "0.0.0.0", "--port", str(HTTP_PORT), "--triton-port", str(TRITON_HTTP_PORT),
                "--ready-timeout", timeout]
    return ["hunyuan-trtllm", "serve", engine, "--with", "trtllm-serve", "--tokenizer", f"{engine}/tokenizer",
            "--host", "0.0.0.0", "--port", str(HTTP_PORT), "--trtllm-port", str(TRTLLM_SERVE_PORT),
            "--ready-timeout", timeout]


def serve_environment(spec: DeploySpec) -> dict[str, str]:
    """Environment of the serving container (single node)."""
    env = {"HF_HOME": HF_HOME}
    if spec.options.backend == "triton" and spec.world_size > 1:
        # One tritonserver spawns the tp x pp executor workers itself (the repository names the worker binary).
        env["TRTLLM_ORCHESTRATOR"] = "1"
    return env


def health_path(spec: DeploySpec) -> str:
    """Readiness URL path on :data:`HTTP_PORT`: the OpenAI endpoint's /health (ours waits for Triton's model)."""
    return "/health"


def storage_bytes(spec: DeploySpec) -> int:
    """Disk for the source weights, the converted checkpoint and the engines, with 20% headroom."""
    source = spec.total_params * (1 if spec.dtype == "fp8" and not spec.calibrate else 2)
    converted = spec.total_params * (1 if spec.dtype == "fp8" else 2)
    return math.ceil((source + 2 * converted) * 1.2)


def link_model(model: str, link: Path) -> Path:
    """Resolve ``model`` (a repo id is downloaded into the HF cache) and point the symlink ``link`` at it,
    replacing a previous link atomically; returns the model directory."""
    from hunyuan_trtllm.checkpoints.source import resolve_model

    target = resolve_model(model).resolve()
    if link.exists() and not link.is_symlink():
        raise UserError(f"--link {link}: exists and is not a symlink")
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.link-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    return target


class _Dumper(yaml.SafeDumper):
    """Plain YAML for people: no anchors/aliases, multi-line strings (scripts) as literal blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)


_Dumper.add_representer(str, _str)


def dump_yaml(documents: Iterable[Any]) -> str:
    """YAML text of one or more documents (``---`` between them), keys in the order written."""
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, width=120)


GENERATED_HEADERS = ("# Generated by hunyuan-trtllm", "# Read by compose.yaml")


def _is_our_deployment(path: Path) -> bool:
    """Every entry is a file this tool generated (each starts with our header line)."""
    try:
        return all(p.is_file() and p.read_text(errors="replace").startswith(GENERATED_HEADERS)
                   for p in path.iterdir())
    except OSError:
        return False


def write_output_dir(out: Path, files: dict[str, str], overwrite: bool, inputs: Iterable[Path | None] = ()) -> Path:
    """Write ``files`` (name -> text) as the directory ``out``, atomically; --overwrite replaces a previous one
    (only a deployment this tool generated, never one holding an input such as the plan file)."""
    out = out.expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out}: exists and is not a directory")
    check_not_an_input(out, inputs, overwrite)
    old = None
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"-o {out}: exists and is not empty; pass --overwrite to replace it")
        check_replaceable(out, _is_our_deployment, "a deployment (generated compose or Kubernetes files)")
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_output_dir(out, "deploy") as tmp:
            for name, text in files.items():
                (tmp / name).write_text(text)
    except BaseException:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old)
    return out
