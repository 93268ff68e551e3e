"""Shared test fixtures: ../shared (skipped cleanly when absent) and small synthetic checkpoints."""

from __future__ import annotations

import json
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
    from hunyuan_trtllm.checkpoints.synth import synth_checkpoint

    base = tmp_path_factory.mktemp("tiny-models")
    models = {}
    for arch in ("a13b", "large", "dense"):
        models[arch] = base / arch
        synth_checkpoint(models[arch], arch, preset="tiny", dtype="float32")
    return models
