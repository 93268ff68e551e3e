"""The build plan: which rank is built on which GPU, with which BuildConfig, from which checkpoint and tokenizer.

``build --dry-run`` prints it; a real build follows it and records it (with timings) as ``build_plan.json`` in the
engine directory. Rank ``r`` is built on local GPU ``r % gpus``; one process per GPU at a time, at most ``workers``
at once. Where no GPU is visible (a dry run on a CPU host) the plan assumes the checkpoint's ``gpus_per_node``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hunyuan_trtllm import __version__
from hunyuan_trtllm.builder.build_config import BuildLimits, build_config, position_table
from hunyuan_trtllm.errors import UserError

if TYPE_CHECKING:  # torch and the weight plan load only when a build runs
    from hunyuan_trtllm.builder.checkpoint import BuildModel

TIMING_CACHE_NAME = "timing.cache"
TOKENIZER_PATTERNS = ("*.tiktoken", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                      "special_tokens_map.json", "generation_config.json", "chat_template.jinja", "tokenization_*.py")


@dataclass(frozen=True)
class RankPlan:
    rank: int
    device: int  # local CUDA device index
    tp_rank: int
    pp_rank: int
    moe_ep_rank: int
    weight_bytes: int  # the rank file's tensors: about the engine's size


@dataclass(frozen=True)
class BuildPlan:
    model: BuildModel
    limits: BuildLimits
    build_config: dict[str, Any]
    ranks: tuple[RankPlan, ...]
    gpus: int
    workers: int
    timing_cache: Path
    tokenizer_dir: Path | None
    checkpoint_digest: str | None  # None when planned from a Hugging Face config
    notes: tuple[str, ...]

    @property
    def position_table(self) -> int:
        return position_table(self.model.spec, self.limits)

    @property
    def total_bytes(self) -> int:
        return sum(r.weight_bytes for r in self.ranks)

    def to_json(self) -> dict[str, Any]:
        spec, mapping = self.model.spec, self.model.mapping
        return {
            "tool": f"hunyuan-trtllm {__version__}",
            "target": "TensorRT-LLM 1.2.1 (TensorRT engines)",
            "checkpoint": {"path": str(self.model.path.resolve()), "converted": self.model.converted,
                           "rank_files_validated": self.checkpoint_digest is not None,
                           "digest": self.checkpoint_digest, "architecture": spec.architecture,
                           "dtype": self.model.dtype_name, "quantization": self.model.quantization,
                           "mapping": mapping.to_dict(), "max_position_embeddings": spec.max_position_embeddings},
            "position_table": self.position_table,
            "limits": self.limits.to_dict(),
            "build_config": self.build_config,
            "gpus": self.gpus,
            "workers": self.workers,
            "timing_cache": str(self.timing_cache),
            "tokenizer": str(self.tokenizer_dir) if self.tokenizer_dir else None,
            "ranks": [{"rank": r.rank, "device": r.device, "tp_rank": r.tp_rank, "pp_rank": r.pp_rank,
                       "moe_ep_rank": r.moe_ep_rank, "weight_bytes": r.weight_bytes} for r in self.ranks],
            "notes": list(self.notes),
        }


def default_timing_cache() -> Path:
    """``$XDG_CACHE_HOME/hunyuan-trtllm/timing.cache`` (``~/.cache`` when unset)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "hunyuan-trtllm" / TIMING_CACHE_NAME


def timing_cache_output(cache: Path) -> Path:
    """Where rank 0 writes the updated cache; it replaces ``cache`` atomically once rank 0 is built."""
    return cache.with_name(f".{cache.name}.partial-{os.getpid()}")


def has_tokenizer(path: Path) -> bool:
    return (path / "hy.tiktoken").is_file() or (path / "tokenizer.json").is_file()


def tokenizer_files(path: Path) -> list[Path]:
    return sorted({f for pattern in TOKENIZER_PATTERNS for f in path.glob(pattern) if f.is_file()})


def find_tokenizer(model: BuildModel, explicit: Path | None) -> Path | None:
    """``--tokenizer``, else the checkpoint dir if it holds one, else the Hugging Face model it was converted from."""
    if explicit is not None:
        if not has_tokenizer(explicit):
            raise UserError(f"--tokenizer {explicit}: no hy.tiktoken or tokenizer.json there")
        return explicit
    home = model.path if model.path.is_dir() else model.path.parent  # --from-config may name a config.json
    if has_tokenizer(home):
        return home
    if not model.converted:
        return None
    from hunyuan_trtllm.checkpoints.provenance import default_tokenizer_dir

    try:
        source = default_tokenizer_dir(model.path)
    except UserError:
        return None
    return source if has_tokenizer(source) else None


def resolve_workers(requested: int | None, gpus: int, world_size: int) -> tuple[int, list[str]]:
    """Parallel build processes: one per GPU by default, never more than GPUs or ranks."""
    if requested is not None and requested < 1:
        raise UserError(f"--workers must be at least 1, got {requested}")
    most = min(gpus, world_size)
    if requested is None:
        return most, []
    if requested > most:
        return most, [f"--workers {requested} capped at {most} (one build per GPU at a time, {world_size} ranks)"]
    return requested, []


def rank_plan(model: BuildModel, rank: int, device: int) -> RankPlan:
    at = model.mapping.coords(rank)
    return RankPlan(rank, device, at.tp_rank, at.pp_rank, at.moe_ep_rank, model.plan.rank_bytes(rank))


def make_plan(model: BuildModel, limits: BuildLimits, gpus: int | None, workers: int | None,
              timing_cache: Path | None, tokenizer: Path | None, gather_context_logits: bool = False,
              checkpoint_digest: str | None = None) -> BuildPlan:
    """Assemble the plan; ``gpus`` None means none is visible here (assume the checkpoint's ``gpus_per_node``)."""
    mapping = model.mapping
    notes: list[str] = []
    if not gpus:
        gpus = min(mapping.gpus_per_node, mapping.world_size)
        notes.append(f"no GPU visible here: devices assume {gpus} GPUs (the checkpoint's gpus_per_node)")
    workers, capped = resolve_workers(workers, gpus, mapping.world_size)
    notes += capped
    cache = timing_cache or default_timing_cache()
    ranks = tuple(rank_plan(model, rank, rank % gpus) for rank in range(mapping.world_size))
    table = position_table(model.spec, limits)
    if table > model.spec.max_position_embeddings:
        notes.append(f"RoPE table extended from max_position_embeddings {model.spec.max_position_embeddings} to "
                     f"{table} positions (the alpha-scaled base is static: one formula for every position)")
    if limits.max_num_tokens < limits.max_input_len:
        notes.append(f"prompts longer than max_num_tokens {limits.max_num_tokens} are processed in chunks: enable "
                     "chunked context when serving")
    tokenizer_dir = find_tokenizer(model, tokenizer)
    if tokenizer_dir is None:
        notes.append("no tokenizer found next to the checkpoint or its source model: pass --tokenizer HF_DIR")
    settings = build_config(model, limits, cache, timing_cache_output(cache), gather_context_logits)
    return BuildPlan(model, limits, settings, ranks, gpus, workers, cache, tokenizer_dir, checkpoint_digest,
                     tuple(notes))


def record(plan: BuildPlan, results: list[dict[str, Any]], seconds: float, trtllm_version: str) -> dict[str, Any]:
    """``build_plan.json``: the plan, the TensorRT-LLM version and each rank's build time and engine size."""
    by_rank = {r["rank"]: r for r in results}
    data = plan.to_json()
    data.update(created_unix=int(time.time()), tensorrt_llm=trtllm_version, seconds=round(seconds, 3))
    for rank in data["ranks"]:
        rank.update(by_rank.get(rank["rank"], {}))
    return data
