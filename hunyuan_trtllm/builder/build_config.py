"""The engine limits and TensorRT-LLM 1.2.1's ``BuildConfig`` as a plain dict (the fields ``trtllm-build`` sets).

What is chosen, and why (TensorRT-LLM 1.2.x ``builder.py`` / ``plugin/plugin.py``; shared/reference/trtllm.md §3):

- ``gpt_attention_plugin`` = the model dtype: paged KV cache and in-flight batching need it;
- ``gemm_plugin`` ``auto`` (the model dtype), ``fp8`` for FP8 checkpoints (their calibrated per-tensor scales);
- ``moe_plugin`` = the model dtype: without it TensorRT-LLM falls back to a slow per-expert graph;
- ``context_fmha``, ``use_paged_context_fmha`` (KV-cache reuse, chunked context), ``remove_input_padding``,
  ``paged_kv_cache`` with ``kv_cache_type`` PAGED, 32 tokens per block; float32 checkpoints (tests) get no context
  FMHA, whose kernels are fp16 / bf16 / fp8 only;
- ``use_fp8_context_fmha`` for FP8 checkpoints only (TensorRT-LLM uses it with an FP8 KV cache);
- ``strongly_typed`` (TensorRT-LLM forces it for FP8 anyway).

Limits: explicit values are checked and refused with the flag named; defaults are capped to what the model
allows. ``max_seq_len`` may not exceed the model's context: ``max_position_embeddings``, except Hunyuan-A13B, whose
config says 32768 but which is trained and released for 256K (262144) tokens with its static NTK-alpha RoPE.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hunyuan_trtllm.checkpoints.spec import MOE_V1, ModelSpec
from hunyuan_trtllm.errors import UserError

if TYPE_CHECKING:  # torch and the weight plan load only when a build runs
    from hunyuan_trtllm.builder.checkpoint import BuildModel

A13B_CONTEXT = 262144  # Hunyuan-A13B's advertised context (shared/reference/hunyuan.md: config.json says 32768)
DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_INPUT_LEN = 8192
DEFAULT_MAX_SEQ_LEN = 32768
DEFAULT_MAX_NUM_TOKENS = 8192
TOKENS_PER_BLOCK = 32


@dataclass(frozen=True)
class BuildLimits:
    """The engine's shape limits (``max_beam_width`` is 1: Hunyuan is served with sampling or greedy decoding)."""

    max_batch_size: int
    max_input_len: int
    max_seq_len: int
    max_num_tokens: int
    max_beam_width: int = 1

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def context_limit(spec: ModelSpec) -> int:
    """The longest sequence the model is made for (see the module docstring for A13B)."""
    if spec.architecture == MOE_V1:
        return max(spec.max_position_embeddings, A13B_CONTEXT)
    return spec.max_position_embeddings


def resolve_limits(spec: ModelSpec, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, max_input_len: int | None = None,
                   max_seq_len: int | None = None, max_num_tokens: int | None = None) -> BuildLimits:
    """Check explicit limits (one-line error naming the flag); cap the defaults to the model and to each other."""
    for flag, value in (("--max-batch-size", max_batch_size), ("--max-input-len", max_input_len),
                        ("--max-seq-len", max_seq_len), ("--max-num-tokens", max_num_tokens)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be a positive integer, got {value}")
    limit = context_limit(spec)
    if max_seq_len is None:
        max_seq_len = min(DEFAULT_MAX_SEQ_LEN, limit)
    elif max_seq_len > limit:
        configured = f"max_position_embeddings {spec.max_position_embeddings}"
        why = configured if limit == spec.max_position_embeddings else f"Hunyuan-A13B with NTK-alpha RoPE; {configured}"
        raise UserError(f"--max-seq-len {max_seq_len} exceeds the model's context of {limit} tokens ({why})")
    if max_input_len is None:
        max_input_len = min(DEFAULT_MAX_INPUT_LEN, max_seq_len)
    elif max_input_len > max_seq_len:
        raise UserError(f"--max-input-len {max_input_len} exceeds --max-seq-len {max_seq_len} (a prompt must leave "
                        "room for at least its own tokens)")
    most_tokens = max_batch_size * max_seq_len
    if max_num_tokens is None:
        max_num_tokens = min(DEFAULT_MAX_NUM_TOKENS, most_tokens)
    elif max_num_tokens > most_tokens:
        raise UserError(f"--max-num-tokens {max_num_tokens} exceeds --max-batch-size x --max-seq-len = {most_tokens} "
                        "(no step can hold more tokens)")
    return BuildLimits(max_batch_size, max_input_len, max_seq_len, max_num_tokens)


def position_table(spec: ModelSpec, limits: BuildLimits) -> int:
    """Positions the engine's RoPE table covers (its ``max_position_embeddings``): the model's, or max_seq_len."""
    return max(spec.max_position_embeddings, limits.max_seq_len)


def plugin_config(model: BuildModel) -> dict[str, Any]:
    """``PluginConfig`` fields (TensorRT-LLM 1.2.1 names) for this model."""
    dtype = model.dtype_name
    fmha = model.dtype_name != "float32"
    return {
        "dtype": dtype,
        "gpt_attention_plugin": dtype,
        "gemm_plugin": "fp8" if model.fp8 else "auto",
        "moe_plugin": dtype,
        "context_fmha": fmha,
        "use_paged_context_fmha": fmha,
        "use_fp8_context_fmha": model.fp8,
        "remove_input_padding": True,
        "paged_kv_cache": True,
        "tokens_per_block": TOKENS_PER_BLOCK,
        "use_fused_mlp": True,
        "multiple_profiles": False,
    }


def build_config(model: BuildModel, limits: BuildLimits, timing_cache: Path | None, timing_cache_out: Path | None,
                 gather_context_logits: bool = False) -> dict[str, Any]:
    """The ``BuildConfig`` fields (``plugin_config`` nested) every rank is built with."""
    return {
        **limits.to_dict(),
        "opt_num_tokens": None,
        "max_prompt_embedding_table_size": 0,
        "kv_cache_type": "PAGED",
        "gather_context_logits": gather_context_logits,
        "gather_generation_logits": False,
        "strongly_typed": True,
        "profiling_verbosity": "layer_names_only",
        "use_refit": False,
        "use_strip_plan": False,
        "weight_sparsity": False,
        "weight_streaming": False,
        "input_timing_cache": str(timing_cache) if timing_cache else None,
        "output_timing_cache": str(timing_cache_out) if timing_cache_out else None,
        "plugin_config": plugin_config(model),
    }
