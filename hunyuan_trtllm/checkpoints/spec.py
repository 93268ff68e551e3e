"""ModelSpec: one parser for every Hunyuan config.json dialect in the wild.

Dialects handled:
- Tencent's own (``model_type: "hunyuan"``): ``attention_head_dim``, ``rope_scaling {type: dynamic, alpha}``,
  per-layer lists ``moe_topk`` / ``num_shared_expert`` / ``moe_intermediate_size``, ``use_qk_norm``,
  ``use_cla`` / ``cla_share_factor``, ``use_mixed_mlp_moe``.
- transformers' (``hunyuan_v1_moe``, ``hunyuan_v1_dense``): ``head_dim``, ``rope_parameters``.
- Hy3 (``hy_v3``, ``HYV3ForCausalLM``), Tencent's and transformers': parsed by :mod:`.spec_hy3`.

The spec is what the config *says*; :func:`hunyuan_trtllm.checkpoints.source.open_source` reconciles it with the
tensor shapes on disk (which win when the two disagree, see design note 5).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

from hunyuan_trtllm.checkpoints.config_checks import check_config_fields
from hunyuan_trtllm.errors import ConfigError

MOE_V1 = "HunYuanMoEV1ForCausalLM"  # Hunyuan-A13B
LARGE = "HunYuanForCausalLM"  # Hunyuan-Large (A52B): CLA, top-1
DENSE_V1 = "HunYuanDenseV1ForCausalLM"  # Hunyuan dense 0.5B..7B
HYV3 = "HYV3ForCausalLM"  # Hy3 / Hy3-preview: sigmoid routing with an expert bias, dense layer 0, MTP layer
SUPPORTED_ARCHITECTURES = (MOE_V1, LARGE, DENSE_V1, HYV3)  # convert, verify, plan
ENGINE_ARCHITECTURES = (MOE_V1, LARGE, DENSE_V1, HYV3)  # TensorRT-LLM engines (plugins/, builder/)

_ARCH_BY_MODEL_TYPE = {"hunyuan_v1_moe": MOE_V1, "hunyuan_v1_dense": DENSE_V1, "hy_v3": HYV3}
_MODEL_TYPES = ("hunyuan", "hunyuan_v1_moe", "hunyuan_v1_dense", "hy_v3")


class NormalizationMode(IntEnum):
    """TensorRT-LLM's ``ExpertScaleNormalizationMode`` (tensorrt_llm/layers/moe.py)."""

    NONE = 0  # softmax -> top-k, weights not renormalised (Hunyuan-Large's top-1)
    RENORMALIZE = 1  # softmax -> top-k -> weights / sum(weights) (A13B's top-8)


@dataclass(frozen=True)
class ModelSpec:
    """Everything about a Hunyuan model that the weight plan, executor and planner need."""

    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int  # dense MLP width (dense models); informational for MoE models
    num_experts: int  # 0 for dense models
    top_k: int
    expert_intermediate_size: int
    shared_intermediate_size: int  # 0: no shared expert
    rms_norm_eps: float
    rope_theta: float
    rope_alpha: float  # NTK-alpha; 1.0 means plain RoPE
    use_qk_norm: bool
    cla_share_factor: int  # 1: no cross-layer attention
    tie_word_embeddings: bool
    max_position_embeddings: int
    torch_dtype: str
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    # Hy3 (HYV3ForCausalLM); the defaults describe every older Hunyuan model.
    first_dense_layers: int = 0  # layers 0..n-1 have a dense MLP of intermediate_size (first_k_dense_replace)
    router_scoring: str = "softmax"  # "sigmoid": Hy3's per-expert sigmoid scores
    expert_bias: bool = False  # a float32 per-expert bias added to the scores for top-k selection only
    route_norm: bool = True  # chosen weights renormalised to sum to 1 (top_k > 1)
    routed_scaling_factor: float = 1.0  # routed weights multiplied by this after renormalisation
    qk_norm_before_rope: bool = False  # Hy3 normalises q/k per head *before* RoPE (older Hunyuan: after)
    lm_head_fp32: bool = False  # enable_lm_head_fp32: the head is computed (and stored) in float32
    num_mtp_layers: int = 0  # num_nextn_predict_layers, stored as model.layers.{num_layers + i}
    notes: tuple[str, ...] = field(default=(), compare=False)

    # ---- derived quantities -------------------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.num_experts > 1

    def is_moe_layer(self, layer: int) -> bool:
        """Whether decoder layer ``layer`` has routed experts (Hy3's first ``first_dense_layers`` are dense)."""
        return self.is_moe and layer >= self.first_dense_layers

    @property
    def is_hy3(self) -> bool:
        return self.architecture == HYV3

    @property
    def uses_cla(self) -> bool:
        return self.cla_share_factor > 1

    @property
    def rotary_base(self) -> float:
        """NTK-alpha folded into the base: ``theta * alpha ** (d / (d - 2))`` (static, length-independent)."""
        d = self.head_dim
        return self.rope_theta * self.rope_alpha ** (d / (d - 2))

    @property
    def normalization_mode(self) -> NormalizationMode:
        """Top-k > 1 renormalises the chosen weights; Hunyuan-Large's top-1 keeps the softmax probability."""
        return NormalizationMode.RENORMALIZE if self.top_k > 1 and self.route_norm else NormalizationMode.NONE

    def kv_source_layer(self, layer: int) -> int:
        """The layer whose K/V cache ``layer`` attends over (itself, or its CLA producer)."""
        return layer - layer % self.cla_share_factor

    def is_kv_producer(self, layer: int) -> bool:
        return self.kv_source_layer(layer) == layer

    @property
    def num_kv_layers(self) -> int:
        """Layers that own a KV cache (all of them, or half of them with CLA factor 2)."""
        return sum(1 for layer in range(self.num_layers) if self.is_kv_producer(layer))

    def kv_bytes_per_token(self, dtype_bytes: int = 2, tp: int = 1) -> int:
        """KV-cache bytes one token costs on one rank (the whole model when tp=1).

        KV heads are split over tp ranks, or duplicated when tp exceeds them (each rank keeps at least one).
        """
        heads_per_rank = max(1, self.num_kv_heads // tp)
        return self.num_kv_layers * 2 * heads_per_rank * self.head_dim * dtype_bytes

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["eos_token_ids"] = list(self.eos_token_ids)
        data["notes"] = list(self.notes)
        return data


# ---- parsing ------------------------------------------------------------------------------------------------


def load_config(path: Path) -> dict[str, Any]:
    """Read a config.json, failing with a one-line error that names the file."""
    if not path.is_file():
        raise ConfigError(f"{path}: no config.json here (is this a Hugging Face model directory?)")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


def parse_spec(cfg: dict[str, Any], where: str = "config.json") -> ModelSpec:
    """Parse a Hunyuan config (any dialect) into a :class:`ModelSpec`."""
    check_config_fields(cfg, where)
    architecture = _architecture(cfg, where)
    if architecture == HYV3:
        from hunyuan_trtllm.checkpoints.spec_hy3 import parse_hy3_spec

        return parse_hy3_spec(cfg, where)

    def need(key: str) -> Any:
        if cfg.get(key) is None:
            raise ConfigError(f"{where}: required field '{key}' is missing")
        return cfg[key]

    num_layers = int(need("num_hidden_layers"))
    hidden = int(need("hidden_size"))
    heads = int(need("num_attention_heads"))
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or cfg.get("attention_head_dim") or hidden // heads)

    num_experts = _uniform(cfg, "num_experts", num_layers, where, default=0)
    is_moe = architecture != DENSE_V1 and num_experts > 1
    intermediate = int(need("intermediate_size"))
    if is_moe:
        top_k = _uniform(cfg, "moe_topk", num_layers, where, default=1)
        expert_width = _uniform(cfg, "moe_intermediate_size", num_layers, where, default=intermediate)
        shared = _uniform(cfg, "num_shared_expert", num_layers, where, default=1)
        mixed = bool(cfg.get("use_mixed_mlp_moe", True))
        shared_width = intermediate * shared if mixed else 0
        if int(cfg.get("moe_layer_num_skipped") or 0) != 0:
            raise ConfigError(f"{where}: moe_layer_num_skipped != 0 (dense layers before MoE) is not supported")
        if not 0 < top_k <= num_experts:
            raise ConfigError(f"{where}: moe_topk {top_k} must be between 1 and num_experts {num_experts}")
    else:
        num_experts, top_k, expert_width, shared_width = 0, 0, 0, 0

    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise ConfigError(f"{where}: attention_bias/mlp_bias are not supported (no Hunyuan release uses them)")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"{where}: hidden_act '{act}' is not supported (Hunyuan uses 'silu')")

    theta, alpha = _rope(cfg, where)
    use_cla = bool(cfg.get("use_cla", False))
    cla_factor = int(cfg.get("cla_share_factor") or 2) if use_cla else 1
    if use_cla and cla_factor < 2:
        raise ConfigError(f"{where}: use_cla is set but cla_share_factor is {cla_factor}")

    eos = cfg.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else ((int(eos),) if eos is not None else ())
    eod = cfg.get("eod_token_id")
    if eod is not None and eod not in eos_ids:
        eos_ids = (*eos_ids, int(eod))
    return ModelSpec(
        architecture=architecture,
        vocab_size=int(need("vocab_size")),
        hidden_size=hidden,
        num_layers=num_layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=intermediate,
        num_experts=num_experts,
        top_k=top_k,
        expert_intermediate_size=expert_width,
        shared_intermediate_size=shared_width,
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
        rope_theta=theta,
        rope_alpha=alpha,
        use_qk_norm=bool(cfg.get("use_qk_norm", True)),
        cla_share_factor=cla_factor,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position_embeddings=int(cfg.get("max_position_embeddings") or 32768),
        torch_dtype=str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"),
        eos_token_ids=eos_ids,
        pad_token_id=cfg.get("pad_token_id"),
    )


def _architecture(cfg: dict[str, Any], where: str) -> str:
    if "build_config" in cfg and "pretrained_config" in cfg:
        raise ConfigError(f"{where}: TensorRT-LLM engines (written by hunyuan-trtllm build), not a Hugging Face "
                          "model; give the Hugging Face model they were built from")
    if "mapping" in cfg and "architecture" in cfg:
        raise ConfigError(f"{where}: a TensorRT-LLM checkpoint (written by hunyuan-trtllm convert), not a Hugging "
                          "Face model; give the Hugging Face model it was converted from (its manifest.json "
                          "names it)")
    archs = cfg.get("architectures") or []
    model_type = cfg.get("model_type")
    arch = archs[0] if archs else _ARCH_BY_MODEL_TYPE.get(str(model_type))
    if arch not in SUPPORTED_ARCHITECTURES or (model_type and model_type not in _MODEL_TYPES):
        raise ConfigError(
            f"{where}: unsupported model (architectures={archs}, model_type={model_type!r}); supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)} with model_type {', '.join(_MODEL_TYPES)}"
        )
    return arch


def _uniform(cfg: dict[str, Any], key: str, num_layers: int, where: str, default: int) -> int:
    """Read an int that Tencent's configs may store as a per-layer list; all layers must agree."""
    value = cfg.get(key)
    if value is None:
        return default
    if isinstance(value, list):
        if not value:
            return default
        if len(set(value)) != 1:
            raise ConfigError(f"{where}: '{key}' differs between layers ({value}); only uniform values are supported")
        if len(value) not in (1, num_layers):
            raise ConfigError(f"{where}: '{key}' has {len(value)} entries for {num_layers} layers")
        value = value[0]
    return int(value)


def _rope(cfg: dict[str, Any], where: str) -> tuple[float, float]:
    """Return (theta, alpha). Accepts v4 ``rope_scaling`` and v5 ``rope_parameters``."""
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    theta = float(params.get("rope_theta") or cfg.get("rope_theta") or 10000.0)
    kind = params.get("rope_type") or params.get("type") or "default"
    alpha = params.get("alpha")
    if alpha is not None:
        if kind not in ("dynamic", "ntk_alpha", "default"):
            raise ConfigError(f"{where}: rope type '{kind}' with alpha is not supported")
        alpha = float(alpha)
        if not math.isfinite(alpha) or alpha <= 0:
            raise ConfigError(f"{where}: rope alpha must be positive, got {alpha}")
        return theta, alpha
    if kind != "default":
        raise ConfigError(
            f"{where}: rope type '{kind}' without alpha is not supported (Hunyuan uses NTK-alpha: "
            "type 'dynamic' with 'alpha')"
        )
    return theta, 1.0
