"""Command-line pieces shared by ``convert --dtype fp8`` and ``quantize``: calibration flags and where scales
come from (an FP8 source's own scales, a saved scales file, or calibration with a progress bar per layer)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hunyuan_trtllm.cli.app import console
from hunyuan_trtllm.errors import UserError

if TYPE_CHECKING:  # torch loads only when a command runs
    from hunyuan_trtllm.checkpoints.fp8_scales import Fp8Scales
    from hunyuan_trtllm.checkpoints.source import SourceCheckpoint


def calibration_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the calibration flags (in this order in --help) to a click command."""
    options = [
        click.option("--kv-cache-dtype", type=click.Choice(["auto", "fp8"]), default="auto", show_default=True,
                     help="fp8: an FP8 KV cache with calibrated per-layer scales."),
        click.option("--calib-data", type=click.Path(path_type=Path, dir_okay=False), default=None,
                     help="Calibration JSONL: one {\"text\": ...} or {\"messages\": [...]} per line."),
        click.option("--calib-builtin", is_flag=True,
                     help="Calibrate on the built-in mixed Chinese/English/code set (no downloads)."),
        click.option("--calib-samples", default=512, show_default=True, help="Calibration samples."),
        click.option("--calib-seq-len", default=1024, show_default=True, help="Tokens per sample (truncated)."),
        click.option("--calib-device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
                     help="Where each layer is calibrated."),
        click.option("--scales", "scales_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
                     help="Use FP8 scales saved by an earlier run (scales.json) instead of calibrating."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def resolve_scales(src: SourceCheckpoint, calib_data: Path | None, calib_builtin: bool, calib_samples: int,
                   calib_seq_len: int, calib_device: str, scales_file: Path | None,
                   quiet: bool = False) -> Fp8Scales | None:
    """The scales to quantize with; None means "the FP8 source's own" (Tencent's FP8 release: no calibration).

    ``quiet``: no progress bar and no summary line."""
    if scales_file is not None:
        from hunyuan_trtllm.checkpoints.fp8_scales import Fp8Scales

        return Fp8Scales.load(scales_file)
    if calib_data is None and not calib_builtin:
        if src.fp8:
            return None
        raise UserError("FP8 from an unquantized checkpoint needs activation scales: add --calib-builtin, "
                        "--calib-data FILE.jsonl or --scales scales.json")
    if calib_data is not None and calib_builtin:
        raise UserError("--calib-data and --calib-builtin exclude each other")
    if calib_samples < 1 or calib_seq_len < 2:
        raise UserError("--calib-samples must be >= 1 and --calib-seq-len >= 2")
    from hunyuan_trtllm.reference.calibrate import calibrate, load_calibration_samples

    samples = load_calibration_samples(calib_data, src.path, calib_samples, calib_seq_len)
    tokens = sum(len(s) for s in samples)
    columns = (TextColumn("[bold]calibrating[/] layer"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=quiet) as bar:
        task = bar.add_task("calibrate", total=src.spec.num_layers)
        scales = calibrate(src, samples, progress=lambda done, total: bar.update(task, completed=done),
                           device=calib_device)
    if not quiet:
        console.print(f"calibrated on {len(samples)} samples ({tokens} tokens) from "
                      f"{calib_data or 'the built-in set'}")
    return scales
