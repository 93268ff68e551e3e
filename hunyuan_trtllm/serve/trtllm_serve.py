"""trtllm-serve for Hunyuan: the ``--extra_llm_api_options`` YAML and the command line, for both back ends.

- An **engine directory** (``config.json`` with ``build_config`` + ``rank{N}.engine``, TensorRT-LLM 1.2.1) runs on
  the TensorRT backend; parallelism and the KV-cache dtype are fixed by the engines (TensorRT-LLM's ``TrtLlmArgs``
  requires ``kv_cache_config.dtype`` auto), the YAML only sizes the KV cache. trtllm-serve resolves the engine's
  architecture through ``MODEL_MAP`` in its own process and in its rank-0 MPI worker, so the command imports our
  registration package with ``--custom_module_dirs`` (:func:`hunyuan_trtllm.plugins.register_for_serving`).
- A **Hugging Face checkpoint** (BF16, or FP8 from ``hunyuan-trtllm quantize``) runs on the PyTorch backend,
  which implements ``HunYuanMoEV1ForCausalLM`` and ``HunYuanDenseV1ForCausalLM`` natively; tp/ep/pp are flags.
  Hunyuan-Large (``HunYuanForCausalLM``) runs there through our model, which trtllm-serve imports with
  ``--custom_module_dirs`` (:mod:`hunyuan_trtllm.plugins.pytorch`, TensorRT-LLM >= 1.2).

LlmArgs written (TensorRT-LLM 1.2.x field names): ``kv_cache_config`` (free GPU memory fraction, block reuse,
FP8 KV dtype), and for the PyTorch backend ``cuda_graph_config`` (padded graphs up to the max batch),
``moe_config.backend`` and ``enable_attention_dp``. Attention data parallelism pays for MoE models when tensor
parallelism exceeds the KV heads (each rank would hold a duplicate of a KV head) or in throughput mode (max batch
>= 128), where it removes the attention all-reduces; at low concurrency plain TP has lower latency.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hunyuan_trtllm.checkpoints.spec import DENSE_V1, HYV3, LARGE, MOE_V1, ModelSpec, load_config, parse_spec
from hunyuan_trtllm.errors import UserError

NATIVE_PYTORCH_ARCHITECTURES = (MOE_V1, DENSE_V1)
THROUGHPUT_BATCH = 128


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    tp: int = 1
    ep: int = 1
    pp: int = 1
    max_batch_size: int = 64
    max_num_tokens: int = 8192
    max_seq_len: int | None = None
    kv_cache_free_gpu_memory_fraction: float = 0.9
    kv_cache_dtype: str = "auto"  # auto | fp8
    enable_block_reuse: bool = True
    attention_dp: str = "auto"  # auto | on | off
    moe_backend: str = "CUTLASS"
    trust_remote_code: bool = False  # only when the user asks: lets TensorRT-LLM run the checkpoint's Python
    guided_decoding: bool = True  # xgrammar in TensorRT-LLM (response_format, forced tool calls)


@dataclass(frozen=True)
class ServeTarget:
    """What is being served and by which TensorRT-LLM backend."""

    path: Path
    backend: str  # "tensorrt" (engine dir) or "pytorch" (HF checkpoint)
    spec: ModelSpec | None  # None for an engine dir (its config has the build's own fields)
    engine_config: dict[str, Any] | None


def detect_target(path: Path) -> ServeTarget:
    """Tell an engine directory from a Hugging Face checkpoint; refuse a TensorRT-LLM checkpoint (build it first)."""
    config = load_config(path / "config.json")
    if "build_config" in config and "pretrained_config" in config:
        if not any(path.glob("rank*.engine")):
            raise UserError(f"{path}: config.json describes engines but there is no rank0.engine")
        return ServeTarget(path, "tensorrt", None, config)
    if "mapping" in config and "architecture" in config:
        raise UserError(
            f"{path}: a TensorRT-LLM checkpoint, not servable as is; build engines first "
            f"(hunyuan-trtllm build {path} -o ENGINES) or serve the Hugging Face checkpoint"
        )
    spec = parse_spec(config, str(path / "config.json"))
    return ServeTarget(path, "pytorch", spec, None)


def pytorch_plugin_dir(architecture: str = LARGE) -> Path:
    """The directory ``--custom_module_dirs`` imports for ``architecture`` (Hunyuan-Large or Hy3; alone in its
    parent, see its docstring)."""
    import hunyuan_trtllm.plugins.pytorch as plugin  # imports no TensorRT-LLM here

    if architecture == HYV3:
        return Path(plugin.__file__).parent / "custom_module_hy3" / "hy3_trtllm"
    return Path(plugin.__file__).parent / "custom_module" / "hunyuan_large_trtllm"


def engine_plugin_dir() -> Path:
    """The directory ``--custom_module_dirs`` imports for TensorRT engines (registers the Hunyuan classes)."""
    import hunyuan_trtllm.plugins as plugins  # imports no TensorRT-LLM here

    return Path(plugins.__file__).parent / "engine_module" / "hunyuan_engine_trtllm"


def attention_dp(spec: ModelSpec, options: ServeOptions) -> bool:
    if options.attention_dp != "auto":
        return options.attention_dp == "on"
    if not spec.is_moe or options.tp == 1:
        return False
    return options.tp > spec.num_kv_heads or options.max_batch_size >= THROUGHPUT_BATCH


def llm_api_options(target: ServeTarget, options: ServeOptions) -> dict[str, Any]:
    """The ``--extra_llm_api_options`` YAML content (a dict; dump it with yaml or json)."""
    kv_cache: dict[str, Any] = {
        "free_gpu_memory_fraction": options.kv_cache_free_gpu_memory_fraction,
        "enable_block_reuse": options.enable_block_reuse,
    }
    if options.kv_cache_dtype == "fp8" and target.backend == "pytorch":
        kv_cache["dtype"] = "fp8"
    if options.kv_cache_dtype == "fp8" and target.backend == "tensorrt":
        check_engine_kv_fp8(target)
    extra: dict[str, Any] = {"kv_cache_config": kv_cache}
    if options.guided_decoding:
        extra["guided_decoding_backend"] = "xgrammar"
    if target.backend == "pytorch":
        assert target.spec is not None
        if target.spec.architecture == LARGE and options.kv_cache_dtype == "fp8":
            raise UserError(f"{target.path}: FP8 KV cache is not supported for Hunyuan-Large's cross-layer attention "
                            "on the PyTorch backend; use --kv-cache-dtype auto")
        extra["cuda_graph_config"] = {"enable_padding": True, "max_batch_size": options.max_batch_size}
        if target.spec.is_moe:
            extra["moe_config"] = {"backend": options.moe_backend}
            extra["enable_attention_dp"] = attention_dp(target.spec, options)
    return extra


def serving_limits(target: ServeTarget, options: ServeOptions) -> tuple[int, int]:
    """(max_input_len, max_seq_len) of what trtllm-serve will run: the engines' build limits, or for the PyTorch
    backend ``--max-seq-len`` (default: the model's context) with prompts of at most ``--max-num-tokens`` (no
    chunked prefill) leaving room for one generated token."""
    if target.backend == "tensorrt":
        from hunyuan_trtllm.serve.repository import read_engine_facts  # it imports this module

        facts = read_engine_facts(target.path)
        return facts.max_input_len, facts.max_seq_len
    assert target.spec is not None
    max_seq_len = options.max_seq_len or target.spec.max_position_embeddings
    return min(max_seq_len - 1, options.max_num_tokens), max_seq_len


def check_engine_kv_fp8(target: ServeTarget) -> None:
    """An FP8 KV cache on the TensorRT backend is the engine's own (built in); refuse asking for one it lacks."""
    assert target.engine_config is not None
    quantization = (target.engine_config.get("pretrained_config") or {}).get("quantization") or {}
    if quantization.get("kv_cache_quant_algo") != "FP8":
        raise UserError(f"{target.path}: these engines were built without an FP8 KV cache; an engine's KV-cache dtype "
                        "is fixed at build time (convert with --kv-cache-dtype fp8 and build again, or serve with "
                        "--kv-cache-dtype auto)")


def trtllm_serve_command(target: ServeTarget, options: ServeOptions, extra_options_file: Path) -> list[str]:
    """The trtllm-serve command line for this target."""
    command = ["trtllm-serve", str(target.path), "--backend", target.backend,
               "--host", options.host, "--port", str(options.port),
               "--extra_llm_api_options", str(extra_options_file)]
    if target.backend == "tensorrt":
        tokenizer = target.path / "tokenizer"
        command += ["--tokenizer", str(tokenizer if tokenizer.is_dir() else target.path),
                    "--custom_module_dirs", str(engine_plugin_dir())]
        return command + (["--trust_remote_code"] if options.trust_remote_code else [])
    assert target.spec is not None
    if target.spec.architecture not in NATIVE_PYTORCH_ARCHITECTURES:  # Hunyuan-Large: our model, imported first
        command += ["--custom_module_dirs", str(pytorch_plugin_dir(target.spec.architecture))]
    command += ["--tp_size", str(options.tp), "--ep_size", str(options.ep), "--pp_size", str(options.pp),
                "--max_batch_size", str(options.max_batch_size), "--max_num_tokens", str(options.max_num_tokens)]
    if options.max_seq_len:
        command += ["--max_seq_len", str(options.max_seq_len)]
    if options.trust_remote_code:
        command.append("--trust_remote_code")
    return command


def write_llm_api_options(target: ServeTarget, options: ServeOptions, path: Path) -> Path:
    """Write the YAML file trtllm-serve reads with ``yaml.safe_load`` and return its path."""
    path.write_text(yaml.safe_dump(llm_api_options(target, options), sort_keys=False))
    return path
