"""The streaming converter: Hugging Face Hunyuan -> TensorRT-LLM checkpoint (config.json + rank{N}.safetensors).

How it stays fast and small:
- every output file's header is known from the weight plan, so each rank file is created at full size up front
  and every tensor is ``pwrite``-n at its offset by whichever worker process builds it;
- a worker reads only the slices a tensor needs (``get_slice``) and holds one tensor, or one expert of a stacked
  expert tensor, at a time: peak memory follows the largest output tensor, not the model;
- files are written as ``.rankN.safetensors.partial`` and renamed when complete; ``manifest.json`` records the
  plan digest, so an interrupted run resumes by skipping finished ranks, and ``config.json`` is written last,
  only once every rank file exists.

Hy3's MTP layer (``model.layers.{num_hidden_layers}``) is not part of the main checkpoint. With ``mtp="keep"`` it
is written as a draft part in ``OUT/mtp/``: ``rank{r}.safetensors`` for each TP rank r (pp 1: the part runs beside
the last pipeline stage, whose hidden states and lm_head it uses), holding ``mtp.layers.{i}.*`` = the decoder-layer
tensors under the main checkpoint's names and sharding (attention, router, expert bias, experts, shared expert)
plus ``enorm``, ``hnorm``, ``eh_proj`` [H, 2H] (input ``[enorm(embedding) ; hnorm(hidden)]``, replicated) and
``final_layernorm``; the embedding and lm_head are the main checkpoint's. ``OUT/mtp/config.json`` describes it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import torch

from hunyuan_trtllm import __version__
from hunyuan_trtllm.checkpoints.fp8 import fp8_plan, quantization_config, source_scales
from hunyuan_trtllm.checkpoints.fp8_scales import Fp8Scales
from hunyuan_trtllm.checkpoints.mapping import Mapping
from hunyuan_trtllm.checkpoints.param_counts import mtp_parameter_count
from hunyuan_trtllm.checkpoints.safetensors_io import (
    OutputEntry,
    create_partial,
    finish_partial,
    partial_path,
    plan_file,
    pwrite_tensor,
    read_header,
    write_atomic,
)
from hunyuan_trtllm.checkpoints.source import Read, SourceCheckpoint, open_source
from hunyuan_trtllm.checkpoints.trtllm_config import DTYPE_STRINGS, MTP_DIR, trtllm_config
from hunyuan_trtllm.checkpoints.weight_plan import TensorPlan, WeightPlan, hf_shape, materialize
from hunyuan_trtllm.errors import CheckpointError, UserError

MANIFEST = "manifest.json"
SOURCE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
ProgressFn = Callable[[int], None]


@dataclass
class ConvertResult:
    out_dir: Path
    plan: WeightPlan
    converted_ranks: list[int]
    skipped_ranks: list[int]
    complete: bool
    bytes_written: int
    seconds: float
    notes: list[str] = field(default_factory=list)


def rank_file(out_dir: Path, rank: int) -> Path:
    return out_dir / f"rank{rank}.safetensors"


def resolve_dtype(name: str, spec_dtype: str) -> torch.dtype:
    """``auto`` keeps the checkpoint's 16-bit dtype (float32 sources stay float32)."""
    if name == "auto":
        name = spec_dtype if spec_dtype in ("bfloat16", "float16", "float32") else "bfloat16"
    choices = {v: k for k, v in DTYPE_STRINGS.items()}
    if name not in choices:
        raise UserError(f"--dtype {name}: expected one of auto, {', '.join(choices)}")
    return choices[name]


def check_source(src: SourceCheckpoint, plan: WeightPlan) -> None:
    """Every tensor the plan reads exists with the shape the config implies and a float dtype."""
    for name in plan.hf_tensors():
        expected = hf_shape(plan.spec, name)
        actual = src.shape(name)  # raises CheckpointError naming a missing tensor
        if actual != expected:
            raise CheckpointError(
                f"{src.path}: tensor '{name}' has shape {list(actual)} but config.json implies {list(expected)}"
            )
        stored = src.tensors[src.resolve(Read(name))[0].name][1].dtype
        if stored not in SOURCE_DTYPES and not (src.fp8 and stored == torch.float8_e4m3fn):
            raise CheckpointError(f"{src.path}: tensor '{name}' is {stored}; expected bfloat16, float16 or float32")
    first_rank_of_each_stage = plan.ranks[:: plan.mapping.tp]
    for tensor in (t for rank in first_rank_of_each_stage for t in rank if t.combine):
        materialize(tensor, src.read)  # the folded norms are tiny: a zero fails here, before any file is written


def convert(
    model: str | os.PathLike[str],
    out_dir: Path,
    mapping: Mapping,
    dtype: str = "auto",
    workers: int = 1,
    ranks: list[int] | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], ProgressFn] | None = None,
    scales: Fp8Scales | None = None,
    kv_cache_fp8: bool = False,
    mtp: str = "drop",
) -> ConvertResult:
    """Convert MODEL into a TensorRT-LLM checkpoint in ``out_dir``.

    ``dtype="fp8"``: per-tensor FP8 weights (bfloat16 activations) with ``scales`` from calibration, or, for an
    FP8 source (Tencent's format), the scales stored in it. ``progress(total_bytes, already_done)`` may return a
    callback that receives bytes as they are written. ``mtp="keep"`` also writes the MTP draft part (module
    docstring); ``"drop"`` leaves it out with a note.
    """
    start = time.perf_counter()
    if mtp not in ("drop", "keep"):
        raise UserError(f"--mtp {mtp}: expected drop or keep")
    src = open_source(model)
    if mtp == "keep" and not src.spec.num_mtp_layers:
        raise UserError(f"--mtp keep: {src.path / 'config.json'} declares no MTP layer (num_nextn_predict_layers)")
    quantization = None
    plan = WeightPlan.build(src.spec, mapping, resolve_dtype("bfloat16" if dtype == "fp8" else dtype,
                                                             src.spec.torch_dtype))
    check_source(src, plan)
    if dtype == "fp8":
        if scales is None and not src.fp8:
            raise UserError("--dtype fp8 from an unquantized checkpoint needs activation scales: calibrate with "
                            "--calib-builtin or --calib-data FILE.jsonl")
        plan = fp8_plan(plan, scales or source_scales(src, plan), kv_cache_fp8)
        quantization = quantization_config(kv_cache_fp8)
    elif kv_cache_fp8:
        raise UserError("--kv-cache-dtype fp8 goes with --dtype fp8")
    wanted = ranks if ranks is not None else list(range(mapping.world_size))
    _prepare_output(out_dir, plan, overwrite)
    done = [r for r in wanted if _rank_is_complete(out_dir, plan, r)]
    todo = [r for r in wanted if r not in done]
    _write_manifest(out_dir, src, plan)

    tasks = [task for r in todo for task in _rank_tasks(out_dir, plan, r)]
    total = sum(t.nbytes for t in tasks)
    advance = progress(total, 0) if progress else None
    remaining = {r: sum(1 for t in tasks if t.rank == r) for r in todo}
    for task in _run(src.path, plan, out_dir, tasks, workers):
        if advance:
            advance(task.nbytes)
        remaining[task.rank] -= 1
        if remaining[task.rank] == 0:
            finish_partial(rank_file(out_dir, task.rank))

    complete = all(rank_file(out_dir, r).is_file() for r in range(mapping.world_size))
    notes = list(src.spec.notes)
    if complete and mtp == "keep":
        total += _write_mtp_part(src, out_dir / MTP_DIR, mapping, plan.dtype, workers)
    elif src.spec.num_mtp_layers:
        notes.append(f"the MTP layer (model.layers.{src.spec.num_layers}, {mtp_parameter_count(src.spec):,} "
                     "parameters) is left out of the checkpoint; --mtp keep writes it as a draft part")
    if complete:
        config = trtllm_config(src.spec, mapping, plan.dtype, quantization, mtp_kept=mtp == "keep")
        write_atomic(out_dir / "config.json", json.dumps(config, indent=2) + "\n")
    _write_manifest(out_dir, src, plan)
    return ConvertResult(out_dir, plan, todo, done, complete, total, time.perf_counter() - start, notes)


def _write_mtp_part(src: SourceCheckpoint, mtp_dir: Path, mapping: Mapping, dtype: torch.dtype, workers: int) -> int:
    """Write the MTP draft part into ``mtp_dir`` (unquantized: in FP8 conversions it stays bfloat16); its bytes."""
    plan = WeightPlan.build_mtp(src.spec, mapping, dtype)
    check_source(src, plan)
    shutil.rmtree(mtp_dir, ignore_errors=True)  # one layer: an interrupted part is rewritten, never resumed
    mtp_dir.mkdir()
    tasks = [task for r in range(plan.mapping.world_size) for task in _rank_tasks(mtp_dir, plan, r)]
    remaining = {r: sum(1 for t in tasks if t.rank == r) for r in range(plan.mapping.world_size)}
    for task in _run(src.path, plan, mtp_dir, tasks, workers):
        remaining[task.rank] -= 1
        if remaining[task.rank] == 0:
            finish_partial(rank_file(mtp_dir, task.rank))
    config = {"kind": "hy3_mtp_draft", "architecture": src.spec.architecture, "dtype": DTYPE_STRINGS[plan.dtype],
              "num_mtp_layers": src.spec.num_mtp_layers, "mapping": plan.mapping.to_dict(),
              "source_layers": [src.spec.num_layers + i for i in range(src.spec.num_mtp_layers)],
              "shared_with_main": ["transformer.vocab_embedding.weight", "lm_head.weight"],
              "forward": "h = final_layernorm(layer(eh_proj(cat(enorm(embed(token[t+1])), hnorm(h_t))))); "
                         "draft logits = lm_head(h), h_t = the main model's final-normed hidden state"}
    write_atomic(mtp_dir / "config.json", json.dumps(config, indent=2) + "\n")
    return sum(plan.rank_bytes(r) for r in range(plan.mapping.world_size))


# ---- output directory -------------------------------------------------------------------------------------


def _prepare_output(out_dir: Path, plan: WeightPlan, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"{out_dir}: output directory is not writable ({exc.strerror})") from None
    manifest = _read_manifest(out_dir)
    if overwrite:
        for path in out_dir.iterdir():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        return
    if manifest is None:
        if any(out_dir.iterdir()):
            raise UserError(f"{out_dir}: not empty and holds no conversion to resume; pass --overwrite or use another")
        return
    if manifest.get("plan_digest") != plan.digest():
        raise UserError(f"{out_dir}: holds a conversion with different settings; pass --overwrite or use another")
    if manifest.get("complete") and all(rank_file(out_dir, r).is_file() for r in range(plan.mapping.world_size)):
        raise UserError(f"{out_dir}: already holds a finished checkpoint; pass --overwrite to convert again")


def _rank_is_complete(out_dir: Path, plan: WeightPlan, rank: int) -> bool:
    """A final rank file only exists after a complete write; still check it matches the plan."""
    path = rank_file(out_dir, rank)
    if not path.is_file():
        return False
    try:
        header = read_header(path)
    except CheckpointError:
        path.unlink()
        return False
    expected = {t.name: (t.dtype, t.shape) for t in plan.ranks[rank]}
    actual = {name: (info.dtype, info.shape) for name, info in header.tensors.items()}
    if actual != expected:
        path.unlink()
        return False
    return True


def _read_manifest(out_dir: Path) -> dict | None:
    path = out_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{path}: corrupt manifest; pass --overwrite to start again") from None


def _write_manifest(out_dir: Path, src: SourceCheckpoint, plan: WeightPlan) -> None:
    world = plan.mapping.world_size
    done = [r for r in range(world) if rank_file(out_dir, r).is_file()]
    manifest = {
        "tool": f"hunyuan-trtllm {__version__}",
        "created_unix": int(time.time()),
        "complete": len(done) == world and (out_dir / "config.json").is_file(),
        "ranks_done": done,
        "world_size": world,
        "mapping": plan.mapping.to_dict(),
        "dtype": DTYPE_STRINGS[plan.dtype],
        "source": {"path": str(src.path.resolve()), "files": src.fingerprint()},
        "spec": plan.spec.to_dict(),
        "plan_digest": plan.digest(),
        "rank_bytes": {f"rank{r}": plan.rank_bytes(r) for r in range(world)},
        "plan": plan.to_json(),
    }
    write_atomic(out_dir / MANIFEST, json.dumps(manifest, indent=1) + "\n")


# ---- tasks and workers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Task:
    """Write one tensor (or one expert of a stacked tensor) of one rank at an absolute file offset."""

    rank: int
    tensor: int
    part: int | None
    offset: int
    nbytes: int


def _rank_tasks(out_dir: Path, plan: WeightPlan, rank: int) -> list[_Task]:
    tensors = plan.ranks[rank]
    layout = plan_file([OutputEntry(t.name, t.dtype, t.shape) for t in tensors])
    create_partial(rank_file(out_dir, rank), layout)
    tasks = []
    for index, t in enumerate(tensors):
        base = layout.offset(t.name)
        if t.stacked:  # one task per expert: memory holds one expert, not all of them
            per_part = t.nbytes // len(t.parts)
            tasks += [_Task(rank, index, p, base + p * per_part, per_part) for p in range(len(t.parts))]
        else:
            tasks.append(_Task(rank, index, None, base, t.nbytes))
    return tasks


_WORKER: dict[str, object] = {}


def _init_worker(model_dir: Path, plan: WeightPlan, out_dir: Path) -> None:
    torch.set_num_threads(1)
    _WORKER.update(src=SourceCheckpoint(model_dir), plan=plan, out=out_dir, fds={})


def _do_task(task: _Task) -> _Task:
    src: SourceCheckpoint = _WORKER["src"]  # type: ignore[assignment]
    plan: WeightPlan = _WORKER["plan"]  # type: ignore[assignment]
    fds: dict[int, int] = _WORKER["fds"]  # type: ignore[assignment]
    if task.rank not in fds:
        fds[task.rank] = os.open(partial_path(rank_file(_WORKER["out"], task.rank)), os.O_WRONLY)  # type: ignore[arg-type]
    tensor_plan: TensorPlan = plan.ranks[task.rank][task.tensor]
    tensor = materialize(tensor_plan, src.read, task.part, src.read_e4m3 if src.fp8 else None)
    if tensor.numel() * tensor.element_size() != task.nbytes:
        raise CheckpointError(f"{tensor_plan.name}: built {tuple(tensor.shape)}, planned {tensor_plan.shape}")
    pwrite_tensor(fds[task.rank], task.offset, tensor)
    return task


def _close_worker_files() -> None:
    for fd in _WORKER.pop("fds", {}).values():  # type: ignore[union-attr]
        os.close(fd)


def _run(model_dir: Path, plan: WeightPlan, out_dir: Path, tasks: list[_Task], workers: int) -> Iterator[_Task]:
    """Run tasks in this process (workers=1) or in a pool of worker processes, yielding each as it finishes."""
    if not tasks:
        return
    if workers <= 1:
        _init_worker(model_dir, plan, out_dir)
        try:
            for task in sorted(tasks, key=lambda t: (t.rank, t.offset)):
                yield _do_task(task)
        finally:
            _close_worker_files()
        return
    ctx = get_context("spawn")
    init = (model_dir, plan, out_dir)
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=init) as pool:
        futures = [pool.submit(_do_task, t) for t in sorted(tasks, key=lambda t: -t.nbytes)]
        for future in as_completed(futures):
            yield future.result()
