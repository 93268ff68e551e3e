"""Cross-layer attention (CLA) for Hunyuan-Large: which layer's KV cache each layer attends over.

Tencent's model loop keeps the K/V of the latest layer with ``layer % cla_share_factor == 0`` and hands it to the
layers after it (``if use_cla and layer_idx % cla_share_factor == 0: prev_kv_states = kv_states``). In TensorRT-LLM
the producer layer writes its KV cache; each consumer projects Q only and attends over its producer's cache slot
(see :mod:`hunyuan_trtllm.plugins.pytorch.modeling_large`). Pure Python (torch only): testable without
TensorRT-LLM.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from hunyuan_trtllm.checkpoints.spec import ModelSpec
from hunyuan_trtllm.errors import MappingError


@dataclass(frozen=True)
class ClaPlan:
    """``producer_of[layer]``: the layer whose KV cache ``layer`` attends over (itself when it owns one)."""

    producer_of: tuple[int, ...]

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> ClaPlan:
        """Walk the layers the way Tencent's model loop does, remembering the latest KV-producing layer."""
        producers: list[int] = []
        latest = 0
        for layer in range(spec.num_layers):
            if layer % spec.cla_share_factor == 0:
                latest = layer
            producers.append(latest)
        return cls(tuple(producers))

    def owns_kv_cache(self, layer: int) -> bool:
        return self.producer_of[layer] == layer

    def consumers(self, producer: int) -> list[int]:
        """The layers that attend over ``producer``'s KV cache, in order (empty without CLA)."""
        return [layer for layer, source in enumerate(self.producer_of) if source == producer and layer != producer]

    def is_last_consumer(self, layer: int) -> bool:
        """Whether ``layer`` is the last reader of its producer's K/V (and may release them)."""
        return not self.owns_kv_cache(layer) and self.consumers(self.producer_of[layer])[-1] == layer

    @property
    def kv_layers(self) -> list[int]:
        """The layers that own a KV cache."""
        return [layer for layer in range(len(self.producer_of)) if self.owns_kv_cache(layer)]

    def check_stage(self, stage_layers: Iterable[int]) -> None:
        """Refuse a pipeline stage holding a consumer without its producer (TensorRT-LLM keeps each stage's KV cache
        on that stage, design note 1)."""
        local = set(stage_layers)
        split = [(self.producer_of[layer], layer) for layer in sorted(local) if self.producer_of[layer] not in local]
        if split:
            producer, consumer = split[0]
            raise MappingError(
                f"pipeline stage with layers {min(local)}..{max(local)} holds CLA consumer layer {consumer} but not "
                f"its KV-cache producer layer {producer}; choose a pp size that splits the layers on pair boundaries"
            )


class SharedKV:
    """The K and V a producer layer wrote to its KV cache, handed to its consumers within one forward pass.

    The producer puts the exact tensors it gives the attention backend (post-RoPE, post-``key_layernorm`` K; V), so
    a consumer that passes them on with its own Q re-writes identical values into the producer's cache slot.
    """

    def __init__(self, producer: int):
        self.producer = producer
        self._kv: tuple[torch.Tensor, torch.Tensor] | None = None

    def put(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self._kv = (k, v)

    def get(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._kv is None:
            raise RuntimeError(f"CLA: no K/V from producer layer {self.producer} in this forward pass")
        return self._kv

    def release(self) -> None:
        """Drop the references once the last consumer has read them (the activations can then be freed)."""
        self._kv = None
