"""A stand-in for the ``tensorrt`` Python module: only the enums TensorRT-LLM 1.2.x's network code reads.

``DataType`` carries TensorRT's values (``tensorrt.DataType``: FLOAT 0, HALF 1, INT8 2, INT32 3, BOOL 4, UINT8 5,
FP8 6, BF16 7, INT64 8, INT4 9, FP4 10) and the module aliases ``tensorrt.float32``, ``tensorrt.int32``, ... that
TensorRT-LLM passes around (``trt.int32`` in ``models/generation_mixin.py``). ``TensorLocation`` is the input
placement flag of ``functional.Tensor``. Nothing here builds or runs an engine.
"""

from enum import IntEnum

__version__ = "10.13.0"  # the TensorRT of the TensorRT-LLM 1.2.x release images (not checked by anything here)


class DataType(IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9
    FP4 = 10


class TensorLocation(IntEnum):
    DEVICE = 0
    HOST = 1


float32 = DataType.FLOAT
float16 = DataType.HALF
int8 = DataType.INT8
int32 = DataType.INT32
bool = DataType.BOOL  # noqa: A001  (TensorRT's own module attribute name)
uint8 = DataType.UINT8
fp8 = DataType.FP8
bfloat16 = DataType.BF16
int64 = DataType.INT64
