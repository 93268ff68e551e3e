"""tensorrt_llm/_utils.py: dtype name tables and ``pad_vocab_size``.

- ``str_dtype_to_trt(name)``: the TensorRT dtype of a TensorRT-LLM dtype string (``_str_to_trt_dtype_dict``);
  an unknown name fails its ``assert ret is not None, f'Unsupported dtype: {dtype}'``;
- ``str_dtype_to_torch`` / ``trt_dtype_to_torch`` / ``torch_dtype_to_trt``: the same table for torch
  (``"fp8"`` is ``torch.float8_e4m3fn``);
- ``pad_vocab_size`` rounds the vocabulary up to a multiple of the TP size.
"""

import math

import tensorrt as trt
import torch

_STR_TO_TRT = {"float32": trt.float32, "float16": trt.float16, "bfloat16": trt.bfloat16, "int64": trt.int64,
               "int32": trt.int32, "int8": trt.int8, "bool": trt.bool, "fp8": trt.fp8, "uint8": trt.uint8}
_TRT_TO_TORCH = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16,
                 trt.int64: torch.int64, trt.int32: torch.int32, trt.int8: torch.int8, trt.bool: torch.bool,
                 trt.fp8: torch.float8_e4m3fn, trt.uint8: torch.uint8}
_TORCH_TO_TRT = {value: key for key, value in _TRT_TO_TORCH.items()}
TORCH_DTYPE_NAMES = {str(torch_dtype): name for name, torch_dtype in
                     ((name, _TRT_TO_TORCH[trt_dtype]) for name, trt_dtype in _STR_TO_TRT.items())}


def str_dtype_to_trt(dtype: str) -> trt.DataType:
    ret = _STR_TO_TRT.get(dtype)
    assert ret is not None, f"Unsupported dtype: {dtype}"
    return ret


def str_dtype_to_torch(dtype: str) -> torch.dtype:
    return trt_dtype_to_torch(str_dtype_to_trt(dtype))


def trt_dtype_to_torch(dtype: trt.DataType) -> torch.dtype:
    ret = _TRT_TO_TORCH.get(dtype)
    assert ret is not None, f"Unsupported dtype: {dtype}"
    return ret


def torch_dtype_to_trt(dtype: torch.dtype) -> trt.DataType:
    ret = _TORCH_TO_TRT.get(dtype)
    assert ret is not None, f"Unsupported dtype: {dtype}"
    return ret


def pad_vocab_size(vocab_size: int, tp_size: int) -> int:
    return int(math.ceil(vocab_size / tp_size) * tp_size)


def dtype_name(dtype) -> str:
    """A TensorRT-LLM dtype string for a string or torch dtype (the stand-in's Parameter bookkeeping)."""
    return TORCH_DTYPE_NAMES.get(str(dtype), str(dtype))
