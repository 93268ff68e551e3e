"""Conversion speed and memory on full-width Hunyuan-A13B (or, ``--arch hy3``, Hy3) stacks, against a plain copy of
the same bytes.

Synthesizes a full-width checkpoint with ``--layers`` decoder layers once (bfloat16; A13B: 2 layers ≈ 10 GB; Hy3: a
MoE layer ≈ 3.6 GB plus 2 GB of embedding and lm_head, one layer = one MoE layer, deeper stacks start with the dense
layer 0, and the MTP layer is part of the source), plus an FP8 copy of it in Tencent's FP8 release format, then
measures each variant ``--repeats`` times in a fresh process and reports the median:

- ``copy``: every source file copied to the output disk and fsynced (the physical limit on this machine);
- ``bf16_tp8_ep8`` / ``bf16_tp2_ep4``: ``convert`` in bfloat16 (``--workers``; ``_w1`` etc. for the others);
  TP2xEP4 is the expert split moe_tp 2 x moe_ep 4 of 8 ranks (attention tp 8);
- ``fp8_tp8_ep8``: ``convert --dtype fp8`` of the FP8 source (its scales, no calibration);
- ``fp8_calib_tp8_ep8``: calibration (4 samples x 32 tokens of the built-in set) then ``convert --dtype fp8``;
- ``naive_bf16``: safetensors ``load_file`` of everything, resharding in memory, ``save_file`` per rank (TP8xEP8).

Throughput is output bytes written per second (the copy writes the source size; FP8 writes about half of what it
reads), ``ratio_to_copy`` divides by the copy's; peak RSS is sampled over the whole process tree (workers
included) every 20 ms and includes the interpreter with torch (~0.3 GB). Every run starts with the source in the
page cache (one untimed warm-up read) and no dirty pages left to write back, as the copy does. Everything is
written under ``--work-dir`` and removed; progress goes to stderr, the table or ``--json`` to stdout.

    python bench/convert.py                      # 2 layers, 3 repeats, workers 1 and 2
    python bench/convert.py --layers 1 --repeats 1 --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

GB = 1e9
SAMPLE_S = 0.02
progress = Console(stderr=True)
# Each variant runs in a fresh interpreter: it prints its elapsed seconds (the timed part only).
RUNNER = r"""
import os, sys, time
from pathlib import Path
variant, src, out, workers = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
import torch
from hunyuan_trtllm.checkpoints.mapping import Mapping
tp, ep = (8, 4) if "tp2_ep4" in variant else (8, 8)
start = time.perf_counter()
if variant == "copy":
    out.mkdir()
    import shutil
    for path in sorted(src.iterdir()):
        shutil.copyfile(path, out / path.name)
        fd = os.open(out / path.name, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
elif variant.startswith("naive"):
    from safetensors.torch import load_file, save_file
    from hunyuan_trtllm.checkpoints.source import open_source
    from hunyuan_trtllm.checkpoints.weight_plan import WeightPlan, materialize
    spec = open_source(src).spec
    tensors = {}
    for path in sorted(src.glob("*.safetensors")):
        tensors.update(load_file(path))
    def read(r):
        tensor = tensors[r.name]
        if r.rows is not None:
            tensor = tensor[r.rows[0]:r.rows[1]]
        if r.cols is not None:
            tensor = tensor[:, r.cols[0]:r.cols[1]]
        return tensor
    plan = WeightPlan.build(spec, Mapping(tp=tp, moe_ep=ep), torch.bfloat16)
    out.mkdir()
    for rank, planned in enumerate(plan.ranks):
        path = out / f"rank{rank}.safetensors"
        save_file({p.name: materialize(p, read).clone() for p in planned}, path)  # clone: tied embeddings
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
else:
    from hunyuan_trtllm.checkpoints.convert import convert
    scales = None
    if "calib" in variant:
        from hunyuan_trtllm.reference.calibrate import calibrate, load_calibration_samples
        from hunyuan_trtllm.checkpoints.source import open_source
        scales = calibrate(open_source(src), load_calibration_samples(None, src, 4, 32))
    convert(src, out, Mapping(tp=tp, moe_ep=ep), dtype="fp8" if "fp8" in variant else "bfloat16",
            workers=workers, scales=scales)
print(time.perf_counter() - start)
"""


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def warm(path: Path) -> None:
    """Read every file once so that each timed run starts from the page cache."""
    for file in sorted(path.iterdir()):
        with open(file, "rb") as handle:
            while handle.read(1 << 24):
                pass


def run_once(variant: str, src: Path, out: Path, workers: int) -> tuple[float, int, int]:
    """(seconds, output bytes, peak tree RSS bytes) of one fresh-process run."""
    warm(src)
    os.sync()  # earlier runs' dirty pages are written back now, not during this run
    process = subprocess.Popen([sys.executable, "-c", RUNNER, variant, str(src), str(out), str(workers)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(SAMPLE_S)
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{stderr[-3000:]}")
    written = dir_bytes(out)
    shutil.rmtree(out)
    return float(stdout.strip().splitlines()[-1]), written, peak


def largest_output_tensor(src: Path) -> int:
    """Bytes of the largest tensor any variant writes (the bfloat16 TP8xEP8 plan)."""
    import torch

    from hunyuan_trtllm.checkpoints.mapping import Mapping
    from hunyuan_trtllm.checkpoints.source import open_source
    from hunyuan_trtllm.checkpoints.weight_plan import WeightPlan

    plan = WeightPlan.build(open_source(src).spec, Mapping(tp=8, moe_ep=8), torch.bfloat16)
    return max(t.nbytes for rank in plan.ranks for t in rank)


def make_sources(work: Path, layers: int, preset: str, arch: str = "a13b") -> tuple[Path, Path]:
    """The full-width bfloat16 stack of ``arch`` and its FP8 copy (Tencent's format, scales from the weights)."""
    from hunyuan_trtllm.checkpoints.fp8_scales import Fp8Scales
    from hunyuan_trtllm.checkpoints.quantize import fp8_linear_names, quantize_checkpoint, weight_scales
    from hunyuan_trtllm.checkpoints.source import SourceCheckpoint
    from hunyuan_trtllm.synth.checkpoint import synth_checkpoint

    bf16, fp8 = work / f"{arch}-bf16", work / f"{arch}-fp8"
    synth_checkpoint(bf16, arch, preset=preset, layers=layers, dtype="bfloat16", progress=preset == "full-width")
    source = SourceCheckpoint(bf16)
    names = fp8_linear_names(source.spec)
    scales = Fp8Scales(weight=weight_scales(source, names), activation=dict.fromkeys(names, 0.05),
                       origin="bench: weight amax, constant input scales")
    quantize_checkpoint(source, fp8, scales, format="tencent")
    source.close()
    return bf16, fp8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=["a13b", "hy3"], default="a13b", help="architecture (default a13b)")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers of the synthetic model (default 2)")
    parser.add_argument("--preset", choices=["full-width", "tiny"], default="full-width",
                        help="widths of the synthetic model (tiny: the test suite's memory check)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant; the median is reported")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts for bf16_tp8_ep8")
    parser.add_argument("--skip", nargs="*", default=[], help="variants to leave out (e.g. naive_bf16)")
    parser.add_argument("--work-dir", type=Path, default=None, help="scratch directory on the disk to measure")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-convert-", dir=args.work_dir))
    try:
        with contextlib.redirect_stdout(sys.stderr):  # synth's progress bars: stdout stays for the results
            bf16, fp8 = make_sources(work, args.layers, args.preset, args.arch)
        largest = largest_output_tensor(bf16)
        main_workers = max(args.workers)
        variants = [("copy", bf16, 1)]
        variants += [(f"bf16_tp8_ep8{'' if w == main_workers else f'_w{w}'}", bf16, w) for w in args.workers]
        variants += [("bf16_tp2_ep4", bf16, main_workers), ("fp8_tp8_ep8", fp8, main_workers),
                     ("fp8_calib_tp8_ep8", bf16, main_workers), ("naive_bf16", bf16, 1)]
        results = {}
        for name, src, workers in variants:
            if name in args.skip:
                continue
            runs = []
            for repeat in range(args.repeats):
                runs.append(run_once(name.split("_w")[0] if "_w" in name else name, src, work / "out", workers))
                progress.print(f"{name} run {repeat + 1}/{args.repeats}: {runs[-1][0]:.1f} s, "
                               f"peak RSS {runs[-1][2] / GB:.2f} GB")
            seconds = statistics.median(r[0] for r in runs)
            results[name] = {"workers": workers, "seconds": seconds, "written_gb": runs[0][1] / GB,
                             "read_gb": dir_bytes(src) / GB, "gb_per_s": runs[0][1] / GB / seconds,
                             "peak_rss_gb": max(r[2] for r in runs) / GB}
        for entry in results.values():
            entry["ratio_to_copy"] = entry["gb_per_s"] / results["copy"]["gb_per_s"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bound = 2 + 2 * largest / GB  # the target: 2 GB + 2x the largest output tensor
    report = {"arch": args.arch, "preset": args.preset, "layers": args.layers, "repeats": args.repeats,
              "cpus": psutil.cpu_count(), "memory_gb": psutil.virtual_memory().total / GB,
              "largest_output_tensor_gb": largest / GB, "peak_rss_bound_gb": bound, "variants": results}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    table = Table(title=f"convert on a {args.preset} {args.arch} stack of {args.layers} layers "
                        f"({psutil.cpu_count()} CPUs, median of {args.repeats})")
    for column in ("variant", "workers", "read GB", "written GB", "s", "GB/s", "× copy", "peak RSS GB"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for name, e in results.items():
        table.add_row(name, str(e["workers"]), f"{e['read_gb']:.2f}", f"{e['written_gb']:.2f}", f"{e['seconds']:.1f}",
                      f"{e['gb_per_s']:.2f}", f"{e['ratio_to_copy']:.2f}", f"{e['peak_rss_gb']:.2f}")
    Console().print(table)
    Console().print(f"peak RSS bound: 2 GB + 2 x the largest output tensor ({largest / GB:.2f} GB) = {bound:.2f} GB")


if __name__ == "__main__":
    main()
