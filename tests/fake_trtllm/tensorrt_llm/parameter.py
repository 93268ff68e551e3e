"""tensorrt_llm/parameter.py: ``Parameter(value=None, shape=(1,), dtype=None, is_buffer=False, prefer_managed=False)``.

A parameter given a ``value`` at construction is already initialized (``is_inited()``); ``PretrainedModel.load``
requires a checkpoint tensor for every parameter that is not. Assigning a tensor of another shape fails.
"""

from tensorrt_llm._utils import dtype_name


class Parameter:
    def __init__(self, value=None, shape=(1,), dtype=None, is_buffer=False, prefer_managed=False):
        self.shape = tuple(getattr(value, "shape", shape))
        self.dtype = dtype_name(dtype if dtype is not None else getattr(value, "dtype", "float32"))
        self.is_buffer = is_buffer
        self._value = value

    def is_inited(self) -> bool:
        return self._value is not None

    def set_checkpoint_tensor(self, name: str, tensor) -> None:
        """What ``param.value = weights[name]`` checks in ``PretrainedModel.load`` (shape, and dtype here)."""
        shape, dtype = tuple(tensor.shape), dtype_name(tensor.dtype)
        if shape != self.shape or dtype != self.dtype:
            raise RuntimeError(f"Encounter error for parameter '{name}': expected {self.shape} {self.dtype}, "
                               f"got {shape} {dtype}")
        self._value = tensor
