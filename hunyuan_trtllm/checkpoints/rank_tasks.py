"""Conversion tasks and the processes that run them: one task per output tensor (or per expert of a stacked
tensor), built from its source reads and written at its planned offset in a rank file.

``run_tasks`` runs them in this process or in a pool of worker processes that die with their parent
(:mod:`hunyuan_trtllm.checkpoints.worker_pool`); each worker holds one ``SourceCheckpoint`` (``pread`` only) and one
:class:`~hunyuan_trtllm.checkpoints.file_io.FileWriter` per rank file. :class:`SourceReaders` drops a source
tensor's pages from the page cache once the last task that reads it is done.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from hunyuan_trtllm.checkpoints.file_io import DEFAULT_WRITE_MODE, FileWriter, drop_range
from hunyuan_trtllm.checkpoints.fp8_scales import quantize_e4m3, requantize_e4m3
from hunyuan_trtllm.checkpoints.safetensors_io import FileLayout, OutputEntry, create_partial, partial_path, plan_file
from hunyuan_trtllm.checkpoints.source import Read, SourceCheckpoint
from hunyuan_trtllm.checkpoints.weight_plan import CLA_QUERY_NORM, TensorPlan, WeightPlan
from hunyuan_trtllm.checkpoints.worker_pool import run_in_workers
from hunyuan_trtllm.errors import CheckpointError


def rank_file(out_dir: Path, rank: int) -> Path:
    return out_dir / f"rank{rank}.safetensors"


@dataclass(frozen=True)
class Task:
    """Write one tensor (or one expert of a stacked tensor) of one rank at an absolute file offset."""

    rank: int
    tensor: int
    part: int | None
    offset: int
    nbytes: int


def rank_layout(plan: WeightPlan, rank: int) -> FileLayout:
    return plan_file([OutputEntry(t.name, t.dtype, t.shape) for t in plan.ranks[rank]])


def rank_tasks(out_dir: Path, plan: WeightPlan, rank: int, layout: FileLayout) -> list[Task]:
    tensors = plan.ranks[rank]
    create_partial(rank_file(out_dir, rank), layout)
    tasks = []
    for index, t in enumerate(tensors):
        base = layout.offset(t.name)
        if t.stacked:  # one task per expert: memory holds one expert, not all of them
            per_part = t.nbytes // len(t.parts)
            tasks += [Task(rank, index, p, base + p * per_part, per_part) for p in range(len(t.parts))]
        else:
            tasks.append(Task(rank, index, None, base, t.nbytes))
    return tasks


def materialize(plan: TensorPlan, read: Callable[[Read], torch.Tensor], part: int | None = None,
                read_e4m3: Callable[[Read], tuple[torch.Tensor, float] | None] | None = None) -> torch.Tensor:
    """Build a planned tensor (or, for stacked tensors, one of its parts) from source reads.

    Everything is computed in the source precision (or float32 for combined tensors) and cast once at the end.
    ``read_e4m3`` (FP8 sources): FP8 parts whose sources are stored in e4m3 are requantized from the stored bytes,
    kept as they are where the scale does not change; the result is bit-identical to dequantizing first.
    """
    if plan.constant is not None:
        return torch.tensor(plan.constant, dtype=plan.dtype).reshape(plan.shape)
    parts = plan.parts if part is None else (plan.parts[part],)
    scales = None if plan.fp8_scales is None else plan.fp8_scales if part is None else (plan.fp8_scales[part],)
    built = []
    for index, reads in enumerate(parts):
        if scales is not None and read_e4m3 is not None and reads and plan.combine is None:
            stored = [read_e4m3(r) for r in reads]
            if all(s is not None for s in stored):
                scale = scales[index if len(scales) > 1 else 0]
                pieces = [requantize_e4m3(q, s, scale) for q, s in stored]  # type: ignore[misc]
                built.append(pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=plan.concat_dim))
                continue
        pieces = [read(r) for r in reads]
        if plan.combine == CLA_QUERY_NORM:
            q_norm, k_norm, k_norm_producer = (p.float() for p in pieces)
            if bool((k_norm_producer == 0).any()):
                raise CheckpointError(
                    f"{reads[2].name}: a zero entry; the CLA key-norm fold (q_norm * k_norm / k_norm_producer) "
                    "would divide by zero"
                )
            built.append(q_norm * k_norm / k_norm_producer)
        elif not pieces:
            built.append(torch.empty((0, *plan.shape[1:]), dtype=plan.dtype))
        else:
            built.append(pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=plan.concat_dim))
    if scales is not None:  # quantize each part with its own scale (one per expert when stacked)
        built = [b if b.dtype == torch.float8_e4m3fn else quantize_e4m3(b, scales[i if len(scales) > 1 else 0])
                 for i, b in enumerate(built)]
    tensor = torch.stack(built) if plan.stacked and part is None else built[0]
    if plan.pad_rows:
        pad = torch.zeros((plan.pad_rows, *tensor.shape[1:]), dtype=tensor.dtype)
        tensor = torch.cat([tensor.to(plan.dtype), pad.to(plan.dtype)])
    return tensor.to(plan.dtype).contiguous()


_WORKER: dict[str, object] = {}


class SourceReaders:
    """Counts the tasks still to read each stored source tensor; once none is left, its byte range is dropped from
    the page cache, so a conversion larger than RAM does not evict everything else (the tensors that several ranks
    read, such as a replicated embedding, stay until the last of them is written)."""

    def __init__(self, src: SourceCheckpoint, plan: WeightPlan, tasks: list[Task]):
        self.src = src
        self.stored: dict[tuple[int, int | None], list[str]] = {}
        self.pending: dict[str, int] = {}
        for task in tasks:
            t = plan.ranks[task.rank][task.tensor]
            parts = t.parts if task.part is None else (t.parts[task.part],)
            names = {p.name for reads in parts for read in reads for p in src.resolve(read)}
            self.stored[(task.rank, task.offset)] = sorted(names)
            for name in names:
                self.pending[name] = self.pending.get(name, 0) + 1

    def done(self, task: Task) -> None:
        for name in self.stored.pop((task.rank, task.offset), []):
            self.pending[name] -= 1
            if self.pending[name] == 0:
                file, info = self.src.tensors[name]
                fd = self.src.fd(file)
                drop_range(fd, self.src.headers[file].data_start + info.begin, info.nbytes)


def _init_worker(model_dir: Path, plan: WeightPlan, out_dir: Path, write_mode: str) -> None:
    torch.set_num_threads(1)
    _WORKER.update(src=SourceCheckpoint(model_dir), plan=plan, out=out_dir, writers={}, mode=write_mode)


def _do_task(task: Task) -> Task:
    src: SourceCheckpoint = _WORKER["src"]  # type: ignore[assignment]
    plan: WeightPlan = _WORKER["plan"]  # type: ignore[assignment]
    writers: dict[int, FileWriter] = _WORKER["writers"]  # type: ignore[assignment]
    if task.rank not in writers:
        path = partial_path(rank_file(_WORKER["out"], task.rank))  # type: ignore[arg-type]
        writers[task.rank] = FileWriter(path, _WORKER["mode"])  # type: ignore[arg-type]
    tensor_plan: TensorPlan = plan.ranks[task.rank][task.tensor]
    tensor = materialize(tensor_plan, src.read, task.part, src.read_e4m3 if src.fp8 else None)
    if tensor.numel() * tensor.element_size() != task.nbytes:
        raise CheckpointError(f"{tensor_plan.name}: built {tuple(tensor.shape)}, planned {tensor_plan.shape}")
    writers[task.rank].write(task.offset, tensor)
    return task


def _close_worker_files() -> None:
    for writer in _WORKER.pop("writers", {}).values():  # type: ignore[union-attr]
        writer.close()
    src = _WORKER.pop("src", None)
    if src is not None:
        src.close()  # type: ignore[attr-defined]


def run_tasks(model_dir: Path, plan: WeightPlan, out_dir: Path, tasks: list[Task], workers: int,
         write_mode: str = DEFAULT_WRITE_MODE) -> Iterator[Task]:
    """Run tasks in this process (workers=1) or in a pool of worker processes, yielding each as it finishes."""
    if not tasks:
        return
    if workers <= 1:
        _init_worker(model_dir, plan, out_dir, write_mode)
        try:
            for task in sorted(tasks, key=lambda t: (t.rank, t.offset)):
                yield _do_task(task)
        finally:
            _close_worker_files()
        return
    ordered = sorted(tasks, key=lambda t: -t.nbytes)
    yield from run_in_workers(workers, _do_task, ordered, _init_worker, (model_dir, plan, out_dir, write_mode))
