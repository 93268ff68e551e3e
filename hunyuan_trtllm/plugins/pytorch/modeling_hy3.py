"""Hy3 (``HYV3ForCausalLM``) for TensorRT-LLM's PyTorch backend (TensorRT-LLM >= 1.2).

Imported by :func:`hunyuan_trtllm.plugins.pytorch.register` (which checks the version) or, in TensorRT-LLM's worker
processes, when they unpickle the registered model classes. Built from TensorRT-LLM's own modules:

- **Attention**: ``QKNormRoPEAttention`` (TensorRT-LLM's Qwen3 attention): q/k RMS-normalised per head over
  ``head_dim`` with one weight vector (``q_norm`` / ``k_norm``, Hy3's own tensor names) **before** NeoX RoPE,
  theta from the config, no scaling (shared/reference/hy3.md §c). The fused norm+RoPE kernel is left off.
- **MoE** (layers >= ``first_k_dense_replace``): a float32 router (:class:`Hy3Gate`, ``F.linear`` on the float32
  hidden state) and TensorRT-LLM's fused MoE with ``DeepSeekV3MoeRoutingMethod(n_group=1, topk_group=1,
  routed_scaling_factor)``: sigmoid, top-k of sigmoid + ``expert_bias``, unbiased weights renormalised and scaled
  — Hy3's routing exactly (see :mod:`.hy3_routing`, which tests the equivalence). Without ``route_norm`` the
  routing is :class:`Hy3Routing` instead. The shared expert (a ``GatedMLP``) is always added.
- **Dense layer 0**: a ``GatedMLP`` of ``intermediate_size``.
- **lm_head in float32** when ``enable_lm_head_fp32`` (:class:`Float32LMHead`).
- **Weights**: Tencent's layout, transformers' outer layout and the FP8 release through
  :func:`~hunyuan_trtllm.plugins.pytorch.hy3_weights.hy3_module_weights`; the MTP layer is not loaded.

Not run on a GPU yet (tests/test_gpu_pytorch_hy3.py is written for one): the module is checked on CPU only by
ruff and by the tests of its pure parts (routing, weight names).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from tensorrt_llm._torch.attention_backend.interface import (
    PositionalEmbeddingParams,
    PositionEmbeddingType,
    RopeParams,
)
from tensorrt_llm._torch.model_config import ModelConfig
from tensorrt_llm._torch.models.modeling_utils import DecoderModel, DecoderModelForCausalLM, register_auto_model
from tensorrt_llm._torch.modules.decoder_layer import DecoderLayer
from tensorrt_llm._torch.modules.embedding import Embedding, LMHead
from tensorrt_llm._torch.modules.fused_moe import BaseMoeRoutingMethod, DeepSeekV3MoeRoutingMethod, create_moe
from tensorrt_llm._torch.modules.gated_mlp import GatedMLP
from tensorrt_llm._torch.modules.linear import TensorParallelMode
from tensorrt_llm._torch.modules.qk_norm_attention import QKNormRoPEAttention
from tensorrt_llm._torch.modules.rms_norm import RMSNorm
from tensorrt_llm._torch.utils import AuxStreamType
from torch import nn

from hunyuan_trtllm.checkpoints.spec import HYV3, ModelSpec, parse_spec
from hunyuan_trtllm.errors import ConfigError
from hunyuan_trtllm.plugins.pytorch.hy3_config import register_hy3_config
from hunyuan_trtllm.plugins.pytorch.hy3_routing import route_sigmoid_bias
from hunyuan_trtllm.plugins.pytorch.hy3_weights import hy3_module_weights, module_weights


def hy3_spec(model_config: ModelConfig) -> ModelSpec:
    """The :class:`ModelSpec` of the checkpoint TensorRT-LLM is loading, checked for what this model implements."""
    spec = parse_spec(model_config.pretrained_config.to_dict(), "config.json")
    if not spec.is_hy3:
        raise ConfigError(f"{HYV3} model given a {spec.architecture} config")
    return spec


class Hy3Gate(nn.Module):
    """The float32 router ``[E, H]`` and the float32 selection bias ``[E]`` (``mlp.gate`` in module names)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(spec.num_experts, spec.hidden_size, dtype=torch.float32),
                                   requires_grad=False)
        self.e_score_correction_bias = nn.Parameter(torch.zeros(spec.num_experts, dtype=torch.float32),
                                                    requires_grad=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden_states.float(), self.weight)  # [T, E] float32

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.weight.data.copy_(weights["weight"].float())
        self.e_score_correction_bias.data.copy_(weights["e_score_correction_bias"].float())


class Hy3Routing(BaseMoeRoutingMethod):
    """Sigmoid + bias selection without renormalisation (``route_norm: false``), by :func:`route_sigmoid_bias`."""

    def __init__(self, top_k: int, scaling: float, bias: Any):
        super().__init__()
        self.top_k, self.scaling, self._bias = top_k, scaling, bias

    def apply(self, router_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return route_sigmoid_bias(router_logits, self._bias(), self.top_k, self.scaling, renormalize=False)


class Hy3MoE(nn.Module):
    """Router (float32) + routed experts + the always-on shared expert."""

    def __init__(self, model_config: ModelConfig, spec: ModelSpec, aux_stream: torch.cuda.Stream):
        super().__init__()
        dtype = model_config.pretrained_config.torch_dtype
        self.hidden_size = spec.hidden_size
        self.gate = Hy3Gate(spec)
        bias = self._bias
        routing = (DeepSeekV3MoeRoutingMethod(top_k=spec.top_k, n_group=1, topk_group=1,
                                              routed_scaling_factor=spec.routed_scaling_factor,
                                              callable_e_score_correction_bias=bias)
                   if spec.route_norm else Hy3Routing(spec.top_k, spec.routed_scaling_factor, bias))
        self.experts = create_moe(routing_method=routing, num_experts=spec.num_experts,
                                  hidden_size=spec.hidden_size, intermediate_size=spec.expert_intermediate_size,
                                  aux_stream_dict={AuxStreamType.MoeChunkingOverlap: aux_stream}, dtype=dtype,
                                  reduce_results=True, model_config=model_config)
        self.shared_experts = GatedMLP(hidden_size=spec.hidden_size, intermediate_size=spec.shared_intermediate_size,
                                       bias=False, dtype=dtype, config=model_config)

    def _bias(self) -> torch.Tensor:
        return self.gate.e_score_correction_bias

    def forward(self, hidden_states: torch.Tensor, attn_metadata: Any) -> torch.Tensor:
        tokens = hidden_states.view(-1, self.hidden_size)
        out = self.experts(tokens, self.gate(tokens), all_rank_num_tokens=attn_metadata.all_rank_num_tokens,
                           use_dp_padding=False)
        return (out + self.shared_experts(tokens)).view(hidden_states.shape)


class Hy3Attention(QKNormRoPEAttention):
    """GQA with per-head QK RMSNorm before RoPE (TensorRT-LLM's Qwen3-style attention)."""

    def __init__(self, model_config: ModelConfig, spec: ModelSpec, layer_idx: int):
        rope = dataclasses.replace(RopeParams(), dim=spec.head_dim, theta=spec.rope_theta,
                                   max_positions=spec.max_position_embeddings)
        super().__init__(
            hidden_size=spec.hidden_size, num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
            max_position_embeddings=spec.max_position_embeddings, bias=False,
            pos_embd_params=PositionalEmbeddingParams(type=PositionEmbeddingType.rope_gpt_neox, rope=rope),
            fuse_qk_norm_rope=False, layer_idx=layer_idx, dtype=model_config.pretrained_config.torch_dtype,
            config=model_config)


class Hy3DecoderLayer(DecoderLayer):
    """Pre-norm block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))`` (dense MLP below first_k_dense_replace)."""

    def __init__(self, model_config: ModelConfig, spec: ModelSpec, layer_idx: int, aux_stream: torch.cuda.Stream):
        super().__init__()
        dtype = model_config.pretrained_config.torch_dtype
        self.layer_idx = layer_idx
        self.input_layernorm = RMSNorm(hidden_size=spec.hidden_size, eps=spec.rms_norm_eps, dtype=dtype)
        self.self_attn = Hy3Attention(model_config, spec, layer_idx)
        self.post_attention_layernorm = RMSNorm(hidden_size=spec.hidden_size, eps=spec.rms_norm_eps, dtype=dtype)
        self.is_moe = spec.is_moe_layer(layer_idx)
        self.mlp = (Hy3MoE(model_config, spec, aux_stream) if self.is_moe else
                    GatedMLP(hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size, bias=False,
                             dtype=dtype, config=model_config))

    def forward(self, position_ids: torch.Tensor, hidden_states: torch.Tensor, attn_metadata: Any,
                residual: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        residual = hidden_states
        hidden_states = self.self_attn(position_ids=position_ids, hidden_states=self.input_layernorm(hidden_states),
                                       attn_metadata=attn_metadata, **kwargs)
        hidden_states = residual + hidden_states
        normed = self.post_attention_layernorm(hidden_states)
        return hidden_states + (self.mlp(normed, attn_metadata) if self.is_moe else self.mlp(normed))


class Hy3Model(DecoderModel):
    """Embedding, the decoder layers (not the MTP layer), final norm."""

    def __init__(self, model_config: ModelConfig):
        super().__init__(model_config)
        spec = hy3_spec(model_config)
        dtype = model_config.pretrained_config.torch_dtype
        aux_stream = torch.cuda.Stream()
        self.spec = spec
        self.padding_idx = spec.pad_token_id
        self.vocab_size = spec.vocab_size
        self.num_hidden_layers = spec.num_layers
        self.embed_tokens = Embedding(spec.vocab_size, spec.hidden_size, dtype=dtype, mapping=model_config.mapping,
                                      tensor_parallel_mode=TensorParallelMode.COLUMN, gather_output=True)
        self.layers = nn.ModuleList([Hy3DecoderLayer(model_config, spec, layer, aux_stream)
                                     for layer in range(spec.num_layers)])
        self.norm = RMSNorm(hidden_size=spec.hidden_size, eps=spec.rms_norm_eps, dtype=dtype)

    def forward(self, attn_metadata: Any, input_ids: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                **kwargs: Any) -> torch.Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        hidden_states = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        for layer in self.layers:
            hidden_states = layer(position_ids=position_ids, hidden_states=hidden_states, attn_metadata=attn_metadata)
        return self.norm(hidden_states)


class Float32LMHead(LMHead):
    """The output projection in float32 (``enable_lm_head_fp32``): float32 weight, input cast to float32."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return super().forward(hidden_states.float(), *args, **kwargs)


@register_auto_model(HYV3)
class HYV3ForCausalLM(DecoderModelForCausalLM):
    """Hy3 causal LM: :class:`Hy3Model` and the (optionally float32) head; loads Tencent's checkpoints."""

    def __init__(self, model_config: ModelConfig):
        model = Hy3Model(model_config)
        super().__init__(model, config=model_config, hidden_size=model.spec.hidden_size,
                         vocab_size=model.spec.vocab_size)
        if model.spec.lm_head_fp32:
            self.lm_head = Float32LMHead(model.spec.vocab_size, model.spec.hidden_size, dtype=torch.float32,
                                         mapping=model_config.mapping,
                                         tensor_parallel_mode=TensorParallelMode.COLUMN, gather_output=True)

    def load_weights(self, weights: Any, *args: Any, **kwargs: Any) -> None:
        """Load the checkpoint's tensors, renamed by :func:`hy3_module_weights`, module by module."""
        mapped = hy3_module_weights(weights, self.model.spec)
        self.model.embed_tokens.load_weights([module_weights(mapped, "model.embed_tokens")])
        self.model.norm.weight.data.copy_(mapped["model.norm.weight"])
        self.lm_head.load_weights([module_weights(mapped, "lm_head")])
        for index, layer in enumerate(self.model.layers):
            prefix = f"model.layers.{index}"
            for norm in ("input_layernorm", "post_attention_layernorm", "self_attn.q_norm", "self_attn.k_norm"):
                layer.get_submodule(norm).weight.data.copy_(mapped[f"{prefix}.{norm}.weight"])
            attn = layer.self_attn
            attn.qkv_proj.load_weights([module_weights(mapped, f"{prefix}.self_attn.{p}_proj") for p in "qkv"])
            attn.o_proj.load_weights([module_weights(mapped, f"{prefix}.self_attn.o_proj")])
            if layer.is_moe:
                layer.mlp.gate.load_weights(module_weights(mapped, f"{prefix}.mlp.gate"))
                layer.mlp.experts.load_weights([module_weights(mapped, f"{prefix}.mlp.experts")])
                _load_gated_mlp(layer.mlp.shared_experts, mapped, f"{prefix}.mlp.shared_experts")
            else:
                _load_gated_mlp(layer.mlp, mapped, f"{prefix}.mlp")


def _load_gated_mlp(mlp: GatedMLP, mapped: dict[str, Any], prefix: str) -> None:
    mlp.gate_up_proj.load_weights([module_weights(mapped, f"{prefix}.{p}_proj") for p in ("gate", "up")])
    mlp.down_proj.load_weights([module_weights(mapped, f"{prefix}.down_proj")])


register_hy3_config()
