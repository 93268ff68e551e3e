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
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hunyuan_trtllm import __version__
from hunyuan_trtllm.checkpoints.file_io import DEFAULT_WRITE_MODE
from hunyuan_trtllm.checkpoints.fp8 import fp8_plan, quantization_config, source_scales
from hunyuan_trtllm.checkpoints.fp8_scales import Fp8Scales
from hunyuan_trtllm.checkpoints.hf_shapes import hf_shape
from hunyuan_trtllm.checkpoints.mapping import Mapping
from hunyuan_trtllm.checkpoints.output_dir import (
    check_not_an_input,
    check_replaceable,
    human_bytes,
    is_disk_full,
    is_empty_dir,
    locked_output_dir,
    require_free_space,
)
from hunyuan_trtllm.checkpoints.param_counts import mtp_parameter_count
from hunyuan_trtllm.checkpoints.rank_tasks import (
    SourceReaders,
    materialize,
    rank_file,
    rank_layout,
    rank_tasks,
    run_tasks,
)
from hunyuan_trtllm.checkpoints.safetensors_io import (
    finish_partial,
    partial_path,
    read_header,
    write_atomic,
)
from hunyuan_trtllm.checkpoints.source import Read, SourceCheckpoint, open_source
from hunyuan_trtllm.checkpoints.trtllm_config import DTYPE_STRINGS, MTP_DIR, trtllm_config
from hunyuan_trtllm.checkpoints.weight_plan import WeightPlan
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
    write_mode: str = DEFAULT_WRITE_MODE,
    parallel_embedding: bool = False,
) -> ConvertResult:
    """Convert MODEL into a TensorRT-LLM checkpoint in ``out_dir``.

    ``dtype="fp8"``: per-tensor FP8 weights (bfloat16 activations) with ``scales`` from calibration, or, for an
    FP8 source (Tencent's format), the scales stored in it. ``progress(total_bytes, already_done)`` may return a
    callback that receives bytes as they are written. ``mtp="keep"`` also writes the MTP draft part (module
    docstring); ``"drop"`` leaves it out with a note.
    callback that receives bytes as they are written. ``write_mode``: see :mod:`.file_io` (the bytes written are
    the same in every mode); source ranges are dropped from the page cache once no task reads them again.
    ``parallel_embedding``: each tp rank holds 1/tp of the vocabulary embedding's rows (TensorRT-LLM's
    ``use_parallel_embedding`` with ``embedding_sharding_dim`` 0) instead of all of it.
    """
    start = time.perf_counter()
    if mtp not in ("drop", "keep"):
        raise UserError(f"--mtp {mtp}: expected drop or keep")
    src = open_source(model)
    if mtp == "keep" and not src.spec.num_mtp_layers:
        raise UserError(f"--mtp keep: {src.path / 'config.json'} declares no MTP layer (num_nextn_predict_layers)")
    quantization = None
    plan = WeightPlan.build(src.spec, mapping, resolve_dtype("bfloat16" if dtype == "fp8" else dtype,
                                                             src.spec.torch_dtype),
                            parallel_embedding=parallel_embedding)
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
    check_not_an_input(out_dir, [src.path, *{f.resolve().parent for f in src.files}], overwrite)  # HF cache blobs
    _check_ours(out_dir, overwrite)  # before the lock file is created in it
    with locked_output_dir(out_dir, overwrite) as lock:
        with lock.metadata():
            _prepare_output(out_dir, src, plan, overwrite)
            done = [r for r in wanted if _rank_is_complete(out_dir, plan, r)]
            todo = [r for r in wanted if r not in done]
            lock.lock_ranks(todo)
            manifest = _manifest_text(out_dir, src, plan)
            layouts = {r: rank_layout(plan, r) for r in todo}
            require_free_space(out_dir, sum(lay.total_size for lay in layouts.values()) + 2 * len(manifest),
                               sum(_allocated(partial_path(rank_file(out_dir, r))) for r in todo))
        try:
            with lock.metadata():
                write_atomic(out_dir / MANIFEST, manifest)
            tasks = [task for r in todo for task in rank_tasks(out_dir, plan, r, layouts[r])]
            total = sum(t.nbytes for t in tasks)
            advance = progress(total, 0) if progress else None
            remaining = {r: sum(1 for t in tasks if t.rank == r) for r in todo}
            readers = SourceReaders(src, plan, tasks)
            for task in run_tasks(src.path, plan, out_dir, tasks, workers, write_mode):
                if advance:
                    advance(task.nbytes)
                readers.done(task)
                remaining[task.rank] -= 1
                if remaining[task.rank] == 0:
                    finish_partial(rank_file(out_dir, task.rank))
            with lock.metadata():
                complete = all(rank_file(out_dir, r).is_file() for r in range(mapping.world_size))
                notes = list(src.spec.notes)
                if complete and mtp == "keep":
                    total += _write_mtp_part(src, out_dir / MTP_DIR, mapping, plan.dtype, workers, write_mode)
                elif src.spec.num_mtp_layers:
                    notes.append(f"the MTP layer (model.layers.{src.spec.num_layers}, "
                                 f"{mtp_parameter_count(src.spec):,} parameters) is left out of the checkpoint; "
                                 "--mtp keep writes it as a draft part")
                if complete:
                    config = trtllm_config(src.spec, mapping, plan.dtype, quantization, mtp_kept=mtp == "keep",
                                           parallel_embedding=parallel_embedding)
                    write_atomic(out_dir / "config.json", json.dumps(config, indent=2) + "\n")
                write_atomic(out_dir / MANIFEST, _manifest_text(out_dir, src, plan))
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            with lock.metadata():
                raise _disk_full(out_dir, plan, todo) from None
        except KeyboardInterrupt:  # Ctrl-C: keep finished ranks (renamed already), drop this run's partial files
            for rank in todo:
                partial_path(rank_file(out_dir, rank)).unlink(missing_ok=True)
            raise
    return ConvertResult(out_dir, plan, todo, done, complete, total, time.perf_counter() - start, notes)


def _write_mtp_part(src: SourceCheckpoint, mtp_dir: Path, mapping: Mapping, dtype: torch.dtype, workers: int,
                    write_mode: str) -> int:
    """Write the MTP draft part into ``mtp_dir`` (unquantized: in FP8 conversions it stays bfloat16); its bytes."""
    plan = WeightPlan.build_mtp(src.spec, mapping, dtype)
    check_source(src, plan)
    shutil.rmtree(mtp_dir, ignore_errors=True)  # one layer: an interrupted part is rewritten, never resumed
    mtp_dir.mkdir()
    tasks = [task for r in range(plan.mapping.world_size)
             for task in rank_tasks(mtp_dir, plan, r, rank_layout(plan, r))]
    remaining = {r: sum(1 for t in tasks if t.rank == r) for r in range(plan.mapping.world_size)}
    for task in run_tasks(src.path, plan, mtp_dir, tasks, workers, write_mode):
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


def _is_our_conversion(out_dir: Path) -> bool:
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and str(manifest.get("tool", "")).startswith("hunyuan-trtllm") \
        and "plan_digest" in manifest


_OUR_FILES = re.compile(r"rank\d+\.safetensors|\.rank\d+\.safetensors\.partial|(manifest|config)\.json"
                        r"|\.(manifest|config)\.json\.partial")


def _check_ours(out_dir: Path, overwrite: bool) -> None:
    """Refuse, touching nothing, a directory that holds something other than our conversion."""
    if overwrite:
        check_replaceable(out_dir, _is_our_conversion, "a conversion (manifest.json)")
    elif out_dir.is_dir() and not (out_dir / MANIFEST).exists() and not is_empty_dir(out_dir):
        raise UserError(f"{out_dir}: not empty and holds no conversion to resume; choose another output "
                        "directory (--overwrite replaces only a conversion written by hunyuan-trtllm)")


def _prepare_output(out_dir: Path, src: SourceCheckpoint, plan: WeightPlan, overwrite: bool) -> None:
    """Decide what the directory holds: nothing, our conversion to resume, or (``--overwrite``) one to replace."""
    _check_ours(out_dir, overwrite)
    if overwrite:
        for path in out_dir.iterdir():  # our files only: whatever else the user keeps here stays
            if _OUR_FILES.fullmatch(path.name) and not path.is_dir():
                path.unlink()
        return
    manifest = _read_manifest(out_dir)
    if manifest is None:
        return
    if manifest.get("plan_digest") != plan.digest():
        raise UserError(f"{out_dir}: holds a conversion with different settings; pass --overwrite or use another")
    _check_same_source(out_dir, manifest, src)
    if manifest.get("complete") and all(rank_file(out_dir, r).is_file() for r in range(plan.mapping.world_size)):
        raise UserError(f"{out_dir}: already holds a finished checkpoint; pass --overwrite to convert again")


def _check_same_source(out_dir: Path, manifest: dict, src: SourceCheckpoint) -> None:
    """A resumed conversion must read the very model it started from (file sizes and header hashes)."""
    source = manifest.get("source")
    recorded = source.get("files") if isinstance(source, dict) else None
    current = src.fingerprint()
    if recorded == current:
        return
    before = {e.get("file"): e for e in recorded if isinstance(e, dict)} if isinstance(recorded, list) else {}
    changed = [e["file"] for e in current if before.get(e["file"]) != e]
    changed += sorted(set(before) - {e["file"] for e in current})
    what = f"{src.path / str(changed[0])} differs" if changed else "no source recorded"
    raise UserError(f"{out_dir}: holds part of a conversion of a different model ({what} from what the manifest "
                    "records); resume with the same model, or pass --overwrite to start again")


def _allocated(path: Path) -> int:
    """Bytes a file occupies on disk (0 when absent): what truncating or replacing it frees."""
    try:
        return path.stat().st_blocks * 512
    except OSError:
        return 0


def _disk_full(out_dir: Path, plan: WeightPlan, todo: list[int]) -> UserError:
    """Remove this run's partial files (and a manifest no finished rank needs); say how much space is needed."""
    for rank in todo:
        partial_path(rank_file(out_dir, rank)).unlink(missing_ok=True)
    for name in (MANIFEST, "config.json"):
        partial_path(out_dir / name).unlink(missing_ok=True)
    if not any(rank_file(out_dir, r).is_file() for r in range(plan.mapping.world_size)):
        (out_dir / MANIFEST).unlink(missing_ok=True)
    unfinished = [r for r in todo if not rank_file(out_dir, r).is_file()]
    needed = sum(plan.rank_bytes(r) for r in unfinished)
    return UserError(f"{out_dir}: disk full (no space left on device) while writing rank files; partial files "
                     f"removed; the {len(unfinished)} unfinished rank(s) need {human_bytes(needed)} free: "
                     "free up space and run the same command to resume")


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
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        manifest = None
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: corrupt manifest; remove the directory or choose another output directory")
    return manifest


def _manifest_text(out_dir: Path, src: SourceCheckpoint, plan: WeightPlan) -> str:
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
    return json.dumps(manifest, indent=1) + "\n"
