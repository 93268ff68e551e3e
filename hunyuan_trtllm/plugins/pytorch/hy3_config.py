"""A transformers config class for ``model_type: "hy_v3"`` where the installed transformers lacks one.

transformers added ``hy_v3`` in 5.6; TensorRT-LLM 1.2.x containers ship an older transformers, and TensorRT-LLM reads
configs through ``AutoConfig``. This class declares what TensorRT-LLM's attention and RoPE read: ``head_dim``
(128, not hidden/heads), ``rope_theta`` from ``rope_parameters`` and no ``rope_scaling``. Every other field stays as
config.json has it; our own code reads them through :func:`hunyuan_trtllm.checkpoints.spec.parse_spec`.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig

HY3_MODEL_TYPE = "hy_v3"


class HYV3TrtllmConfig(PretrainedConfig):
    """Hy3's config.json as read by ``AutoConfig`` (no remote code)."""

    model_type = HY3_MODEL_TYPE

    def __init__(self, rope_parameters: dict[str, Any] | None = None, tie_word_embeddings: bool = False,
                 **kwargs: Any):
        self.rope_parameters = dict(rope_parameters or {"rope_type": "default", "rope_theta": 11158840.0})
        self.rope_theta = float(kwargs.pop("rope_theta", self.rope_parameters.get("rope_theta", 11158840.0)))
        kwargs.pop("rope_scaling", None)
        self.rope_scaling = None  # rope_type default: plain RoPE with rope_theta
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


def register_hy3_config() -> None:
    """Let ``AutoConfig`` read ``hy_v3`` checkpoints when transformers has no class for them (idempotent)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if HY3_MODEL_TYPE not in CONFIG_MAPPING:
        AutoConfig.register(HY3_MODEL_TYPE, HYV3TrtllmConfig, exist_ok=True)
