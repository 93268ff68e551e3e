"""tensorrt_llm/parameter.py: ``Parameter(value=None, shape=(1,), dtype=None, is_buffer=False, prefer_managed=False)``.

A parameter given a ``value`` at construction is already initialized (``is_inited()``); ``PretrainedModel.load``
requires a checkpoint tensor for every parameter that is not, and assigning a tensor of another shape fails.
``value`` is the parameter as a network constant. The real class would hand TensorRT an uninitialized (random)
weight for a parameter nobody loaded; the stand-in makes reading one an error, so a parameter that is declared
but never loaded cannot go unnoticed.
"""

from tensorrt_llm._utils import dtype_name


class Parameter:
    def __init__(self, value=None, shape=(1,), dtype=None, is_buffer=False, prefer_managed=False):
        self.shape = tuple(getattr(value, "shape", shape))
        self.dtype = dtype_name(dtype if dtype is not None else getattr(value, "dtype", "float32"))
        self.is_buffer = is_buffer
        self._value = value
        self.name = None  # set by PretrainedModel.load, for messages

    def is_inited(self) -> bool:
        return self._value is not None

    def set_checkpoint_tensor(self, name: str, tensor) -> None:
        """What ``param.value = weights[name]`` checks in ``PretrainedModel.load`` (shape, and dtype here)."""
        shape, dtype = tuple(tensor.shape), dtype_name(tensor.dtype)
        if shape != self.shape or dtype != self.dtype:
            raise RuntimeError(f"Encounter error for parameter '{name}': expected {self.shape} {self.dtype}, "
                               f"got {shape} {dtype}")
        self._value = tensor
        self.name = name

    @property
    def raw_value(self):
        if self._value is None:
            raise RuntimeError(f"parameter {self.name or ''} {list(self.shape)} {self.dtype} is declared but was "
                               "never loaded")
        return self._value

    @property
    def value(self):
        from tensorrt_llm.functional import wrap

        raw = self.raw_value
        return wrap(raw) if hasattr(raw, "dim") else raw
