"""HunyuanForCausalLM for the TensorRT-LLM 1.2.x TensorRT engine: decoder layers, MoE / dense MLP, RoPE inputs,
the per-layer KV-cache layout (CLA) and the pipeline-stage inputs.

Per layer (names as in the checkpoint, see :mod:`hunyuan_trtllm.checkpoints.weight_plan`):

- ``input_layernorm`` -> :class:`~.attention.HunyuanAttention` (``attention.qkv`` or, CLA consumers,
  ``attention.q``; ``dense``; ``q_layernorm``/``k_layernorm``) -> residual;
- ``post_layernorm`` -> MLP -> residual, where the MLP is
  - A13B / Large: ``SharedMoE`` with ``use_shared_gate=False`` (the shared expert is always on and added to the
    routed output before one all-reduce), router in float32 (``mlp.router``), experts through the MoE plugin
    (``mlp.fc`` = [up; gate] per expert, ``mlp.proj``), EP/TP from ``mapping``, routing from
    ``moe.normalization_mode`` (RENORMALIZE for top-8, NONE for Large's top-1);
  - Hy3 (``hunyuan.routing.scoring`` sigmoid): :class:`~.hy3.Hy3SharedMoE`, the same layer with Hy3's routing
    computed in the graph (sigmoid, selection-only ``mlp.expert_bias``, renormalise, x ``routed_scaling_factor``);
  - dense: ``GatedMLP`` (``fc`` = gate_proj, activated; ``gate`` = up_proj; ``proj`` = down_proj), also for Hy3's
    dense layer 0 (``hunyuan.mlp_layer_types``, width ``hunyuan.dense_intermediate_size``).

Hy3's ``lm_head`` is float32 when ``hunyuan.lm_head_dtype`` says so (:class:`~.hy3.Float32Head`).

FP8 (``quant_algo: FP8``) needs nothing here: ``PretrainedModel.__post_init__`` runs TensorRT-LLM's ``quantize``,
which swaps ColumnLinear/RowLinear for FP8Linear/FP8RowLinear (weights_scaling_factor, activation_scaling_factor
``[1]``), rebuilds the MoE with the FP8 quant mode (per-expert ``[E_local, 1]`` weight scales, one ``[1]``
activation scale), leaves what ``exclude_modules`` names (router, lm_head, embeddings, norms), and with an FP8 KV
cache gives every ``Attention`` ``kv_cache_scaling_factor``/``kv_cache_rcp_scaling_factor`` ``[1]``.

RoPE: cos/sin are computed once per forward from ``position_ids`` (``position_ids * inv_freq`` in float32, as
Hugging Face does) and handed to every layer. The runtime (C++ ``TransformerBuffers``) feeds ``position_ids`` to
every pipeline stage, but TensorRT-LLM's ``prepare_inputs`` declares it on the first stage only, so later stages
declare it themselves (:meth:`HunyuanForCausalLM.prepare_inputs`).

Not supported (refused at build time with one line): LoRA, speculative decoding, a contiguous KV cache with CLA.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from tensorrt_llm._utils import pad_vocab_size
from tensorrt_llm.functional import PositionEmbeddingType, Tensor, cast, constant, cos, recv, send, sin, unsqueeze
from tensorrt_llm.layers.embedding import Embedding
from tensorrt_llm.layers.linear import ColumnLinear
from tensorrt_llm.layers.mlp import GatedMLP
from tensorrt_llm.layers.moe import MOE, SharedMoE
from tensorrt_llm.layers.normalization import RmsNorm
from tensorrt_llm.models.modeling_utils import DecoderModelForCausalLM
from tensorrt_llm.module import Module, ModuleList

from hunyuan_trtllm.errors import UserError
from hunyuan_trtllm.plugins.attention import HunyuanAttention, RopeCosSin, SharedKv
from hunyuan_trtllm.plugins.config import HunyuanConfig
from hunyuan_trtllm.plugins.hy3 import Float32Head, hy3_moe_class


def build_mlp(config: HunyuanConfig, layer_idx: int) -> Module:
    """The layer's MLP: routed experts + always-on shared expert (Hy3: with its own routing, :mod:`.hy3`), routed
    experts only, or a dense gated MLP (dense models, and Hy3's first ``first_k_dense_replace`` layers)."""
    mapping = config.mapping
    dense_layer = config.hunyuan.get("mlp_layer_types", [None] * (layer_idx + 1))[layer_idx] == "dense"
    if not config.moe.has_moe() or dense_layer:
        width = config.hunyuan.get("dense_intermediate_size", config.intermediate_size) if dense_layer else (
            config.intermediate_size)
        return GatedMLP(hidden_size=config.hidden_size, ffn_hidden_size=width,
                        hidden_act="silu" if dense_layer else config.hidden_act, bias=False, dtype=config.dtype,
                        tp_group=mapping.tp_group, tp_size=mapping.tp_size, quant_mode=config.quant_mode)
    routing = config.hunyuan.get("routing") or {}
    if routing.get("scoring") == "sigmoid":
        moe_class = hy3_moe_class(routing.get("routed_scaling_factor", 1.0), routing.get("renormalize", True))
        return moe_class(moe_config=config.moe, hidden_size=config.hidden_size,
                         ffn_hidden_size=config.intermediate_size, hidden_act=config.hidden_act, mapping=mapping,
                         bias=False, dtype=config.dtype, tp_group=mapping.tp_group, tp_size=mapping.tp_size,
                         quant_mode=config.quant_mode)
    if config.moe.shared_expert_intermediate_size > 0:
        return SharedMoE(moe_config=config.moe, hidden_size=config.hidden_size,
                         ffn_hidden_size=config.intermediate_size, hidden_act=config.hidden_act, mapping=mapping,
                         bias=False, dtype=config.dtype, tp_group=mapping.tp_group, tp_size=mapping.tp_size,
                         quant_mode=config.quant_mode, use_shared_gate=False, use_side_stream=False)
    return MOE(moe_config=config.moe, hidden_size=config.hidden_size, ffn_hidden_size=config.intermediate_size,
               hidden_act=config.hidden_act, mapping=mapping, bias=False, dtype=config.dtype,
               tp_group=mapping.tp_group, tp_size=mapping.tp_size, quant_mode=config.quant_mode)


class HunyuanDecoderLayer(Module):
    def __init__(self, config: HunyuanConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.input_layernorm = RmsNorm(normalized_shape=config.hidden_size, eps=config.norm_epsilon,
                                       dtype=config.dtype)
        self.attention = HunyuanAttention(config, layer_idx)
        self.post_layernorm = RmsNorm(normalized_shape=config.hidden_size, eps=config.norm_epsilon,
                                      dtype=config.dtype)
        self.mlp = build_mlp(config, layer_idx)

    def forward(self, hidden_states: Tensor, rope: RopeCosSin, shared_kv: SharedKv | None, past_key_value: Any,
                use_cache: bool, kv_cache_params: Any, attention_params: Any) -> tuple[Tensor, Any, SharedKv]:
        """hidden [T, H] -> (hidden [T, H], present KV or None, this layer's (k, v))."""
        attention_output, present, kv = self.attention(
            self.input_layernorm(hidden_states), rope, shared_kv=shared_kv, past_key_value=past_key_value,
            use_cache=use_cache, kv_cache_params=kv_cache_params, attention_params=attention_params)
        hidden_states = hidden_states + attention_output
        hidden_states = hidden_states + self.mlp(self.post_layernorm(hidden_states))
        return hidden_states, present, kv


class HunyuanDecoderLayerList(ModuleList):
    """The layers of this pipeline stage; each CLA producer's (k, v) is handed to the consumers after it."""

    def __init__(self, config: HunyuanConfig) -> None:
        self.layer_list = config.mapping.pp_layers(config.num_hidden_layers)
        super().__init__([HunyuanDecoderLayer(config, idx) for idx in self.layer_list])
        self.kv_layout = config.kv_layout

    def forward(self, hidden_states: Tensor, rope: RopeCosSin, use_cache: bool, kv_cache_params: Any,
                attention_params: Any) -> tuple[Tensor, list[Any]]:
        # past_key_value's length is TensorRT-LLM's num_attn_layers_prev_rank (on later stages the mean attention-layer
        # count of the earlier ones, fewer than this stage's layers with CLA): never zip the layers with it
        past = list(kv_cache_params.past_key_value or [])
        presents: list[Any] = []
        produced: dict[int, SharedKv] = {}
        for index, layer in enumerate(self):
            past_key_value = past[index] if index < len(past) else None  # all None with the paged KV cache
            source = self.kv_layout.source_layer[layer.layer_idx]
            hidden_states, present, kv = layer(hidden_states, rope, produced.get(source), past_key_value,
                                               use_cache, kv_cache_params, attention_params)
            if layer.attention.owns_kv_cache:
                produced[layer.layer_idx] = kv
                presents.append(present)
        return hidden_states, presents


class HunyuanModel(Module):
    def __init__(self, config: HunyuanConfig) -> None:
        super().__init__()
        self.mapping = config.mapping
        if self.mapping.is_first_pp_rank():
            # use_parallel_embedding: ceil(V/tp) vocabulary rows per rank (sharding_dim 0), looked up and all-reduced
            parallel = config.use_parallel_embedding and self.mapping.tp_size > 1
            self.vocab_embedding = Embedding(config.vocab_size, config.hidden_size, dtype=config.dtype,
                                             tp_size=self.mapping.tp_size if parallel else 1,
                                             tp_group=self.mapping.tp_group if parallel else None,
                                             sharding_dim=config.embedding_sharding_dim,
                                             tp_rank=self.mapping.tp_rank)
        self.layers = HunyuanDecoderLayerList(config)
        if self.mapping.is_last_pp_rank():
            self.ln_f = RmsNorm(normalized_shape=config.hidden_size, eps=config.norm_epsilon, dtype=config.dtype)
        self.inv_freq = rotary_inv_freq(config.rotary_base, config.head_size)  # [d/2] float32, a graph constant
        self.uses_cla = not all(config.kv_layout.is_producer(layer) for layer in range(config.num_hidden_layers))

    def forward(self, input_ids: Tensor, position_ids: Tensor | None = None, use_cache: bool = False,
                attention_mask: Tensor | None = None, kv_cache_params: Any = None, attention_params: Any = None,
                hidden_states: Tensor | None = None, prompt_embedding_table: Tensor | None = None,
                prompt_tasks: Tensor | None = None, prompt_vocab_size: Tensor | None = None,
                lora_params: Any = None, spec_decoding_params: Any = None) -> Any:
        """input_ids [T] (or the previous stage's hidden [T, H]) -> hidden [T, H] (and presents with a KV cache)."""
        refuse_unsupported(lora_params, spec_decoding_params, attention_mask)
        if self.uses_cla and use_cache and kv_cache_params.kv_cache_block_offsets is None:
            raise UserError("Hunyuan-Large (CLA) needs a paged KV cache: build with --kv_cache_type paged")
        if self.mapping.is_first_pp_rank():
            ptuning = [] if prompt_embedding_table is None else [prompt_embedding_table, prompt_tasks,
                                                                 prompt_vocab_size]
            hidden_states = self.vocab_embedding(input_ids, *ptuning)
        else:
            hidden_states = recv(hidden_states, self.mapping.prev_pp_rank())
        if position_ids is None:
            raise UserError("the Hunyuan TensorRT-engine model needs the position_ids input (RoPE is in the graph)")
        rope = rotary_cos_sin(position_ids, self.inv_freq)
        hidden_states, presents = self.layers(hidden_states, rope, use_cache, kv_cache_params, attention_params)
        if self.mapping.is_last_pp_rank():
            hidden_states = self.ln_f(hidden_states)
        else:
            hidden_states = send(hidden_states, self.mapping.next_pp_rank())
        return (hidden_states, tuple(presents)) if use_cache else hidden_states


class HunyuanForCausalLM(DecoderModelForCausalLM):
    """Registered in ``tensorrt_llm.models.MODEL_MAP`` for every Hunyuan architecture name."""

    config_class = HunyuanConfig

    def __init__(self, config: HunyuanConfig) -> None:
        transformer = HunyuanModel(config)
        lm_head = None
        if config.mapping.is_last_pp_rank():
            fp32_head = config.hunyuan.get("lm_head_dtype") == "float32"  # Hy3's enable_lm_head_fp32
            lm_head = (Float32Head if fp32_head else ColumnLinear)(
                config.hidden_size, pad_vocab_size(config.vocab_size, config.mapping.tp_size), bias=False,
                dtype="float32" if fp32_head else config.dtype, tp_group=config.mapping.tp_group,
                tp_size=config.mapping.tp_size, gather_output=True)  # [V_pad / tp, H]
        with rope_tables_off(config):  # RoPE runs in the graph from rotary_base; the plugin's tables are never read
            super().__init__(config, transformer, lm_head)

    def prepare_attention_inputs(self, *, num_layers: int, mapping: Any = None, attn_layer_idx: list[int] | None = None,
                                 num_kv_heads_per_layer: list[int] | None = None, **kwargs: Any) -> dict[str, Any]:
        """KV-cache inputs for this stage's layers that own a KV cache (CLA consumers read their producer's).

        TensorRT-LLM 1.2 declares ``host_kv_cache_pool_mapping`` [n, 2] and ``host_max_attention_window_sizes`` [n]
        with n = ``num_attn_layers_prev_rank``: the stage's *layer* count on the first stage, the attention layers of
        the earlier stages divided by the stage index elsewhere (generation_mixin.py). The C++ runtime feeds one row
        per attention layer of the stage (kvCacheManager.cpp ``[numLayers, 2]``, numLayers =
        ``countLocalLayers(kATTENTION)``) and ``TllmRuntime`` throws when the shapes differ. They differ with CLA
        (Large: 4 layers, 2 KV-cache layers) and with uneven pipeline splits (3 layers on 2 stages). So the stage's
        inputs are declared for an equivalent model of KV-cache layers only, L per stage for this stage's L: n = L on
        every stage, the plugin's ``layer_idx`` (:meth:`KvLayout.cache_slot`) indexing the same rows.
        """
        mapping = self.config.mapping if mapping is None else mapping
        if attn_layer_idx is None:
            layout = self.config.kv_layout
            local = [layer for layer in mapping.pp_layers(num_layers) if layout.is_producer(layer)]
            num_layers = len(local) * mapping.pp_size
            attn_layer_idx = list(range(num_layers))
            num_kv_heads_per_layer = [self.config.num_key_value_heads] * num_layers
        return super().prepare_attention_inputs(num_layers=num_layers, mapping=mapping, attn_layer_idx=attn_layer_idx,
                                                num_kv_heads_per_layer=num_kv_heads_per_layer, **kwargs)

    def prepare_inputs(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """TensorRT-LLM's inputs, plus ``position_ids`` on pipeline stages after the first (needed for RoPE)."""
        inputs = super().prepare_inputs(*args, **kwargs)
        if inputs.get("position_ids") is None and inputs.get("hidden_states") is not None:
            inputs["position_ids"] = stage_position_ids(inputs["hidden_states"])
        return inputs


@contextmanager
def rope_tables_off(config: HunyuanConfig) -> Iterator[None]:
    """``DecoderModelForCausalLM.__init__`` calls ``Attention.create_attention_const_params(model, config)``, which
    builds float32 RoPE tables of ``max_position_embeddings`` rows for a RoPE ``position_embedding_type`` (two of
    [positions, head_dim], 128 MiB each per rank at 262144 positions), and keeps the type for
    ``fill_attention_params``. Our plugin calls use no rotary: construct with ``learned_absolute`` (no tables, nothing
    filled in) and restore the config, whose engine config.json keeps ``rope_gpt_neox``."""
    kept = config.position_embedding_type
    config.position_embedding_type = PositionEmbeddingType.learned_absolute
    try:
        yield
    finally:
        config.position_embedding_type = kept


def rotary_inv_freq(base: float, head_dim: int) -> np.ndarray:
    """RoPE inverse frequencies ``base ** (-2i / d)`` for i < d/2 (float32, like Hugging Face's)."""
    return (1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)).astype(np.float32)


def rotary_cos_sin(position_ids: Tensor, inv_freq: np.ndarray) -> RopeCosSin:
    """position_ids [T] -> cos, sin [T, 1, d/2] float32 (one row per token; the 1 broadcasts over heads)."""
    angles = unsqueeze(cast(position_ids, "float32"), position_ids.ndim()) * constant(inv_freq)  # [T, d/2]
    return unsqueeze(cos(angles), angles.ndim() - 1), unsqueeze(sin(angles), angles.ndim() - 1)


def stage_position_ids(hidden_states: Tensor) -> Tensor:
    """A ``position_ids`` network input shaped like the stage's token dimensions ([T], or [B, S] when padded)."""
    token_dims = hidden_states.ndim() - 1
    names = ["position_ids_num_tokens_range"] if token_dims == 1 else ["batch_size_beam_width",
                                                                       "position_ids_inlen_range"]
    dim_range = OrderedDict((name, [[profile.min[dim], profile.opt[dim], profile.max[dim]]
                                    for profile in hidden_states.profiles]) for dim, name in enumerate(names))
    return Tensor(name="position_ids", dtype="int32", shape=[-1] * token_dims, dim_range=dim_range)


def refuse_unsupported(lora_params: Any, spec_decoding_params: Any, attention_mask: Any) -> None:
    """One clear line for build options this model definition does not implement."""
    if lora_params is not None:
        raise UserError("LoRA is not supported by the Hunyuan TensorRT-engine model")
    if spec_decoding_params is not None:
        raise UserError("speculative decoding is not supported by the Hunyuan TensorRT-engine model")
    if attention_mask is not None:
        raise UserError("the Hunyuan TensorRT-engine model needs the GPT-attention plugin (--gpt_attention_plugin)")
