"""tensorrt_llm/_utils.py: ``pad_vocab_size`` rounds the vocabulary up to a multiple of the TP size."""

import math

TORCH_DTYPE_NAMES = {  # str_dtype_to_torch, inverted ("fp8" is torch.float8_e4m3fn)
    "torch.float32": "float32", "torch.float16": "float16", "torch.bfloat16": "bfloat16",
    "torch.float8_e4m3fn": "fp8", "torch.int8": "int8", "torch.int32": "int32",
}


def pad_vocab_size(vocab_size: int, tp_size: int) -> int:
    return int(math.ceil(vocab_size / tp_size) * tp_size)


def dtype_name(dtype) -> str:
    """A TensorRT-LLM dtype string for a string or torch dtype."""
    return TORCH_DTYPE_NAMES.get(str(dtype), str(dtype))
