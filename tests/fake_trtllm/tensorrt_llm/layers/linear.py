"""tensorrt_llm/layers/linear.py.

- ``Linear`` (= ``ColumnLinear``): ``weight [out_features / tp_size, in_features]``, ``bias [out / tp]`` when
  ``bias``; out_features is the *global* size and is split over TP (``local_out_features = out // tp_size``).
- ``RowLinear``: ``weight [out_features, in_features / tp_size]``, ``bias [out]``.
The constructors record their arguments, as TensorRT-LLM's passes rebuild layers from them (``get_init_params``).
"""

from tensorrt_llm.module import Module
from tensorrt_llm.parameter import Parameter


class Linear(Module):
    def __init__(self, in_features, out_features, bias=True, dtype=None, tp_group=None, tp_size=1,
                 gather_output=True, share_weight=None, strict_dtype=False, pad_lda=0, pad_ldc=0,
                 prefer_managed_weight=True, is_qkv=False):
        super().__init__()
        self.init_args = {"in_features": in_features, "out_features": out_features, "bias": bias, "dtype": dtype,
                          "tp_group": tp_group, "tp_size": tp_size, "gather_output": gather_output,
                          "prefer_managed_weight": prefer_managed_weight, "is_qkv": is_qkv}
        self.in_features, self.out_features = in_features, out_features // tp_size
        self.weight = Parameter(shape=(self.out_features, self.in_features), dtype=dtype)
        self.register_parameter("bias", Parameter(shape=(self.out_features,), dtype=dtype) if bias else None)


ColumnLinear = Linear


class RowLinear(Module):
    def __init__(self, in_features, out_features, bias=True, dtype=None, tp_group=None, tp_size=1,
                 strict_dtype=False, pad_lda=0, prefer_managed_weight=True, is_expert=False):
        super().__init__()
        self.init_args = {"in_features": in_features, "out_features": out_features, "bias": bias, "dtype": dtype,
                          "tp_group": tp_group, "tp_size": tp_size, "prefer_managed_weight": prefer_managed_weight,
                          "is_expert": is_expert}
        self.in_features, self.out_features = in_features // tp_size, out_features
        self.weight = Parameter(shape=(self.out_features, self.in_features), dtype=dtype)
        self.register_parameter("bias", Parameter(shape=(self.out_features,), dtype=dtype) if bias else None)
