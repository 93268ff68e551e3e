"""Build rank engines in parallel processes: one fresh ``spawn`` process per rank, one rank per GPU at a time.

A fresh process per rank (``max_tasks_per_child=1``) returns the host memory a TensorRT build holds, and CUDA is
never initialised in the parent. Each process selects its GPU (``rank % local GPUs``), registers the Hunyuan model
classes with TensorRT-LLM, reads its rank of the checkpoint and builds, following TensorRT-LLM 1.2.1's own
``trtllm-build`` flow (``commands/build.py``): ``from_checkpoint`` -> ``tensorrt_llm.builder.build`` ->
``Engine.save`` (rank 0 also writes ``config.json``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from hunyuan_trtllm.errors import UserError


@dataclass(frozen=True)
class RankJob:
    """Everything a build process needs (picklable): build ``rank`` of ``checkpoint`` on ``device`` into ``out_dir``."""

    rank: int
    device: int
    checkpoint: Path
    out_dir: Path
    architecture: str
    build_config: dict[str, Any]
    position_table: int  # the engine's max_position_embeddings (see build_config.position_table)


@dataclass(frozen=True)
class RankResult:
    rank: int
    device: int
    seconds: float
    engine_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "device": self.device, "seconds": round(self.seconds, 3),
                "engine_bytes": self.engine_bytes}


def engine_path(out_dir: Path, rank: int) -> Path:
    return out_dir / f"rank{rank}.engine"


def build_rank_engine(job: RankJob) -> RankResult:
    """Build and save one rank's engine (runs in its own process; needs TensorRT-LLM 1.2.1 and a GPU)."""
    start = time.perf_counter()
    import torch

    torch.cuda.set_device(job.device)
    from hunyuan_trtllm import plugins

    plugins.register()  # the Hunyuan classes into TensorRT-LLM's MODEL_MAP, before any config is parsed
    from tensorrt_llm.builder import build
    from tensorrt_llm.models import PretrainedConfig

    model_cls = plugins.model_class(job.architecture)
    config = PretrainedConfig.from_json_file(str(job.checkpoint / "config.json"))
    config.set_rank(job.rank)
    config.max_position_embeddings = max(config.max_position_embeddings, job.position_table)
    model = model_cls.from_checkpoint(str(job.checkpoint), rank=job.rank, config=config)
    engine = build(model, trtllm_build_config(job.build_config))
    engine.save(str(job.out_dir))
    seconds = time.perf_counter() - start
    return RankResult(job.rank, job.device, seconds, engine_path(job.out_dir, job.rank).stat().st_size)


def trtllm_build_config(settings: dict[str, Any]) -> Any:
    """TensorRT-LLM 1.2.x's ``BuildConfig`` from the plan's dict, built from keywords as 1.2.x's ``trtllm-build``
    builds it: ``BuildConfig`` and ``PluginConfig`` are pydantic models there (TensorRT-LLM PRs #8330, #8277) and
    ``kv_cache_type`` is the Python ``tensorrt_llm.llmapi.kv_cache_type.KVCacheType`` (case-insensitive values)."""
    from tensorrt_llm.builder import BuildConfig
    from tensorrt_llm.llmapi.kv_cache_type import KVCacheType
    from tensorrt_llm.plugin import PluginConfig

    fields = dict(settings)
    fields["plugin_config"] = PluginConfig(**fields["plugin_config"])
    fields["kv_cache_type"] = KVCacheType(fields["kv_cache_type"])
    return BuildConfig(**fields)


def run_rank_jobs(jobs: list[RankJob], workers: int, build: Callable[[RankJob], RankResult] = build_rank_engine,
                  done: Callable[[RankResult], None] | None = None) -> list[RankResult]:
    """Run ``build`` for every job, at most ``workers`` at once and never two on one device.

    After a failure no new rank starts; those already running finish, then the first failure is raised as one line.
    """
    pending = sorted(jobs, key=lambda j: j.rank)
    running: dict[Future[RankResult], RankJob] = {}
    results: list[RankResult] = []
    failures: list[str] = []
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        while running or (pending and not failures):
            busy = {job.device for job in running.values()}
            for job in list(pending):
                if failures or len(running) >= workers:
                    break
                if job.device not in busy:
                    running[pool.submit(build, job)] = job
                    busy.add(job.device)
                    pending.remove(job)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                job = running.pop(future)
                try:
                    result = future.result()
                except Exception as exc:  # a rank's build failed: report it, let the others finish
                    first_line = (str(exc).strip().splitlines() or [""])[0]
                    failures.append(f"rank {job.rank} on cuda:{job.device} failed: {type(exc).__name__}: "
                                    f"{first_line} (see the log above)")
                    continue
                results.append(result)
                if done:
                    done(result)
    if failures:
        raise UserError(failures[0] + (f"; {len(failures) - 1} other rank(s) failed too" if len(failures) > 1 else ""))
    return sorted(results, key=lambda r: r.rank)
