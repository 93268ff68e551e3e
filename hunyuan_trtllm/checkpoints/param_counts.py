"""Parameter counts of a Hugging Face model, from the weight plan (what ``inspect`` and the planner report)."""

from __future__ import annotations

import math

import torch

from hunyuan_trtllm.checkpoints.hf_shapes import hf_shape
from hunyuan_trtllm.checkpoints.mapping import Mapping
from hunyuan_trtllm.checkpoints.spec import ModelSpec
from hunyuan_trtllm.checkpoints.weight_plan import WeightPlan


def parameter_counts(spec: ModelSpec) -> tuple[int, int]:
    """(total, active-per-token) parameters of the Hugging Face model, counted from the tp=1 weight plan.

    Active counts the shared expert and top_k of the routed experts; a tied lm_head is counted once.
    """
    plan = WeightPlan.build(spec, Mapping(), torch.bfloat16)
    total = active = 0
    for name in plan.hf_tensors():
        n = math.prod(hf_shape(spec, name))
        total += n
        active += n * spec.top_k // spec.num_experts if ".mlp.experts." in name else n
    return total, active


def mtp_parameter_count(spec: ModelSpec) -> int:
    """Parameters of the MTP layer(s) (not counted by :func:`parameter_counts`; embedding and lm_head shared)."""
    if not spec.num_mtp_layers:
        return 0
    plan = WeightPlan.build_mtp(spec, Mapping(), torch.bfloat16)
    return sum(math.prod(hf_shape(spec, name)) for name in plan.hf_tensors())
