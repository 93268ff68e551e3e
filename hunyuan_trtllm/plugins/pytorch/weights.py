"""Hunyuan-Large checkpoint tensors -> the names TensorRT-LLM's Hunyuan weight loader reads.

TensorRT-LLM's ``HunYuanMoEV1ForCausalLM.load_weights`` (reused for Large) reads Tencent's published names:
separate ``self_attn.{q,k,v}_proj`` (fused into its ``qkv_proj`` module, K/V duplicated when tp > n_kv) and
separate ``gate_proj``/``up_proj``. :func:`prepare_weights` rewrites what a checkpoint stores into those names:

- fused tensors of older checkpoints are split (design note 8), per :data:`FUSED_TENSORS`;
- a CLA consumer's ``query_layernorm`` absorbs the key-norm ratio, because the consumer attends over its producer's
  cached keys (normalized with the producer's ``key_layernorm``) instead of keys normalized with its own:
  ``q_norm' = q_norm * k_norm / k_norm_producer``, computed in float32 (design note 2).

Pure torch: testable without TensorRT-LLM. Values may be tensors or lazy slices (anything ``value[:]`` reads).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from hunyuan_trtllm.checkpoints.spec import ModelSpec
from hunyuan_trtllm.errors import CheckpointError
from hunyuan_trtllm.plugins.pytorch.cla import ClaPlan


def split_fused_qkv(fused: torch.Tensor, spec: ModelSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """De-interleave a per-KV-group ``qkv_proj`` [(n_q + 2 n_kv) d, H] into q [n_q d, H], k and v [n_kv d, H].

    Rows are grouped per KV head g: the n_q/n_kv query heads of group g, then k_g, then v_g.
    """
    group = spec.num_heads // spec.num_kv_heads
    d, hidden = spec.head_dim, fused.shape[-1]
    if fused.shape[0] != (spec.num_heads + 2 * spec.num_kv_heads) * d:
        raise CheckpointError(
            f"fused qkv_proj has {fused.shape[0]} rows; expected (num_heads + 2 * num_kv_heads) * head_dim = "
            f"{(spec.num_heads + 2 * spec.num_kv_heads) * d}"
        )
    blocks = fused.reshape(spec.num_kv_heads, group + 2, d, hidden)  # [n_kv, g + 2, d, H]
    q = blocks[:, :group].reshape(spec.num_heads * d, hidden)
    k = blocks[:, group].reshape(spec.num_kv_heads * d, hidden)
    v = blocks[:, group + 1].reshape(spec.num_kv_heads * d, hidden)
    return q, k, v


def split_gate_and_up(fused: torch.Tensor, spec: ModelSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``gate_and_up_proj`` [2I, H] = cat(up, gate) into (up, gate) (``spec`` is unused: the halves are equal)."""
    up, gate = fused.chunk(2, dim=0)
    return up, gate


@dataclass(frozen=True)
class FusedTensor:
    """A tensor some checkpoints store fused, and the separate tensors (same prefix) it is split into."""

    suffix: str
    parts: tuple[str, ...]
    split: Callable[[torch.Tensor, ModelSpec], tuple[torch.Tensor, ...]]


FUSED_TENSORS: tuple[FusedTensor, ...] = (
    FusedTensor(
        "self_attn.qkv_proj.weight",
        ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
        split_fused_qkv,
    ),
    # experts, the shared expert and dense MLPs alike
    FusedTensor("gate_and_up_proj.weight", ("up_proj.weight", "gate_proj.weight"), split_gate_and_up),
)


def fold_query_norm(q_norm: torch.Tensor, k_norm: torch.Tensor, k_norm_producer: torch.Tensor) -> torch.Tensor:
    """``q_norm * k_norm / k_norm_producer`` in float32, cast once to ``q_norm``'s dtype."""
    if bool((k_norm_producer == 0).any()):
        raise CheckpointError("a zero in the producer's key_layernorm weight: the CLA key-norm fold would divide by it")
    return (q_norm.float() * k_norm.float() / k_norm_producer.float()).to(q_norm.dtype)


def prepare_weights(weights: Mapping[str, Any], spec: ModelSpec) -> dict[str, Any]:
    """The checkpoint's tensors under the names TensorRT-LLM's loader reads (a new dict; untouched values shared)."""
    prepared = dict(weights.items())
    for name in list(prepared):
        for fused in FUSED_TENSORS:
            if name == fused.suffix or name.endswith("." + fused.suffix):
                _split_into(prepared, name, fused, spec)
    if spec.use_qk_norm:
        plan = ClaPlan.from_spec(spec)
        for layer, producer in enumerate(plan.producer_of):
            if layer != producer:
                _fold_consumer_query_norm(prepared, layer, producer)
    return prepared


def _tensor(value: Any) -> torch.Tensor:
    """A stored value as a tensor (TensorRT-LLM may hand lazy safetensors slices)."""
    return value if isinstance(value, torch.Tensor) else value[:]


def _split_into(prepared: dict[str, Any], name: str, fused: FusedTensor, spec: ModelSpec) -> None:
    prefix = name[: len(name) - len(fused.suffix)]
    clash = [prefix + part for part in fused.parts if prefix + part in prepared]
    if clash:
        raise CheckpointError(f"both the fused '{name}' and '{clash[0]}' are stored; which one holds the weights?")
    for part, piece in zip(fused.parts, fused.split(_tensor(prepared.pop(name)), spec), strict=True):
        prepared[prefix + part] = piece


def _fold_consumer_query_norm(prepared: dict[str, Any], layer: int, producer: int) -> None:
    names = (
        f"model.layers.{layer}.self_attn.query_layernorm.weight",
        f"model.layers.{layer}.self_attn.key_layernorm.weight",
        f"model.layers.{producer}.self_attn.key_layernorm.weight",
    )
    missing = [n for n in names if n not in prepared]
    if missing:
        raise CheckpointError(f"tensor '{missing[0]}' is missing (needed for the CLA key-norm fold of layer {layer})")
    prepared[names[0]] = fold_query_norm(*(_tensor(prepared[n]) for n in names))
