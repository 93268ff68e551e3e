"""tensorrt_llm/quantization/quantize.py: what ``quantize(model, quant_config)`` does for FP8 (run by
``PretrainedModel.__post_init__`` right after the model's constructor).

- ``fp8_quantize`` -> ``quantize_layers`` with ``{ColumnLinear: FP8Linear, RowLinear: FP8RowLinear,
  MixtureOfExperts: MixtureOfExperts}``, walking ``named_modules_with_parent`` and replacing each match in its
  parent (rebuilt from its constructor arguments). A module whose full name matches an ``exclude_modules`` pattern
  (``fnmatchcase``) is kept; when ``exclude_modules`` is None the default list below applies. MoE modules are
  always rebuilt: with the FP8 quant mode, or with ``QuantMode(0)`` when excluded. The walk continues into the
  rebuilt module's children (the shared expert's linears are quantized, the router is excluded).
- ``kv_cache_quantize``: with a quantized KV cache, every ``Attention`` gets ``kv_cache_scaling_factor [1]``
  (dequant) and ``kv_cache_rcp_scaling_factor [1]`` (quant), float32.
"""

import fnmatch

from tensorrt_llm.layers.attention import Attention
from tensorrt_llm.layers.linear import Linear, RowLinear
from tensorrt_llm.layers.moe import MixtureOfExperts
from tensorrt_llm.parameter import Parameter
from tensorrt_llm.quantization import QuantMode
from tensorrt_llm.quantization.layers import FP8Linear, FP8RowLinear

DEFAULT_EXCLUDES = ["*lm_head", "*router", "*vocab_embedding", "*position_embedding", "*block_embedding",
                    "*shared_expert_gate"]
FP8_LAYERS = {Linear: FP8Linear, RowLinear: FP8RowLinear}


def quantize(model, quant_config):
    quant_mode = quant_config.quant_mode
    if quant_mode.has_fp8_qdq():
        fp8_quantize(model, quant_config)
    if quant_mode.has_kv_cache_quant():
        kv_cache_quantize(model)
    return model


def fp8_quantize(model, quant_config) -> None:
    excludes = DEFAULT_EXCLUDES if quant_config.exclude_modules is None else quant_config.exclude_modules
    for name, module, parent in model.named_modules_with_parent():
        if parent is None:
            continue
        excluded = any(fnmatch.fnmatchcase(name, pattern) for pattern in excludes)
        if isinstance(module, MixtureOfExperts):
            replacement = type(module)(**{**module.init_args,
                                          "quant_mode": QuantMode() if excluded else quant_config.quant_mode})
        elif type(module) in FP8_LAYERS and not excluded:
            replacement = FP8_LAYERS[type(module)](**module.init_args)
        else:
            continue
        parent._modules[name.rsplit(".", 1)[-1]] = replacement


def kv_cache_quantize(model) -> None:
    for _, module in model.named_modules():
        if isinstance(module, Attention):
            module.kv_cache_scaling_factor = Parameter(shape=(1,), dtype="float32")
            module.kv_cache_rcp_scaling_factor = Parameter(shape=(1,), dtype="float32")
