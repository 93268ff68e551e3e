"""tensorrt_llm/network.py: ``Network`` (inputs, outputs, plugin config), ``net_guard`` and ``default_net``.

Contracts kept from the real class:

- ``Network._add_input(tensor, name, dtype, shape, dim_range)`` asserts ``isinstance(dtype, trt.DataType)``
  (``functional.Tensor`` converts a dtype *string* with ``str_dtype_to_trt`` before calling it, as the real
  ``Tensor.__init__`` does); TensorRT refuses two network inputs of one name, so a second one raises here;
- ``_mark_output(tensor, name, dtype)``: a strongly typed network casts the output to the requested dtype.

What the stand-in adds to execute the network eagerly instead of building an engine: :meth:`Network.feed` gives
every declared input its runtime value (the runtime's job in TensorRT), checking the dtype, rank, static sizes
and the dimension ranges of the optimization profiles; an input the runtime does not provide is an error.
``default_net`` is per thread: the runtime executes the ranks of a pipeline stage in threads, one network each.
``PluginConfig`` holds the build options the model definition reads (tensorrt_llm/plugin/plugin.py).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass

import tensorrt as trt
import torch

from tensorrt_llm._utils import trt_dtype_to_torch


@dataclass
class PluginConfig:
    """The ``PluginConfig`` fields the model definition and ``prepare_inputs`` read (1.2 defaults where they exist;
    this project's BuildConfig sets the rest)."""

    gpt_attention_plugin: str | None = "auto"
    moe_plugin: str | None = "auto"
    gemm_plugin: str | None = None
    remove_input_padding: bool = True
    paged_kv_cache: bool = True
    tokens_per_block: int = 32
    use_paged_context_fmha: bool = True
    lora_plugin: str | None = None
    multiple_profiles: bool = False
    streamingllm: bool = False
    pp_reduce_scatter: bool = False
    reduce_fusion: bool = False


class Network:
    def __init__(self) -> None:
        self._inputs: dict[str, object] = {}
        self._outputs: dict[str, object] = {}
        self.plugin_config = PluginConfig()
        self.strongly_typed = True
        self.dtype = None

    def _add_input(self, tensor, name, dtype, shape, dim_range=None) -> None:
        assert isinstance(dtype, trt.DataType)
        if name in self._inputs:
            raise ValueError(f"network input '{name}' is declared twice (TensorRT refuses duplicate input names)")
        self._inputs[name] = tensor

    def _mark_output(self, tensor, name, dtype) -> None:
        from tensorrt_llm.functional import cast

        if name in self._outputs:
            raise ValueError(f"network output '{name}' is marked twice")
        self._outputs[name] = cast(tensor, dtype) if dtype is not None and tensor.dtype != dtype else tensor

    def get_inputs(self):
        return self._inputs.values()

    @property
    def outputs(self) -> dict[str, object]:
        return self._outputs

    def feed(self, values: dict[str, torch.Tensor]) -> None:
        """Bind the runtime's tensors to the declared inputs. As TensorRT-LLM's runtime binds an engine's inputs from
        its tensor map, every declared input must be in ``values`` (else KeyError) and extra entries are ignored."""
        missing = sorted(set(self._inputs) - set(values))
        if missing:
            raise KeyError(f"the network declares inputs the runtime does not provide: {missing}")
        for name, tensor in self._inputs.items():
            tensor.bind(_checked_value(tensor, values[name]))


def _checked_value(tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` if it fits the input's dtype, rank, static dims and profile ranges (else ValueError)."""
    name = tensor.name
    expected = trt_dtype_to_torch(tensor.dtype)
    if value.dtype != expected:
        raise ValueError(f"input '{name}': dtype {value.dtype}, the network declares {expected}")
    if value.dim() != len(tensor.shape):
        raise ValueError(f"input '{name}': rank {value.dim()}, the network declares shape {list(tensor.shape)}")
    for dim, (size, declared) in enumerate(zip(value.shape, tensor.shape, strict=True)):
        if declared != -1 and size != declared:
            raise ValueError(f"input '{name}': dim {dim} is {size}, the network declares {declared}")
    if tensor.profiles and not any(all(low <= size <= high for size, low, high in
                                       zip(value.shape, profile.min, profile.max, strict=True))
                                   for profile in tensor.profiles):
        raise ValueError(f"input '{name}': shape {list(value.shape)} is outside every optimization profile")
    return value


_state = threading.local()


def default_net() -> Network:
    network = getattr(_state, "network", None)
    if network is None:
        raise RuntimeError("no network: build inside net_guard(network)")
    return network


@contextmanager
def net_guard(network: Network):
    previous = getattr(_state, "network", None)
    _state.network = network
    try:
        yield network
    finally:
        _state.network = previous
