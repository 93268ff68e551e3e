"""FP8 (e4m3) scales: what calibration or an FP8 source checkpoint provides, and the e4m3 rounding itself.

All scales are *dequantization* scales, as TensorRT-LLM stores them: ``scale = amax / 448`` and
``x ≈ e4m3(x / scale) * scale``. Keys are Hugging Face weight names (``model.layers.3.self_attn.q_proj.weight``),
whatever the physical layout; KV-cache scales are per layer.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hunyuan_trtllm.errors import UserError

E4M3_MAX = 448.0
MIN_SCALE = 1e-12  # an all-zero tensor would give scale 0; refuse it instead (see check_scale)


def scale_from_amax(amax: float) -> float:
    return amax / E4M3_MAX


QUANT_CHUNK = 1 << 18  # elements per step of quantize_e4m3 (1 MiB of float32)


def quantize_e4m3(x: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Round ``x / scale`` to float8 e4m3 (saturating at ±448), computed in float32.

    Large tensors go through one reused float32 buffer of ``QUANT_CHUNK`` elements with in-place operations (the
    same arithmetic, 2.6x faster on one core than whole-tensor temporaries, and no float32 copy of the tensor).
    """
    if isinstance(scale, torch.Tensor) and scale.numel() > 1 or x.numel() <= QUANT_CHUNK:
        return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    flat = x.reshape(-1)
    out = torch.empty(flat.shape, dtype=torch.float8_e4m3fn)
    buffer = torch.empty(QUANT_CHUNK, dtype=torch.float32)
    for start in range(0, flat.numel(), QUANT_CHUNK):
        piece = buffer[: min(QUANT_CHUNK, flat.numel() - start)]
        piece.copy_(flat[start : start + piece.numel()])  # converts to float32
        out[start : start + piece.numel()] = piece.div_(scale).clamp_(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return out.view(x.shape)


def requantize_e4m3(q: torch.Tensor, scale: float, new_scale: float) -> torch.Tensor:
    """e4m3 bytes ``q`` (dequantization ``scale``) rounded to ``new_scale``: bit-identical to dequantizing in
    float32 and :func:`quantize_e4m3`, and free when the scales are equal ((q * s) / s rounds back to q)."""
    if scale == new_scale:
        return q
    flat, out = q.reshape(-1), torch.empty(q.numel(), dtype=torch.float8_e4m3fn)
    buffer = torch.empty(min(QUANT_CHUNK, flat.numel()), dtype=torch.float32)
    for start in range(0, flat.numel(), QUANT_CHUNK):
        piece = buffer[: min(QUANT_CHUNK, flat.numel() - start)]
        piece.copy_(flat[start : start + piece.numel()]).mul_(scale).div_(new_scale).clamp_(-E4M3_MAX, E4M3_MAX)
        out[start : start + piece.numel()] = piece.to(torch.float8_e4m3fn)
    return out.view(q.shape)


def fake_quant(x: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """``x`` rounded through e4m3 with ``scale`` and back to float32 (what an FP8 GEMM input sees)."""
    return quantize_e4m3(x, scale).float() * scale


def check_scale(name: str, scale: float) -> float:
    """A scale must be finite and positive: NaN/Inf weights or an all-zero tensor give a clear error."""
    if not math.isfinite(scale):
        raise UserError(f"{name}: NaN or Inf values; cannot compute an FP8 scale")
    if scale < MIN_SCALE:
        raise UserError(f"{name}: all zeros (or a zero scale); cannot compute an FP8 scale")
    return scale


@dataclass
class Fp8Scales:
    """Per-tensor FP8 scales of a Hugging Face checkpoint."""

    weight: dict[str, float] = field(default_factory=dict)  # weight name -> weight dequant scale
    activation: dict[str, float] = field(default_factory=dict)  # weight name -> its input's dequant scale
    kv: dict[int, float] = field(default_factory=dict)  # KV-producing layer -> KV-cache dequant scale
    origin: str = ""  # "fp8 checkpoint", "calibration (N samples)", ...

    def weight_scale(self, name: str) -> float:
        try:
            return self.weight[name]
        except KeyError:
            raise UserError(f"no FP8 weight scale for '{name}'") from None

    def activation_scale(self, name: str) -> float:
        try:
            return self.activation[name]
        except KeyError:
            raise UserError(f"no FP8 input (activation) scale for '{name}'") from None

    def save(self, path: Path) -> None:
        data = {"origin": self.origin, "weight": self.weight, "activation": self.activation,
                "kv": {str(k): v for k, v in self.kv.items()}}
        path.write_text(json.dumps(data, indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> Fp8Scales:
        try:
            data = json.loads(path.read_text())
            return cls(dict(data["weight"]), dict(data["activation"]), {int(k): v for k, v in data["kv"].items()},
                       data.get("origin", str(path)))
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{path}: not an FP8 scales file ({exc})") from None
