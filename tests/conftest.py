"""Shared test fixtures: ../shared (skipped cleanly when absent) and small synthetic checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GOLDEN = SHARED / "fixtures" / "golden"


def golden(name: str) -> Path:
    """Path of a golden fixture directory, or skip the test when ../shared is absent."""
    path = GOLDEN / name
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"golden fixture {name} not available (../shared is absent)")
    return path


def golden_logits(path: Path) -> tuple[dict[str, list[int]], dict]:
    return json.loads((path / "input_ids.json").read_text()), load_file(path / "logits.safetensors")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny synthetic checkpoints in Tencent's format, one per architecture (float32)."""
    from hunyuan_trtllm.synth.checkpoint import synth_checkpoint

    base = tmp_path_factory.mktemp("tiny-models")
    models = {}
    for arch in ("a13b", "large", "dense"):
        models[arch] = base / arch
        synth_checkpoint(models[arch], arch, preset="tiny", dtype="float32")
    return models


@pytest.fixture(scope="session")
def tiny(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """The tiny A13B (``src``, also its tokenizer dir) and its float32 TP2 x EP2 conversion (``ckpt``)."""
    from hunyuan_trtllm.checkpoints.convert import convert
    from hunyuan_trtllm.checkpoints.mapping import Mapping

    ckpt = tmp_path_factory.mktemp("tiny-a13b-tp2-ep2") / "ckpt"
    convert(tiny_models["a13b"], ckpt, Mapping(tp=2, moe_ep=2), dtype="float32")
    return {"src": tiny_models["a13b"], "ckpt": ckpt}


# Samples the process's RSS every 2 ms while `work` runs (ru_maxrss alone would hide the work under the transient
# peak of importing torch); prints RSS before the work and the peak.
_RSS_PROBE = """
import sys, threading, psutil
{setup}
me = psutil.Process()
before = peak = me.memory_info().rss
done = threading.Event()
def sample():
    global peak
    while not done.wait(0.002):
        peak = max(peak, me.memory_info().rss)
thread = threading.Thread(target=sample)
thread.start()
{work}
done.set()
thread.join()
print(before, max(peak, me.memory_info().rss))
"""


def measure_rss(setup: str, work: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, int]:
    """(RSS after ``setup``, peak RSS during ``work``) in bytes, in a fresh Python process given ``args``."""
    code = _RSS_PROBE.format(setup=setup, work=work)
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True,
                          env={**os.environ, **(env or {})})
    before, peak = (int(v) for v in done.stdout.split())
    return before, peak
