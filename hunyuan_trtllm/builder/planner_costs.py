"""What one rank of a layout costs: weight bytes (from the weight plan), KV bytes per token, workspace, and the
bytes it reads to decode one token.

Weight bytes are the weight plan's own: the sum of the tensor bytes :class:`WeightPlan` lists for the rank (for FP8,
the plan :func:`~hunyuan_trtllm.checkpoints.fp8.fp8_plan` makes of it, scale tensors included). No second formula.

The workspace allowance is an estimate, stated as such in every plan:

    workspace = RUNTIME_RESERVE_BYTES + MAX_NUM_TOKENS x activation_bytes_per_token

- ``RUNTIME_RESERVE_BYTES`` (2 GiB): CUDA context, NCCL buffers and CUDA-graph pools; shared/reference/peers_perf.md
  §8 puts "CUDA graphs, NCCL and runtime buffers" at about 1-5 GB;
- ``MAX_NUM_TOKENS`` (8192): TensorRT-LLM's default ``max_num_tokens``, the most tokens one engine step holds; the
  engine's activation memory is sized for it at build time (peers_perf.md §8, "roughly max_num_tokens x a constant");
- ``activation_bytes_per_token``: 16-bit activations of the residual stream (4 x hidden) plus the widest per-rank
  intermediate of a decoder layer: the fused qkv output, or the MLP's gate+up output (MoE: the shared expert plus
  top_k routed experts, spread evenly over the tp ranks).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import torch

from hunyuan_trtllm.checkpoints.fp8 import fp8_plan
from hunyuan_trtllm.checkpoints.fp8_scales import Fp8Scales
from hunyuan_trtllm.checkpoints.mapping import Mapping
from hunyuan_trtllm.checkpoints.spec import ModelSpec
from hunyuan_trtllm.checkpoints.weight_plan import TensorPlan, WeightPlan

RUNTIME_RESERVE_BYTES = 2 * 2**30
MAX_NUM_TOKENS = 8192
ACTIVATION_BYTES = 2  # bfloat16 activations (FP8 checkpoints keep 16-bit activations between layers)
TOKENS_PER_BLOCK = 32  # TensorRT-LLM's default paged-KV block size (peers_perf.md §8)
KV_DTYPE_BYTES = {"bf16": 2, "fp8": 1}
EMBEDDING = "transformer.vocab_embedding.weight"


@dataclass(frozen=True)
class RankCost:
    """One rank's memory and decode-traffic figures."""

    pp_rank: int
    weight_bytes: int  # sum of the weight plan's tensor bytes for this rank
    decode_read_bytes: int  # weight bytes read per decoded token at batch 1 (busiest rank, best-case routing)
    kv_bytes_per_token: int  # KV-cache bytes one token costs on this rank
    workspace_bytes: int  # the activation/runtime allowance (see the module docstring)


def planning_scales(spec: ModelSpec) -> Fp8Scales:
    """Unit FP8 scales for every tensor: only the FP8 plan's tensor *sizes* matter to the planner."""
    producers = {layer: 1.0 for layer in range(spec.num_layers) if spec.is_kv_producer(layer)}
    return Fp8Scales(collections.defaultdict(lambda: 1.0), collections.defaultdict(lambda: 1.0), producers,
                     origin="planner (sizes only)")


def stage_representatives(mapping: Mapping) -> list[int]:
    """For each rank, the first rank of its PP stage. TP ranks of a stage hold tensors of the same shapes (every
    shard rule splits evenly; the vocabulary is padded to a multiple of tp; KV heads are split or replicated one per
    rank), so they cost the same; tests check every rank against the files ``convert`` writes."""
    return [mapping.coords(rank).pp_rank * mapping.tp for rank in range(mapping.world_size)]


def layout_weight_plan(spec: ModelSpec, mapping: Mapping, dtype: str, kv_cache_fp8: bool,
                       parallel_embedding: bool = False) -> WeightPlan:
    """The weight plan ``convert`` writes for this layout (bfloat16, or its FP8 version with scale tensors), built
    for the first rank of each PP stage only: 20 layouts of 64 ranks of a full-size model take a second, not ten."""
    plan = WeightPlan.build(spec, mapping, torch.bfloat16, only_ranks=set(stage_representatives(mapping)),
                            parallel_embedding=parallel_embedding)
    return fp8_plan(plan, planning_scales(spec), kv_cache_fp8) if dtype == "fp8" else plan


def kv_bytes_per_token_per_rank(spec: ModelSpec, mapping: Mapping, pp_rank: int, kv_dtype_bytes: int) -> int:
    """KV bytes per token on a rank of PP stage ``pp_rank``: its stage's KV-owning layers (CLA consumers own none),
    its share of the KV heads (each rank keeps at least one: heads are replicated when tp exceeds them)."""
    per_layer = spec.kv_bytes_per_token(kv_dtype_bytes, mapping.tp) // spec.num_kv_layers
    stage = mapping.pp_layers(spec.num_layers, pp_rank)
    return per_layer * sum(1 for layer in stage if spec.is_kv_producer(layer))


def activation_bytes_per_token(spec: ModelSpec, tp: int) -> int:
    """16-bit activation bytes per in-flight token on one rank: residual stream plus the widest intermediate."""
    qkv = (spec.num_heads // tp + 2 * max(1, spec.num_kv_heads // tp)) * spec.head_dim
    dense = 2 * spec.intermediate_size // tp
    if spec.is_moe:  # Hy3 has both kinds of layer: the wider one counts
        mlp = (2 * spec.shared_intermediate_size + spec.top_k * 2 * spec.expert_intermediate_size) // tp
        mlp = max(mlp, dense) if spec.first_dense_layers else mlp
    else:
        mlp = dense
    return ACTIVATION_BYTES * (4 * spec.hidden_size + max(qkv, mlp))


def workspace_bytes(spec: ModelSpec, tp: int) -> int:
    """The activation/runtime allowance per GPU: ``RUNTIME_RESERVE_BYTES + MAX_NUM_TOKENS x activations``."""
    return RUNTIME_RESERVE_BYTES + MAX_NUM_TOKENS * activation_bytes_per_token(spec, tp)


def decode_read_bytes(tensors: tuple[TensorPlan, ...], spec: ModelSpec, mapping: Mapping) -> int:
    """Weight bytes a rank reads to decode one token at batch 1.

    Everything is read except: the embedding (a lookup reads one row) and the routed experts, of which a token
    uses top_k. The busiest rank holds at least ceil(top_k / moe_ep) of them (routing spread as evenly as it can
    be: the best case), each as its 1/moe_tp slice, which is what one expert of a stacked tensor is on this rank.
    """
    chosen = -(-spec.top_k // mapping.moe_ep) if spec.is_moe else 0
    total = 0
    for tensor in tensors:
        if tensor.stacked:  # [local experts, ...]
            total += tensor.nbytes // tensor.shape[0] * chosen
        elif tensor.name == EMBEDDING:
            total += tensor.nbytes // tensor.shape[0]
        else:
            total += tensor.nbytes
    return total


def mtp_costs(spec: ModelSpec, mapping: Mapping, kv_dtype_bytes: int) -> tuple[int, int]:
    """(weight bytes, KV bytes per token) the MTP draft part (``convert --mtp keep``, unquantized bfloat16) adds to
    each rank of the last pipeline stage: its layers' share of the weights and of one KV cache per MTP layer."""
    weights = WeightPlan.build_mtp(spec, mapping, torch.bfloat16).rank_bytes(0)
    per_layer = spec.kv_bytes_per_token(kv_dtype_bytes, mapping.tp) // spec.num_kv_layers
    return weights, per_layer * spec.num_mtp_layers


def parallel_embedding_saving(spec: ModelSpec, mapping: Mapping) -> int:
    """Weight bytes ``convert --parallel-embedding`` saves on each first-stage GPU: rank 0's plan with the whole
    embedding minus its plan with 1/tp of the rows (the embedding is bfloat16 in FP8 checkpoints too)."""
    whole, split = (WeightPlan.build(spec, mapping, torch.bfloat16, only_ranks={0}, parallel_embedding=parallel)
                    for parallel in (False, True))
    return whole.rank_bytes(0) - split.rank_bytes(0)


def rank_costs(spec: ModelSpec, mapping: Mapping, dtype: str, kv_cache_dtype: str,
               mtp: bool = False, parallel_embedding: bool = False) -> tuple[RankCost, ...]:
    """Every rank's costs for a layout; weight bytes are the weight plan's sum of tensor bytes for the rank's
    stage representative (see :func:`stage_representatives`), plus the MTP draft part on the last stage if
    ``mtp``."""
    plan = layout_weight_plan(spec, mapping, dtype, kv_cache_dtype == "fp8", parallel_embedding)
    workspace = workspace_bytes(spec, mapping.tp)
    extra_weights, extra_kv = mtp_costs(spec, mapping, KV_DTYPE_BYTES[kv_cache_dtype]) if mtp else (0, 0)
    costs = []
    for rank, same_as in enumerate(stage_representatives(mapping)):
        pp_rank = mapping.coords(rank).pp_rank
        last = pp_rank == mapping.pp - 1
        kv = kv_bytes_per_token_per_rank(spec, mapping, pp_rank, KV_DTYPE_BYTES[kv_cache_dtype])
        read = decode_read_bytes(plan.ranks[same_as], spec, mapping)
        costs.append(RankCost(pp_rank, plan.rank_bytes(same_as) + extra_weights * last, read,
                              kv + extra_kv * last, workspace))
    return tuple(costs)
