"""Conversion speed and memory on full-width Hunyuan-A13B (or, ``--arch hy3``, Hy3) stacks, against a plain copy of
the same bytes.

Synthesizes a full-width checkpoint with ``--layers`` decoder layers once (bfloat16; A13B: 2 layers ≈ 10 GB; Hy3: a
MoE layer ≈ 3.6 GB plus 2 GB of embedding and lm_head, one layer = one MoE layer, deeper stacks start with the dense
layer 0, and the MTP layer is part of the source), plus an FP8 copy of it in Tencent's FP8 release format, then
measures each variant ``--repeats`` times in a fresh process and reports the median:

- ``copy``: every source file copied to the output disk and fsynced (the physical limit on this machine);
- ``bf16_tp8_ep8`` / ``bf16_tp2_ep4``: ``convert`` in bfloat16 (``--workers``; ``_w1`` etc. for the others);
  TP2xEP4 is the expert split moe_tp 2 x moe_ep 4 of 8 ranks (attention tp 8);
- ``bf16_tp8_ep8_pe``: the same with ``--parallel-embedding`` (each rank 1/8 of the embedding: less to write);
- ``fp8_tp8_ep8``: ``convert --dtype fp8`` of the FP8 source (its scales, no calibration);
- ``fp8_calib_tp8_ep8``: calibration (4 samples x 32 tokens of the built-in set) then ``convert --dtype fp8``;
- ``naive_bf16``: safetensors ``load_file`` of everything, resharding in memory, ``save_file`` per rank (TP8xEP8).

Throughput is output bytes written per second (the copy writes the source size; FP8 writes about half of what it
reads). The physical limit drifts with the disk's and the machine's load, so it is measured in the same run as
every variant: the runs go copy, variant, copy, variant, copy, ...; each variant run's ratio is its GB/s over the
mean GB/s of the copies just before and after it, and ``ratio_to_copy`` is the median of those ratios. The disk's
raw sequential write (fsynced) and read (cache dropped) speed is measured before and after (``--disk-gb``).

Per variant (median over runs; see ``bench/measure.py`` for the sources of each number): wall seconds, GB
read from and written to storage by the process tree (/proc/<pid>/io), user and system CPU seconds of the tree
(``sys_s_per_gb_written``), peak RSS summed over the tree (workers included; the interpreter with torch is
~0.3 GB), the page cache before / at its peak / after, and the load average. Every run starts with no dirty
pages and, by default, with the source dropped from the page cache (``--cache cold``: a real model is larger
than RAM); ``--cache warm`` reads it first. Everything is written under ``--work-dir`` and removed (``--sources
DIR`` keeps the synthetic sources for the next run); progress goes to stderr, the table or ``--json`` to stdout.

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
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import GB, Usage, disk_speed, drop_cache, run_tree, warm  # noqa: E402

progress = Console(stderr=True)
# Each variant runs in a fresh interpreter: it prints its elapsed seconds (the timed part only).
RUNNER = r"""
import os, sys, time
from pathlib import Path
variant, src, out, workers, io_mode = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
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
    from hunyuan_trtllm.checkpoints.rank_tasks import materialize
    from hunyuan_trtllm.checkpoints.weight_plan import WeightPlan
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
    mode = {} if io_mode == "default" else {"write_mode": io_mode}
    if variant.endswith("_pe"):
        mode["parallel_embedding"] = True
    convert(src, out, Mapping(tp=tp, moe_ep=ep), dtype="fp8" if "fp8" in variant else "bfloat16",
            workers=workers, scales=scales, **mode)
print(time.perf_counter() - start)
"""


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@dataclass
class Run:
    """One timed run of one variant."""

    seconds: float
    written: int
    usage: Usage


def run_once(variant: str, src: Path, out: Path, workers: int, cache: str, io_mode: str) -> Run:
    """One fresh-process run, from a cold (default) or warm source cache with no dirty pages pending."""
    warm(src) if cache == "warm" else drop_cache(src)
    os.sync()  # earlier runs' dirty pages are written back now, not during this run
    logs = out.with_name("run.stdout"), out.with_name("run.stderr")
    usage = run_tree([sys.executable, "-c", RUNNER, variant, str(src), str(out), str(workers), io_mode], *logs)
    stdout, stderr = (log.read_text() for log in logs)
    for log in logs:
        log.unlink()
    if usage.returncode != 0:
        shutil.rmtree(out, ignore_errors=True)
        raise SystemExit(f"{variant} failed:\n{stderr[-3000:]}")
    written = dir_bytes(out)
    shutil.rmtree(out)
    return Run(float(stdout.strip().splitlines()[-1]), written, usage)


def summarize(runs: list[Run], read_gb: float, workers: int, copies: list[tuple[Run, Run]] | None) -> dict:
    """Medians over the runs; ``ratio_to_copy`` is the median over runs of (this run's GB/s) / (the mean GB/s of
    the copies just before and just after it)."""
    med = statistics.median
    written_gb = runs[0].written / GB
    entry = {"workers": workers, "seconds": med(r.seconds for r in runs), "seconds_runs": [r.seconds for r in runs],
             "read_gb": read_gb, "written_gb": written_gb}
    entry["gb_per_s"] = written_gb / entry["seconds"]
    if copies is not None:
        pairs = [(r.written / r.seconds) / statistics.mean(c.written / c.seconds for c in around)
                 for r, around in zip(runs, copies, strict=True)]
        entry["ratio_pairs"] = [round(x, 3) for x in pairs]
        entry["ratio_to_copy"] = med(pairs)
    sys_s = med(r.usage.sys_s for r in runs)
    entry.update({
        "user_s": med(r.usage.user_s for r in runs), "sys_s": sys_s, "sys_s_per_gb_written": sys_s / written_gb,
        "io_read_gb": med(r.usage.io_read_bytes for r in runs) / GB,
        "io_write_gb": med(r.usage.io_write_bytes for r in runs) / GB,
        "rusage_write_gb": med(r.usage.rusage_write_bytes for r in runs) / GB,
        "peak_rss_gb": max(r.usage.peak_rss for r in runs) / GB,
        "cached_gb": [[r.usage.cached_gb_before, r.usage.cached_gb_peak, r.usage.cached_gb_after] for r in runs],
        "loadavg": [r.usage.loadavg_before for r in runs],
        "timeline": [r.usage.timeline[:: max(1, len(r.usage.timeline) // 20)] for r in runs],  # s, GB out, RSS, cache
    })
    return entry


def largest_output_tensor(src: Path) -> int:
    """Bytes of the largest tensor any variant writes (the bfloat16 TP8xEP8 plan)."""
    import torch

    from hunyuan_trtllm.checkpoints.mapping import Mapping
    from hunyuan_trtllm.checkpoints.source import open_source
    from hunyuan_trtllm.checkpoints.weight_plan import WeightPlan

    plan = WeightPlan.build(open_source(src).spec, Mapping(tp=8, moe_ep=8), torch.bfloat16)
    return max(t.nbytes for rank in plan.ranks for t in rank)


def make_sources(work: Path, layers: int, preset: str, arch: str = "a13b",
                 fp8_source: bool = True) -> tuple[Path, Path]:
    """The full-width bfloat16 stack of ``arch`` and its FP8 copy (Tencent's format, scales from the weights)."""
    from hunyuan_trtllm.checkpoints.fp8_scales import Fp8Scales
    from hunyuan_trtllm.checkpoints.quantize import fp8_linear_names, quantize_checkpoint, weight_scales
    from hunyuan_trtllm.checkpoints.source import SourceCheckpoint
    from hunyuan_trtllm.synth.checkpoint import synth_checkpoint

    bf16, fp8 = work / f"{arch}-bf16", work / f"{arch}-fp8"
    synth_checkpoint(bf16, arch, preset=preset, layers=layers, dtype="bfloat16", progress=preset == "full-width")
    if not fp8_source:
        return bf16, fp8
    source = SourceCheckpoint(bf16)
    names = fp8_linear_names(source.spec)
    scales = Fp8Scales(weight=weight_scales(source, names), activation=dict.fromkeys(names, 0.05),
                       origin="bench: weight amax, constant input scales")
    quantize_checkpoint(source, fp8, scales, format="tencent")
    source.close()
    return bf16, fp8


def schedule(names: list[str], repeats: int) -> list[str]:
    """copy, v1, copy, v2, copy, ... for every repeat: each variant run sits between two copies."""
    order = ["copy"]
    for _ in range(repeats):
        for name in names:
            order += [name, "copy"]
    return order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=["a13b", "hy3"], default="a13b", help="architecture (default a13b)")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers of the synthetic model (default 2)")
    parser.add_argument("--preset", choices=["full-width", "tiny"], default="full-width",
                        help="widths of the synthetic model (tiny: the test suite's memory check)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant; the median is reported")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts for bf16_tp8_ep8")
    parser.add_argument("--skip", nargs="*", default=[], help="variants to leave out (e.g. naive_bf16)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these variants (and the copy)")
    parser.add_argument("--write-modes", nargs="+", default=[],
                        help="also run bf16_tp8_ep8 in these convert --write-mode's (bf16_tp8_ep8@MODE)")
    parser.add_argument("--cache", choices=["cold", "warm"], default="cold",
                        help="source pages dropped before every run (cold, as for a real model) or read first")
    parser.add_argument("--disk-gb", type=float, default=None,
                        help="size of the raw disk speed test file (default 4, tiny preset 0.1)")
    parser.add_argument("--sources", type=Path, default=None,
                        help="keep the synthetic sources in this directory (reused when present, never removed)")
    parser.add_argument("--work-dir", type=Path, default=None, help="scratch directory on the disk to measure")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    args.disk_gb = args.disk_gb or (0.1 if args.preset == "tiny" else 4.0)

    work = Path(tempfile.mkdtemp(prefix="bench-convert-", dir=args.work_dir))
    keep = args.sources is not None
    try:
        sources = args.sources or work
        sources.mkdir(parents=True, exist_ok=True)
        bf16, fp8 = sources / f"{args.arch}-bf16", sources / f"{args.arch}-fp8"
        main_workers = max(args.workers)
        variants = {f"bf16_tp8_ep8{'' if w == main_workers else f'_w{w}'}": (bf16, w) for w in args.workers}
        variants |= {"bf16_tp8_ep8_pe": (bf16, main_workers), "bf16_tp2_ep4": (bf16, main_workers),
                     "fp8_tp8_ep8": (fp8, main_workers), "fp8_calib_tp8_ep8": (bf16, main_workers),
                     "naive_bf16": (bf16, 1)}
        variants |= {f"bf16_tp8_ep8@{mode}": (bf16, main_workers) for mode in args.write_modes}
        names = [n for n in variants if n not in args.skip and (args.only is None or n in args.only)]
        fp8_needed = any(n.startswith("fp8_tp") for n in names)
        if not (bf16 / "config.json").is_file() or (fp8_needed and not (fp8 / "config.json").is_file()):
            shutil.rmtree(bf16, ignore_errors=True)
            shutil.rmtree(fp8, ignore_errors=True)
            with contextlib.redirect_stdout(sys.stderr):  # synth's progress bars: stdout stays for the results
                make_sources(sources, args.layers, args.preset, args.arch, fp8_needed)
        largest = largest_output_tensor(bf16)
        disk_before = disk_speed(work, int(args.disk_gb * GB))
        progress.print(f"disk: write {disk_before['write_gb_per_s']:.2f} GB/s, read {disk_before['read_gb_per_s']:.2f}"
                       f" GB/s, load {disk_before['loadavg']}")
        order = schedule(names, args.repeats)
        done: list[Run] = []
        for step, name in enumerate(order):
            src, workers = variants.get(name, (bf16, 1))
            base, _, mode = name.partition("@")
            done.append(run_once(base.split("_w")[0], src, work / "out", workers, args.cache, mode or "default"))
            run = done[-1]
            progress.print(f"[{step + 1}/{len(order)}] {name}: {run.seconds:.1f} s, "
                           f"{run.written / GB / run.seconds:.2f} GB/s, sys {run.usage.sys_s:.1f} s, "
                           f"peak RSS {run.usage.peak_rss / GB:.2f} GB, load {run.usage.loadavg_before}")
        runs: dict[str, list[Run]] = {}
        around: dict[str, list[tuple[Run, Run]]] = {}
        for step, (name, run) in enumerate(zip(order, done, strict=True)):
            runs.setdefault(name, []).append(run)
            if name != "copy":  # schedule() puts a copy just before and just after every variant run
                around.setdefault(name, []).append((done[step - 1], done[step + 1]))
        results = {"copy": summarize(runs["copy"], dir_bytes(bf16) / GB, 1, None)}
        results["copy"]["ratio_to_copy"] = 1.0
        for name in names:
            src, workers = variants[name]
            results[name] = summarize(runs[name], dir_bytes(src) / GB, workers, around[name])
        disk_after = disk_speed(work, int(args.disk_gb * GB))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not keep:
            shutil.rmtree(sources, ignore_errors=True)
    bound = 2 + 2 * largest / GB  # the target: 2 GB + 2x the largest output tensor
    report = {"arch": args.arch, "preset": args.preset, "layers": args.layers, "repeats": args.repeats,
              "cache": args.cache,
              "cpus": psutil.cpu_count(), "memory_gb": psutil.virtual_memory().total / GB,
              "largest_output_tensor_gb": largest / GB, "peak_rss_bound_gb": bound,
              "disk": {"before": disk_before, "after": disk_after}, "variants": results}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    table = Table(title=f"convert on a {args.preset} {args.arch} stack of {args.layers} layers "
                        f"({psutil.cpu_count()} CPUs, "
                        f"{args.cache} cache, median of {args.repeats}, each run between two copies)")
    columns = ("variant", "workers", "read GB", "written GB", "s", "GB/s", "× copy", "user s", "sys s",
               "sys s/GB", "disk read GB", "disk write GB", "peak RSS GB")
    for column in columns:
        table.add_column(column, justify="left" if column == "variant" else "right")
    for name, e in results.items():
        table.add_row(name, str(e["workers"]), f"{e['read_gb']:.2f}", f"{e['written_gb']:.2f}", f"{e['seconds']:.1f}",
                      f"{e['gb_per_s']:.2f}", f"{e['ratio_to_copy']:.2f}", f"{e['user_s']:.1f}", f"{e['sys_s']:.1f}",
                      f"{e['sys_s_per_gb_written']:.2f}", f"{e['io_read_gb']:.2f}", f"{e['io_write_gb']:.2f}",
                      f"{e['peak_rss_gb']:.2f}")
    Console().print(table)
    for when, disk in (("before", disk_before), ("after", disk_after)):
        Console().print(f"disk {when}: sequential write {disk['write_gb_per_s']:.2f} GB/s (fsynced), read "
                        f"{disk['read_gb_per_s']:.2f} GB/s (cache dropped), load {disk['loadavg']}")
    Console().print(f"peak RSS bound: 2 GB + 2 x the largest output tensor ({largest / GB:.2f} GB) = {bound:.2f} GB")


if __name__ == "__main__":
    main()
