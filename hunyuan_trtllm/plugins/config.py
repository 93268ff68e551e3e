"""HunyuanConfig: TensorRT-LLM 1.2.x's ``PretrainedConfig`` plus the fields our checkpoint's config.json carries.

Imports TensorRT-LLM at module level: only :func:`hunyuan_trtllm.plugins.register` imports this module.

Fields beyond ``PretrainedConfig`` (written by :mod:`hunyuan_trtllm.checkpoints.trtllm_config`):

==========================  ==========================================================================
``moe``                     TensorRT-LLM's ``MoeConfig`` (``num_experts`` 0 for dense models)
``rotary_base``             NTK-alpha already folded in; ``rotary_scaling`` must be null
``qk_layernorm``            per-head RMSNorm of Q and K, applied *after* RoPE (``hunyuan.qk_norm_after_rope``)
``cla_kv_source_layer``     the layer whose KV cache each layer reads (CLA; see :mod:`.kv_layout`)
``num_kv_heads_per_layer``  accepted in the converter's form (zeros) and rewritten in the runtime's form,
                            with ``layer_types``, so the built engine's config.json is what the runtime reads
``hunyuan``                 provenance and generation facts (passed through untouched)
==========================  ==========================================================================

``mapping.auto_parallel`` (written by older TensorRT-LLM ``Mapping.to_dict``) is dropped before TensorRT-LLM's
``Mapping`` sees it: the 1.2-era ``Mapping`` constructor no longer takes it.

Every problem is a one-line :class:`~hunyuan_trtllm.errors.ConfigError` naming the field.
"""

from __future__ import annotations

from typing import Any

from tensorrt_llm.functional import PositionEmbeddingType
from tensorrt_llm.layers.moe import MoeConfig
from tensorrt_llm.models.modeling_utils import PretrainedConfig

from hunyuan_trtllm.checkpoints.spec import ENGINE_ARCHITECTURES, NormalizationMode
from hunyuan_trtllm.errors import ConfigError
from hunyuan_trtllm.plugins.kv_layout import KvLayout

SUPPORTED_NORMALIZATION = tuple(int(mode) for mode in NormalizationMode)  # NONE (top-1), RENORMALIZE (top-k)


class HunyuanConfig(PretrainedConfig):
    """The config of every Hunyuan architecture (A13B MoE, Large MoE with CLA, dense)."""

    def __init__(self, *, moe: dict[str, Any] | None = None, rotary_base: float = 10000.0,
                 rotary_scaling: dict[str, Any] | None = None, use_cla: bool = False, cla_share_factor: int = 1,
                 cla_kv_source_layer: list[int] | None = None, num_kv_heads_per_layer: list[int] | None = None,
                 layer_types: list[str] | None = None, hunyuan: dict[str, Any] | None = None,
                 tie_word_embeddings: bool = False, attn_bias: bool = False, mlp_bias: bool = False,
                 mapping: Any = None, **kwargs: Any) -> None:
        super().__init__(mapping=_without_auto_parallel(mapping), **kwargs)
        if self.architecture not in ENGINE_ARCHITECTURES:
            raise ConfigError(f"config.json: architecture '{self.architecture}' is not a Hunyuan architecture "
                              f"({', '.join(ENGINE_ARCHITECTURES)})")
        self.rotary_base = float(rotary_base)
        self.rotary_scaling = rotary_scaling
        self.use_cla = bool(use_cla)
        self.cla_share_factor = int(cla_share_factor)
        self.tie_word_embeddings = bool(tie_word_embeddings)
        self.attn_bias = bool(attn_bias)
        self.mlp_bias = bool(mlp_bias)
        self.hunyuan = dict(hunyuan or {})
        self.moe = _moe_config(moe)
        layout = KvLayout.from_config(
            self.num_hidden_layers, self.num_key_value_heads, cla_share_factor=self.cla_share_factor,
            cla_kv_source_layer=cla_kv_source_layer, num_kv_heads_per_layer=num_kv_heads_per_layer,
            layer_types=layer_types)
        self.cla_kv_source_layer = list(layout.source_layer)
        self.num_kv_heads_per_layer = layout.runtime_num_kv_heads_per_layer()
        self.layer_types = layout.runtime_layer_types()
        self._check()

    @property
    def kv_layout(self) -> KvLayout:
        return KvLayout(tuple(self.cla_kv_source_layer), self.num_key_value_heads)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["moe"] = self.moe.to_dict()
        return output

    def _check(self) -> None:
        """Refuse what the model definition would compute differently from Hunyuan."""
        if self.position_embedding_type != PositionEmbeddingType.rope_gpt_neox:
            raise ConfigError(f"config.json: position_embedding_type '{self.position_embedding_type}' is not "
                              "rope_gpt_neox (Hunyuan rotates the two halves of each head)")
        if self.rotary_scaling is not None:
            raise ConfigError("config.json: rotary_scaling must be null (the NTK alpha belongs in rotary_base)")
        before_rope = self.hunyuan.get("qk_norm_position") == "before_rope"  # Hy3
        if self.qk_layernorm and not self.hunyuan.get("qk_norm_after_rope", True) and not before_rope:
            raise ConfigError("config.json: hunyuan.qk_norm_after_rope is false but qk_norm_position is not "
                              "before_rope")
        routing = self.hunyuan.get("routing") or {}
        if routing.get("scoring", "softmax") not in ("softmax", "sigmoid"):
            raise ConfigError(f"config.json: hunyuan.routing.scoring '{routing['scoring']}' is not softmax or sigmoid")
        if self.use_parallel_embedding and self.embedding_sharding_dim != 0:
            raise ConfigError("config.json: use_parallel_embedding needs embedding_sharding_dim 0 (convert "
                              "--parallel-embedding splits the vocabulary rows over the tp ranks)")
        if self.attn_bias or self.mlp_bias:
            raise ConfigError("config.json: attn_bias/mlp_bias must be false (no Hunyuan release has biases)")
        expected_act = "swiglu" if self.moe.has_moe() else "silu"
        if self.hidden_act != expected_act:
            raise ConfigError(f"config.json: hidden_act '{self.hidden_act}' must be '{expected_act}' for this model")
        if self.moe.has_moe() and int(self.moe.normalization_mode) not in SUPPORTED_NORMALIZATION:
            raise ConfigError(f"config.json: moe.normalization_mode {self.moe.normalization_mode} is not NONE (0) "
                              "or RENORMALIZE (1)")


def _without_auto_parallel(mapping: Any) -> Any:
    """A mapping dict without the ``auto_parallel`` key (refused when it asks for auto-parallel)."""
    if not isinstance(mapping, dict) or "auto_parallel" not in mapping:
        return mapping
    if mapping["auto_parallel"]:
        raise ConfigError("config.json: mapping.auto_parallel is not supported; give tp/pp/ep explicitly")
    return {key: value for key, value in mapping.items() if key != "auto_parallel"}


def _moe_config(moe: dict[str, Any] | None) -> MoeConfig:
    """``moe`` as TensorRT-LLM's MoeConfig (validated: num_experts and top_k both zero or both set)."""
    try:
        return MoeConfig.from_dict(dict(moe or {})).validate()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config.json: moe {moe}: {exc}") from None
