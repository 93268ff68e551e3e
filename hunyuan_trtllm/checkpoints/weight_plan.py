"""WeightPlan: every TensorRT-LLM tensor of every rank, where its bytes come from, and how they are cut.

This is the single source of truth for the weight layout: the converter writes it, the reference executor and
the planner read it, and the TensorRT-LLM model definition declares the same names and shapes.

The layout follows TensorRT-LLM 1.2.x conventions (see shared/reference/trtllm.md §1):

==========================================  ===========================================================
TensorRT-LLM tensor (per rank)              Hugging Face source and shard rule
==========================================  ===========================================================
transformer.vocab_embedding.weight [V,H]    model.embed_tokens, replicated, first PP stage
  (parallel embedding) [V_pad/tp, H]        model.embed_tokens rows by tp, zero-padded like lm_head
layers.{l}.input_layernorm.weight           input_layernorm, replicated
layers.{l}.attention.qkv.weight             cat(q heads of this rank, its KV heads (duplicated when
                                            n_kv < tp), same for v) along rows
layers.{l}.attention.q.weight               CLA consumer layers: the q rows only (no own KV)
layers.{l}.attention.dense.weight           o_proj, columns split by tp
layers.{l}.attention.q_layernorm.weight     query_layernorm; CLA consumers fold in k_norm_c / k_norm_p
layers.{l}.attention.k_layernorm.weight     key_layernorm (KV producers only)
layers.{l}.post_layernorm.weight            post_attention_layernorm
layers.{l}.mlp.router.weight [E,H] fp32     mlp.gate.wg, replicated
layers.{l}.mlp.fc.weight [E/ep,2I/mtp,H]    per local expert cat(up rows, gate rows) of this moe_tp rank
layers.{l}.mlp.proj.weight [E/ep,H,I/mtp]   per local expert down_proj columns of this moe_tp rank
layers.{l}.mlp.shared_expert.fc/.proj       shared_mlp cat(up, gate) rows / down columns split by tp
layers.{l}.mlp.fc / .gate / .proj (dense)   gate_proj rows / up_proj rows / down_proj columns by tp
transformer.ln_f.weight                     model.norm, last PP stage
lm_head.weight [V_pad/tp, H]                lm_head (or the tied embedding) rows by tp, zero-padded
==========================================  ===========================================================

Hy3 (``HYV3ForCausalLM``) is rows of the same tables: ``q_norm``/``k_norm``, ``mlp.router.gate``, a float32
``mlp.expert_bias [E]`` (replicated), dense rows on layers ``< first_k_dense_replace``, a float32 ``lm_head`` when
``enable_lm_head_fp32``. Its MTP layer is planned apart by :meth:`WeightPlan.build_mtp` (``MTP_RULES``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch

from hunyuan_trtllm.checkpoints.hf_shapes import hf_shape
from hunyuan_trtllm.checkpoints.mapping import Mapping, RankCoords
from hunyuan_trtllm.checkpoints.safetensors_io import DTYPE_CODES, dtype_size
from hunyuan_trtllm.checkpoints.source import Read
from hunyuan_trtllm.checkpoints.spec import ModelSpec

CLA_QUERY_NORM = "cla_query_norm"  # q_norm_c * k_norm_c / k_norm_p, computed in float32 (design note 2)


@dataclass(frozen=True)
class TensorPlan:
    """One output tensor: ``parts`` are concatenated (``concat_dim``), then stacked if ``stacked`` (experts)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    parts: tuple[tuple[Read, ...], ...]
    rule: str
    concat_dim: int = 0
    stacked: bool = False
    combine: str | None = None
    pad_rows: int = 0
    fp8_scales: tuple[float, ...] | None = None  # e4m3 with these dequant scales (one, or one per stacked part)
    constant: tuple[float, ...] | None = None  # a tensor of these values (FP8 scale tensors), no sources

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * dtype_size(self.dtype)

    @property
    def sources(self) -> list[str]:
        return list(dict.fromkeys(read.name for part in self.parts for read in part))


@dataclass(frozen=True)
class Rule:
    """One row of the renaming table: TensorRT-LLM name <- Hugging Face names, via a shard rule.

    Names may use ``{layer}`` (this layer), ``{kv_layer}`` (the layer whose KV cache it reads) and ``{e}``.
    """

    trt: str
    hf: tuple[str, ...]
    shard: str
    when: str = "always"


_L = "model.layers.{layer}."
LAYER_RULES: tuple[Rule, ...] = (
    Rule("input_layernorm.weight", (_L + "input_layernorm.weight",), "replicate"),
    Rule(
        "attention.qkv.weight",
        (_L + "self_attn.q_proj.weight", _L + "self_attn.k_proj.weight", _L + "self_attn.v_proj.weight"),
        "qkv_heads",
        when="kv_producer",
    ),
    Rule("attention.q.weight", (_L + "self_attn.q_proj.weight",), "q_heads", when="kv_consumer"),
    Rule("attention.dense.weight", (_L + "self_attn.o_proj.weight",), "split_cols"),
    Rule("attention.q_layernorm.weight", (_L + "self_attn.query_layernorm.weight",), "replicate", "qk_norm_producer"),
    Rule(
        "attention.q_layernorm.weight",
        (
            _L + "self_attn.query_layernorm.weight",
            _L + "self_attn.key_layernorm.weight",
            "model.layers.{kv_layer}.self_attn.key_layernorm.weight",
        ),
        CLA_QUERY_NORM,
        when="qk_norm_consumer",
    ),
    Rule("attention.k_layernorm.weight", (_L + "self_attn.key_layernorm.weight",), "replicate", "qk_norm_producer"),
    Rule("attention.q_layernorm.weight", (_L + "self_attn.q_norm.weight",), "replicate", when="hy3_qk_norm"),
    Rule("attention.k_layernorm.weight", (_L + "self_attn.k_norm.weight",), "replicate", when="hy3_qk_norm"),
    Rule("post_layernorm.weight", (_L + "post_attention_layernorm.weight",), "replicate"),
    Rule("mlp.router.weight", (_L + "mlp.gate.wg.weight",), "replicate_fp32", when="moe_v1"),
    Rule("mlp.router.weight", (_L + "mlp.router.gate.weight",), "replicate_fp32", when="moe_hy3"),
    Rule("mlp.expert_bias", (_L + "mlp.expert_bias",), "replicate_fp32", when="expert_bias"),
    Rule(
        "mlp.fc.weight",
        (_L + "mlp.experts.{e}.up_proj.weight", _L + "mlp.experts.{e}.gate_proj.weight"),
        "experts_rows",
        when="moe",
    ),
    Rule("mlp.proj.weight", (_L + "mlp.experts.{e}.down_proj.weight",), "experts_cols", when="moe"),
    Rule(
        "mlp.shared_expert.fc.weight",
        (_L + "mlp.shared_mlp.up_proj.weight", _L + "mlp.shared_mlp.gate_proj.weight"),
        "split_rows",
        when="shared_expert",
    ),
    Rule("mlp.shared_expert.proj.weight", (_L + "mlp.shared_mlp.down_proj.weight",), "split_cols", "shared_expert"),
    Rule("mlp.fc.weight", (_L + "mlp.gate_proj.weight",), "split_rows", when="dense"),
    Rule("mlp.gate.weight", (_L + "mlp.up_proj.weight",), "split_rows", when="dense"),
    Rule("mlp.proj.weight", (_L + "mlp.down_proj.weight",), "split_cols", when="dense"),
)
FIRST_STAGE_RULES = (
    Rule("transformer.vocab_embedding.weight", ("model.embed_tokens.weight",), "replicate", when="whole_embedding"),
    # use_parallel_embedding, embedding_sharding_dim 0: TensorRT-LLM's Embedding holds ceil(V/tp) rows per rank
    # (rank r: rows r*ceil(V/tp)...), looks up the ids in its range and all-reduces; rows past V are zero.
    Rule("transformer.vocab_embedding.weight", ("model.embed_tokens.weight",), "vocab_rows", when="parallel_embedding"),
)
LAST_STAGE_RULES = (
    Rule("transformer.ln_f.weight", ("model.norm.weight",), "replicate"),
    Rule("lm_head.weight", ("lm_head.weight",), "vocab_rows", when="untied"),
    Rule("lm_head.weight", ("lm_head.weight",), "vocab_rows_fp32", when="untied_fp32"),
    Rule("lm_head.weight", ("model.embed_tokens.weight",), "vocab_rows", when="tied"),
)
# The extra tensors of an MTP (next-token prediction) layer, besides its decoder-layer rows (LAYER_RULES).
MTP_RULES = (
    Rule("enorm.weight", (_L + "enorm.weight",), "replicate"),
    Rule("hnorm.weight", (_L + "hnorm.weight",), "replicate"),
    Rule("eh_proj.weight", (_L + "eh_proj.weight",), "replicate"),
    Rule("final_layernorm.weight", (_L + "final_layernorm.weight",), "replicate"),
)


@dataclass(frozen=True)
class _Ctx:
    spec: ModelSpec
    mapping: Mapping
    at: RankCoords
    layer: int = -1


def _rows(n: int, parts: int, index: int) -> tuple[int, int]:
    size = n // parts
    return index * size, (index + 1) * size


def _replicate(c: _Ctx, names: tuple[str, ...]) -> dict:
    return {"shape": hf_shape(c.spec, names[0]), "parts": ((Read(names[0]),),)}


def _split_rows(c: _Ctx, names: tuple[str, ...]) -> dict:
    reads = tuple(Read(n, rows=_rows(hf_shape(c.spec, n)[0], c.mapping.tp, c.at.tp_rank)) for n in names)
    rows = sum(r.rows[1] - r.rows[0] for r in reads)
    return {"shape": (rows, c.spec.hidden_size), "parts": (reads,)}


def _split_cols(c: _Ctx, names: tuple[str, ...]) -> dict:
    out, width = hf_shape(c.spec, names[0])
    cols = _rows(width, c.mapping.tp, c.at.tp_rank)
    return {"shape": (out, cols[1] - cols[0]), "parts": ((Read(names[0], cols=cols),),), "concat_dim": 1}


def _kv_heads(c: _Ctx) -> tuple[int, int]:
    """KV heads of this TP rank; when n_kv < tp each head is duplicated over tp/n_kv consecutive ranks."""
    kv, tp, r = c.spec.num_kv_heads, c.mapping.tp, c.at.tp_rank
    if kv >= tp:
        return _rows(kv, tp, r)
    head = r * kv // tp
    return head, head + 1


def _qkv_heads(c: _Ctx, names: tuple[str, ...]) -> dict:
    d = c.spec.head_dim
    q0, q1 = _rows(c.spec.num_heads, c.mapping.tp, c.at.tp_rank)
    k0, k1 = _kv_heads(c)
    reads = (Read(names[0], rows=(q0 * d, q1 * d)),) + tuple(Read(n, rows=(k0 * d, k1 * d)) for n in names[1:])
    rows = sum(r.rows[1] - r.rows[0] for r in reads)  # q rows, then (producers only) k rows and v rows
    return {"shape": (rows, c.spec.hidden_size), "parts": (reads,)}


def _experts_rows(c: _Ctx, names: tuple[str, ...]) -> dict:
    rows = _rows(c.spec.expert_intermediate_size, c.mapping.moe_tp, c.at.moe_tp_rank)
    experts = c.mapping.ep_experts(c.spec.num_experts, c.at.moe_ep_rank)
    parts = tuple(tuple(Read(n.format(e=e), rows=rows) for n in names) for e in experts)
    return {"shape": (len(experts), 2 * (rows[1] - rows[0]), c.spec.hidden_size), "parts": parts, "stacked": True}


def _experts_cols(c: _Ctx, names: tuple[str, ...]) -> dict:
    cols = _rows(c.spec.expert_intermediate_size, c.mapping.moe_tp, c.at.moe_tp_rank)
    experts = c.mapping.ep_experts(c.spec.num_experts, c.at.moe_ep_rank)
    parts = tuple((Read(names[0].format(e=e), cols=cols),) for e in experts)
    shape = (len(experts), c.spec.hidden_size, cols[1] - cols[0])
    return {"shape": shape, "parts": parts, "stacked": True, "concat_dim": 1}


def _cla_query_norm(c: _Ctx, names: tuple[str, ...]) -> dict:
    return {"shape": (c.spec.head_dim,), "parts": (tuple(Read(n) for n in names),), "combine": CLA_QUERY_NORM}


def _vocab_rows(c: _Ctx, names: tuple[str, ...]) -> dict:
    v, tp = c.spec.vocab_size, c.mapping.tp
    per_rank = -(-v // tp)  # V padded up to a multiple of tp, split evenly
    start = c.at.tp_rank * per_rank
    stop = min(start + per_rank, v)
    parts = ((Read(names[0], rows=(start, stop)),),) if stop > start else ((),)
    return {"shape": (per_rank, c.spec.hidden_size), "parts": parts, "pad_rows": per_rank - max(stop - start, 0)}


SHARD_RULES: dict[str, Callable[[_Ctx, tuple[str, ...]], dict]] = {
    "replicate": _replicate,
    "replicate_fp32": _replicate,
    "split_rows": _split_rows,
    "split_cols": _split_cols,
    "qkv_heads": _qkv_heads,
    "q_heads": _qkv_heads,
    "experts_rows": _experts_rows,
    "experts_cols": _experts_cols,
    CLA_QUERY_NORM: _cla_query_norm,
    "vocab_rows": _vocab_rows,
    "vocab_rows_fp32": _vocab_rows,
}


def _applies(when: str, spec: ModelSpec, layer: int, parallel_embedding: bool = False) -> bool:
    producer = spec.is_kv_producer(layer) if layer >= 0 else True
    return {
        "whole_embedding": not parallel_embedding,
        "parallel_embedding": parallel_embedding,
        "always": True,
        "kv_producer": producer,
        "kv_consumer": not producer,
        "qk_norm_producer": spec.use_qk_norm and producer and not spec.is_hy3,
        "qk_norm_consumer": spec.use_qk_norm and not producer,
        "hy3_qk_norm": spec.use_qk_norm and spec.is_hy3,
        "moe": spec.is_moe_layer(layer),
        "moe_v1": spec.is_moe_layer(layer) and not spec.is_hy3,
        "moe_hy3": spec.is_moe_layer(layer) and spec.is_hy3,
        "expert_bias": spec.is_moe_layer(layer) and spec.expert_bias,
        "shared_expert": spec.is_moe_layer(layer) and spec.shared_intermediate_size > 0,
        "dense": not spec.is_moe_layer(layer),
        "tied": spec.tie_word_embeddings,
        "untied": not spec.tie_word_embeddings and not spec.lm_head_fp32,
        "untied_fp32": not spec.tie_word_embeddings and spec.lm_head_fp32,
    }[when]


@dataclass(frozen=True)
class WeightPlan:
    """The whole conversion, as data: ``ranks[r]`` lists rank r's tensors in file order."""

    spec: ModelSpec
    mapping: Mapping
    dtype: torch.dtype
    ranks: tuple[tuple[TensorPlan, ...], ...]
    parallel_embedding: bool = False

    @classmethod
    def build(cls, spec: ModelSpec, mapping: Mapping, dtype: torch.dtype,
              only_ranks: Collection[int] | None = None, parallel_embedding: bool = False) -> WeightPlan:
        """Plan every rank, or only ``only_ranks`` (the other ranks' tensor lists are left empty).

        ``parallel_embedding``: the vocabulary embedding split by rows over the tp ranks (``use_parallel_embedding``,
        ``embedding_sharding_dim`` 0) instead of replicated on each.
        """
        mapping.validate(spec)
        wanted = range(mapping.world_size) if only_ranks is None else only_ranks
        ranks = tuple(tuple(_rank_tensors(spec, mapping, mapping.coords(r), dtype, parallel_embedding))
                      if r in wanted else () for r in range(mapping.world_size))
        return cls(spec, mapping, dtype, ranks, parallel_embedding)

    @classmethod
    def build_mtp(cls, spec: ModelSpec, mapping: Mapping, dtype: torch.dtype) -> WeightPlan:
        """The MTP draft part: per TP rank (pp 1), each MTP layer's decoder-layer rows and ``MTP_RULES`` as
        ``mtp.layers.{i}.*``, sharded like the main checkpoint's layers (embedding and lm_head are the main's)."""
        mapping.validate(spec)
        mtp = Mapping(tp=mapping.tp, pp=1, moe_ep=mapping.moe_ep, gpus_per_node=mapping.gpus_per_node)
        ranks = []
        for rank in range(mtp.world_size):
            at, tensors = mtp.coords(rank), []
            for index in range(spec.num_mtp_layers):
                layer = spec.num_layers + index
                tensors += _layer_tensors(spec, mtp, at, dtype, layer, f"mtp.layers.{index}.", LAYER_RULES + MTP_RULES)
            ranks.append(tuple(tensors))
        return cls(spec, mtp, dtype, tuple(ranks))

    def rank_bytes(self, rank: int) -> int:
        return sum(t.nbytes for t in self.ranks[rank])

    def hf_tensors(self) -> list[str]:
        """Every Hugging Face tensor the plan reads."""
        return list(dict.fromkeys(name for rank in self.ranks for t in rank for name in t.sources))

    def to_json(self) -> dict[str, list[dict]]:
        return {
            f"rank{r}": [
                {"name": t.name, "shape": list(t.shape), "dtype": DTYPE_CODES[t.dtype], "rule": t.rule,
                 "sources": t.sources, **({"fp8_scales": list(t.fp8_scales)} if t.fp8_scales else {}),
                 **({"values": list(t.constant)} if t.constant else {})}
                for t in tensors
            ]
            for r, tensors in enumerate(self.ranks)
        }

    def digest(self) -> str:
        """A hash of the exact plan, to tell a resumable conversion from a different one."""
        blob = json.dumps({"plan": self.to_json(), "spec": self.spec.to_dict()}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


def _layer_tensors(spec: ModelSpec, mapping: Mapping, at: RankCoords, dtype: torch.dtype, layer: int, prefix: str,
                   rules: tuple[Rule, ...]) -> list[TensorPlan]:
    """The tensors ``rules`` make of decoder layer ``layer`` (global index), named ``prefix + rule.trt``."""
    fmt = {"layer": layer, "kv_layer": spec.kv_source_layer(layer)}
    ctx = _Ctx(spec, mapping, at, layer)
    tensors = []
    for rule in rules:
        if _applies(rule.when, spec, layer):
            names = tuple(n.replace("{e}", "{{e}}").format(**fmt) for n in rule.hf)
            out_dtype = torch.float32 if rule.shard.endswith("_fp32") else dtype
            tensors.append(TensorPlan(name=prefix + rule.trt, dtype=out_dtype, rule=rule.shard,
                                      **SHARD_RULES[rule.shard](ctx, names)))
    return tensors


def _rank_tensors(spec: ModelSpec, mapping: Mapping, at: RankCoords, dtype: torch.dtype,
                  parallel_embedding: bool = False) -> list[TensorPlan]:
    layers = mapping.pp_layers(spec.num_layers, at.pp_rank)
    tensors: list[TensorPlan] = []

    def emit(rule: Rule, name: str, ctx: _Ctx, fmt: dict[str, int]) -> None:
        if not _applies(rule.when, spec, ctx.layer, parallel_embedding):
            return
        names = tuple(n.replace("{e}", "{{e}}").format(**fmt) for n in rule.hf)
        fields = SHARD_RULES[rule.shard](ctx, names)
        out_dtype = torch.float32 if rule.shard.endswith("_fp32") else dtype
        tensors.append(TensorPlan(name=name, dtype=out_dtype, rule=rule.shard, **fields))

    if at.pp_rank == 0:
        for rule in FIRST_STAGE_RULES:
            emit(rule, rule.trt, _Ctx(spec, mapping, at), {})
    for local, layer in enumerate(layers):
        tensors += _layer_tensors(spec, mapping, at, dtype, layer, f"transformer.layers.{local}.", LAYER_RULES)
    if at.pp_rank == mapping.pp - 1:
        for rule in LAST_STAGE_RULES:
            emit(rule, rule.trt, _Ctx(spec, mapping, at), {})
    return tensors


FLOAT32_TENSORS = (".expert_bias",)  # stored in float32 in every release (Hy3's selection bias)


def stored_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype a tensor is stored in: ``dtype``, except float32 for ``FLOAT32_TENSORS``."""
    return torch.float32 if name.endswith(FLOAT32_TENSORS) else dtype


def tensor_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every tensor of the model in Tencent's separate layout (q/k/v, gate/up), sorted by name.

    Taken from the weight plan (the tensors a tp=1 conversion reads, and the MTP part's), so synth and convert
    cannot disagree.
    """
    names = WeightPlan.build(spec, Mapping(), torch.float32).hf_tensors()
    if spec.num_mtp_layers:
        names += WeightPlan.build_mtp(spec, Mapping(), torch.float32).hf_tensors()
    return dict(sorted((name, hf_shape(spec, name)) for name in names))
