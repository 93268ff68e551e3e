"""tensorrt_llm/layers/normalization.py: ``RmsNorm(normalized_shape, eps=1e-06, elementwise_affine=True,
dtype=None)`` declares ``weight [normalized_shape]`` (no bias)."""

from tensorrt_llm.module import Module
from tensorrt_llm.parameter import Parameter


class RmsNorm(Module):
    def __init__(self, normalized_shape, eps=1e-06, elementwise_affine=True, dtype=None):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.eps = eps
        self.register_parameter("weight", Parameter(shape=shape, dtype=dtype) if elementwise_affine else None)
