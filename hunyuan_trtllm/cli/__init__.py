"""The ``hunyuan-trtllm`` command line, one module per command group.

=================  ==============================================================
``app``            the click group, one-line errors, tables, JSON, progress bars
``checkpoint``     inspect, convert, verify, synth, demo
``quantize``       quantize (FP8 Hugging Face checkpoints)
``fp8_options``    the calibration flags shared by ``convert --dtype fp8`` and ``quantize``
``build``          build (TensorRT-LLM 1.2.1 engines)
``plan``           plan (memory and parallelism)
``serve``          triton-repo, serve
``deploy``         deploy compose / k8s / fetch
=================  ==============================================================

Importing this package registers every subcommand; none of them imports torch or transformers until it runs.
"""

from __future__ import annotations

from hunyuan_trtllm.cli import build, checkpoint, deploy, plan, quantize, serve  # noqa: F401  (register subcommands)
from hunyuan_trtllm.cli.app import cli

__all__ = ["cli", "main"]


def main() -> None:
    """Entry point of the ``hunyuan-trtllm`` console script (also ``python -m hunyuan_trtllm``)."""
    cli(prog_name="hunyuan-trtllm")
