"""GPU datasheet figures the planner needs: memory, HBM bandwidth and dense tensor-core FLOP/s per GPU.

Conventions, applied to every row:
- memory is the datasheet's "GB" taken as 10**9 bytes. CUDA usually reports a few percent more (an H100 80GB shows
  about 79.6 GiB = 85.5e9 bytes), so fit checks err on the safe side;
- FLOP/s are *dense*: NVIDIA's tables print sparse figures with an asterisk ("with sparsity"); dense is half;
- ``fp8_flops`` is None where the GPU has no FP8 tensor cores (Ampere).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hunyuan_trtllm.errors import UserError

GB = 10**9
TB = 10**12
TFLOPS = 10**12


@dataclass(frozen=True)
class GpuSpec:
    """One GPU model's datasheet figures (per GPU) and where they come from."""

    key: str
    name: str
    memory_bytes: int
    hbm_bytes_per_s: float
    bf16_flops: float  # dense
    fp8_flops: float | None  # dense; None: no FP8 tensor cores
    source: str

    def dense_flops(self, dtype: str) -> float:
        """Dense tensor-core FLOP/s for ``bf16`` or ``fp8`` weights/activations."""
        if dtype == "fp8":
            if self.fp8_flops is None:
                raise UserError(f"--dtype fp8: the {self.name} has no FP8 tensor cores; use --dtype bf16")
            return self.fp8_flops
        return self.bf16_flops

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "name": self.name, "memory_bytes": self.memory_bytes,
                "hbm_bandwidth_bytes_per_s": self.hbm_bytes_per_s, "bf16_dense_flops": self.bf16_flops,
                "fp8_dense_flops": self.fp8_flops, "supports_fp8": self.fp8_flops is not None,
                "source": self.source}


GPUS: dict[str, GpuSpec] = {
    spec.key: spec
    for spec in (
        GpuSpec("h100", "H100 SXM 80GB", 80 * GB, 3.35 * TB, 989.5 * TFLOPS, 1979 * TFLOPS,
                "https://www.nvidia.com/en-us/data-center/h100/ (H100 SXM: 80GB, 3.35TB/s, "
                "BF16 1,979 / FP8 3,958 TFLOPS with sparsity)"),
        GpuSpec("h200", "H200 SXM 141GB", 141 * GB, 4.8 * TB, 989.5 * TFLOPS, 1979 * TFLOPS,
                "https://www.nvidia.com/en-us/data-center/h200/ (H200 SXM: 141GB, 4.8TB/s, "
                "BF16 1,979 / FP8 3,958 TFLOPS with sparsity)"),
        GpuSpec("h20", "H20 96GB", 96 * GB, 4.0 * TB, 148 * TFLOPS, 296 * TFLOPS,
                "no datasheet on nvidia.com; NVIDIA's HGX H20 product brief as quoted in "
                "shared/reference/peers_perf.md §5 (4.0TB/s, 148 BF16 / 296 FP8 dense TFLOPS) and "
                "https://huggingface.co/hardware/h20 (96GB, 148 TFLOPS)"),
        GpuSpec("a100-80g", "A100 SXM 80GB", 80 * GB, 2.039 * TB, 312 * TFLOPS, None,
                "https://www.nvidia.com/en-us/data-center/a100/ (A100 80GB SXM: 80GB HBM2e, 2,039GB/s, "
                "BF16 312 TFLOPS dense; no FP8)"),
        GpuSpec("b200", "B200 180GB (HGX/DGX B200)", 180 * GB, 8.0 * TB, 2250 * TFLOPS, 4500 * TFLOPS,
                "https://www.nvidia.com/en-us/data-center/dgx-b200/ (8 GPUs: 1,440GB, 64TB/s HBM3e, "
                "FP8 72 PFLOPS with sparsity) and https://www.nvidia.com/en-us/data-center/hgx/ "
                "(HGX B200: FP16/BF16 36 PFLOPS with sparsity), divided by 8 GPUs"),
        GpuSpec("l40s", "L40S 48GB", 48 * GB, 0.864 * TB, 362.05 * TFLOPS, 733 * TFLOPS,
                "https://www.nvidia.com/en-us/data-center/l40s/ (48GB GDDR6, 864GB/s, "
                "BF16 362.05 / FP8 733 TFLOPS dense)"),
    )
}


def gpu_spec(key: str) -> GpuSpec:
    """The datasheet row for ``--gpu KEY``."""
    try:
        return GPUS[key]
    except KeyError:
        raise UserError(f"--gpu {key}: expected one of {', '.join(GPUS)}") from None
