"""Mapping: TensorRT-LLM's parallel layout (tensorrt_llm/mapping.py, 1.2.x), and its checks against a model.

- ``world_size = tp * pp``; MoE parallelism is carved out of the TP group: ``tp = moe_tp * moe_ep``.
- ``tp_rank = rank % tp``, ``pp_rank = rank // tp``; inside a TP group the EP rank varies fastest:
  ``moe_ep_rank = tp_rank % moe_ep``, ``moe_tp_rank = tp_rank // moe_ep``.
- EP rank r owns the contiguous experts ``[r*E/ep, (r+1)*E/ep)``.
- Layers are split over PP stages like ``torch.tensor_split``: the first ``n % pp`` stages get one extra.
"""

from __future__ import annotations

from dataclasses import dataclass

from hunyuan_trtllm.checkpoints.spec import ModelSpec
from hunyuan_trtllm.errors import MappingError


@dataclass(frozen=True)
class RankCoords:
    rank: int
    tp_rank: int
    pp_rank: int
    moe_tp_rank: int
    moe_ep_rank: int


@dataclass(frozen=True)
class Mapping:
    tp: int = 1
    pp: int = 1
    moe_ep: int = 1
    gpus_per_node: int = 8

    @property
    def world_size(self) -> int:
        return self.tp * self.pp

    @property
    def moe_tp(self) -> int:
        return self.tp // self.moe_ep

    def coords(self, rank: int) -> RankCoords:
        tp_rank = rank % self.tp
        return RankCoords(rank, tp_rank, rank // self.tp, tp_rank // self.moe_ep, tp_rank % self.moe_ep)

    def pp_layers(self, num_layers: int, pp_rank: int) -> range:
        """Global layer indices held by a PP stage (``torch.tensor_split`` semantics)."""
        base, extra = divmod(num_layers, self.pp)
        start = pp_rank * base + min(pp_rank, extra)
        return range(start, start + base + (1 if pp_rank < extra else 0))

    def ep_experts(self, num_experts: int, moe_ep_rank: int) -> range:
        per_rank = num_experts // self.moe_ep
        return range(moe_ep_rank * per_rank, (moe_ep_rank + 1) * per_rank)

    def to_dict(self) -> dict[str, int | bool]:
        """``mapping`` as TensorRT-LLM's ``Mapping.to_dict`` writes it (without ``rank``)."""
        return {
            "world_size": self.world_size,
            "gpus_per_node": min(self.gpus_per_node, self.world_size),
            "cp_size": 1,
            "tp_size": self.tp,
            "pp_size": self.pp,
            "moe_tp_size": self.moe_tp,
            "moe_cluster_size": 1,
            "moe_ep_size": self.moe_ep,
            "attn_tp_size": self.tp,
            "attn_cp_size": 1,
            "auto_parallel": False,
        }

    def validate(self, spec: ModelSpec) -> None:
        """Refuse layouts TensorRT-LLM cannot build for this model, with a message naming the flag."""
        if self.tp < 1 or self.pp < 1 or self.moe_ep < 1:
            raise MappingError("--tp, --ep and --pp must be positive")
        if self.tp % self.moe_ep:
            raise MappingError(f"--ep {self.moe_ep} must divide --tp {self.tp} (tp = moe_tp x moe_ep)")
        if spec.num_heads % self.tp:
            raise MappingError(f"--tp {self.tp} does not divide the {spec.num_heads} attention heads")
        kv, tp = spec.num_kv_heads, self.tp
        if (kv >= tp and kv % tp) or (kv < tp and tp % kv):
            raise MappingError(f"--tp {tp} and the {kv} KV heads must divide one another")
        if spec.is_moe:
            if spec.num_experts % self.moe_ep:
                raise MappingError(f"--ep {self.moe_ep} does not divide the {spec.num_experts} experts")
            if spec.expert_intermediate_size % self.moe_tp:
                raise MappingError(
                    f"moe_tp = tp/ep = {self.moe_tp} does not divide the expert width "
                    f"{spec.expert_intermediate_size}"
                )
            if spec.shared_intermediate_size % tp:
                raise MappingError(f"--tp {tp} does not divide the shared expert width {spec.shared_intermediate_size}")
            if spec.first_dense_layers and spec.intermediate_size % tp:
                raise MappingError(f"--tp {tp} does not divide the dense layers' MLP width {spec.intermediate_size}")
        elif self.moe_ep != 1:
            raise MappingError("--ep applies to MoE models only; this model is dense")
        elif spec.intermediate_size % tp:
            raise MappingError(f"--tp {tp} does not divide the MLP width {spec.intermediate_size}")
        if self.pp > spec.num_layers:
            raise MappingError(f"--pp {self.pp} exceeds the {spec.num_layers} layers")
        if spec.uses_cla:
            for stage in range(1, self.pp):
                first = self.pp_layers(spec.num_layers, stage)[0]
                if not spec.is_kv_producer(first):
                    raise MappingError(
                        f"--pp {self.pp} puts CLA layer {first} on a different pipeline stage from layer "
                        f"{spec.kv_source_layer(first)} whose KV cache it reads; choose a pp that splits the "
                        f"{spec.num_layers} layers on multiples of {spec.cla_share_factor}"
                    )


def parse_ranks(text: str | None, world_size: int) -> list[int]:
    """``--ranks 0-3,6`` -> [0, 1, 2, 3, 6]; None -> every rank."""
    if text is None:
        return list(range(world_size))
    ranks: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise MappingError(f"--ranks '{text}': expected a list like 0-3,6") from None
        if not 0 <= first <= last < world_size:  # checked before expanding: 0-30000000 must not build a set
            raise MappingError(f"--ranks '{text}': ranks must be in 0..{world_size - 1}, each range low-high")
        ranks.update(range(first, last + 1))
    return sorted(ranks)
