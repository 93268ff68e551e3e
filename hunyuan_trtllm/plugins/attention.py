"""Hunyuan's attention for the TensorRT-LLM 1.2.x TensorRT engine: RoPE in the graph, then Q/K RMSNorm, then the
GPT-attention plugin with its own rotary turned off. Hy3 (``hunyuan.qk_norm_position: before_rope``) swaps steps 3
and 4: per-head RMSNorm over d (one weight shared by the heads), then RoPE, which is also the order of TensorRT-LLM's
stock ``qk_layernorm`` (norm on the split heads, then the plugin's rotary; trtllm.md section 3.5).

Why not TensorRT-LLM's stock ``Attention.forward``: it applies ``q_layernorm``/``k_layernorm`` to the fused QKV and
lets the plugin rotate afterwards, i.e. norm *before* RoPE; every Hunyuan release normalizes *after* RoPE, and the
two differ unless each norm weight is pair-symmetric (design note 6, trtllm.md §3.5). So ``HunyuanAttention``
subclasses ``Attention`` for its parameters and for TensorRT-LLM's passes that look for ``Attention`` modules
(KV-cache scales, FP8 context FMHA output scale), and replaces the forward pass:

1. ``qkv = self.qkv(x)``                          [T, (nh + 2 nkv) d]   (per rank; T tokens, packed input)
2. split q [T, nh, d], k [T, nkv, d], v [T, nkv, d]
3. RoPE (neox halves) with the model's cos/sin    in float32, cast back to the model dtype
4. ``q_layernorm`` / ``k_layernorm`` per head      RmsNorm over d
5. ``gpt_attention(..., position_embedding_type=learned_absolute, rotary_embedding_dim=0)``: the plugin applies
   no rotary (``rotary_inv_freq``/``rotary_cos_sin`` are not passed), writes the already-rotated K and V to the
   paged KV cache and attends; GQA via ``num_kv_heads``.
6. ``dense`` (RowLinear, all-reduce over TP)

Cross-layer attention (CLA) consumers (Hunyuan-Large's odd layers) have a Q-only projection ``self.q`` and no K
norm. How a consumer reads its producer's KV cache in the TensorRT graph:

- the consumer's plugin call uses the producer's ``layer_idx`` (:meth:`.kv_layout.KvLayout.cache_slot`), i.e. the
  producer's KV-cache pool slot; no KV cache is allocated for consumers (they are ``no_op`` layers for the runtime);
- the GPT-attention plugin of 1.2.x has no "read-only" mode for self-attention: every call appends the current
  tokens' K/V to the slot of its ``layer_idx``. The consumer therefore passes ``concat(q_consumer, k_producer,
  v_producer)``, the producer's *own* rotated, normalized K and its V for the current tokens (handed over by the
  decoder layer list), so the append rewrites the bytes the producer wrote a moment before with identical values
  (with an FP8 KV cache the converter gives the consumer the producer's ``kv_cache_scaling_factor``, so the
  quantized bytes are identical too). The attention itself then runs over the shared cache: a true shared-slot
  read, at the cost of one redundant KV write per consumer layer;
- the consumer's Q norm has the key-norm ratio folded in by the converter (``q_norm_c * k_norm_c / k_norm_p``,
  design note 2), so ``q_c' . k_p == q_c . k_c`` exactly as in Tencent's model.

Requirements that follow: paged KV cache for CLA models (a contiguous cache would give the consumer a second
``present_key_value`` for the same slot), producer and consumer on the same pipeline stage.
"""

from __future__ import annotations

from typing import Any

from tensorrt_llm.functional import (
    AttentionMaskType,
    PositionEmbeddingType,
    Tensor,
    cast,
    concat,
    gpt_attention,
    shape,
    split,
)
from tensorrt_llm.layers.attention import Attention
from tensorrt_llm.layers.linear import ColumnLinear
from tensorrt_llm.layers.normalization import RmsNorm

from hunyuan_trtllm.plugins.config import HunyuanConfig

RopeCosSin = tuple[Tensor, Tensor]  # cos, sin: [T, 1, d/2] float32 (or [B, S, 1, d/2] with padded input)
SharedKv = tuple[Tensor, Tensor]  # a producer's rotated, normalized K and its V: [T, nkv d] each


class HunyuanAttention(Attention):
    """Self-attention of one Hunyuan layer (a KV producer, or a CLA consumer reading its producer's cache)."""

    def __init__(self, config: HunyuanConfig, layer_idx: int) -> None:
        layout = config.kv_layout
        mapping = config.mapping
        self_owned_kv = layout.is_producer(layer_idx)
        super().__init__(
            local_layer_idx=layout.cache_slot(layer_idx, mapping.pp_layers(config.num_hidden_layers)),
            hidden_size=config.hidden_size,
            attention_head_size=config.head_size,
            num_attention_heads=config.num_attention_heads,
            num_kv_heads=config.num_key_value_heads,
            max_position_embeddings=config.max_position_embeddings,
            dtype=config.dtype,
            attention_mask_type=AttentionMaskType.causal,
            bias=False,
            position_embedding_type=PositionEmbeddingType.learned_absolute,  # RoPE is done before the plugin
            tp_group=mapping.tp_group,
            tp_size=mapping.tp_size,
            tp_rank=mapping.tp_rank,
            quant_mode=config.quant_mode,
            enable_qkv=self_owned_kv,  # producers: fused qkv [(nh + 2 nkv) d / tp, H]
        )
        self.owns_kv_cache = self_owned_kv
        if not self_owned_kv:
            self.qkv = None
            self.q = ColumnLinear(config.hidden_size, config.num_attention_heads * config.head_size, bias=False,
                                  dtype=config.dtype, tp_group=mapping.tp_group, tp_size=mapping.tp_size,
                                  gather_output=False)  # [nh d / tp, H]
        self.uses_qk_norm = bool(config.qk_layernorm)
        self.norm_before_rope = config.hunyuan.get("qk_norm_position") == "before_rope"  # Hy3 (hy3.md section c)
        if self.uses_qk_norm:
            self.q_layernorm = RmsNorm(normalized_shape=config.head_size, eps=config.norm_epsilon,
                                       dtype=config.dtype)
            if self_owned_kv:
                self.k_layernorm = RmsNorm(normalized_shape=config.head_size, eps=config.norm_epsilon,
                                           dtype=config.dtype)

    def forward(self, hidden_states: Tensor, rope: RopeCosSin, shared_kv: SharedKv | None = None,
                past_key_value: Tensor | None = None, use_cache: bool = False, kv_cache_params: Any = None,
                attention_params: Any = None) -> tuple[Tensor, Tensor | None, SharedKv]:
        """hidden [T, H] -> (output [T, H], present KV (contiguous cache only), this layer's (k, v) for consumers)."""
        query, key, value = self._project(hidden_states, shared_kv)
        query = self._rotate_and_normalize(query, self.num_attention_heads, rope, "q_layernorm")
        if self.owns_kv_cache:
            key = self._rotate_and_normalize(key, self.num_attention_kv_heads, rope, "k_layernorm")
        qkv = concat([query, key, value], dim=query.ndim() - 1)  # [T, (nh + 2 nkv) d]
        context, present = self._attend(qkv, past_key_value, use_cache, kv_cache_params, attention_params)
        return self.dense(context), present, (key, value)

    def _project(self, hidden_states: Tensor, shared_kv: SharedKv | None) -> tuple[Tensor, Tensor, Tensor]:
        """q [T, nh d], k [T, nkv d], v [T, nkv d]: from the fused qkv, or (consumers) q plus the producer's k, v."""
        if not self.owns_kv_cache:
            if shared_kv is None:
                raise ValueError("a CLA consumer layer needs its producer's K/V")
            return (self.q(hidden_states), *shared_kv)
        qkv = self.qkv(hidden_states)
        kv_size = self.num_attention_kv_heads * self.attention_head_size
        sizes = [self.num_attention_heads * self.attention_head_size, kv_size, kv_size]
        query, key, value = split(qkv, sizes, dim=qkv.ndim() - 1)
        return query, key, value

    def _rotate_and_normalize(self, x: Tensor, num_heads: int, rope: RopeCosSin, norm_name: str) -> Tensor:
        """x [T, heads d] -> rotate each head's halves by its position, then the per-head RMSNorm: [T, heads d]."""
        head = self.attention_head_size
        token_shape = [shape(x, dim) for dim in range(x.ndim() - 1)]
        x = x.view(concat([*token_shape, num_heads, head]))  # [T, heads, d]
        if self.uses_qk_norm and self.norm_before_rope:  # Hy3
            x = getattr(self, norm_name)(x)
        first, second = split(cast(x, "float32"), head // 2, dim=x.ndim() - 1)  # [T, heads, d/2] each
        cos, sin = rope
        rotated = concat([first * cos - second * sin, second * cos + first * sin], dim=x.ndim() - 1)
        x = cast(rotated, self.dtype)
        if self.uses_qk_norm and not self.norm_before_rope:  # every older Hunyuan release
            x = getattr(self, norm_name)(x)
        return x.view(concat([*token_shape, num_heads * head]))

    def _attend(self, qkv: Tensor, past_key_value: Tensor | None, use_cache: bool, kv_cache_params: Any,
                attention_params: Any) -> tuple[Tensor, Tensor | None]:
        """The GPT-attention plugin over this layer's KV-cache slot (a consumer's is its producer's)."""
        quantized_kv = self.kv_cache_scaling_factor is not None
        output_scale = self.attention_output_orig_quant_scale
        return gpt_attention(
            qkv=qkv,
            past_key_value=past_key_value,
            sequence_length=attention_params.sequence_length,
            host_past_key_value_lengths=kv_cache_params.host_past_key_value_lengths,
            host_max_attention_window_sizes=kv_cache_params.host_max_attention_window_sizes,
            host_sink_token_length=kv_cache_params.host_sink_token_length,
            context_lengths=attention_params.context_lengths,
            cache_indirection=kv_cache_params.cache_indirection,
            host_request_types=attention_params.host_request_types,
            layer_idx=self.local_layer_idx,
            num_heads=self.num_attention_heads,
            num_kv_heads=self.num_attention_kv_heads,
            num_kv_heads_origin=self.num_kv_heads,
            hidden_size_per_head=self.attention_head_size,
            q_scaling=self.q_scaling,
            rotary_embedding_dim=0,
            position_embedding_type=PositionEmbeddingType.learned_absolute,
            kv_orig_quant_scale=self.kv_cache_rcp_scaling_factor.value if quantized_kv else None,
            kv_quant_orig_scale=self.kv_cache_scaling_factor.value if quantized_kv else None,
            attention_output_orig_quant_scale=output_scale.value if output_scale is not None else None,
            kv_cache_quant_mode=self.quant_mode,
            max_context_length=attention_params.max_context_length,
            mask_type=self.attention_mask_type,
            tp_size=self.tp_size,
            tp_rank=self.tp_rank,
            kv_cache_block_offsets=kv_cache_params.kv_cache_block_offsets,
            host_kv_cache_block_offsets=kv_cache_params.host_kv_cache_block_offsets,
            host_kv_cache_pool_pointers=kv_cache_params.host_kv_cache_pool_pointers,
            host_kv_cache_pool_mapping=kv_cache_params.host_kv_cache_pool_mapping,
            host_context_lengths=attention_params.host_context_lengths,
            use_cache=use_cache,
            host_runtime_perf_knobs=attention_params.host_runtime_perf_knobs,
            host_context_progress=attention_params.host_context_progress,
        )
