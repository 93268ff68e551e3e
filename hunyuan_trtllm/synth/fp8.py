"""Tiny random checkpoints in Tencent's FP8 release format, for tests of FP8 sources."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from hunyuan_trtllm.checkpoints.fp8_scales import Fp8Scales
from hunyuan_trtllm.checkpoints.quantize import fp8_linear_names, quantize_checkpoint, weight_scales
from hunyuan_trtllm.checkpoints.source import SourceCheckpoint
from hunyuan_trtllm.synth.checkpoint import synth_checkpoint

SYNTH_INPUT_SCALE = 4.0 / 448  # a normed hidden state's amax is a few units


def synth_fp8_checkpoint(out_dir: Path, arch: str, seed: int = 0, format: str = "tencent",
                         min_router_gap: float = 2e-3, preset: str = "tiny", layers: int | None = None) -> Path:
    """A random checkpoint in Tencent's FP8 release format (Hy3-FP8's for ``arch="hy3"``; or ``format="trtllm"``).

    Built from :func:`synth_checkpoint` (``preset``, bfloat16) with weight scales from the weights, an FP8 KV-cache
    scale per layer, and input scales that differ for every projection and every expert (``SYNTH_INPUT_SCALE``
    times 1 .. 2), so that a converter's max-merges of fused parts and of experts are observable.
    """
    out_dir = Path(out_dir)
    work = out_dir.with_name(f".{out_dir.name}.synth-bf16-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    try:
        synth_checkpoint(work, arch, preset=preset, layers=layers, seed=seed, dtype="bfloat16",
                         min_router_gap=min_router_gap)
        source = SourceCheckpoint(work)
        try:
            quantize_checkpoint(source, out_dir, _synth_scales(source, f"synthetic ({arch}, seed {seed})"),
                                kv_cache_fp8=True, format=format)
        finally:
            source.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir


def _synth_scales(source: SourceCheckpoint, origin: str) -> Fp8Scales:
    """Weight scales from the weights; a distinct input scale for every linear and a KV scale per KV layer."""
    names = fp8_linear_names(source.spec)
    kv_layers = [layer for layer in range(source.spec.num_layers) if source.spec.is_kv_producer(layer)]
    return Fp8Scales(
        weight=weight_scales(source, names),
        activation={name: SYNTH_INPUT_SCALE * (1 + i / len(names)) for i, name in enumerate(names)},
        kv={layer: SYNTH_INPUT_SCALE * (1 + i / len(kv_layers)) for i, layer in enumerate(kv_layers)},
        origin=origin,
    )
