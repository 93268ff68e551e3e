"""The conversion benchmark in miniature (one tiny layer): it runs every variant and stays in the memory bound.

Only memory is asserted, never time: the speed targets are checked by running ``bench/convert.py`` itself (README
"Conversion speed").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "convert.py"
VARIANTS = {"copy", "bf16_tp8_ep8", "bf16_tp8_ep8_w1", "bf16_tp8_ep8_pe", "bf16_tp2_ep4", "fp8_tp8_ep8",
            "fp8_calib_tp8_ep8", "naive_bf16"}

pytestmark = pytest.mark.slow


def test_every_variant_runs_within_the_memory_bound(tmp_path):
    done = subprocess.run([sys.executable, str(BENCH), "--preset", "tiny", "--layers", "1", "--repeats", "1",
                           "--workers", "1", "2", "--work-dir", str(tmp_path), "--json"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert set(report["variants"]) == VARIANTS
    for name, variant in report["variants"].items():
        assert variant["written_gb"] > 0 and variant["seconds"] > 0, name
        if name.startswith(("bf16_", "fp8_tp")):  # our convert (calibration has its own bound: one layer)
            assert variant["peak_rss_gb"] <= report["peak_rss_bound_gb"], (name, variant["peak_rss_gb"])
    assert report["variants"]["copy"]["ratio_to_copy"] == 1.0
    for name, variant in report["variants"].items():  # the same-run baseline: one ratio per copy-variant-copy
        if name != "copy":
            assert len(variant["ratio_pairs"]) == 1 and variant["ratio_pairs"][0] > 0, name
        assert variant["user_s"] + variant["sys_s"] > 0, name
        assert variant["io_write_gb"] > 0 and variant["peak_rss_gb"] > 0, name
        runs = len(VARIANTS) if name == "copy" else 1  # a copy before, between and after the six variants
        assert len(variant["seconds_runs"]) == len(variant["cached_gb"]) == len(variant["loadavg"]) == runs, name
    for disk in report["disk"].values():
        assert disk["write_gb_per_s"] > 0 and disk["read_gb_per_s"] > 0
    assert not list(tmp_path.iterdir())  # it cleans up after itself
