"""Streaming safetensors: read headers without loading data, write files tensor by tensor, atomically.

A safetensors file is ``u64 header_len | JSON header | data``; the header gives every tensor's dtype, shape and
byte range. Because the converter knows every output tensor's shape before reading any weight, it writes the
header first and then each tensor at its offset (``pwrite``), in any order, from any worker process, holding one
tensor (or one expert of one tensor) in memory at a time. Files are written as ``.NAME.partial`` and renamed
into place only when complete, so a half-written file never looks like a finished one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hunyuan_trtllm.checkpoints.output_dir import require_free_space
from hunyuan_trtllm.errors import CheckpointError, UserError

DTYPE_CODES: dict[torch.dtype, str] = {
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.bool: "BOOL",
}
TORCH_DTYPES: dict[str, torch.dtype] = {code: dtype for dtype, code in DTYPE_CODES.items()}
DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "fp8": torch.float8_e4m3fn,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024


def dtype_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in a safetensors file."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # byte offset from the start of the data section
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class FileHeader:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int  # absolute file offset of the data section
    raw: bytes  # the header bytes as stored (hashed into manifests)


def read_header(path: Path) -> FileHeader:
    """Parse and validate a safetensors header; a truncated or corrupt file raises :class:`CheckpointError`."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                raise CheckpointError(f"{path}: truncated or corrupt safetensors header")
            raw = f.read(header_len)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file is missing") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (a JSON {type(header).__name__}, not an object "
                              "of tensors)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: corrupt safetensors header ('__metadata__' must map strings to strings)")
    tensors = {name: _tensor_info(path, name, entry) for name, entry in header.items()}
    _check_byte_ranges(path, tensors, size - 8 - header_len)
    return FileHeader(path, tensors, metadata, 8 + header_len, raw)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tensor_info(path: Path, name: str, entry: object) -> TensorInfo:
    """One header entry, checked as the safetensors library checks it (known dtype, sizes and offsets >= 0)."""
    fields = entry if isinstance(entry, dict) else {}
    dtype, shape, offsets = fields.get("dtype"), fields.get("shape"), fields.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in TORCH_DTYPES:
        raise CheckpointError(f"{path}: tensor '{name}' has an unsupported or corrupt dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(s) for s in shape):
        raise CheckpointError(f"{path}: tensor '{name}' has a corrupt shape {shape!r}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets) \
            or offsets[0] > offsets[1]:
        raise CheckpointError(f"{path}: tensor '{name}' has corrupt data_offsets {offsets!r} (two byte offsets, "
                              "0 <= begin <= end)")
    info = TensorInfo(name, TORCH_DTYPES[dtype], tuple(shape), offsets[0], offsets[1])
    if info.nbytes != math.prod(shape) * dtype_size(info.dtype):
        raise CheckpointError(f"{path}: tensor '{name}' byte range does not match its shape")
    return info


def _check_byte_ranges(path: Path, tensors: dict[str, TensorInfo], data_len: int) -> None:
    """Tensors tile the data section exactly, in offset order: no overlap, no gap, nothing after (the rules of the
    safetensors library, which refuses every file this refuses; it cannot give us the offsets we pread from)."""
    cursor, previous = 0, None
    for info in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if info.end > data_len:
            raise CheckpointError(
                f"{path}: truncated: tensor '{info.name}' ends at byte {info.end} but the data section has {data_len}"
            )
        if info.begin < cursor:
            raise CheckpointError(f"{path}: tensor '{info.name}' overlaps tensor '{previous}' (data_offsets)")
        if info.begin > cursor:
            raise CheckpointError(f"{path}: tensor '{info.name}' starts at byte {info.begin}, leaving bytes "
                                  f"{cursor}..{info.begin} unaccounted for (data_offsets)")
        cursor, previous = info.end, info.name
    if cursor != data_len:
        raise CheckpointError(f"{path}: {data_len - cursor} bytes after the last tensor (corrupt data_offsets)")


def pread_exact(fd: int, buf: bytearray | np.ndarray, offset: int, what: str) -> None:
    """Fill ``buf`` from ``offset`` of ``fd`` with ``pread`` (no mmap, so nothing stays resident after use)."""
    view, done = memoryview(buf), 0
    while done < len(buf):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise CheckpointError(f"{what}: truncated")
        done += n


def read_tensor(header: FileHeader, name: str) -> torch.Tensor:
    """One whole tensor of a safetensors file, read with ``pread``; a missing name raises CheckpointError."""
    info = header.tensors.get(name)
    if info is None:
        raise CheckpointError(f"{header.path}: tensor '{name}' is missing")
    buf = bytearray(info.nbytes)
    fd = os.open(header.path, os.O_RDONLY)
    try:
        pread_exact(fd, buf, header.data_start + info.begin, f"{header.path} while reading '{name}'")
    finally:
        os.close(fd)
    if not buf:
        return torch.empty(info.shape, dtype=info.dtype)
    return torch.frombuffer(buf, dtype=info.dtype).view(info.shape)


@dataclass(frozen=True)
class OutputEntry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * dtype_size(self.dtype)


@dataclass(frozen=True)
class FileLayout:
    """The planned header and byte offsets of a safetensors file that is about to be written."""

    header: bytes  # u64 length prefix + padded JSON
    offsets: dict[str, int]  # absolute file offset of each tensor's first byte
    total_size: int

    def offset(self, name: str) -> int:
        return self.offsets[name]


def plan_file(entries: Iterable[OutputEntry], metadata: dict[str, str] | None = None) -> FileLayout:
    """Lay out tensors in the given order and build the header that describes them."""
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    relative: dict[str, int] = {}
    cursor = 0
    for entry in entries:
        header[entry.name] = {
            "dtype": DTYPE_CODES[entry.dtype],
            "shape": list(entry.shape),
            "data_offsets": [cursor, cursor + entry.nbytes],
        }
        relative[entry.name] = cursor
        cursor += entry.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # safetensors pads the header to 8-byte alignment
    prefix = struct.pack("<Q", len(blob)) + blob
    offsets = {name: len(prefix) + rel for name, rel in relative.items()}
    return FileLayout(prefix, offsets, len(prefix) + cursor)


def check_new_output_dir(out_dir: Path, nbytes: int) -> None:
    """Refuse a non-empty ``out_dir`` or a disk without room for ``nbytes``; create the parent folder."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"{out_dir}: already exists and is not empty; choose a new output directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    require_free_space(out_dir.parent, int(nbytes * 1.05))


@contextlib.contextmanager
def atomic_output_dir(out_dir: Path, tag: str) -> Iterator[Path]:
    """A sibling temp directory to build in; it replaces the (empty) ``out_dir`` when the block succeeds and is
    removed when it fails, so a half-built directory never appears under ``out_dir``'s name."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{tag}-", dir=out_dir.parent))  # new: never someone else's
    try:
        yield tmp
        if out_dir.exists():
            out_dir.rmdir()
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def partial_path(final: Path) -> Path:
    """The temporary name a file has while it is being written."""
    return final.with_name(f".{final.name}.partial")


def create_partial(final: Path, layout: FileLayout) -> Path:
    """Create the partial file at its full size with the header written; tensors are then pwritten."""
    tmp = partial_path(final)
    with tmp.open("wb") as f:
        f.write(layout.header)
        f.truncate(layout.total_size)
    return tmp


def pwrite_tensor(fd: int, offset: int, tensor: torch.Tensor) -> int:
    """Write a tensor's raw bytes at an absolute file offset; returns the bytes written."""
    data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
    view = memoryview(data)
    written = 0
    while written < len(view):
        written += os.pwrite(fd, view[written:], offset + written)
    return written


def finish_partial(final: Path) -> None:
    """fsync the partial file and atomically rename it to its final name."""
    tmp = partial_path(final)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)


def write_atomic(path: Path, text: str) -> None:
    """Write a small text file (config.json, manifest.json) via temp file + rename."""
    tmp = partial_path(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def save_file_streaming(path: Path, tensors: Iterable[tuple[str, torch.Tensor]], entries: list[OutputEntry]) -> None:
    """Write a safetensors file whose layout is known up front, consuming tensors one at a time."""
    layout = plan_file(entries)
    create_partial(path, layout)
    fd = os.open(partial_path(path), os.O_WRONLY)
    try:
        by_name = {e.name: e for e in entries}
        for name, tensor in tensors:
            expected = by_name[name]
            if tuple(tensor.shape) != expected.shape or tensor.dtype != expected.dtype:
                raise ValueError(f"{name}: got {tuple(tensor.shape)} {tensor.dtype}, planned {expected}")
            pwrite_tensor(fd, layout.offset(name), tensor)
    except BaseException:
        os.close(fd)
        partial_path(path).unlink(missing_ok=True)
        raise
    os.close(fd)
    finish_partial(path)
