"""Hy3's pieces of the TensorRT-LLM 1.2.x engine model: routing in the graph, the MoE layer, the float32 head.

Imports TensorRT-LLM at module level: only :mod:`.model` imports this module (through :func:`..register`).

**Routing** (shared/reference/hy3.md §c, §f): none of the MoE plugin's normalization modes computes sigmoid scores
or a selection-only bias, but in 1.2.x the routing is ordinary graph code in ``MixtureOfExperts.forward`` and the
plugin only receives ``token_selected_experts`` [T, k] and ``token_final_scales`` [T, k]. :class:`Hy3SharedMoE`
overrides ``forward`` and builds, in float32 from the router's float32 GEMM:
``s = sigmoid(router(h))``; ``experts = topk(s + expert_bias, k)``; ``w = gather(s, experts)``;
``w = w / (sum(w) + 1e-20)`` (``route_norm``); ``w = w * router_scaling_factor``; then hands (experts, w) to
``forward_experts`` (the plugin, with its own EP/TP handling), adds the always-on shared expert and does the one
TP all-reduce, as ``SharedMoE.forward`` does.

The routing constants live on a class made per model (:func:`hy3_moe_class`) rather than in constructor
arguments, because TensorRT-LLM's FP8 ``quantize`` pass rebuilds every MoE module as ``type(module)(**init
params)`` from the base constructor's parameters: the rebuilt module keeps the class, hence the routing.
``expert_bias`` ([E] float32, checkpoint ``layers.{l}.mlp.expert_bias``) is a parameter of the layer.

**lm_head in float32** (``enable_lm_head_fp32``): :class:`Float32Head` casts the final hidden state to float32
before a float32 ``ColumnLinear`` (the converter writes a float32 ``lm_head.weight``).
"""

from __future__ import annotations

import functools
from typing import Any

from tensorrt_llm.functional import SideStreamIDType, Tensor, allreduce, cast, gather, sigmoid, topk
from tensorrt_llm.functional import sum as reduce_sum
from tensorrt_llm.layers.linear import ColumnLinear
from tensorrt_llm.layers.moe import SharedMoE
from tensorrt_llm.parameter import Parameter

RENORM_EPS = 1e-20


def hy3_route(logits: Tensor, expert_bias: Tensor, top_k: int, scaling: float,
              renormalize: bool) -> tuple[Tensor, Tensor]:
    """router logits [T, E] float32 -> (experts [T, k] int32, weights [T, k] float32)."""
    scores = sigmoid(logits)
    _, experts = topk(scores + expert_bias, k=top_k, dim=-1)
    weights = gather(scores, dim=scores.ndim() - 1, indices=experts)
    if renormalize:
        weights = weights / (reduce_sum(weights, dim=-1, keepdim=True) + RENORM_EPS)
    return experts, weights * scaling


class Hy3SharedMoE(SharedMoE):
    """Routed experts with Hy3's routing (``ROUTED_SCALING``, ``RENORMALIZE`` from :func:`hy3_moe_class`) plus
    the always-on shared expert."""

    ROUTED_SCALING = 1.0
    RENORMALIZE = True

    def __init__(self, moe_config: Any, hidden_size: int, ffn_hidden_size: int, hidden_act: str, mapping: Any,
                 bias: bool, dtype: Any, tp_group: Any, tp_size: int, quant_mode: Any, use_shared_gate: bool = False,
                 use_side_stream: bool = False) -> None:
        # SharedMoE's own parameters (TensorRT-LLM rebuilds MoE modules from them: get_init_params)
        super().__init__(moe_config=moe_config, hidden_size=hidden_size, ffn_hidden_size=ffn_hidden_size,
                         hidden_act=hidden_act, mapping=mapping, bias=bias, dtype=dtype, tp_group=tp_group,
                         tp_size=tp_size, quant_mode=quant_mode, use_shared_gate=use_shared_gate,
                         use_side_stream=use_side_stream)
        self.expert_bias = Parameter(shape=(self.moe_config.num_experts,), dtype="float32")

    def forward(self, hidden_states: Tensor, lora_layer_params: Any = None) -> Tensor:
        """hidden [T, H] -> routed + shared output [T, H] (all-reduced over TP)."""
        logits = self.router(cast(hidden_states, "float32"))  # [T, E] float32 (the router is strict float32)
        experts, weights = hy3_route(logits, self.expert_bias.value, self.moe_config.top_k, self.ROUTED_SCALING,
                                     self.RENORMALIZE)
        routed = self.forward_experts(hidden_states, experts, weights, lora_layer_params, SideStreamIDType.disable)
        output = routed + self.shared_expert(hidden_states)
        if self.tp_size > 1 and self.tp_group is not None:
            output = allreduce(output, self.tp_group)
        return output


@functools.cache
def hy3_moe_class(routed_scaling: float, renormalize: bool) -> type[Hy3SharedMoE]:
    """The :class:`Hy3SharedMoE` subclass for one routing (cached: one class per distinct routing)."""
    return type("Hy3SharedMoE", (Hy3SharedMoE,), {"ROUTED_SCALING": float(routed_scaling),
                                                  "RENORMALIZE": bool(renormalize)})


class Float32Head(ColumnLinear):
    """A float32 ``lm_head``: the final hidden state is cast to float32 first."""

    def forward(self, x: Tensor, lora_runtime_params: Any = None) -> Tensor:
        return super().forward(cast(x, "float32"), lora_runtime_params=lora_runtime_params)
