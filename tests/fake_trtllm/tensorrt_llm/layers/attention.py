"""tensorrt_llm/layers/attention.py: ``Attention.__init__`` (keyword-only; the parameter names below are 1.2's),
``AttentionParams``, ``KeyValueCacheParams`` and the model-level RoPE constants.

- ``attention_head_size`` defaults to ``hidden_size // num_attention_heads``; ``num_attention_heads`` must divide
  by ``tp_size``; per rank: ``num_attention_heads = heads / tp``, ``num_attention_kv_heads = ceil(kv / tp)``
  (KV heads duplicated when ``kv < tp``); ``num_kv_heads`` keeps the global count;
- ``qkv = ColumnLinear(hidden, tp * (heads_local + 2 * kv_local) * head_size, gather_output=False, is_qkv=True)``
  only when ``enable_qkv``; ``dense = RowLinear(tp * heads_local * head_size, hidden)``;
- ``kv_cache_scaling_factor``, ``attention_output_orig_quant_scale``, ``attention_output_sf_scale`` are registered
  as ``None`` (the FP8 KV-cache and FP8-context-FMHA passes set them);
- ``create_attention_const_params(model, config)`` (called by ``DecoderModelForCausalLM.__init__`` with the model's
  config): for RoPE position types it registers the float32 buffers ``embed_positions`` [max_pos, rot_dim],
  ``rotary_inv_freq`` [rot_dim / 2] and ``embed_positions_for_gpt_attention`` [max_pos, rot_dim] on the model
  (values built on the host: their bytes are counted here, not allocated);
- ``fill_attention_params(model, attention_params)`` (``DecoderModelForCausalLM.forward``): for a RoPE
  ``model.position_embedding_type`` it hands those buffers' values to the ``AttentionParams``.
The stand-in's ``Attention`` has no ``forward`` of its own: the Hunyuan attention replaces it.
"""

import math

from tensorrt_llm.functional import AttentionMaskType, PositionEmbeddingType
from tensorrt_llm.layers.linear import ColumnLinear, RowLinear
from tensorrt_llm.module import Module
from tensorrt_llm.parameter import Parameter
from tensorrt_llm.quantization import NO_QUANT


class AttentionParams:
    def __init__(self, sequence_length=None, context_lengths=None, host_context_lengths=None,
                 max_context_length=None, host_request_types=None, encoder_input_lengths=None,
                 encoder_max_input_length=None, host_runtime_perf_knobs=None, host_context_progress=None):
        self.sequence_length, self.context_lengths = sequence_length, context_lengths
        self.host_context_lengths, self.max_context_length = host_context_lengths, max_context_length
        self.host_request_types, self.host_runtime_perf_knobs = host_request_types, host_runtime_perf_knobs
        self.host_context_progress = host_context_progress
        self.embed_positions = self.rotary_inv_freq = self.embed_positions_for_gpt_attention = None

    def fill_attention_const_params_for_rope(self, embed_positions=None, rotary_inv_freq=None,
                                             embed_positions_for_gpt_attention=None, embed_positions_local=None,
                                             rotary_inv_freq_local=None,
                                             embed_positions_for_gpt_attention_local=None):
        self.embed_positions, self.rotary_inv_freq = embed_positions, rotary_inv_freq
        self.embed_positions_for_gpt_attention = embed_positions_for_gpt_attention
        return self


class KeyValueCacheParams:
    def __init__(self, past_key_value=None, host_past_key_value_lengths=None, host_max_attention_window_sizes=None,
                 host_sink_token_length=None, kv_cache_block_offsets=None, host_kv_cache_block_offsets=None,
                 host_kv_cache_pool_pointers=None, host_kv_cache_pool_mapping=None, cache_indirection=None,
                 past_key_value_length=None, cross_kv_cache_block_offsets=None,
                 host_cross_kv_cache_block_offsets=None, host_cross_kv_cache_pool_pointers=None,
                 host_cross_kv_cache_pool_mapping=None):
        self.past_key_value, self.host_past_key_value_lengths = past_key_value, host_past_key_value_lengths
        self.host_max_attention_window_sizes = host_max_attention_window_sizes
        self.host_sink_token_length, self.cache_indirection = host_sink_token_length, cache_indirection
        self.kv_cache_block_offsets, self.host_kv_cache_block_offsets = kv_cache_block_offsets, \
            host_kv_cache_block_offsets
        self.host_kv_cache_pool_pointers = host_kv_cache_pool_pointers
        self.host_kv_cache_pool_mapping = host_kv_cache_pool_mapping


class Attention(Module):
    def __init__(self, *, local_layer_idx, hidden_size, num_attention_heads, num_kv_heads=None,
                 max_position_embeddings=1024, num_layers=1, apply_query_key_layer_scaling=False,
                 attention_head_size=None, qk_layernorm=False, layernorm_type=None, layernorm_share=True,
                 inner_layernorm=False, eps=1e-05, attention_mask_type=AttentionMaskType.padding, bias=True,
                 dtype=None, position_embedding_type=PositionEmbeddingType.learned_absolute,
                 rotary_embedding_base=10000.0, rotary_embedding_base_local=1.0, rotary_embedding_scaling=None,
                 rotary_embedding_percentage=1.0, rope_scaling_short_factors=None, rope_scaling_long_factors=None,
                 rope_scaling_short_mscale=None, rope_scaling_long_mscale=None,
                 original_max_position_embeddings=1024, tp_group=None, tp_size=1, tp_rank=0,
                 quant_mode=NO_QUANT, q_scaling=1.0, cross_attention=False, relative_attention=False,
                 max_distance=0, num_buckets=0, dense_bias=None, clip_qkv=None, alibi_bias_max=8,
                 skip_cross_kv=False, max_attn_value=0.0, block_sparse_params=None,
                 use_implicit_relative_attention=False, reorder=False, enable_qkv=True, cp_group=(0,), cp_size=1,
                 cp_rank=0, max_seqlen_for_logn_scaling=8192, use_logn_scaling=False, is_local=False):
        super().__init__()
        if qk_layernorm or inner_layernorm or relative_attention or use_logn_scaling:
            raise NotImplementedError("stand-in: built-in qk_layernorm/inner_layernorm/relative/logn not modelled")
        if num_attention_heads % tp_size:
            raise AssertionError("num_attention_heads must be divisible by tp_size")
        self.local_layer_idx = local_layer_idx
        self.attention_head_size = attention_head_size or hidden_size // num_attention_heads
        self.num_attention_heads = num_attention_heads // tp_size
        self.num_kv_heads = num_kv_heads if num_kv_heads is not None else num_attention_heads
        self.num_attention_kv_heads = math.ceil(self.num_kv_heads / tp_size)
        self.dtype, self.tp_size, self.tp_rank, self.quant_mode = dtype, tp_size, tp_rank, quant_mode
        self.q_scaling, self.attention_mask_type = q_scaling, attention_mask_type
        self.position_embedding_type = position_embedding_type
        for name in ("kv_cache_scaling_factor", "attention_output_orig_quant_scale", "attention_output_sf_scale"):
            self.register_parameter(name, None)
        q_out = tp_size * self.num_attention_heads * self.attention_head_size
        kv_out = 2 * tp_size * self.num_attention_kv_heads * self.attention_head_size
        if enable_qkv:
            self.qkv = ColumnLinear(hidden_size, q_out + kv_out, bias=bias, dtype=dtype, tp_group=tp_group,
                                    tp_size=tp_size, gather_output=False, is_qkv=True)
        self.dense = RowLinear(q_out, hidden_size, bias=bias if dense_bias is None else dense_bias, dtype=dtype,
                               tp_group=tp_group, tp_size=tp_size)

    @staticmethod
    def create_attention_const_params(model, config) -> None:
        if not config.position_embedding_type.is_rope():
            return
        dim = int(getattr(config, "rotary_dim", config.head_size))
        for name, shape in (("embed_positions", (config.max_position_embeddings, dim)),
                            ("rotary_inv_freq", (dim // 2,)),
                            ("embed_positions_for_gpt_attention", (config.max_position_embeddings, dim))):
            model.register_parameter(name, Parameter(value=HostTable(shape), dtype="float32", is_buffer=True))

    @staticmethod
    def fill_attention_params(model, attention_params):
        if model.position_embedding_type.is_rope():
            attention_params = attention_params or AttentionParams()
            return attention_params.fill_attention_const_params_for_rope(
                model.embed_positions.value, model.rotary_inv_freq.value,
                model.embed_positions_for_gpt_attention.value)
        return attention_params


class HostTable:
    """A float32 table built on the host at model construction (its shape and size only)."""

    def __init__(self, shape) -> None:
        self.shape = tuple(shape)
        self.nbytes = 4 * math.prod(self.shape)
