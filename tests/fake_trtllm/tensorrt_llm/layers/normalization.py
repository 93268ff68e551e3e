"""tensorrt_llm/layers/normalization.py: ``RmsNorm(normalized_shape, eps=1e-06, elementwise_affine=True,
dtype=None)`` declares ``weight [normalized_shape]`` (no bias); ``forward(x)`` is ``functional.rms_norm`` over the
last ``len(normalized_shape)`` dims (normalized in float32, weight applied in the input dtype)."""

from tensorrt_llm.functional import rms_norm
from tensorrt_llm.module import Module
from tensorrt_llm.parameter import Parameter


class RmsNorm(Module):
    def __init__(self, normalized_shape, eps=1e-06, elementwise_affine=True, dtype=None):
        super().__init__()
        self.normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.eps = eps
        self.register_parameter("weight", Parameter(shape=self.normalized_shape, dtype=dtype)
                                if elementwise_affine else None)

    def forward(self, x, normalized_shape=None):
        if tuple(x.shape[-len(self.normalized_shape):]) != self.normalized_shape:
            raise ValueError(f"RmsNorm{list(self.normalized_shape)} applied to a tensor of shape {list(x.shape)}")
        weight = None if self.weight is None else self.weight.value
        return rms_norm(x, self.normalized_shape, weight=weight, eps=self.eps)
