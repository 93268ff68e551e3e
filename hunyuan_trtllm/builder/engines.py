"""Build the engine directory TensorRT-LLM 1.2.1 and Triton's ``tensorrtllm`` backend load.

Layout written (``out_dir``): ``config.json`` (``version`` / ``pretrained_config`` / ``build_config``, by
TensorRT-LLM), ``rank{N}.engine``, ``tokenizer/`` (the Hugging Face tokenizer files, found by ``serve`` and
``triton-repo``) and ``build_plan.json`` (the plan, the checkpoint digest, the TensorRT-LLM version, each rank's
device, build time and engine size).

Everything is built in a sibling ``.NAME.partial-PID`` directory that is renamed to ``out_dir`` only when every
rank is built, so a failed or interrupted build never leaves a complete-looking engine directory. The TensorRT
timing cache is read by every rank and rewritten by rank 0 to a temporary file that replaces the cache atomically,
so ranks still starting never read a half-written cache.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hunyuan_trtllm.builder.build_plan import BuildPlan, record, tokenizer_files
from hunyuan_trtllm.builder.rank_build import RankJob, RankResult, build_rank_engine, engine_path, run_rank_jobs
from hunyuan_trtllm.checkpoints.safetensors_io import atomic_output_dir, check_new_output_dir, write_atomic
from hunyuan_trtllm.errors import UserError

TRTLLM_IMAGE = "nvcr.io/nvidia/tensorrt-llm/release:1.2.1"
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3"
TRTLLM_SERIES = "1.2."


def tensorrt_llm_version() -> str:
    """The installed TensorRT-LLM's version; one-line :class:`UserError` when it cannot build engines here."""
    if importlib.util.find_spec("tensorrt_llm") is None:
        raise UserError(f"TensorRT-LLM is not installed: build engines inside {TRTLLM_IMAGE} (or {TRITON_IMAGE}), "
                        "or pip install 'hunyuan-trtllm[trtllm]' on a GPU host; --dry-run shows the plan without it")
    try:
        version = importlib.metadata.version("tensorrt_llm")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    if not version.startswith(TRTLLM_SERIES):
        raise UserError(f"TensorRT-LLM {version} is installed but engines need 1.2.x (the last release with the "
                        f"TensorRT engine path): use {TRTLLM_IMAGE}")
    return version


def local_gpu_count() -> int:
    """CUDA devices visible to this process (0 on a CPU host)."""
    import torch

    return torch.cuda.device_count()


def require_gpus() -> int:
    gpus = local_gpu_count()
    if gpus == 0:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        raise UserError(f"no CUDA GPU is visible{hint}: engines are built on the kind of GPU that will run them")
    return gpus


def build_engines(plan: BuildPlan, out_dir: Path, trtllm_version: str,
                  build: Callable[[RankJob], RankResult] = build_rank_engine,
                  done: Callable[[RankResult], None] | None = None) -> dict[str, Any]:
    """Build every rank of ``plan`` into ``out_dir`` (new or empty); returns what ``build_plan.json`` records."""
    if not plan.model.converted:
        raise UserError(f"{plan.model.path}: --from-config plans only; convert the model, then build the checkpoint")
    if plan.tokenizer_dir is None:
        raise UserError(f"{plan.model.path}: no tokenizer next to the checkpoint or its source model; pass "
                        "--tokenizer HF_MODEL_DIR")
    check_new_output_dir(out_dir, plan.total_bytes)
    plan.timing_cache.parent.mkdir(parents=True, exist_ok=True)
    cache_out = Path(plan.build_config["output_timing_cache"])
    start = time.perf_counter()

    def finished(result: RankResult) -> None:
        if result.rank == 0 and cache_out.is_file():
            os.replace(cache_out, plan.timing_cache)  # later ranks start from rank 0's tactics
        if done:
            done(result)

    try:
        with atomic_output_dir(out_dir, "partial") as tmp:
            work = tmp.resolve()
            jobs = [RankJob(r.rank, r.device, plan.model.path.resolve(), work, plan.model.spec.architecture,
                            plan.build_config, plan.position_table) for r in plan.ranks]
            results = run_rank_jobs(jobs, plan.workers, build, finished)
            check_engine_dir(work, plan.model.mapping.world_size)
            copied = copy_tokenizer(plan.tokenizer_dir, work / "tokenizer")
            data = record(plan, [r.to_json() for r in results], time.perf_counter() - start, trtllm_version)
            data["tokenizer_files"] = copied
            write_atomic(work / "build_plan.json", json.dumps(data, indent=2) + "\n")
    finally:
        cache_out.unlink(missing_ok=True)
    return data


def check_engine_dir(out_dir: Path, world_size: int) -> None:
    """TensorRT-LLM wrote an engine config and every rank's engine."""
    config = out_dir / "config.json"
    try:
        build_config = json.loads(config.read_text()).get("build_config")
    except (OSError, json.JSONDecodeError):
        build_config = None
    if not isinstance(build_config, dict):
        raise UserError(f"{config}: TensorRT-LLM wrote no engine config (rank 0's Engine.save)")
    missing = [engine_path(out_dir, r).name for r in range(world_size) if not engine_path(out_dir, r).is_file()]
    if missing:
        raise UserError(f"{out_dir}: the build finished without {', '.join(missing)}")


def copy_tokenizer(source: Path, dest: Path) -> list[str]:
    """Copy the tokenizer files (``hy.tiktoken``, ``tokenizer_config.json``, ...) into ``dest``."""
    dest.mkdir()
    files = tokenizer_files(source)
    for f in files:
        shutil.copy2(f, dest / f.name)
    return [f.name for f in files]
