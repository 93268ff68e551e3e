"""Hunyuan's MoE router as a pure torch function (what the TensorRT-LLM routing method runs).

``softmax`` over all experts in float32, then the ``top_k`` largest probabilities. With ``renormalize`` (A13B's
top-8) the chosen weights are divided by their sum; without it (Hunyuan-Large's top-1, design note 3) each expert's
output is scaled by its plain softmax probability. No capacity limit, no token dropping (design note 4).
"""

from __future__ import annotations

import torch


def route_top_k(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits [T, E] -> (experts [T, top_k] int32, weights [T, top_k] float32), best expert first."""
    probs = torch.softmax(router_logits.float(), dim=-1)  # [T, E]
    weights, experts = torch.topk(probs, top_k, dim=-1)  # [T, k] each
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return experts.to(torch.int32), weights
