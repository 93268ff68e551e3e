"""Hy3's MoE routing as a pure torch function, and how TensorRT-LLM's PyTorch backend expresses it.

Hy3 (shared/reference/hy3.md §c): float32 router logits ``z``; ``s = sigmoid(z)``; experts chosen by top-k of
``s + expert_bias`` (the bias only picks); weights = the chosen *unbiased* ``s``, renormalised by
``sum + 1e-20`` (``route_norm``), times ``router_scaling_factor`` (2.826).

TensorRT-LLM's ``DeepSeekV3MoeRoutingMethod`` (``tensorrt_llm/_torch/modules/fused_moe/routing.py``) computes
exactly this with ``n_group=1, topk_group=1``: its routing implementation (``Deepseekv3RoutingImpl.noaux_tc``)
takes sigmoid scores, adds ``e_score_correction_bias`` for the selection only, gathers the unbiased scores,
divides by ``sum + 1e-20`` and multiplies by ``routed_scaling_factor``. With one group the group-limited step
keeps every expert, and with 192 experts per group the fused CUDA kernel's limits (<= 32 experts per group) send
it to the PyTorch path. Of the other 1.2.x / later methods, ``MiniMaxM2MoeRoutingMethod`` (sigmoid + bias +
renormalise) lacks the scaling factor and ``Default``/``Renormalize`` are softmax-based.
:func:`deepseek_v3_grouped` restates DeepSeek-V3's group-limited formula so the equivalence is tested.
"""

from __future__ import annotations

import torch

RENORM_EPS = 1e-20


def route_sigmoid_bias(router_logits: torch.Tensor, expert_bias: torch.Tensor, top_k: int, scaling: float,
                       renormalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits [T, E], expert_bias [E] -> (experts [T, k] int32, weights [T, k] float32), best first."""
    scores = torch.sigmoid(router_logits.float())
    _, experts = torch.topk(scores + expert_bias.float(), top_k, dim=-1)
    weights = scores.gather(-1, experts)
    if renormalize:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + RENORM_EPS)
    return experts.to(torch.int32), weights * scaling


def deepseek_v3_grouped(router_logits: torch.Tensor, expert_bias: torch.Tensor, top_k: int, n_group: int,
                        topk_group: int, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3's group-limited routing (group score = sum of its 2 best biased scores; the ``topk_group`` best
    groups stay; top-k of the biased scores inside them; unbiased weights renormalised and scaled)."""
    scores = torch.sigmoid(router_logits.float())
    biased = scores + expert_bias.float()
    tokens, experts = biased.shape
    grouped = biased.view(tokens, n_group, experts // n_group)
    group_scores = grouped.topk(min(2, experts // n_group), dim=-1).values.sum(dim=-1)
    keep = torch.zeros_like(group_scores).scatter_(-1, group_scores.topk(topk_group, dim=-1).indices, 1.0)
    mask = keep.unsqueeze(-1).expand_as(grouped).reshape(tokens, experts).bool()
    chosen = biased.masked_fill(~mask, float("-inf")).topk(top_k, dim=-1).indices
    weights = scores.gather(-1, chosen)
    weights = weights / (weights.sum(dim=-1, keepdim=True) + RENORM_EPS) * scaling
    return chosen.to(torch.int32), weights
