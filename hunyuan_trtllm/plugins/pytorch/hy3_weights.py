"""Hy3 checkpoint tensors -> the module names of our TensorRT-LLM PyTorch-backend Hy3 model (pure torch).

Rules as data (:data:`RENAMES`), applied to Tencent's on-disk names (shared/reference/hy3.md §b) and to
transformers' saved "outer" layout; the part after the module path (``weight``, and for the FP8 release
``weight_scale`` / ``input_scale``) is kept:

- ``mlp.router.gate`` (transformers: ``mlp.gate``) -> ``mlp.gate`` (the float32 router);
- ``mlp.expert_bias`` (``mlp.e_score_correction_bias``) -> ``mlp.gate.e_score_correction_bias`` (float32);
- ``mlp.experts.{e}.gate_proj / up_proj / down_proj`` -> ``mlp.experts.{e}.w1 / w3 / w2`` (fused-MoE names);
- transformers' ``mlp.experts.gate_up_proj`` [E, 2I, H] (gate rows first) and ``mlp.experts.down_proj``
  [E, H, I] -> split per expert into w1, w3 and w2;
- ``mlp.shared_mlp.*`` (``mlp.shared_experts.*``) -> ``mlp.shared_experts.*``.

Everything else keeps its name (attention ``q/k/v/o_proj``, ``q_norm``/``k_norm``, layer 0's dense
``mlp.gate_proj/up_proj/down_proj``, norms, embedding, ``lm_head``). Layers at or above ``num_hidden_layers``
(the MTP layer) are dropped: the target model does not run them. FP8 scales (BF16 scalars in Hy3-FP8) become
float32 ``[1]`` tensors, the shape TensorRT-LLM's per-tensor FP8 parameters have. TensorRT-LLM learns that a
checkpoint is FP8 from an ``hf_quant_config.json`` (what ``hunyuan-trtllm quantize --format trtllm`` writes, also
from Tencent's Hy3-FP8); the tensor names are the same in both formats.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from hunyuan_trtllm.checkpoints.spec import ModelSpec
from hunyuan_trtllm.errors import CheckpointError

RENAMES: tuple[tuple[str, str], ...] = (
    (r"mlp\.router\.gate\.", "mlp.gate."),
    (r"mlp\.(expert_bias|e_score_correction_bias)$", "mlp.gate.e_score_correction_bias"),
    (r"mlp\.experts\.(\d+)\.gate_proj\.", r"mlp.experts.\1.w1."),
    (r"mlp\.experts\.(\d+)\.up_proj\.", r"mlp.experts.\1.w3."),
    (r"mlp\.experts\.(\d+)\.down_proj\.", r"mlp.experts.\1.w2."),
    (r"mlp\.shared_mlp\.", "mlp.shared_experts."),
)
FLOAT32_SUFFIXES = ("mlp.gate.weight", "mlp.gate.e_score_correction_bias")
SCALE_SUFFIXES = (".weight_scale", ".input_scale", ".k_scale", ".v_scale")
_LAYER = re.compile(r"model\.layers\.(\d+)\.(.*)")


def _tensor(value: Any) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else value[:]


def module_name(name: str) -> str:
    """A checkpoint tensor name under our model's module names (:data:`RENAMES`)."""
    match = _LAYER.fullmatch(name)
    if match is None:
        return name
    rest = match[2]
    for pattern, replacement in RENAMES:
        rest = re.sub(pattern, replacement, rest)
    return f"model.layers.{match[1]}.{rest}"


def _split_outer_experts(prefix: str, name: str, value: torch.Tensor, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """transformers' fused expert tensors -> per-expert w1 (gate), w3 (up), w2 (down)."""
    experts, width = spec.num_experts, spec.expert_intermediate_size
    if name.endswith("gate_up_proj"):
        if tuple(value.shape) != (experts, 2 * width, spec.hidden_size):
            raise CheckpointError(f"{prefix}{name} has shape {tuple(value.shape)}; expected "
                                  f"{(experts, 2 * width, spec.hidden_size)}")
        return {**{f"{prefix}{e}.w1.weight": value[e, :width] for e in range(experts)},
                **{f"{prefix}{e}.w3.weight": value[e, width:] for e in range(experts)}}
    if tuple(value.shape) != (experts, spec.hidden_size, width):
        raise CheckpointError(f"{prefix}{name} has shape {tuple(value.shape)}; expected "
                              f"{(experts, spec.hidden_size, width)}")
    return {f"{prefix}{e}.w2.weight": value[e] for e in range(experts)}


def hy3_module_weights(weights: Mapping[str, Any], spec: ModelSpec) -> dict[str, Any]:
    """The checkpoint's tensors under our model's module names (see the module docstring); a new dict."""
    if not spec.is_hy3:
        raise CheckpointError(f"not a Hy3 checkpoint ({spec.architecture})")
    out: dict[str, Any] = {}
    for name, value in weights.items():
        match = _LAYER.fullmatch(name)
        if match is not None and int(match[1]) >= spec.num_layers:
            continue  # the MTP layer (model.layers.{num_hidden_layers}): not part of the target model
        outer = re.fullmatch(r"(model\.layers\.\d+\.mlp\.experts\.)(gate_up_proj|down_proj)", name)
        if outer is not None:
            out.update(_split_outer_experts(outer[1], outer[2], _tensor(value), spec))
            continue
        target = module_name(name)
        if target.endswith(FLOAT32_SUFFIXES) or target.endswith(SCALE_SUFFIXES):
            value = _tensor(value).float()
            if target.endswith(SCALE_SUFFIXES):
                value = value.reshape(1)
        if target in out:
            raise CheckpointError(f"two checkpoint tensors map to '{target}' (is '{name}' stored twice?)")
        out[target] = value
    return out


def module_weights(weights: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The tensors under module ``prefix`` with the prefix removed (``{"weight": ..., "weight_scale": ...}``)."""
    start = prefix + "."
    return {name[len(start):]: value for name, value in weights.items() if name.startswith(start)}
