"""tensorrt_llm/quantization/functional.py: ``quantize(input, scale_factor, dtype)`` divides by the (dequantization)
scale and rounds to e4m3, saturating at +-448 (TensorRT's IQuantizeLayer); ``dequantize`` multiplies back, in
float32 unless told otherwise."""

import torch

from tensorrt_llm.functional import wrap

E4M3_MAX = 448.0


def quantize(input, scale_factor, dtype="fp8", axis=-1):
    if dtype != "fp8":
        raise NotImplementedError(f"stand-in: quantize to {dtype} is not modelled")
    scaled = input.value.float() / scale_factor.value.float()
    return wrap(scaled.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn))


def dequantize(input, scale_factor, axis=-1, output_type="float32"):
    if output_type != "float32":
        raise NotImplementedError("stand-in: dequantize to float32 only")
    return wrap(input.value.float() * scale_factor.value.float())
