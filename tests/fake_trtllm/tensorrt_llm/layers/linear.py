"""tensorrt_llm/layers/linear.py.

- ``Linear`` (= ``ColumnLinear``): ``weight [out_features / tp_size, in_features]``, ``bias [out / tp]`` when
  ``bias``; out_features is the *global* size and is split over TP. ``forward``: ``x @ W^T`` (+ bias), then with
  ``gather_output`` and tp > 1 an all-gather over the TP group on the last dim.
- ``RowLinear``: ``weight [out_features, in_features / tp_size]``, ``bias [out]``. ``forward``: ``x @ W^T``, then
  with tp > 1 an all-reduce over the TP group (``collect_and_bias``), then the bias. ``is_expert`` (the shared
  expert inside ``SharedMoE``) leaves the all-reduce to the MoE layer, which reduces routed + shared once.
The constructors record their arguments, as TensorRT-LLM's passes rebuild layers from them (``get_init_params``).
"""

from tensorrt_llm.functional import allgather, allreduce, cast, matmul
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
        if out_features % tp_size:
            raise ValueError(f"Linear: out_features {out_features} is not divisible by tp_size {tp_size}")
        self.in_features, self.out_features = in_features, out_features // tp_size
        self.dtype, self.tp_group, self.tp_size, self.gather_output = dtype, tp_group, tp_size, gather_output
        self.weight = Parameter(shape=(self.out_features, self.in_features), dtype=dtype)
        self.register_parameter("bias", Parameter(shape=(self.out_features,), dtype=dtype) if bias else None)

    def multiply(self, x):
        return matmul(x, self.weight.value, transb=True)

    def forward(self, x, lora_runtime_params=None):
        x = self.multiply(x)
        if self.bias is not None:
            x = x + cast(self.bias.value, x.dtype)
        if self.gather_output and self.tp_size > 1 and self.tp_group is not None:
            x = allgather(x, self.tp_group, gather_dim=x.ndim() - 1)
        return x


ColumnLinear = Linear


class RowLinear(Module):
    def __init__(self, in_features, out_features, bias=True, dtype=None, tp_group=None, tp_size=1,
                 strict_dtype=False, pad_lda=0, prefer_managed_weight=True, is_expert=False):
        super().__init__()
        self.init_args = {"in_features": in_features, "out_features": out_features, "bias": bias, "dtype": dtype,
                          "tp_group": tp_group, "tp_size": tp_size, "prefer_managed_weight": prefer_managed_weight,
                          "is_expert": is_expert}
        if in_features % tp_size:
            raise ValueError(f"RowLinear: in_features {in_features} is not divisible by tp_size {tp_size}")
        self.in_features, self.out_features = in_features // tp_size, out_features
        self.dtype, self.tp_group, self.tp_size, self.is_expert = dtype, tp_group, tp_size, is_expert
        self.weight = Parameter(shape=(self.out_features, self.in_features), dtype=dtype)
        self.register_parameter("bias", Parameter(shape=(self.out_features,), dtype=dtype) if bias else None)

    def multiply(self, x):
        return matmul(x, self.weight.value, transb=True)

    def forward(self, x, lora_runtime_params=None, all_reduce_params=None):
        x = self.multiply(x)
        if self.tp_size > 1 and self.tp_group is not None and not self.is_expert:
            x = allreduce(x, self.tp_group)
        if self.bias is not None:
            x = x + cast(self.bias.value, x.dtype)
        return x
