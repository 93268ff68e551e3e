"""FP8 for TensorRT-LLM engines: the per-tensor ``quant_algo: FP8`` checkpoint as a transform of the weight plan.

TensorRT-LLM 1.2.x (shared/reference/trtllm.md §2), what this writes:
- every attention and shared-expert / dense-MLP linear: e4m3 ``weight`` + ``weights_scaling_factor`` ``[1]`` +
  ``activation_scaling_factor`` ``[1]`` (dequantization scales, amax / 448);
- experts' ``fc`` / ``proj``: e4m3 ``[E_local, ...]``, ``weights_scaling_factor`` ``[E_local, 1]`` (one per
  expert), one ``activation_scaling_factor`` ``[1]`` per layer: the max over all of the layer's experts;
- fused tensors share one scale: ``qkv`` takes max(q, k, v) and ``fc`` = [up; gate] takes max(up, gate) (per
  expert), and their parts are requantized to it; activation scales of fused parts merge by max too;
- router, embeddings, lm_head and norms stay in high precision and are listed in ``exclude_modules``, together with
  TensorRT-LLM's default exclusions;
- with an FP8 KV cache: ``attention.kv_cache_scaling_factor`` ``[1]`` per layer; CLA consumer layers carry their
  producer's (they read its cache).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import torch

from hunyuan_trtllm.checkpoints.fp8_scales import Fp8Scales
from hunyuan_trtllm.checkpoints.source import SourceCheckpoint
from hunyuan_trtllm.checkpoints.weight_plan import TensorPlan, WeightPlan
from hunyuan_trtllm.errors import CheckpointError, UserError

LINEAR_RULES = {"qkv_heads", "q_heads", "split_rows", "split_cols", "experts_rows", "experts_cols"}
DEFAULT_EXCLUDES = ["*lm_head", "*router", "*vocab_embedding", "*position_embedding", "*block_embedding",
                    "*shared_expert_gate"]
NORM_EXCLUDES = ["*input_layernorm", "*post_layernorm", "*ln_f", "*q_layernorm", "*k_layernorm"]
_KV_SCALE_NAMES = ("self_attn.k_proj.k_scale", "self_attn.v_proj.v_scale", "self_attn.k_scale", "self_attn.v_scale",
                   "self_attn.kv_scale")


def quantization_config(kv_cache_fp8: bool) -> dict[str, Any]:
    """config.json's ``quantization`` for a per-tensor FP8 checkpoint."""
    return {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8" if kv_cache_fp8 else None,
            "exclude_modules": DEFAULT_EXCLUDES + NORM_EXCLUDES}


def linear_weight_names(plan: WeightPlan) -> list[str]:
    """The Hugging Face weights that become FP8 (the sources of every linear tensor of the plan)."""
    return list(dict.fromkeys(s for rank in plan.ranks for t in rank if _is_linear(t) for s in t.sources))


def source_scales(src: SourceCheckpoint, plan: WeightPlan) -> Fp8Scales:
    """The scales stored in an FP8 source (Tencent's format: ``X.weight_scale``, ``X.input_scale`` per linear)."""
    scales = Fp8Scales(origin=f"FP8 checkpoint {src.path}")
    for name in linear_weight_names(plan):
        base = name.removesuffix(".weight")
        scales.weight[name] = src.scalar(base + ".weight_scale")
        scales.activation[name] = src.scalar(base + ".input_scale")
    for layer in range(plan.spec.num_layers):
        if not plan.spec.is_kv_producer(layer):
            continue
        found = [src.scalar(f"model.layers.{layer}.{n}") for n in _KV_SCALE_NAMES if
                 src.has(f"model.layers.{layer}.{n}")]
        if found:
            scales.kv[layer] = max(found)
    return scales


def fp8_plan(plan: WeightPlan, scales: Fp8Scales, kv_cache_fp8: bool) -> WeightPlan:
    """The FP8 version of a plan: quantized linears, their scale tensors and (optionally) KV-cache scales."""
    if kv_cache_fp8:
        missing = [layer for layer in range(plan.spec.num_layers) if plan.spec.is_kv_producer(layer)
                   and layer not in scales.kv]
        if missing:
            raise UserError(f"no KV-cache scale for layer {missing[0]} ({scales.origin}); calibrate with "
                            "--calib-builtin or --calib-data to get one")
    ranks = []
    for r, tensors in enumerate(plan.ranks):
        out: list[TensorPlan] = []
        layers = plan.mapping.pp_layers(plan.spec.num_layers, plan.mapping.coords(r).pp_rank)
        for tensor in tensors:
            out += _quantized(plan, tensor, scales) if _is_linear(tensor) else [tensor]
            if kv_cache_fp8 and tensor.name.endswith(".input_layernorm.weight"):
                local = int(tensor.name.split(".")[2])
                kv = scales.kv[plan.spec.kv_source_layer(layers[local])]
                out.append(_constant(tensor.name.replace("input_layernorm.weight",
                                                         "attention.kv_cache_scaling_factor"), (kv,)))
        ranks.append(tuple(out))
    return dataclasses.replace(plan, ranks=tuple(ranks))


def _is_linear(tensor: TensorPlan) -> bool:
    return tensor.rule in LINEAR_RULES and tensor.combine is None


def _constant(name: str, values: tuple[float, ...], shape: tuple[int, ...] = (1,)) -> TensorPlan:
    return TensorPlan(name=name, shape=shape, dtype=torch.float32, parts=(), rule="fp8_scale", constant=values)


def _quantized(plan: WeightPlan, tensor: TensorPlan, scales: Fp8Scales) -> list[TensorPlan]:
    """The e4m3 tensor and its ``weights_scaling_factor`` / ``activation_scaling_factor``."""
    base = tensor.name.removesuffix(".weight")
    per_part = [max(scales.weight_scale(read.name) for read in part) for part in tensor.parts]
    if tensor.stacked:  # experts: one weight scale per expert, one activation scale for the whole layer
        weight_scales = tuple(per_part)
        inputs = _all_experts(plan, tensor.sources)
        weight_factor = _constant(base + ".weights_scaling_factor", weight_scales, (len(weight_scales), 1))
    else:
        weight_scales = (per_part[0],)
        inputs = tensor.sources
        weight_factor = _constant(base + ".weights_scaling_factor", weight_scales)
    activation = max(scales.activation_scale(name) for name in inputs)
    quantized = dataclasses.replace(tensor, dtype=torch.float8_e4m3fn, fp8_scales=weight_scales)
    return [quantized, weight_factor, _constant(base + ".activation_scaling_factor", (activation,))]


def _all_experts(plan: WeightPlan, sources: list[str]) -> list[str]:
    """Every expert's version of these sources (the activation scale is the max over the layer's experts)."""
    patterns = []  # one per distinct projection ("...experts.*.up_proj.weight"), not one per expert of the tensor
    for source in sources:
        if not re.search(r"\.experts\.\d+\.", source):
            raise CheckpointError(f"{source}: expected an expert weight")
        patterns.append(re.sub(r"\.experts\.\d+\.", ".experts.*.", source))
    return [p.replace(".experts.*.", f".experts.{e}.") for p in dict.fromkeys(patterns)
            for e in range(plan.spec.num_experts)]
