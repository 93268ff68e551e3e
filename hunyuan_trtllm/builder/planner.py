"""The planner: before anyone rents GPUs, does the model fit, with which TP/EP/PP, how many sequences of the
given length run at once, and what is the best decode speed the hardware allows.

For every valid layout (tp = moe_tp x moe_ep, pp; tp x pp = all the GPUs given) it reports, per GPU:

- weight bytes: the weight plan's own sum of tensor bytes (see :mod:`.planner_costs`);
- the workspace allowance (an estimate, stated in ``assumptions``) and KV bytes per token;
- the KV-cache pool: ``free_fraction`` (TensorRT-LLM's ``kv_cache_free_gpu_memory_fraction``, default 0.9) of
  what is left after weights and workspace, and how many sequences of ``max_seq_len`` tokens it holds, in
  ``TOKENS_PER_BLOCK``-token blocks; each sequence needs KV on every pipeline stage, so the tightest rank decides;
- fits, or which term overflows: ``weights``, ``workspace`` (weights + workspace) or ``kv`` (one sequence);
- the batch-1 decode ceiling: 1 / sum over PP stages of the slowest rank's (weights read per token + KV read at
  ``max_seq_len``) / HBM bandwidth; and the compute-bound ceiling at large batch:
  GPUs x dense FLOP/s / (2 x active parameters).

Layouts are ranked: fitting ones first, tensor parallelism inside a node before TP across nodes, then the
batch-1 ceiling, then concurrent sequences, then more expert parallelism (whole-expert GEMMs instead of slices).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from hunyuan_trtllm.builder.gpu_specs import GpuSpec, gpu_spec
from hunyuan_trtllm.builder.planner_costs import (
    KV_DTYPE_BYTES,
    MAX_NUM_TOKENS,
    RUNTIME_RESERVE_BYTES,
    TOKENS_PER_BLOCK,
    RankCost,
    parallel_embedding_saving,
    rank_costs,
)
from hunyuan_trtllm.builder.planner_models import DEFAULT_FREE_FRACTION, PlannedModel, load_model
from hunyuan_trtllm.checkpoints.mapping import Mapping
from hunyuan_trtllm.checkpoints.param_counts import mtp_parameter_count, parameter_counts
from hunyuan_trtllm.checkpoints.spec import ModelSpec
from hunyuan_trtllm.errors import MappingError, UserError

OVERFLOW_ORDER = ("weights", "workspace", "kv")  # most to least severe
GB = 10**9


@dataclass(frozen=True)
class PlanRequest:
    """The hardware and serving settings a plan is for (already checked)."""

    gpu: GpuSpec
    gpus_per_node: int
    nodes: int
    dtype: str
    kv_cache_dtype: str
    max_seq_len: int
    free_fraction: float
    mtp: bool = False  # the MTP draft part is kept (convert --mtp keep): its weights and KV on the last stage
    parallel_embedding: bool = False  # the checkpoint of convert --parallel-embedding

    @property
    def world_size(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def blocks_per_sequence(self) -> int:
        return -(-self.max_seq_len // TOKENS_PER_BLOCK)


def check_request(spec: ModelSpec, gpu: str, gpus_per_node: int, nodes: int, dtype: str,
                  kv_cache_dtype: str | None, max_seq_len: int | None, free_fraction: float,
                  mtp: bool = False) -> PlanRequest:
    """Validate the flags; each mistake is one line naming the flag."""
    if mtp and not spec.num_mtp_layers:
        raise UserError("--mtp keep: this model has no MTP layer (num_nextn_predict_layers)")
    if gpus_per_node < 1:
        raise UserError("--gpus must be at least 1")
    if nodes < 1:
        raise UserError("--nodes must be at least 1")
    if dtype not in KV_DTYPE_BYTES:
        raise UserError(f"--dtype {dtype}: expected bf16 or fp8")
    kv_cache_dtype = kv_cache_dtype or dtype
    if kv_cache_dtype not in KV_DTYPE_BYTES:
        raise UserError(f"--kv-cache-dtype {kv_cache_dtype}: expected bf16 or fp8")
    if kv_cache_dtype == "fp8" and dtype != "fp8":
        raise UserError("--kv-cache-dtype fp8 goes with --dtype fp8 (convert writes FP8 KV-cache scales only into "
                        "FP8 checkpoints)")
    if not 0 < free_fraction <= 1:
        raise UserError(f"--free-gpu-memory-fraction {free_fraction}: must be in (0, 1]")
    seq_len = spec.max_position_embeddings if max_seq_len is None else max_seq_len
    if seq_len < 1:
        raise UserError(f"--max-seq-len {seq_len}: must be at least 1")
    hardware = gpu_spec(gpu)
    hardware.dense_flops(dtype)  # refuses FP8 on GPUs without FP8 tensor cores
    return PlanRequest(hardware, gpus_per_node, nodes, dtype, kv_cache_dtype, seq_len, free_fraction, mtp)


def candidate_mappings(spec: ModelSpec, request: PlanRequest) -> tuple[list[Mapping], list[dict[str, Any]]]:
    """Every (tp, moe_ep, pp) with tp x pp = all GPUs: the layouts the converter accepts, and the skipped ones."""
    world = request.world_size
    valid, skipped = [], []
    for tp in (n for n in range(1, world + 1) if world % n == 0):
        for moe_ep in (n for n in range(1, tp + 1) if tp % n == 0 and (spec.is_moe or n == 1)):
            mapping = Mapping(tp=tp, pp=world // tp, moe_ep=moe_ep, gpus_per_node=request.gpus_per_node)
            try:
                mapping.validate(spec)
            except MappingError as exc:
                skipped.append({"tp": tp, "pp": mapping.pp, "moe_ep": moe_ep, "reason": str(exc)})
                continue
            valid.append(mapping)
    return valid, skipped


def _rank_memory(cost: RankCost, request: PlanRequest) -> tuple[str | None, int, int]:
    """(the term that overflows or None, KV-pool bytes, sequences of max_seq_len) for one rank."""
    memory = request.gpu.memory_bytes
    if cost.weight_bytes > memory:
        return "weights", 0, 0
    left = memory - cost.weight_bytes - cost.workspace_bytes
    if left <= 0:
        return "workspace", 0, 0
    pool = int(left * request.free_fraction)
    sequences = pool // (request.blocks_per_sequence * TOKENS_PER_BLOCK * cost.kv_bytes_per_token)
    return (None if sequences else "kv"), pool, sequences


def _reason(overflow: str | None, cost: RankCost, pool: int, sequences: int, request: PlanRequest) -> str:
    """One line for people: why the layout does not fit, or how much room it leaves."""
    gpu, tokens = request.gpu, request.max_seq_len
    if overflow == "weights":
        return (f"weights: {cost.weight_bytes / GB:.1f} GB per GPU exceed the {gpu.memory_bytes / GB:g} GB of the "
                f"{gpu.name}")
    if overflow == "workspace":
        return (f"workspace: weights {cost.weight_bytes / GB:.1f} GB + workspace {cost.workspace_bytes / GB:.1f} GB "
                f"per GPU exceed the {gpu.memory_bytes / GB:g} GB of the {gpu.name}")
    if overflow == "kv":
        one_sequence = request.blocks_per_sequence * TOKENS_PER_BLOCK * cost.kv_bytes_per_token
        return (f"kv: one {tokens:,}-token sequence needs {one_sequence / GB:.2f} GB of KV cache per GPU; "
                f"{pool / GB:.2f} GB is left for it ({request.free_fraction:g} of the free memory)")
    return f"fits: {pool / GB:.1f} GB of KV cache per GPU holds {sequences:,} sequences of {tokens:,} tokens"


def batch1_tokens_per_s(costs: tuple[RankCost, ...], request: PlanRequest) -> float:
    """Bandwidth-bound batch-1 decode ceiling: stages run one after another, ranks of a stage in parallel."""
    stage_seconds: dict[int, float] = {}
    for cost in costs:
        read = cost.decode_read_bytes + cost.kv_bytes_per_token * request.max_seq_len
        stage_seconds[cost.pp_rank] = max(stage_seconds.get(cost.pp_rank, 0.0), read / request.gpu.hbm_bytes_per_s)
    return 1.0 / sum(stage_seconds.values())


def compute_bound_tokens_per_s(active_params: int, request: PlanRequest) -> float:
    """Large-batch ceiling: every GPU at its dense FLOP/s, 2 FLOPs per active parameter per token."""
    return request.world_size * request.gpu.dense_flops(request.dtype) / (2 * active_params)


def evaluate_layout(spec: ModelSpec, mapping: Mapping, request: PlanRequest, active_params: int) -> dict[str, Any]:
    """One layout's row of the plan (the JSON contract's keys, and a few more)."""
    costs = rank_costs(spec, mapping, request.dtype, request.kv_cache_dtype, request.mtp, request.parallel_embedding)
    verdicts = [(_rank_memory(cost, request), cost) for cost in costs]
    worst = min(verdicts, key=lambda v: (OVERFLOW_ORDER.index(v[0][0]) if v[0][0] else len(OVERFLOW_ORDER),
                                         v[0][2], v[0][1], -v[1].weight_bytes))
    (overflow, pool, sequences), worst_cost = worst
    return {
        "tp": mapping.tp, "pp": mapping.pp, "moe_ep": mapping.moe_ep, "moe_tp": mapping.moe_tp,
        "nodes": request.nodes, "world_size": mapping.world_size,
        "tp_spans_nodes": mapping.tp > request.gpus_per_node,
        "weight_bytes_per_rank": max(c.weight_bytes for c in costs),
        "weight_bytes_by_rank": [c.weight_bytes for c in costs],
        "parallel_embedding": request.parallel_embedding,
        # what convert --parallel-embedding saves (or, with it, saved) on each first-stage GPU
        "parallel_embedding_saves_bytes_per_rank": parallel_embedding_saving(spec, mapping),
        "kv_bytes_per_token_per_rank": max(c.kv_bytes_per_token for c in costs),
        "workspace_bytes_per_rank": worst_cost.workspace_bytes,
        "kv_cache_bytes_per_rank": pool,
        "fits": overflow is None,
        "overflow": overflow,
        "reason": _reason(overflow, worst_cost, pool, sequences, request),
        "max_concurrent_sequences": sequences,
        "decode_tokens_per_s_batch1": batch1_tokens_per_s(costs, request),
        "decode_tokens_per_s_compute_bound": compute_bound_tokens_per_s(active_params, request),
    }


def layout_order(layout: dict[str, Any]) -> tuple:
    """Sort key, best first: fitting layouts by speed and capacity; the others by how close they come."""
    if layout["fits"]:
        return (0, layout["tp_spans_nodes"], -layout["decode_tokens_per_s_batch1"],
                -layout["max_concurrent_sequences"], -layout["moe_ep"], layout["pp"])
    return (1, OVERFLOW_ORDER[::-1].index(layout["overflow"]), layout["weight_bytes_per_rank"], layout["pp"])


def model_summary(model: PlannedModel) -> dict[str, Any]:
    """The ``model`` block: what the layouts are for, with its KV bytes per token in each cache dtype."""
    spec = model.spec
    total, active = parameter_counts(spec)
    return {
        "name": model.name, "architecture": spec.architecture, "total_params": total, "active_params": active,
        "mtp_params": mtp_parameter_count(spec), "num_mtp_layers": spec.num_mtp_layers,
        "kv_bytes_per_token": {name: spec.kv_bytes_per_token(size) for name, size in KV_DTYPE_BYTES.items()},
        "num_layers": spec.num_layers, "num_kv_layers": spec.num_kv_layers, "num_kv_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim, "num_experts": spec.num_experts, "top_k": spec.top_k,
        "cla_share_factor": spec.cla_share_factor, "max_position_embeddings": spec.max_position_embeddings,
    }


def assumptions(request: PlanRequest) -> dict[str, Any]:
    """The constants behind every number, printed with the plan."""
    return {
        "free_gpu_memory_fraction": request.free_fraction,
        "tokens_per_block": TOKENS_PER_BLOCK,
        "workspace": {"runtime_reserve_bytes": RUNTIME_RESERVE_BYTES, "max_num_tokens": MAX_NUM_TOKENS,
                      "formula": "runtime reserve + max_num_tokens x 2 bytes x (4 x hidden + widest per-rank "
                                 "intermediate: fused qkv, or gate+up of the shared and top_k routed experts / tp)"},
        "memory": "datasheet GB x 1e9 (CUDA usually reports a few percent more)",
        "decode_batch1": "HBM-bound: per PP stage the slowest rank reads its non-expert weights, one embedding row, "
                         "ceil(top_k / moe_ep) of its experts, and KV at max_seq_len",
        "decode_compute_bound": "GPUs x dense FLOP/s / (2 x active parameters)",
        "mtp": "kept: the MTP draft part's weights (bfloat16) and one KV layer per MTP layer on the last stage; "
               "draft-token decode traffic not counted" if request.mtp else "not kept",
    }


def _notes(spec: ModelSpec, request: PlanRequest, layouts: list[dict[str, Any]]) -> list[str]:
    notes = []
    if request.max_seq_len > spec.max_position_embeddings:
        notes.append(f"--max-seq-len {request.max_seq_len:,} exceeds the config's max_position_embeddings "
                     f"{spec.max_position_embeddings:,}")
    if layouts and not any(layout["fits"] for layout in layouts):
        notes.append(f"no layout fits on {request.world_size} x {request.gpu.name}: try --dtype fp8, more GPUs, "
                     "or a shorter --max-seq-len")
    return notes


def make_plan(model: str | None, preset: str | None, gpu: str, gpus_per_node: int, nodes: int, dtype: str | None,
              kv_cache_dtype: str | None, max_seq_len: int | None,
              free_fraction: float = DEFAULT_FREE_FRACTION, mtp: bool = False,
              parallel_embedding: bool = False) -> dict[str, Any]:
    """The plan as a JSON-able dict: ``model``, ``gpu``, the settings, ``layouts`` ranked best first,
    ``recommended`` (the best fitting layout, or None) and ``source`` (MODEL, or ``preset:NAME``). ``dtype`` None:
    the release's (fp8 for an FP8 release, else bf16)."""
    planned = load_model(model, preset)
    spec = planned.spec
    request = check_request(spec, gpu, gpus_per_node, nodes, dtype or planned.default_dtype, kv_cache_dtype,
                            max_seq_len, free_fraction, mtp)
    request = dataclasses.replace(request, parallel_embedding=parallel_embedding)
    summary = model_summary(planned)
    mappings, skipped = candidate_mappings(spec, request)
    layouts = sorted((evaluate_layout(spec, m, request, summary["active_params"]) for m in mappings),
                     key=layout_order)
    return {
        "model": summary,
        "gpu": request.gpu.to_dict(),
        "gpus_per_node": gpus_per_node,
        "nodes": nodes,
        "dtype": request.dtype,
        "mtp": request.mtp,
        "kv_cache_dtype": request.kv_cache_dtype,
        "max_seq_len": request.max_seq_len,
        "assumptions": assumptions(request),
        "layouts": layouts,
        "recommended": next((layout for layout in layouts if layout["fits"]), None),
        "skipped_layouts": skipped,
        "notes": _notes(spec, request, layouts),
        "source": planned.source,
    }
