"""Hunyuan-Large (``HunYuanForCausalLM``) for TensorRT-LLM's PyTorch backend (TensorRT-LLM >= 1.2).

Imported by :func:`hunyuan_trtllm.plugins.pytorch.register` (which checks the version) or, in TensorRT-LLM's worker
processes, when they unpickle the registered model classes.

Written against TensorRT-LLM 1.2.x and built from its own Hunyuan-A13B model (``modeling_hunyuan_moe``): the
attention (NeoX RoPE with the NTK-alpha base from ``rope_scaling``, then per-head QK RMSNorm) and the weight loader
are TensorRT-LLM's. What Large adds:

- **CLA** (``cla_share_factor`` 2), the way TensorRT-LLM's Gemma 4 shares KV: a consumer layer has a Q-only
  projection and its attention backend uses its producer's layer index, so it reads the producer's KV cache slot and
  writes none of its own. The producer hands the exact K/V it gave the backend to its consumers
  (:class:`~hunyuan_trtllm.plugins.pytorch.cla.SharedKV`); a consumer passes them on with its Q, which re-writes
  identical values into the producer's slot (1.2.x backends take fused QKV and always append). Consumers apply their
  own RoPE and ``query_layernorm`` to Q, with the key-norm ratio folded in at load time
  (:func:`~hunyuan_trtllm.plugins.pytorch.weights.prepare_weights`). Consumer slots are still allocated (no memory
  saving), as for Gemma 4 without a KV-cache layer mask.
- **Top-1 routing without renormalization**: the expert output is scaled by its softmax probability
  (:func:`~hunyuan_trtllm.plugins.pytorch.routing.route_top_k`), router in float32; the shared expert is always on.
- Checkpoints with a fused per-KV-group ``qkv_proj`` or ``gate_and_up_proj`` load too.

Limits: a quantized (FP8) KV cache is refused (a consumer would re-write the producer's slot with its own KV
scale); pipeline stages must keep each producer with its consumers; the MoE routing runs in
``routing_method.apply`` (CUTLASS, the default MoE backend, and VANILLA do that). Not run on a GPU yet: see
tests/test_gpu_pytorch_large.py.
"""

from __future__ import annotations

from typing import Any

import torch
from tensorrt_llm._torch.model_config import ModelConfig
from tensorrt_llm._torch.models.modeling_hunyuan_moe import HunYuanAttention, HunYuanMoEV1ForCausalLM
from tensorrt_llm._torch.models.modeling_utils import DecoderModel, DecoderModelForCausalLM, register_auto_model
from tensorrt_llm._torch.modules.decoder_layer import DecoderLayer
from tensorrt_llm._torch.modules.embedding import Embedding
from tensorrt_llm._torch.modules.fused_moe import DefaultMoeRoutingMethod, RenormalizeMoeRoutingMethod, create_moe
from tensorrt_llm._torch.modules.gated_mlp import GatedMLP
from tensorrt_llm._torch.modules.linear import Linear, TensorParallelMode, WeightMode, WeightsLoadingConfig
from tensorrt_llm._torch.modules.rms_norm import RMSNorm
from tensorrt_llm._torch.utils import AuxStreamType
from torch import nn

from hunyuan_trtllm.checkpoints.spec import LARGE, ModelSpec, NormalizationMode, parse_spec
from hunyuan_trtllm.errors import ConfigError
from hunyuan_trtllm.plugins.pytorch.cla import ClaPlan, SharedKV
from hunyuan_trtllm.plugins.pytorch.hf_config import register_hf_config
from hunyuan_trtllm.plugins.pytorch.routing import route_top_k
from hunyuan_trtllm.plugins.pytorch.weights import prepare_weights


def large_spec(model_config: ModelConfig) -> ModelSpec:
    """The :class:`ModelSpec` of the checkpoint TensorRT-LLM is loading, checked for what this model implements."""
    spec = parse_spec(model_config.pretrained_config.to_dict(), "config.json")
    if not spec.is_moe:
        raise ConfigError(f"{LARGE} needs num_experts > 1 (Hunyuan-Large is a mixture of experts)")
    if spec.head_dim * spec.num_heads != spec.hidden_size:
        raise ConfigError(f"head_dim {spec.head_dim} x {spec.num_heads} heads != hidden_size {spec.hidden_size}")
    quant = model_config.quant_config
    if quant is not None and quant.kv_cache_quant_algo is not None:
        raise ConfigError(f"a quantized KV cache ({quant.kv_cache_quant_algo}) is not supported for Hunyuan-Large's "
                          "cross-layer attention; use kv_cache_config dtype auto")
    return spec


class SoftmaxTopKRouting(DefaultMoeRoutingMethod):
    """TensorRT-LLM's softmax -> top-k routing (no renormalization), computed by :func:`route_top_k`."""

    def apply(self, router_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return route_top_k(router_logits, self.top_k, renormalize=False)


class QOnlyLinear(Linear):
    """A CLA consumer's Q projection where TensorRT-LLM's loader expects a fused QKV: it keeps the q part of the
    ``[q, k, v]`` weight dicts (k and v are empty, the checkpoint has none for this layer)."""

    def load_weights(self, weights: list[dict], *args: Any, **kwargs: Any) -> None:
        super().load_weights(weights[:1], *args, **kwargs)


class HunYuanLargeAttention(HunYuanAttention):
    """TensorRT-LLM's Hunyuan attention with CLA: a producer shares its K/V, a consumer brings Q only."""

    def __init__(self, model_config: ModelConfig, spec: ModelSpec, plan: ClaPlan, layer_idx: int,
                 shared_kv: SharedKV | None):
        super().__init__(model_config, layer_idx=layer_idx, use_qk_norm=spec.use_qk_norm)
        self.shared_kv = shared_kv  # a plain object, not a submodule
        self.is_kv_consumer = not plan.owns_kv_cache(layer_idx)
        self.releases_shared_kv = plan.is_last_consumer(layer_idx)
        if self.is_kv_consumer:
            self.attn.layer_idx = plan.producer_of[layer_idx]  # read (and re-write) the producer's cache slot
            self.qkv_proj = _q_only_projection(model_config, self.qkv_proj.mapping, self.hidden_size, self.q_size)
            del self.key_layernorm  # keys come normalized from the producer

    def apply_rope(self, q: torch.Tensor, k: torch.Tensor | None, v: torch.Tensor | None,
                   position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if self.is_kv_consumer:
            return self._consumer_qkv(q, position_ids)
        q, k, v = super().apply_rope(q, k, v, position_ids)
        if self.shared_kv is not None:
            self.shared_kv.put(k, v)
        return q, k, v

    def _consumer_qkv(self, q: torch.Tensor,
                      position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This layer's Q (RoPE, then its folded ``query_layernorm``) with the producer's K and V."""
        k, v = self.shared_kv.get()
        if self.releases_shared_kv:
            self.shared_kv.release()
        rotary = getattr(self, "rotary_emb", None)  # absent when RoPE is fused into the attention op (no QK-norm)
        if position_ids is not None and rotary is not None:  # else the backend rotates Q and the unrotated K itself
            q, _ = rotary(position_ids, [q, torch.zeros_like(k)])  # the (q, k) pair every version takes
        if self.use_qk_norm:
            q = self.query_layernorm(q.reshape(-1, self.head_dim)).reshape(-1, self.q_size)
        return q, k, v


def _q_only_projection(model_config: ModelConfig, mapping: Any, hidden_size: int, q_size: int) -> QOnlyLinear:
    """A column-parallel Q projection sharded like the q rows of the fused QKV it replaces (``mapping`` is the
    QKV projection's own, which has tp_size 1 under attention data parallelism)."""
    return QOnlyLinear(
        hidden_size,
        mapping.tp_size * q_size,
        bias=False,
        dtype=model_config.pretrained_config.torch_dtype,
        mapping=mapping,
        tensor_parallel_mode=TensorParallelMode.COLUMN,
        weights_loading_config=WeightsLoadingConfig(weight_mode=WeightMode.VANILLA),
        quant_config=model_config.get_quant_config(),
        skip_create_weights_in_init=model_config.skip_create_weights_in_init,
        allreduce_strategy=model_config.allreduce_strategy,
    )


class HunYuanLargeMoE(nn.Module):
    """Router (float32) + routed experts + the always-on shared expert; names match TensorRT-LLM's Hunyuan loader."""

    def __init__(self, model_config: ModelConfig, spec: ModelSpec, aux_stream: torch.cuda.Stream):
        super().__init__()
        dtype = model_config.pretrained_config.torch_dtype
        self.hidden_size = spec.hidden_size
        self.gate = Linear(spec.hidden_size, spec.num_experts, bias=False, dtype=torch.float32)
        routing = (SoftmaxTopKRouting(spec.top_k) if spec.normalization_mode == NormalizationMode.NONE
                   else RenormalizeMoeRoutingMethod(top_k=spec.top_k))
        self.experts = create_moe(
            routing_method=routing,
            num_experts=spec.num_experts,
            hidden_size=spec.hidden_size,
            intermediate_size=spec.expert_intermediate_size,
            aux_stream_dict={AuxStreamType.MoeChunkingOverlap: aux_stream},
            dtype=dtype,
            reduce_results=True,
            model_config=model_config,
        )
        self.shared_mlp = None
        if spec.shared_intermediate_size:
            self.shared_mlp = GatedMLP(hidden_size=spec.hidden_size, intermediate_size=spec.shared_intermediate_size,
                                       bias=False, dtype=dtype, config=model_config)

    def forward(self, hidden_states: torch.Tensor, attn_metadata: Any) -> torch.Tensor:
        tokens = hidden_states.view(-1, self.hidden_size)  # [T, H]
        router_logits = self.gate(tokens.float())  # [T, E] float32, like Tencent's router
        out = self.experts(tokens, router_logits, all_rank_num_tokens=attn_metadata.all_rank_num_tokens,
                           use_dp_padding=False)
        if self.shared_mlp is not None:
            out = out + self.shared_mlp(tokens)
        return out.view(hidden_states.shape)


class HunYuanLargeDecoderLayer(DecoderLayer):
    """Pre-norm decoder layer: ``x + attn(norm(x))``, then ``x + moe(norm(x))``."""

    def __init__(self, model_config: ModelConfig, spec: ModelSpec, plan: ClaPlan, layer_idx: int,
                 shared_kv: SharedKV | None, aux_stream: torch.cuda.Stream):
        super().__init__()
        dtype = model_config.pretrained_config.torch_dtype
        self.layer_idx = layer_idx
        self.input_layernorm = RMSNorm(hidden_size=spec.hidden_size, eps=spec.rms_norm_eps, dtype=dtype)
        self.self_attn = HunYuanLargeAttention(model_config, spec, plan, layer_idx, shared_kv)
        self.post_attention_layernorm = RMSNorm(hidden_size=spec.hidden_size, eps=spec.rms_norm_eps, dtype=dtype)
        self.mlp = HunYuanLargeMoE(model_config, spec, aux_stream)

    def forward(self, position_ids: torch.Tensor, hidden_states: torch.Tensor, attn_metadata: Any,
                residual: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        residual = hidden_states
        hidden_states = self.self_attn(position_ids=position_ids, hidden_states=self.input_layernorm(hidden_states),
                                       attn_metadata=attn_metadata, **kwargs)
        hidden_states = residual + hidden_states
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states), attn_metadata)


class HunYuanLargeModel(DecoderModel):
    """Embedding, the decoder layers (producers and their CLA consumers share a :class:`SharedKV`), final norm."""

    def __init__(self, model_config: ModelConfig):
        super().__init__(model_config)
        spec = large_spec(model_config)
        plan = ClaPlan.from_spec(spec)
        mapping = model_config.mapping
        if mapping.pp_size > 1:
            plan.check_stage(mapping.pp_layers(spec.num_layers))
        dtype = model_config.pretrained_config.torch_dtype
        shared = {producer: SharedKV(producer) for producer in plan.kv_layers if plan.consumers(producer)}
        aux_stream = torch.cuda.Stream()
        self.spec = spec
        self.padding_idx = spec.pad_token_id
        self.vocab_size = spec.vocab_size
        self.num_hidden_layers = spec.num_layers
        self.embed_tokens = Embedding(spec.vocab_size, spec.hidden_size, dtype=dtype, mapping=mapping,
                                      tensor_parallel_mode=TensorParallelMode.COLUMN, gather_output=True)
        self.layers = nn.ModuleList([
            HunYuanLargeDecoderLayer(model_config, spec, plan, layer, shared.get(plan.producer_of[layer]), aux_stream)
            for layer in range(spec.num_layers)
        ])
        self.norm = RMSNorm(hidden_size=spec.hidden_size, eps=spec.rms_norm_eps, dtype=dtype)

    def forward(self, attn_metadata: Any, input_ids: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                **kwargs: Any) -> torch.Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        hidden_states = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        for decoder_layer in self.layers:
            hidden_states = decoder_layer(position_ids=position_ids, hidden_states=hidden_states,
                                          attn_metadata=attn_metadata)
        return self.norm(hidden_states)


@register_auto_model(LARGE)
class HunYuanLargeForCausalLM(HunYuanMoEV1ForCausalLM):
    """Hunyuan-Large: TensorRT-LLM's Hunyuan causal LM (forward, weight loader) around :class:`HunYuanLargeModel`."""

    def __init__(self, model_config: ModelConfig):
        # Skips HunYuanMoEV1ForCausalLM.__init__, which would build the A13B model.
        DecoderModelForCausalLM.__init__(self, HunYuanLargeModel(model_config), config=model_config,
                                         hidden_size=model_config.pretrained_config.hidden_size,
                                         vocab_size=model_config.pretrained_config.vocab_size)

    def load_weights(self, weights: Any, *args: Any, **kwargs: Any) -> None:
        """Split fused tensors and fold the CLA key-norm ratio, then load with TensorRT-LLM's Hunyuan loader."""
        super().load_weights(prepare_weights(weights, self.model.spec), *args, **kwargs)


register_hf_config()
