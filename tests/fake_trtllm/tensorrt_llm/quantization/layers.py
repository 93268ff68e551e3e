"""tensorrt_llm/quantization/layers.py: per-tensor FP8 linears.

``FP8Linear(Linear)`` and ``FP8RowLinear(RowLinear)`` keep the layer's shapes, make ``weight`` ``fp8`` and add
``activation_scaling_factor [1]`` and ``weights_scaling_factor [1]`` (float32, dequantization scales). ``forward``
(the QDQ path): the input is quantized with ``activation_scaling_factor`` and dequantized, the weight dequantized
with ``weights_scaling_factor``, the GEMM runs in float32 and its result is cast to the layer dtype; then the
layer's gather / all-reduce as for the unquantized layer. (With ``--gemm_plugin fp8`` the plugin computes the same
product with ``alpha = wsf * asf``.)
"""

from tensorrt_llm.functional import cast, matmul
from tensorrt_llm.layers.linear import Linear, RowLinear
from tensorrt_llm.parameter import Parameter
from tensorrt_llm.quantization.functional import dequantize, quantize


def fp8_gemm(layer, x):
    activation = dequantize(quantize(x, layer.activation_scaling_factor.value, "fp8"),
                            layer.activation_scaling_factor.value)
    weight = dequantize(layer.weight.value, layer.weights_scaling_factor.value)
    return cast(matmul(activation, weight, transb=True), layer.dtype)


class FP8Linear(Linear):
    def __init__(self, in_features, out_features, bias=True, dtype=None, tp_group=None, tp_size=1,
                 gather_output=True, prefer_managed_weight=True, is_qkv=False):
        super().__init__(in_features, out_features, bias=bias, dtype=dtype, tp_group=tp_group, tp_size=tp_size,
                         gather_output=gather_output, prefer_managed_weight=prefer_managed_weight, is_qkv=is_qkv)
        self.weight = Parameter(shape=(self.out_features, self.in_features), dtype="fp8")
        self.activation_scaling_factor = Parameter(shape=(1,), dtype="float32")
        self.weights_scaling_factor = Parameter(shape=(1,), dtype="float32")

    def multiply(self, x):
        return fp8_gemm(self, x)


class FP8RowLinear(RowLinear):
    def __init__(self, in_features, out_features, bias=True, dtype=None, tp_group=None, tp_size=1,
                 prefer_managed_weight=True, is_expert=False):
        super().__init__(in_features, out_features, bias=bias, dtype=dtype, tp_group=tp_group, tp_size=tp_size,
                         prefer_managed_weight=prefer_managed_weight, is_expert=is_expert)
        self.weight = Parameter(shape=(self.out_features, self.in_features), dtype="fp8")
        self.activation_scaling_factor = Parameter(shape=(1,), dtype="float32")
        self.weights_scaling_factor = Parameter(shape=(1,), dtype="float32")

    def multiply(self, x):
        return fp8_gemm(self, x)
