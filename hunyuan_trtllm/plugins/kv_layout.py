"""Which layers own a KV cache, and which cache slot every layer's attention uses (pure Python, no TensorRT-LLM).

Hunyuan-Large's cross-layer attention (CLA, ``cla_share_factor`` 2): layer ``2j`` produces K/V, layer ``2j+1``
attends over the same cache. The converter's config.json says so twice:

- ``cla_kv_source_layer[l]``: the global layer whose KV cache layer ``l`` reads (``l`` itself for producers);
- ``num_kv_heads_per_layer``: one entry per layer, ``0`` for layers that own no KV cache.

TensorRT-LLM 1.2.x's runtime reads a *different* form of the second field (C++ ``gptJsonConfig.cpp``
``createModelConfig``; Python ``runtime/model_runner.py``): ``layer_types`` names each layer ``"attention"``,
``"recurrent"``, ``"linear"`` or ``"no_op"``, and ``num_kv_heads_per_layer`` has one entry per *attention* layer
only; the KV-cache manager allocates pools for those layers and nothing else (DeciLM / Nemotron-NAS write it this
way, ``models/nemotron_nas/config.py``). So the engine's config marks CLA consumers ``"no_op"`` (no KV state of
their own) and lists only producers' KV heads: the KV cache of Hunyuan-Large is halved.

On the engine side (``GenerationMixin.prepare_attention_inputs``), ``host_kv_cache_pool_mapping`` and
``host_max_attention_window_sizes`` have one row per attention layer of the pipeline stage, and the GPT-attention
plugin's ``layer_idx`` indexes them: :meth:`KvLayout.cache_slot` gives that index, a consumer getting its
producer's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hunyuan_trtllm.errors import ConfigError, MappingError

ATTENTION = "attention"  # layer_types value of a layer that owns a KV cache
NO_KV = "no_op"  # layer_types value of a CLA consumer: no KV state of its own (it reads its producer's)


@dataclass(frozen=True)
class KvLayout:
    """``source_layer[l]``: the global layer whose KV cache layer ``l`` attends over; ``num_kv_heads`` per producer."""

    source_layer: tuple[int, ...]
    num_kv_heads: int

    @classmethod
    def from_config(cls, num_layers: int, num_kv_heads: int, *, cla_share_factor: int = 1,
                    cla_kv_source_layer: Sequence[int] | None = None,
                    num_kv_heads_per_layer: Sequence[int] | None = None,
                    layer_types: Sequence[str] | None = None) -> KvLayout:
        """Read the layout from config.json fields (either the converter's or the runtime's form), checking them."""
        if cla_kv_source_layer is None:
            factor = max(1, cla_share_factor)
            cla_kv_source_layer = [layer - layer % factor for layer in range(num_layers)]
        layout = cls(tuple(int(s) for s in cla_kv_source_layer), num_kv_heads)
        layout._check(num_layers)
        if num_kv_heads_per_layer is not None and list(num_kv_heads_per_layer) not in (
                layout.checkpoint_num_kv_heads_per_layer(), layout.runtime_num_kv_heads_per_layer()):
            raise ConfigError(f"config.json: num_kv_heads_per_layer {list(num_kv_heads_per_layer)} does not match "
                              f"cla_kv_source_layer {list(layout.source_layer)} with {num_kv_heads} KV heads")
        if layer_types is not None and list(layer_types) != layout.runtime_layer_types():
            raise ConfigError(f"config.json: layer_types {list(layer_types)} does not match cla_kv_source_layer "
                              f"{list(layout.source_layer)}")
        return layout

    def _check(self, num_layers: int) -> None:
        if len(self.source_layer) != num_layers:
            raise ConfigError(f"config.json: cla_kv_source_layer has {len(self.source_layer)} entries for "
                              f"{num_layers} layers")
        for layer, source in enumerate(self.source_layer):
            if not 0 <= source <= layer or self.source_layer[source] != source:
                raise ConfigError(f"config.json: cla_kv_source_layer[{layer}] = {source} is not an earlier layer "
                                  "that owns its KV cache")

    def is_producer(self, layer: int) -> bool:
        return self.source_layer[layer] == layer

    @property
    def producers(self) -> list[int]:
        """Global indices of the layers that own a KV cache."""
        return [layer for layer in range(len(self.source_layer)) if self.is_producer(layer)]

    def checkpoint_num_kv_heads_per_layer(self) -> list[int]:
        """The converter's form: one entry per layer, 0 for layers without a KV cache of their own."""
        return [self.num_kv_heads if self.is_producer(layer) else 0 for layer in range(len(self.source_layer))]

    def runtime_num_kv_heads_per_layer(self) -> list[int]:
        """TensorRT-LLM's form: one entry per KV-owning ("attention") layer."""
        return [self.num_kv_heads] * len(self.producers)

    def runtime_layer_types(self) -> list[str]:
        return [ATTENTION if self.is_producer(layer) else NO_KV for layer in range(len(self.source_layer))]

    def cache_slot(self, layer: int, stage_layers: Sequence[int]) -> int:
        """The GPT-attention plugin's ``layer_idx`` for ``layer``: its KV source's index among the stage's producers."""
        source = self.source_layer[layer]
        if source not in stage_layers:
            raise MappingError(f"layer {layer} reads the KV cache of layer {source}, which is on another pipeline "
                               "stage; split the layers on CLA pair boundaries")
        return [s for s in stage_layers if self.is_producer(s)].index(source)
