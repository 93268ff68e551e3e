"""A transformers config class for Hunyuan-Large's ``model_type: "hunyuan"``.

transformers knows ``hunyuan_v1_moe`` and ``hunyuan_v1_dense`` but not the older ``hunyuan`` of Hunyuan-Large, whose
own ``configuration_hunyuan.py`` would need ``trust_remote_code`` (and is absent from converted or test
checkpoints). TensorRT-LLM reads configs through ``AutoConfig``, so the model module registers this class. Only the
defaults TensorRT-LLM's modules read, and that Large's config.json may omit, are declared; every other field stays
as config.json has it, and our own code reads them through :func:`hunyuan_trtllm.checkpoints.spec.parse_spec`.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig

LARGE_MODEL_TYPE = "hunyuan"


class HunYuanLargeConfig(PretrainedConfig):
    """Hunyuan-Large's config.json as read by ``AutoConfig`` (no remote code)."""

    model_type = LARGE_MODEL_TYPE

    def __init__(self, attention_bias: bool = False, tie_word_embeddings: bool = False, **kwargs: Any):
        # Tencent's defaults; transformers' base class would otherwise tie the embeddings when the key is absent.
        self.attention_bias = attention_bias
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


def register_hf_config() -> None:
    """Let ``AutoConfig`` read ``model_type: "hunyuan"`` checkpoints (idempotent)."""
    AutoConfig.register(LARGE_MODEL_TYPE, HunYuanLargeConfig, exist_ok=True)
