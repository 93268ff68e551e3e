"""The Hy3 config dialect (``model_type: hy_v3``, ``HYV3ForCausalLM``): Tencent's release and transformers' save.

Both are flat scalars (shared/reference/hy3.md §a.1). Tencent's config names the routing explicitly
(``moe_router_use_sigmoid``, ``moe_router_enable_expert_bias``, ``route_norm``, ``router_scaling_factor``), the
dense prefix (``first_k_dense_replace``), the expert width twice (``moe_intermediate_size`` and
``expert_hidden_dim``), the lm_head precision (``enable_lm_head_fp32``) and the MTP depth
(``num_nextn_predict_layers``). transformers' own config may carry ``mlp_layer_types`` instead of
``first_k_dense_replace`` and omit the routing flags; it always computes sigmoid + bias selection +
renormalisation + the scaling factor, so those are the defaults here.
"""

from __future__ import annotations

from typing import Any

from hunyuan_trtllm.checkpoints.spec import HYV3, ModelSpec
from hunyuan_trtllm.errors import ConfigError

DEFAULT_ROPE_THETA = 11158840.0  # transformers' HYV3Config.default_theta, = the release's value
DEFAULT_SCALING = 2.826  # transformers' HYV3Config.router_scaling_factor default, = the release's value


def parse_hy3_spec(cfg: dict[str, Any], where: str) -> ModelSpec:
    """Parse a ``hy_v3`` config.json into a :class:`ModelSpec`."""

    def need(key: str) -> Any:
        if cfg.get(key) is None:
            raise ConfigError(f"{where}: required field '{key}' is missing")
        return cfg[key]

    for key in ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                "intermediate_size", "num_experts", "vocab_size", "moe_intermediate_size", "expert_hidden_dim"):
        value = cfg.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{where}: '{key}' must be a positive integer, not {value!r}")

    layers = int(need("num_hidden_layers"))
    hidden = int(need("hidden_size"))
    heads = int(need("num_attention_heads"))
    experts = int(need("num_experts"))
    top_k = int(cfg.get("num_experts_per_tok") or 0)
    if experts < 2 or not 0 < top_k <= experts:
        raise ConfigError(f"{where}: num_experts_per_tok {top_k} must be between 1 and num_experts {experts}")
    width = _expert_width(cfg, where)
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise ConfigError(f"{where}: attention_bias/mlp_bias are not supported (Hy3 has no biases)")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{where}: hidden_act '{cfg['hidden_act']}' is not supported (Hy3 uses 'silu')")
    if not cfg.get("moe_router_use_sigmoid", True):
        raise ConfigError(f"{where}: moe_router_use_sigmoid false (softmax routing) is not a Hy3 configuration")
    eos = cfg.get("eos_token_id")
    return ModelSpec(
        architecture=HYV3,
        vocab_size=int(need("vocab_size")),
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or hidden // heads),
        intermediate_size=int(need("intermediate_size")),
        num_experts=experts,
        top_k=top_k,
        expert_intermediate_size=width,
        shared_intermediate_size=width * int(cfg.get("num_shared_experts", 1) or 0),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
        rope_theta=_rope_theta(cfg, where),
        rope_alpha=1.0,
        use_qk_norm=bool(cfg.get("qk_norm", True)),
        cla_share_factor=1,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position_embeddings=int(cfg.get("max_position_embeddings") or 131072),
        torch_dtype=str(cfg.get("dtype") or cfg.get("torch_dtype") or "bfloat16"),
        eos_token_ids=tuple(eos) if isinstance(eos, list) else ((int(eos),) if eos is not None else ()),
        pad_token_id=cfg.get("pad_token_id"),
        first_dense_layers=_dense_prefix(cfg, layers, where),
        router_scoring="sigmoid",
        expert_bias=bool(cfg.get("moe_router_enable_expert_bias", True)),
        route_norm=bool(cfg.get("route_norm", True)),
        routed_scaling_factor=float(cfg.get("router_scaling_factor", DEFAULT_SCALING)),
        qk_norm_before_rope=True,
        lm_head_fp32=bool(cfg.get("enable_lm_head_fp32", False)),
        num_mtp_layers=int(cfg.get("num_nextn_predict_layers") or 0),
    )


def _expert_width(cfg: dict[str, Any], where: str) -> int:
    """``moe_intermediate_size`` (transformers) and ``expert_hidden_dim`` (vLLM) name one width; both must agree."""
    widths = {key: int(cfg[key]) for key in ("moe_intermediate_size", "expert_hidden_dim") if cfg.get(key) is not None}
    if not widths:
        raise ConfigError(f"{where}: required field 'moe_intermediate_size' is missing")
    if len(set(widths.values())) > 1:
        raise ConfigError(f"{where}: moe_intermediate_size {widths['moe_intermediate_size']} and expert_hidden_dim "
                          f"{widths['expert_hidden_dim']} disagree")
    return next(iter(widths.values()))


def _dense_prefix(cfg: dict[str, Any], layers: int, where: str) -> int:
    """How many leading layers are dense: ``first_k_dense_replace``, or transformers' ``mlp_layer_types``."""
    kinds = cfg.get("mlp_layer_types")
    if kinds is not None:
        if len(kinds) != layers or set(kinds) - {"dense", "sparse"}:
            raise ConfigError(f"{where}: mlp_layer_types must list 'dense'/'sparse' for each of the {layers} layers")
        dense = kinds.count("dense")
        if kinds[:dense] != ["dense"] * dense:
            raise ConfigError(f"{where}: mlp_layer_types {kinds}: only leading dense layers are supported")
        if cfg.get("first_k_dense_replace") is not None and int(cfg["first_k_dense_replace"]) != dense:
            raise ConfigError(f"{where}: first_k_dense_replace {cfg['first_k_dense_replace']} disagrees with "
                              f"mlp_layer_types ({dense} dense layers)")
        return dense
    dense = int(cfg.get("first_k_dense_replace", 1))
    if not 0 <= dense <= layers:
        raise ConfigError(f"{where}: first_k_dense_replace {dense} must be between 0 and {layers}")
    return dense


def _rope_theta(cfg: dict[str, Any], where: str) -> float:
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    kind = params.get("rope_type") or params.get("type") or "default"
    if kind != "default":
        raise ConfigError(f"{where}: rope type '{kind}' is not supported for Hy3 (released: 'default')")
    return float(params.get("rope_theta") or cfg.get("rope_theta") or DEFAULT_ROPE_THETA)
