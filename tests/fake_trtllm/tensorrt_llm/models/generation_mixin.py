"""tensorrt_llm/models/generation_mixin.py: the network inputs of a decoder (``prepare_basic_inputs``,
``prepare_attention_inputs``), for the build this project makes: GPT-attention plugin, packed input
(``remove_input_padding``), paged KV cache, one optimization profile (``multiple_profiles`` off), beam width 1.

Declared as the real code declares them (names, ``trt`` dtypes, shapes, dimension names and ranges):

- first pipeline stage: ``input_ids`` [-1] int32 and ``position_ids`` [-1] int32; later stages:
  ``hidden_states_input`` [-1, hidden] in the model dtype (no ``position_ids``: a model that needs positions on
  later stages declares them itself); last stage: ``last_token_ids`` [-1] int32;
- attention: ``sequence_length``, ``host_request_types``, ``host_past_key_value_lengths``, ``context_lengths``,
  ``host_context_lengths`` [-1] int32; ``host_runtime_perf_knobs`` [16] and ``host_context_progress`` [1] int64;
  ``host_max_attention_window_sizes`` [n] and ``host_kv_cache_pool_mapping`` [n, 2] int32, with n =
  ``num_attn_layers_prev_rank`` (the stage's layer count on the first stage, the mean attention-layer count of the
  previous stages otherwise: the real formula); ``host_sink_token_length`` [1]; ``kv_cache_block_offsets`` and
  ``host_kv_cache_block_offsets`` [pools, -1, 2, -1] int32 (pools = distinct KV-head counts of the stage's
  attention layers); ``host_kv_cache_pool_pointers`` [pools, 2] int64; ``cache_indirection`` [-1, -1, -1] int32.
Not modelled: ``all_reduce_workspace`` (the custom all-reduce plugin's input), LoRA, speculative decoding,
multimodal inputs, padded input, contiguous KV cache.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import tensorrt as trt

from tensorrt_llm.functional import Tensor
from tensorrt_llm.mapping import SINGLE_GPU


def default_range(max_range, offset=0, min_range=1, opt_offset=0):
    result = [min_range, (max_range + min_range + opt_offset) // 2, max_range]
    return [elem + offset for elem in result]


def _paged(kv_cache_type) -> bool:
    name = getattr(kv_cache_type, "name", str(kv_cache_type)).lower()
    if name not in ("paged", "disabled"):
        raise NotImplementedError(f"stand-in: KV cache type {kv_cache_type} is not modelled (paged only)")
    return name == "paged"


class GenerationMixin:
    def prepare_attention_inputs(self, *, max_batch_size, max_beam_width, max_input_len, max_seq_len, num_kv_heads,
                                 head_size, num_layers, kv_dtype, kv_cache_type, num_profiles=1,
                                 enable_ctx_gen_opt_profiles=False, remove_input_padding=False,
                                 use_gpt_attention_plugin=False, tokens_per_block=32, mapping=SINGLE_GPU,
                                 streamingllm=False, attn_layer_idx=None, opt_batch_size=None,
                                 num_kv_heads_per_layer=None):
        if attn_layer_idx is not None and num_kv_heads_per_layer is not None:
            assert len(attn_layer_idx) == len(num_kv_heads_per_layer)
        paged = _paged(kv_cache_type)
        bb_range = [default_range(max_batch_size * max_beam_width)] * num_profiles
        kv_range = default_range(max_seq_len)
        layers_range = mapping.pp_layers(num_layers)
        attn_layer_idx = list(range(num_layers)) if attn_layer_idx is None else attn_layer_idx
        local_attn_layers = [i for i in layers_range if i in attn_layer_idx]
        lower = attn_layer_idx.index(local_attn_layers[0])
        prev_rank = lower // mapping.pp_rank if mapping.pp_rank != 0 else len(layers_range)
        heads = [(n + mapping.tp_size - 1) // mapping.tp_size for n in num_kv_heads_per_layer or []]
        pools = 1 if not heads else len(set(heads[lower:lower + len(local_attn_layers)]))
        inputs = {"attn_layer_idx": attn_layer_idx, "num_kv_heads_per_layer": num_kv_heads_per_layer,
                  "past_key_value": [None] * prev_rank, "attention_mask": None}
        blocks = [[math.ceil(kv_range[i] / tokens_per_block) for i in range(3)]] * num_profiles
        if paged:
            offsets_range = OrderedDict([("num_kv_cache_pools", [pools] * num_profiles), ("batch_size_beam_width",
                                         bb_range), ("kv", [2] * num_profiles), ("max_blocks_per_seq", blocks)])
            inputs["kv_cache_block_offsets"] = Tensor(name="kv_cache_block_offsets", dtype=trt.int32,
                                                      shape=[pools, -1, 2, -1], dim_range=offsets_range)
            inputs["host_kv_cache_block_offsets"] = Tensor(name="host_kv_cache_block_offsets", dtype=trt.int32,
                                                           shape=[pools, -1, 2, -1], dim_range=offsets_range)
            inputs["host_kv_cache_pool_pointers"] = Tensor(
                name="host_kv_cache_pool_pointers", dtype=trt.int64, shape=[pools, 2],
                dim_range=OrderedDict([("num_pools_layers", [pools] * num_profiles),
                                       ("num_pools_kv", [2] * num_profiles)]))
            inputs["host_kv_cache_pool_mapping"] = Tensor(
                name="host_kv_cache_pool_mapping", dtype=trt.int32, shape=[prev_rank, 2],
                dim_range=OrderedDict([("pools_mapping", [prev_rank] * num_profiles),
                                       ("layer_cache_pool_locator", [2] * num_profiles)]))
        if not use_gpt_attention_plugin:
            inputs["attention_mask"] = Tensor(name="attention_mask", dtype=trt.int32, shape=[-1, -1],
                                              dim_range=OrderedDict([("batch_size_beam_width", bb_range),
                                                                     ("mask_len", [kv_range] * num_profiles)]))
        batch = OrderedDict([("batch_size_beam_width", bb_range)])
        plugin = ["sequence_length", "host_past_key_value_lengths"] if paged else []
        plugin += ["host_request_types", "context_lengths"] + (["host_context_lengths"] if remove_input_padding else [])
        for name in plugin if use_gpt_attention_plugin else []:
            inputs[name] = Tensor(name=name, dtype=trt.int32, shape=[-1], dim_range=batch)
        if use_gpt_attention_plugin:
            inputs.update(_plugin_host_inputs(prev_rank, num_profiles))
        if paged:
            inputs["cache_indirection"] = Tensor(
                name="cache_indirection", dtype=trt.int32, shape=[-1, -1, -1],
                dim_range=OrderedDict([("batch_size_cache", [default_range(max_batch_size)] * num_profiles),
                                       ("beam_width", [default_range(max_beam_width)] * num_profiles),
                                       ("max_seq_len", [kv_range] * num_profiles)]))
        return inputs

    def prepare_basic_inputs(self, *, max_batch_size, max_beam_width, max_input_len, max_seq_len, max_num_tokens,
                             hidden_size, num_kv_heads, head_size, num_layers, kv_dtype, kv_cache_type,
                             remove_input_padding=False, use_gpt_attention_plugin=False, use_gemm_plugin=False,
                             tokens_per_block=32, gather_context_logits=False, dtype=None, num_heads=None,
                             mapping=SINGLE_GPU, opt_num_tokens=None, **unmodelled):
        if not remove_input_padding:
            raise NotImplementedError("stand-in: only packed input (remove_input_padding) is modelled")
        opt = min(max_num_tokens, max_batch_size * max_beam_width) if opt_num_tokens is None else opt_num_tokens
        tokens = OrderedDict([("num_tokens", [[1, opt, max_num_tokens]])])
        inputs = {"input_ids": None, "position_ids": None, "hidden_states_input": None, "last_token_ids": None}
        if mapping.is_first_pp_rank():
            inputs["input_ids"] = Tensor(name="input_ids", dtype=trt.int32, shape=[-1], dim_range=tokens)
            inputs["position_ids"] = Tensor(name="position_ids", dtype=trt.int32, shape=[-1], dim_range=OrderedDict(
                [("position_ids_num_tokens_range", [[1, opt, max_num_tokens]])]))
        else:
            assert dtype is not None and num_heads is not None
            inputs["hidden_states_input"] = Tensor(name="hidden_states_input", dtype=dtype, shape=[-1, hidden_size],
                                                   dim_range=OrderedDict([*tokens.items(),
                                                                          ("hidden_size", [hidden_size])]))
        if mapping.is_last_pp_rank() and not gather_context_logits:
            inputs["last_token_ids"] = Tensor(name="last_token_ids", dtype=trt.int32, shape=[-1], dim_range=OrderedDict(
                [("batch_size_last_token_ids", [default_range(max_batch_size * max_beam_width)])]))
        inputs.update(self.prepare_attention_inputs(
            max_batch_size=max_batch_size, max_beam_width=max_beam_width, max_input_len=max_input_len,
            max_seq_len=max_seq_len, num_kv_heads=num_kv_heads, head_size=head_size, num_layers=num_layers,
            kv_dtype=kv_dtype, num_profiles=1, enable_ctx_gen_opt_profiles=False,
            remove_input_padding=remove_input_padding, use_gpt_attention_plugin=use_gpt_attention_plugin,
            kv_cache_type=kv_cache_type, tokens_per_block=tokens_per_block, mapping=mapping))
        return inputs


def _plugin_host_inputs(prev_rank: int, num_profiles: int) -> dict:
    """The GPT-attention plugin's host inputs: perf knobs, context progress, window sizes, sink length."""
    inputs = {}
    inputs["host_runtime_perf_knobs"] = Tensor(name="host_runtime_perf_knobs", dtype=trt.int64, shape=[16],
                                               dim_range=OrderedDict([("perf_knob_size", [16] * num_profiles)]))
    inputs["host_context_progress"] = Tensor(name="host_context_progress", dtype=trt.int64, shape=[1],
                                             dim_range=OrderedDict([("context_progress_size",
                                                                     [1] * num_profiles)]))
    inputs["host_max_attention_window_sizes"] = Tensor(
        name="host_max_attention_window_sizes", dtype=trt.int32, shape=[prev_rank],
        dim_range=OrderedDict([("num_layers", [prev_rank] * num_profiles)]))
    inputs["host_sink_token_length"] = Tensor(name="host_sink_token_length", dtype=trt.int32, shape=[1],
                                              dim_range=OrderedDict([("scalar", [1] * num_profiles)]))
    return inputs
