"""The ``quantize`` subcommand: an FP8 Hugging Face checkpoint for TensorRT-LLM's PyTorch backend."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hunyuan_trtllm.cli.app import ByteProgress, cli, print_json, print_table
from hunyuan_trtllm.cli.fp8_options import calibration_options, resolve_scales

if TYPE_CHECKING:  # torch loads only when a command runs
    from hunyuan_trtllm.checkpoints.fp8_scales import Fp8Scales
    from hunyuan_trtllm.checkpoints.source import SourceCheckpoint

GB = 1e9


@cli.command()
@click.argument("model")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Output directory (new or empty).")
@calibration_options
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def quantize(model: str, out_dir: Path, kv_cache_dtype: str, calib_data: Path | None, calib_builtin: bool,
             calib_samples: int, calib_seq_len: int, calib_device: str, scales_file: Path | None, quiet: bool,
             as_json: bool) -> None:
    """Write MODEL as an FP8 Hugging Face checkpoint that TensorRT-LLM's PyTorch backend loads directly.

    Per-tensor FP8 (e4m3) weights with static weight and input scales for every attention, expert, shared-expert
    and MLP linear; router, embeddings, norms and lm_head keep the model dtype. Writes config.json with Tencent's
    quantization_config and the hf_quant_config.json TensorRT-LLM keys on. An FP8 MODEL (Tencent's FP8 release)
    keeps its own scales unless calibrated again; an unquantized one needs calibration (--calib-builtin,
    --calib-data) or --scales.

    \b
    Examples:
      hunyuan-trtllm quantize ./Hunyuan-A13B-Instruct -o a13b-fp8 --calib-builtin --calib-samples 128
      hunyuan-trtllm quantize ./Hunyuan-A13B-Instruct -o a13b-fp8 --calib-data chats.jsonl --kv-cache-dtype fp8
      hunyuan-trtllm quantize tencent/Hunyuan-A13B-Instruct-FP8 -o a13b-fp8-trtllm
    """
    from hunyuan_trtllm.checkpoints.quantize import quantize_checkpoint
    from hunyuan_trtllm.checkpoints.safetensors_io import check_new_output_dir
    from hunyuan_trtllm.checkpoints.source import open_source

    start_time = time.perf_counter()
    source = open_source(model)
    try:
        check_new_output_dir(out_dir, 0)  # before calibrating (which takes minutes), not after
        scales = resolve_scales(source, calib_data, calib_builtin, calib_samples, calib_seq_len, calib_device,
                                scales_file, quiet or as_json)
        if scales is None:  # an FP8 source, not calibrated again
            scales = _own_scales(source)
        with ByteProgress("quantize", quiet or as_json) as bar:
            write_start = time.perf_counter()
            out = quantize_checkpoint(source, out_dir, scales, kv_cache_fp8=kv_cache_dtype == "fp8",
                                      progress=bar.start)
            written = sum(f.stat().st_size for f in out.glob("*.safetensors"))
            write_speed = written / max(time.perf_counter() - write_start, 1e-9)
            bar.finish(write_speed)
    finally:
        source.close()
    seconds = time.perf_counter() - start_time
    summary = {"output": str(out), "scales": scales.origin, "kv_cache_dtype": kv_cache_dtype,
               "fp8_tensors": len(scales.weight), "bytes_written": written, "seconds": round(seconds, 3)}
    if as_json:
        print_json(summary)
        return
    print_table("quantize", [
        ("output", out), ("scales", scales.origin), ("FP8 linears", len(scales.weight)),
        ("KV cache", "fp8" if kv_cache_dtype == "fp8" else "model dtype (set at serve time)"),
        ("bytes", f"{written / GB:.3f} GB in {seconds:.1f} s (written at {write_speed / GB:.3g} GB/s)"),
    ])


def _own_scales(source: SourceCheckpoint) -> Fp8Scales:
    """The weight, input and KV scales stored in an FP8 source (Tencent's FP8 release)."""
    import torch

    from hunyuan_trtllm.checkpoints.fp8 import source_scales
    from hunyuan_trtllm.checkpoints.mapping import Mapping
    from hunyuan_trtllm.checkpoints.weight_plan import WeightPlan

    return source_scales(source, WeightPlan.build(source.spec, Mapping(), torch.bfloat16))
