"""Check a converted checkpoint's rank files against its weight plan before any GPU work, reading headers only.

Every rank file must exist and hold exactly the planned tensors, each with the planned shape and dtype: TensorRT-LLM
itself would stop on a missing tensor only after minutes of loading, and would merely warn about an extra one. The
first problem is reported as one line naming the file and the tensor, with a count of any others.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from hunyuan_trtllm.checkpoints.safetensors_io import DTYPE_CODES, TensorInfo, read_header
from hunyuan_trtllm.checkpoints.weight_plan import TensorPlan, WeightPlan
from hunyuan_trtllm.errors import CheckpointError

_RANK_FILE = re.compile(r"rank(\d+)\.safetensors")


@dataclass(frozen=True)
class RankFile:
    """A validated rank file: its size and the hash of its header (which names every tensor and byte range)."""

    rank: int
    path: Path
    size: int
    header_sha256: str


def rank_path(ckpt_dir: Path, rank: int) -> Path:
    return ckpt_dir / f"rank{rank}.safetensors"


def validate_rank_files(ckpt_dir: Path, plan: WeightPlan) -> list[RankFile]:
    """Check every rank file's header against ``plan``; raise :class:`CheckpointError` on the first problem."""
    problems: list[str] = []
    files: list[RankFile] = []
    world = plan.mapping.world_size
    for rank, tensors in enumerate(plan.ranks):
        path = rank_path(ckpt_dir, rank)
        if not path.is_file():
            problems.append(f"{path}: rank file is missing (world size {world}: expected rank0..rank{world - 1})")
            continue
        try:
            header = read_header(path)
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        problems += tensor_problems(path, rank, tensors, header.tensors)
        files.append(RankFile(rank, path, path.stat().st_size, hashlib.sha256(header.raw).hexdigest()))
    for path in sorted(ckpt_dir.glob("rank*.safetensors")):
        match = _RANK_FILE.fullmatch(path.name)
        if match and int(match[1]) >= world:
            problems.append(f"{path}: unexpected rank file (config.json's mapping has world size {world})")
    if problems:
        more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
        raise CheckpointError(problems[0] + more)
    return files


def tensor_problems(path: Path, rank: int, planned: tuple[TensorPlan, ...],
                    stored: dict[str, TensorInfo]) -> list[str]:
    """One line per tensor that is missing, extra, or of the wrong shape or dtype, in the plan's order."""
    problems = []
    for tensor in planned:
        info = stored.get(tensor.name)
        want = f"{list(tensor.shape)} {DTYPE_CODES[tensor.dtype]}"
        if info is None:
            problems.append(f"{path}: tensor '{tensor.name}' is missing (rank {rank} needs {want})")
        elif info.shape != tensor.shape:
            problems.append(f"{path}: tensor '{tensor.name}' has shape {list(info.shape)}, the weight plan for "
                            f"rank {rank} needs {list(tensor.shape)}")
        elif info.dtype != tensor.dtype:
            problems.append(f"{path}: tensor '{tensor.name}' is {DTYPE_CODES[info.dtype]}, the weight plan for "
                            f"rank {rank} needs {DTYPE_CODES[tensor.dtype]}")
    names = {t.name for t in planned}
    problems += [f"{path}: unexpected tensor '{name}' (not in the weight plan for rank {rank}; reconvert)"
                 for name in stored if name not in names]
    return problems


def checkpoint_digest(ckpt_dir: Path, files: list[RankFile]) -> str:
    """A hash of config.json and every rank file's header and size: which checkpoint an engine was built from."""
    digest = hashlib.sha256((ckpt_dir / "config.json").read_bytes())
    for f in files:
        digest.update(f"{f.path.name}:{f.size}:{f.header_sha256}".encode())
    return digest.hexdigest()
