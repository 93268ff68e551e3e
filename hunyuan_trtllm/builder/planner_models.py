"""What the planner plans for: a MODEL directory / Hugging Face repo (config.json only) or a built-in preset.

Presets are Tencent's published config.json files, kept unmodified in ``builder/presets`` (see its README for
the source of each).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from hunyuan_trtllm.checkpoints.spec import ModelSpec, parse_spec
from hunyuan_trtllm.errors import UserError

DEFAULT_FREE_FRACTION = 0.9  # TensorRT-LLM LLM API's kv_cache_free_gpu_memory_fraction default

PRESETS: dict[str, str] = {
    "hunyuan-a13b": "Hunyuan-A13B-Instruct",
    "hunyuan-large": "Hunyuan-Large (Hunyuan-A52B-Instruct)",
    "hunyuan-7b": "Hunyuan-7B-Instruct",
}


@dataclass(frozen=True)
class PlannedModel:
    """A model's spec, a name for people, and where it came from (``source`` in the plan's JSON)."""

    name: str
    source: str
    spec: ModelSpec


def preset_spec(preset: str) -> ModelSpec:
    """The spec of a built-in preset, parsed from its published config.json."""
    if preset not in PRESETS:
        raise UserError(f"--preset {preset}: expected one of {', '.join(PRESETS)}")
    text = (resources.files("hunyuan_trtllm.builder") / "presets" / f"{preset}.json").read_text()
    return parse_spec(json.loads(text), where=f"preset {preset}")


def load_model(model: str | None, preset: str | None) -> PlannedModel:
    """MODEL (a directory or a repo id: config.json only, no weights are downloaded) or ``--preset``."""
    if (model is None) == (preset is None):
        raise UserError("give MODEL (a directory or Hugging Face repo id) or --preset, not both" if model
                        else "give MODEL (a directory or Hugging Face repo id) or --preset NAME")
    if preset is not None:
        return PlannedModel(PRESETS.get(preset, preset), f"preset:{preset}", preset_spec(preset))
    from hunyuan_trtllm.checkpoints.source import load_spec

    path, spec = load_spec(model)
    local = Path(model).expanduser().is_dir()
    return PlannedModel(path.resolve().name if local else model, model, spec)
