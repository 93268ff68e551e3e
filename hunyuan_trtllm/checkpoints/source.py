"""SourceCheckpoint: a Hugging Face Hunyuan checkpoint on disk, read by *logical* tensor name.

:meth:`SourceCheckpoint.read` resolves a logical row/column range to the physical slices that hold it (the layouts
of :mod:`hunyuan_trtllm.checkpoints.physical_layouts`) and reads only those bytes (``pread`` of the rows it needs;
columns are cut from those rows).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from pathlib import Path

import torch

from hunyuan_trtllm.checkpoints.physical_layouts import LAYOUT_RULES, PhysicalRead, Read, extent
from hunyuan_trtllm.checkpoints.safetensors_io import FileHeader, TensorInfo, pread_exact, read_header
from hunyuan_trtllm.checkpoints.spec import ModelSpec, load_config, parse_spec
from hunyuan_trtllm.errors import CheckpointError, UserError

SAMPLES, SAMPLE_BYTES = 8, 64 * 1024  # weight bytes hashed per file for the manifest's fingerprint
HF_ALLOW_PATTERNS = ["*.json", "*.safetensors", "hy.tiktoken", "tokenizer*", "*.txt", "Notice*", "LICENSE*"]


def resolve_model(model: str, patterns: list[str] | None = None) -> Path:
    """A local directory, or a Hugging Face repo id downloaded (only the files we need) into the HF cache.

    Honours ``HF_HUB_OFFLINE`` and the local cache through huggingface_hub.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UserError(f"{model}: not a directory (MODEL is a checkpoint directory or a Hugging Face repo id)")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", model):
        raise UserError(f"{model}: no such directory, and not a Hugging Face repo id (owner/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model, allow_patterns=patterns or HF_ALLOW_PATTERNS))
    except LocalEntryNotFoundError:
        raise UserError(f"{model}: not in the local Hugging Face cache and the hub is unreachable or offline") from None
    except HfHubHTTPError as exc:
        raise UserError(f"{model}: Hugging Face download failed ({exc.__class__.__name__})") from None


class SourceCheckpoint:
    """A Hunyuan checkpoint directory: config, spec (reconciled with the tensors on disk) and tensor index."""

    def __init__(self, path: Path):
        self.path = path
        self.config = load_config(path / "config.json")
        self.files = _find_weight_files(path)
        self.headers: dict[Path, FileHeader] = {f: read_header(f) for f in self.files}
        self.tensors: dict[str, tuple[Path, TensorInfo]] = {}
        for file, header in self.headers.items():
            for name, info in header.tensors.items():
                self.tensors.setdefault(name, (file, info))
        self._check_index()
        self._fds: dict[Path, int] = {}
        self._fingerprint: list[dict[str, object]] | None = None
        # The fused-qkv layout needs head counts, so the config's spec is used until shapes are reconciled.
        self.spec: ModelSpec = parse_spec(self.config, str(path / "config.json"))
        self.fp8 = _is_fp8(self.config, path)
        self.spec = _reconcile(self.spec, self)

    # ---- logical reads ------------------------------------------------------------------------------------
    def has(self, name: str) -> bool:
        """Whether a tensor is stored under exactly this name."""
        return name in self.tensors

    def has_logical(self, name: str) -> bool:
        """Whether a logical tensor can be read, in whatever layout it is stored."""
        try:
            self.resolve(Read(name))
        except CheckpointError:
            return False
        return True

    def shape(self, name: str) -> tuple[int, ...]:
        """Logical shape of a tensor, whatever its physical layout."""
        pieces = self.resolve(Read(name))
        rows = sum(extent(p.rows, self._phys_shape(p)[len(p.index)]) for p in pieces)
        phys = self._phys_shape(pieces[0])[len(pieces[0].index) :]
        return (rows, *phys[1:]) if phys[1:] else (rows,)

    def read(self, read: Read) -> torch.Tensor:
        """Read a logical slice (only the bytes it needs)."""
        parts = [self._read_physical(p) for p in self.resolve(read)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)

    def read_e4m3(self, read: Read) -> tuple[torch.Tensor, float] | None:
        """A logical slice as its stored e4m3 bytes and their dequantization scale, without dequantizing; None
        unless every stored piece is e4m3 with one and the same scale (then :meth:`read` = bytes x scale)."""
        pieces = self.resolve(read)
        if any(self.tensors[p.name][1].dtype != torch.float8_e4m3fn for p in pieces):
            return None
        scales = {self.scalar(_weight_scale_name(p.name)) for p in pieces}
        if len(scales) != 1:
            return None
        parts = [self._read_physical(p, dequantize=False) for p in pieces]
        return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)), scales.pop()

    def get(self, name: str) -> torch.Tensor:
        """A whole logical tensor (for references and tests on small models)."""
        return self.read(Read(name))

    def resolve(self, read: Read) -> list[PhysicalRead]:
        """Map a logical slice to the stored slices that hold it, in row order."""
        if read.name in self.tensors:
            return [PhysicalRead(read.name, (), read.rows, read.cols)]
        for rule in LAYOUT_RULES:
            pieces = rule(self, read)
            if pieces is not None:
                return pieces
        raise CheckpointError(f"{self.path}: tensor '{read.name}' is missing from the checkpoint")

    def _phys_shape(self, piece: PhysicalRead) -> tuple[int, ...]:
        return self.tensors[piece.name][1].shape

    def _read_physical(self, piece: PhysicalRead, dequantize: bool = True) -> torch.Tensor:
        """``pread`` exactly the rows a slice needs (no mmap, so resident memory never grows with the model)."""
        file, info = self.tensors[piece.name]
        header = self.headers[file]
        inner = info.shape[len(piece.index) :]  # shape below the indexed leading dims
        row_elems = math.prod(inner[1:])
        first = 0
        for i, size in zip(piece.index, info.shape, strict=False):
            first = first * size + i
        first *= math.prod(inner)
        rows = piece.rows or (0, inner[0] if inner else 1)
        count = (rows[1] - rows[0]) * row_elems
        esize = info.nbytes // max(math.prod(info.shape), 1)
        buf = torch.empty(count * esize, dtype=torch.uint8)  # not zero-filled: pread overwrites every byte
        fd = self.fd(file)
        offset = header.data_start + info.begin + (first + rows[0] * row_elems) * esize
        pread_exact(fd, buf.numpy(), offset, f"{file} while reading '{piece.name}'")
        tensor = buf.view(info.dtype)
        tensor = tensor.view(rows[1] - rows[0], *inner[1:]) if inner else tensor.view(())
        if piece.cols:
            tensor = tensor[:, piece.cols[0] : piece.cols[1]].contiguous()
        if dequantize and tensor.dtype == torch.float8_e4m3fn:  # FP8 storage (Tencent's FP8 release)
            tensor = tensor.float().mul_(self.scalar(_weight_scale_name(piece.name)))
        return tensor

    def fd(self, file: Path) -> int:
        """A read-only descriptor of one weight file, opened once."""
        fd = self._fds.get(file)
        if fd is None:
            fd = self._fds[file] = os.open(file, os.O_RDONLY)
        return fd

    def scalar(self, name: str) -> float:
        """A stored scalar (or one-element) tensor such as ``...q_proj.input_scale``."""
        if name not in self.tensors:
            raise CheckpointError(f"{self.path}: FP8 checkpoint without '{name}'")
        value = self._read_physical(PhysicalRead(name))
        if value.numel() != 1:
            raise CheckpointError(f"{self.path}: '{name}' should be one per-tensor scale, not {list(value.shape)}")
        return float(value.float().reshape(()))

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    # ---- validation ---------------------------------------------------------------------------------------
    def _check_index(self) -> None:
        index_file = self.path / "model.safetensors.index.json"
        if not index_file.is_file():
            return
        for name, file in load_weight_map(index_file).items():
            if name not in self.tensors:
                raise CheckpointError(f"{self.path / file}: missing (listed in {index_file.name} for '{name}')")

    def fingerprint(self) -> list[dict[str, object]]:
        """Source files with sizes, header hashes and a hash of sampled weight bytes, for the manifest.

        Hashing headers (not 100s of GB) tells apart files with different tensors; the sampled bytes (64 KiB at
        each of 8 places in the data section) tell apart two models with the same shapes, which a resumed
        conversion must not mix.
        """
        if self._fingerprint is None:
            entries: list[dict[str, object]] = []
            for name in ["config.json", *sorted(f.name for f in self.files)]:
                file = self.path / name
                header = self.headers.get(file)
                entry: dict[str, object] = {"file": name, "bytes": file.stat().st_size}
                if header is None:
                    entry["sha256"] = hashlib.sha256(file.read_bytes()).hexdigest()
                else:
                    entry["header_sha256"] = hashlib.sha256(header.raw).hexdigest()
                    entry["sample_sha256"] = self._sample_digest(header, entry["bytes"])  # type: ignore[arg-type]
                entries.append(entry)
            self._fingerprint = entries
        return self._fingerprint

    def _sample_digest(self, header: FileHeader, size: int) -> str:
        digest = hashlib.sha256()
        data = size - header.data_start
        chunk = min(SAMPLE_BYTES, data)
        fd = os.open(header.path, os.O_RDONLY)
        try:
            for i in range(SAMPLES):
                buf = bytearray(chunk)
                offset = header.data_start + (data - chunk) * i // max(SAMPLES - 1, 1)
                pread_exact(fd, buf, offset, f"{header.path}")
                digest.update(buf)
        finally:
            os.close(fd)
        return digest.hexdigest()


def open_source(model: str | os.PathLike[str]) -> SourceCheckpoint:
    """Open MODEL (directory or repo id) as a :class:`SourceCheckpoint`."""
    return SourceCheckpoint(resolve_model(str(model)))


def load_spec(model: str) -> tuple[Path, ModelSpec]:
    """The spec of MODEL, reconciled with its tensors when they are local; a repo id fetches config.json only."""
    path = resolve_model(model, patterns=["config.json", "*.safetensors.index.json"])
    has_weights = any(path.glob("*.safetensors"))
    if has_weights:
        return path, SourceCheckpoint(path).spec
    return path, parse_spec(load_config(path / "config.json"), str(path / "config.json"))


# ---- files and reconciliation -------------------------------------------------------------------------------


def load_weight_map(index_file: Path) -> dict[str, str]:
    """``weight_map`` of a ``model.safetensors.index.json``: tensor name -> shard file in the same directory."""
    try:
        index = json.loads(index_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        index = None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_file}: malformed index (expected a 'weight_map' object)")
    for name, file in weight_map.items():
        if not isinstance(file, str) or Path(file).name != file or not file.endswith(".safetensors"):
            raise CheckpointError(f"{index_file}: weight_map['{name}'] is {file!r}; expected the name of a "
                                  ".safetensors shard in the same directory")
    return weight_map


def _find_weight_files(path: Path) -> list[Path]:
    index_file = path / "model.safetensors.index.json"
    if index_file.is_file():
        names = sorted(set(load_weight_map(index_file).values()))
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise CheckpointError(f"{path / missing[0]}: shard listed in {index_file.name} is missing")
        return [path / n for n in names]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no *.safetensors weights (only safetensors checkpoints are supported)")
    return files


def _reconcile(spec: ModelSpec, src: SourceCheckpoint) -> ModelSpec:
    """Trust tensor shapes over config fields that Tencent's own code ignores (design note 5)."""
    notes: list[str] = []
    changes: dict[str, object] = {}

    def check(field: str, name: str, axis: int, per: int = 1) -> None:
        if not src.has_logical(name):
            return
        actual = src.shape(name)[axis] // per
        if actual != getattr(spec, field):
            notes.append(f"config says {field}={getattr(spec, field)} but {name} implies {actual}; using {actual}")
            changes[field] = actual

    check("head_dim", "model.layers.0.self_attn.q_proj.weight", 0, spec.num_heads)
    if spec.is_moe and spec.first_dense_layers < spec.num_layers:
        moe = f"model.layers.{spec.first_dense_layers}.mlp."
        check("expert_intermediate_size", moe + "experts.0.gate_proj.weight", 0)
        check("shared_intermediate_size", moe + "shared_mlp.gate_proj.weight", 0)
    tie = spec.tie_word_embeddings
    if not tie and not src.has("lm_head.weight"):
        notes.append("config says tie_word_embeddings=false but there is no lm_head.weight; using the embedding")
        changes["tie_word_embeddings"] = True
    if notes:
        spec = dataclasses.replace(spec, notes=tuple(notes), **changes)
    return spec


def _weight_scale_name(weight: str) -> str:
    return weight.removesuffix(".weight") + ".weight_scale"


def _is_fp8(config: dict, path: Path) -> bool:
    """Tencent's FP8 releases: ``quantization_config {quant_method: fp8, activation_scheme: static}``."""
    quant = config.get("quantization_config")
    if not quant:
        return False
    method, scheme = quant.get("quant_method"), quant.get("activation_scheme", "static")
    if method != "fp8" or scheme != "static" or quant.get("weight_block_size"):
        raise CheckpointError(
            f"{path / 'config.json'}: quantization_config {method!r} (activation_scheme {scheme!r}) is not supported; "
            "only per-tensor static FP8 (Tencent's FP8 release) or unquantized checkpoints"
        )
    return True
