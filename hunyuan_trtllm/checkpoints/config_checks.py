"""Types and ranges of the config.json fields :func:`~hunyuan_trtllm.checkpoints.spec.parse_spec` reads.

Checked before parsing, so a hostile or damaged config (``num_attention_heads: 0``, ``num_hidden_layers: "four"``,
``hidden_size: 1e400``, ``rope_scaling: "dynamic"``, ``eos_token_id: "abc"``, ...) is one ``error:`` line naming
the file and the field instead of a ZeroDivisionError or ValueError deep in the converter. Rules are data: a
field missing here is not read by the parser, and a dialect adding fields adds rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from hunyuan_trtllm.errors import ConfigError

MAX_DIM = 2**31 - 1  # TensorRT-LLM shapes and token ids are int32


def _int(value: Any, low: int) -> bool:
    """An integer (JSON 4096 or 4096.0) in ``low..MAX_DIM``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return False
    return low <= value <= MAX_DIM


def _positive(value: Any) -> bool:
    return _int(value, 1)


def _count(value: Any) -> bool:
    return _int(value, 0)


def _per_layer(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """Tencent stores some per-layer values as lists (``moe_topk: [8, 8, ...]``)."""
    return lambda value: check(value) or (isinstance(value, list) and all(check(v) for v in value))


def _positive_float(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value) and value > 0


def _token_ids(value: Any) -> bool:
    return _count(value) or (isinstance(value, list) and all(_count(v) for v in value))


def _bool(value: Any) -> bool:
    return isinstance(value, bool)


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _object(value: Any) -> bool:
    return isinstance(value, dict)


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


# field -> (check, what it must be). Absent or null fields are the parser's business (defaults, "required").
FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "architectures": (_strings, "a list of class names"),
    "model_type": (_text, "a string"),
    "vocab_size": (_positive, "a positive integer"),
    "hidden_size": (_positive, "a positive integer"),
    "num_hidden_layers": (_positive, "a positive integer"),
    "num_attention_heads": (_positive, "a positive integer"),
    "num_key_value_heads": (_positive, "a positive integer"),
    "head_dim": (_positive, "a positive integer"),
    "attention_head_dim": (_positive, "a positive integer"),
    "intermediate_size": (_positive, "a positive integer"),
    "max_position_embeddings": (_positive, "a positive integer"),
    "num_experts": (_per_layer(_count), "an integer >= 0 (or one per layer)"),
    "moe_topk": (_per_layer(_positive), "a positive integer (or one per layer)"),
    "moe_intermediate_size": (_per_layer(_positive), "a positive integer (or one per layer)"),
    "num_shared_expert": (_per_layer(_count), "an integer >= 0 (or one per layer)"),
    "moe_layer_num_skipped": (_count, "an integer >= 0"),
    "cla_share_factor": (_positive, "a positive integer"),
    "rms_norm_eps": (_positive_float, "a positive number"),
    "rope_theta": (_positive_float, "a positive number"),
    "rope_scaling": (_object, "an object such as {\"type\": \"dynamic\", \"alpha\": 1000.0}"),
    "rope_parameters": (_object, "an object such as {\"rope_type\": \"dynamic\", \"alpha\": 1000.0}"),
    "eos_token_id": (_token_ids, "a token id or a list of token ids"),
    "eod_token_id": (_count, "a token id"),
    "pad_token_id": (_count, "a token id"),
    "use_qk_norm": (_bool, "true or false"),
    "use_cla": (_bool, "true or false"),
    "use_mixed_mlp_moe": (_bool, "true or false"),
    "tie_word_embeddings": (_bool, "true or false"),
    "torch_dtype": (_text, "a dtype name"),
    "quantization_config": (_object, "an object"),
}
ROPE_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "rope_theta": (_positive_float, "a positive number"),
    "alpha": (_positive_float, "a positive number"),
    "type": (_text, "a string"),
    "rope_type": (_text, "a string"),
}


def check_config_fields(cfg: dict[str, Any], where: str) -> None:
    """Raise :class:`ConfigError` naming the first field whose type or range is wrong."""
    _check(cfg, FIELDS, where, "")
    for key in ("rope_scaling", "rope_parameters"):
        if isinstance(cfg.get(key), dict):
            _check(cfg[key], ROPE_FIELDS, where, f"{key}.")
    heads, kv_heads = cfg.get("num_attention_heads"), cfg.get("num_key_value_heads")
    if heads and kv_heads and heads % kv_heads:
        raise ConfigError(f"{where}: 'num_attention_heads' {heads} is not a multiple of 'num_key_value_heads' "
                          f"{kv_heads}")
    head_dim = cfg.get("head_dim") or cfg.get("attention_head_dim")
    if head_dim is None and heads and cfg.get("hidden_size"):
        head_dim = cfg["hidden_size"] // heads
    if head_dim is not None and (head_dim < 4 or head_dim % 2):
        raise ConfigError(f"{where}: head dimension {head_dim:g} (head_dim, or hidden_size / num_attention_heads) "
                          "must be even and at least 4 for rotary embeddings")


def _check(values: dict[str, Any], fields: dict[str, tuple[Callable[[Any], bool], str]], where: str,
           prefix: str) -> None:
    for key, (valid, expected) in fields.items():
        value = values.get(key)
        if value is not None and not valid(value):
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            raise ConfigError(f"{where}: '{prefix}{key}' must be {expected}, got {shown}")
