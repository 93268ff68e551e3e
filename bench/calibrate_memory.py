"""Peak memory of FP8 calibration on full-width synthetic Hunyuan-A13B stacks of two depths.

Calibration is layer-major (one decoder layer in memory at a time), so a deeper stack must not need more memory.
This synthesizes full-width A13B checkpoints (4.85 GB of bfloat16 per layer) with ``--shallow`` and ``--deep``
layers, calibrates each in a fresh process on the built-in calibration set and prints peak RSS next to the size
of one layer, as a table or ``--json``. It needs about 6 GB of memory and (shallow + deep) x 5 GB of disk, and
cleans up after itself.

    python bench/calibrate_memory.py                 # 1 and 2 layers, 8 samples x 64 tokens
    python bench/calibrate_memory.py --deep 4 --json
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hunyuan_trtllm.synth.checkpoint import synth_checkpoint

GB = 1e9
PROBE = """
import resource, sys, time
from hunyuan_trtllm.reference.calibrate import calibrate, load_calibration_samples
from hunyuan_trtllm.checkpoints.source import open_source
source = open_source(sys.argv[1])
samples = load_calibration_samples(None, source.path, int(sys.argv[2]), int(sys.argv[3]))
start = time.perf_counter()
calibrate(source, samples)
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def measure(model: Path, samples: int, seq_len: int) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", PROBE, str(model), str(samples), str(seq_len)],
                          capture_output=True, text=True, check=True)
    seconds, peak = (float(v) for v in done.stdout.split())
    layer_files = sorted(model.glob("model-*.safetensors"))
    return {"layers": len(layer_files), "model_gb": sum(f.stat().st_size for f in layer_files) / GB,
            "peak_rss_gb": peak / GB, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shallow", type=int, default=1)
    parser.add_argument("--deep", type=int, default=2)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--workdir", type=Path, default=None, help="Where to synthesize (default: a temp dir).")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="calib-mem-", dir=args.workdir))
    rows = []
    try:
        for layers in (args.shallow, args.deep):
            model = work / f"a13b-{layers}"
            started = time.perf_counter()
            synth_checkpoint(model, "a13b", preset="full-width", layers=layers)
            row = measure(model, args.samples, args.seq_len)
            row["synth_seconds"] = time.perf_counter() - started
            rows.append(row)
            shutil.rmtree(model)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    layer_gb = (rows[1]["model_gb"] - rows[0]["model_gb"]) / max(args.deep - args.shallow, 1)
    result = {"layer_gb": layer_gb, "samples": args.samples, "seq_len": args.seq_len, "runs": rows,
              "peak_growth_gb": rows[1]["peak_rss_gb"] - rows[0]["peak_rss_gb"],
              "this_process_peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"FP8 calibration peak RSS, full-width A13B (one layer = {layer_gb:.2f} GB)")
    for column in ("layers", "checkpoint GB", "peak RSS GB", "calibration s"):
        table.add_column(column, justify="right")
    for row in rows:
        cells = (f"{row['model_gb']:.2f}", f"{row['peak_rss_gb']:.2f}", f"{row['seconds']:.0f}")
        table.add_row(str(row["layers"]), *cells)
    Console().print(table)
    Console().print(f"deeper stack costs {result['peak_growth_gb']:+.2f} GB of peak RSS")


if __name__ == "__main__":
    main()
