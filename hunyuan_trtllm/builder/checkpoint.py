"""The model a build works on: a converted checkpoint read back into its spec, mapping, dtype and weight plan.

A converted checkpoint's ``config.json`` is what TensorRT-LLM's ``from_checkpoint`` reads, so it is the authority.
:func:`spec_from_trtllm_config` inverts :func:`hunyuan_trtllm.checkpoints.trtllm_config.trtllm_config`, and
:func:`open_checkpoint` checks the inversion by writing ``config.json`` again from what it read and comparing field
by field: a hand-edited or foreign ``config.json`` is refused with the field named. The tensors every rank file
must hold then come from :class:`~hunyuan_trtllm.checkpoints.weight_plan.WeightPlan` (FP8 included, through
:func:`~hunyuan_trtllm.checkpoints.fp8.fp8_plan`), never from a second copy of the layout rules.

:func:`model_from_config` gives the same object for a Hugging Face config and a layout that has not been converted
yet (``build --dry-run --from-config``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hunyuan_trtllm.checkpoints.fp8 import fp8_plan, linear_weight_names, quantization_config
from hunyuan_trtllm.checkpoints.fp8_scales import Fp8Scales
from hunyuan_trtllm.checkpoints.mapping import Mapping
from hunyuan_trtllm.checkpoints.spec import ENGINE_ARCHITECTURES, ModelSpec, load_config, parse_spec
from hunyuan_trtllm.checkpoints.trtllm_config import DTYPE_STRINGS, trtllm_config
from hunyuan_trtllm.checkpoints.weight_plan import WeightPlan
from hunyuan_trtllm.errors import ConfigError, UserError

TORCH_DTYPES = {name: dtype for dtype, name in DTYPE_STRINGS.items()}
IGNORED_FIELDS = ("hunyuan.converter",)  # the converter's version string: informational


@dataclass(frozen=True)
class BuildModel:
    """A model and parallel layout to build engines for, with the tensors each rank's file holds."""

    path: Path  # the checkpoint directory (or the Hugging Face config it was planned from)
    spec: ModelSpec
    mapping: Mapping
    dtype: torch.dtype  # activation / non-quantized weight dtype
    quantization: dict[str, Any]  # config.json's ``quantization`` section
    plan: WeightPlan
    converted: bool  # False: planned from a Hugging Face config, there are no rank files

    @property
    def dtype_name(self) -> str:
        return DTYPE_STRINGS[self.dtype]

    @property
    def fp8(self) -> bool:
        return self.quantization.get("quant_algo") == "FP8"

    @property
    def kv_cache_fp8(self) -> bool:
        return self.quantization.get("kv_cache_quant_algo") == "FP8"


def spec_from_trtllm_config(cfg: dict[str, Any], where: str) -> ModelSpec:
    """The :class:`ModelSpec` a converted checkpoint's config.json was written from (the shapes that matter)."""

    def need(key: str, section: dict[str, Any] = cfg, prefix: str = "") -> Any:
        if section.get(key) is None:
            raise ConfigError(f"{where}: field '{prefix}{key}' is missing (not written by hunyuan-trtllm convert)")
        return section[key]

    architecture = need("architecture")
    if architecture not in ENGINE_ARCHITECTURES:
        raise ConfigError(f"{where}: architecture '{architecture}' is not a Hunyuan model this tool builds "
                          f"({', '.join(ENGINE_ARCHITECTURES)})")
    moe, hunyuan = need("moe"), need("hunyuan")
    num_experts = int(need("num_experts", moe, "moe."))
    width = int(need("intermediate_size"))
    shared = int(moe.get("shared_expert_intermediate_size") or 0) if num_experts > 1 else 0
    routing = hunyuan.get("routing") or {}
    layer_types = hunyuan.get("mlp_layer_types") or []
    first_dense = next((i for i, kind in enumerate(layer_types) if kind != "dense"), 0) if num_experts > 1 else 0
    dense_width = int(hunyuan.get("dense_intermediate_size") or 0)
    return ModelSpec(
        architecture=architecture,
        vocab_size=int(need("vocab_size")),
        hidden_size=int(need("hidden_size")),
        num_layers=int(need("num_hidden_layers")),
        num_heads=int(need("num_attention_heads")),
        num_kv_heads=int(need("num_key_value_heads")),
        head_dim=int(need("head_size")),
        intermediate_size=dense_width if first_dense else (shared or width) if num_experts > 1 else width,
        num_experts=num_experts if num_experts > 1 else 0,
        top_k=int(moe.get("top_k") or 0) if num_experts > 1 else 0,
        expert_intermediate_size=width if num_experts > 1 else 0,
        shared_intermediate_size=shared,
        rms_norm_eps=float(need("norm_epsilon")),
        rope_theta=float(need("rope_theta", hunyuan, "hunyuan.")),
        rope_alpha=float(need("rope_alpha", hunyuan, "hunyuan.")),
        use_qk_norm=bool(cfg.get("qk_layernorm", False)),
        cla_share_factor=int(cfg.get("cla_share_factor") or 1) if cfg.get("use_cla") else 1,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position_embeddings=int(need("max_position_embeddings")),
        torch_dtype=str(need("dtype")),
        eos_token_ids=tuple(int(i) for i in hunyuan.get("eos_token_ids") or ()),
        pad_token_id=hunyuan.get("pad_token_id"),
        # Hy3 (written by checkpoints.trtllm_config; older checkpoints leave the defaults)
        first_dense_layers=first_dense,
        router_scoring=str(routing.get("scoring", "softmax")),
        expert_bias=routing.get("expert_bias") == "selection_only",
        route_norm=bool(routing.get("renormalize", True)),
        routed_scaling_factor=float(routing.get("routed_scaling_factor", 1.0)),
        qk_norm_before_rope=hunyuan.get("qk_norm_position") == "before_rope",
        lm_head_fp32=hunyuan.get("lm_head_dtype") == "float32",
    )


def plan_for(spec: ModelSpec, mapping: Mapping, dtype: torch.dtype, kv_cache_fp8: bool, fp8: bool,
             parallel_embedding: bool = False) -> WeightPlan:
    """The weight plan of a checkpoint converted with these settings (FP8: names, shapes and dtypes only)."""
    plan = WeightPlan.build(spec, mapping, dtype, parallel_embedding=parallel_embedding)
    if not fp8:
        return plan
    names = linear_weight_names(plan)  # every linear of every rank: all experts, so every layer's max is defined
    kv = {layer: 1.0 for layer in range(spec.num_layers) if spec.is_kv_producer(layer)}
    unit = Fp8Scales({n: 1.0 for n in names}, {n: 1.0 for n in names}, kv, origin="tensor shapes only")
    return fp8_plan(plan, unit, kv_cache_fp8)


def open_checkpoint(ckpt_dir: Path) -> BuildModel:
    """Read a converted checkpoint's config.json; refuse anything the converter would not have written."""
    where = str(ckpt_dir / "config.json")
    if not ckpt_dir.is_dir():
        raise UserError(f"{ckpt_dir}: not a directory (expected a checkpoint from hunyuan-trtllm convert)")
    cfg = load_config(ckpt_dir / "config.json")
    if "build_config" in cfg:
        raise UserError(f"{ckpt_dir}: already an engine directory (config.json has build_config)")
    if "mapping" not in cfg or "architecture" not in cfg:
        raise UserError(f"{where}: a Hugging Face config, not a converted checkpoint; run hunyuan-trtllm convert "
                        "first, or plan with build --dry-run --from-config")
    spec = spec_from_trtllm_config(cfg, where)
    mapping = _mapping(cfg["mapping"], where)
    dtype = TORCH_DTYPES.get(cfg.get("dtype"))
    if dtype is None:
        raise ConfigError(f"{where}: dtype {cfg.get('dtype')!r} is not one of {', '.join(TORCH_DTYPES)}")
    quantization = cfg.get("quantization") or {}
    fp8, kv_fp8 = _quantization(quantization, where)
    parallel = cfg.get("use_parallel_embedding") is True  # anything else fails the field check below
    _check_fields(cfg, trtllm_config(spec, mapping, dtype, quantization_config(kv_fp8) if fp8 else None,
                                     parallel_embedding=parallel),
                  where)
    return BuildModel(ckpt_dir, spec, mapping, dtype, quantization,
                      plan_for(spec, mapping, dtype, kv_fp8, fp8, parallel), converted=True)


def model_from_config(model: str, mapping: Mapping, dtype: str, kv_cache_dtype: str) -> BuildModel:
    """A model planned from a Hugging Face config (a model directory or a config.json file) and a layout."""
    from hunyuan_trtllm.checkpoints.convert import resolve_dtype
    from hunyuan_trtllm.checkpoints.source import load_spec

    path = Path(model)
    if path.is_file():
        spec = parse_spec(load_config(path), str(path))
    else:
        path, spec = load_spec(model)
    fp8, kv_fp8 = dtype == "fp8", kv_cache_dtype == "fp8"
    if kv_fp8 and not fp8:
        raise UserError("--kv-cache-dtype fp8 goes with --dtype fp8")
    torch_dtype = resolve_dtype("bfloat16" if fp8 else dtype, spec.torch_dtype)
    quantization = quantization_config(kv_fp8) if fp8 else {"quant_algo": None, "kv_cache_quant_algo": None,
                                                             "exclude_modules": None}
    plan = plan_for(spec, mapping, torch_dtype, kv_fp8, fp8)
    return BuildModel(path, spec, mapping, torch_dtype, quantization, plan, converted=False)


def _mapping(section: dict[str, Any], where: str) -> Mapping:
    try:
        return Mapping(tp=int(section["tp_size"]), pp=int(section["pp_size"]), moe_ep=int(section["moe_ep_size"]),
                       gpus_per_node=int(section.get("gpus_per_node") or 8))
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{where}: mapping needs integer tp_size, pp_size and moe_ep_size") from None


def _quantization(section: dict[str, Any], where: str) -> tuple[bool, bool]:
    """(FP8 weights, FP8 KV cache); anything else is not what the converter writes."""
    algo, kv = section.get("quant_algo"), section.get("kv_cache_quant_algo")
    if algo not in (None, "FP8") or kv not in (None, "FP8") or (kv and not algo):
        raise ConfigError(f"{where}: quantization quant_algo={algo!r}, kv_cache_quant_algo={kv!r} is not supported "
                          "(expected none, or FP8 weights with an optional FP8 KV cache)")
    return algo == "FP8", kv == "FP8"


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_fields(actual: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    """Every field the converter writes must hold what the rest of config.json implies."""
    stored = _flatten(actual)
    for key, value in _flatten(expected).items():
        if key in IGNORED_FIELDS:
            continue
        if key not in stored:
            raise ConfigError(f"{where}: field '{key}' is missing (expected {json.dumps(value)})")
        if stored[key] != value:
            raise ConfigError(f"{where}: field '{key}' is {json.dumps(stored[key])} but the model and mapping "
                              f"imply {json.dumps(value)}; reconvert rather than edit config.json")
