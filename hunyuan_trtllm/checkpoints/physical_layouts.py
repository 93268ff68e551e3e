"""How a Hugging Face Hunyuan checkpoint stores its tensors: logical reads mapped onto physical slices, as data.

The weight plan speaks of logical tensors (``model.layers.3.self_attn.k_proj.weight`` rows 16..32). Real
checkpoints store them in one of several physical layouts (design note 8):

- separate ``q_proj``/``k_proj``/``v_proj`` and ``gate_proj``/``up_proj`` (A13B, the golden fixtures): no rule;
- a fused ``self_attn.qkv_proj.weight`` whose rows are interleaved per KV group
  (``[n_kv, n_q/n_kv + 2, head_dim, hidden]``: group g's q heads, then k_g, then v_g);
- a fused ``*.gate_and_up_proj.weight`` = ``cat(up, gate)`` (up half first, as vLLM and mlx-lm load it);
- transformers-5 fused experts ``mlp.experts.gate_up_proj [E, 2I, H]`` (gate first) and
  ``mlp.experts.down_proj [E, H, I]``;
- Hy3 saved by transformers (``_ALIASES``): ``mlp.gate.weight`` for Tencent's ``mlp.router.gate.weight``,
  ``mlp.e_score_correction_bias`` for ``mlp.expert_bias``, ``mlp.shared_experts.*`` for ``mlp.shared_mlp.*``.

Each rule of :data:`LAYOUT_RULES` takes the checkpoint (its ``spec`` and its ``tensors``: name -> (file, info))
and a :class:`Read`, and returns the :class:`PhysicalRead` slices holding it, or None when the layout is not
this one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hunyuan_trtllm.checkpoints.source import SourceCheckpoint

Range = tuple[int, int]


@dataclass(frozen=True)
class Read:
    """A logical slice of a Hugging Face tensor: ``name[rows, cols]`` (None means the whole dimension)."""

    name: str
    rows: Range | None = None
    cols: Range | None = None


@dataclass(frozen=True)
class PhysicalRead:
    """A slice of a tensor as it is stored: ``name[index..., rows, cols]``."""

    name: str
    index: tuple[int, ...] = ()
    rows: Range | None = None
    cols: Range | None = None


def extent(rng: Range | None, size: int) -> int:
    return size if rng is None else rng[1] - rng[0]


def _fused_qkv(src: SourceCheckpoint, read: Read) -> list[PhysicalRead] | None:
    """``self_attn.{q,k,v}_proj.weight`` inside a per-KV-group interleaved ``self_attn.qkv_proj.weight``."""
    m = re.fullmatch(r"(.*\.self_attn\.)([qkv])_proj\.weight", read.name)
    if not m or f"{m[1]}qkv_proj.weight" not in src.tensors:
        return None
    spec, fused = src.spec, f"{m[1]}qkv_proj.weight"
    d, group = spec.head_dim, spec.num_heads // spec.num_kv_heads
    n_rows = (spec.num_heads if m[2] == "q" else spec.num_kv_heads) * d
    start, stop = read.rows or (0, n_rows)
    pieces: list[PhysicalRead] = []
    row = start
    while row < stop:  # walk head by head, merging consecutive rows of the same group block
        head, within = divmod(row, d)
        if m[2] == "q":
            g, slot = divmod(head, group)
            run = min(stop - row, (group - slot) * d - within)
        else:
            g, slot, run = head, group + (m[2] == "v"), min(stop - row, d - within)
        phys = (g * (group + 2) + slot) * d + within
        pieces.append(PhysicalRead(fused, (), (phys, phys + run), read.cols))
        row += run
    return pieces


def _fused_gate_up(src: SourceCheckpoint, read: Read) -> list[PhysicalRead] | None:
    """``X.gate_proj``/``X.up_proj`` inside ``X.gate_and_up_proj.weight`` = cat(up, gate)."""
    m = re.fullmatch(r"(.*\.)(gate|up)_proj\.weight", read.name)
    if not m or f"{m[1]}gate_and_up_proj.weight" not in src.tensors:
        return None
    fused = f"{m[1]}gate_and_up_proj.weight"
    half = src.tensors[fused][1].shape[0] // 2
    start, stop = read.rows or (0, half)
    offset = half if m[2] == "gate" else 0
    return [PhysicalRead(fused, (), (start + offset, stop + offset), read.cols)]


def _fused_experts(src: SourceCheckpoint, read: Read) -> list[PhysicalRead] | None:
    """transformers-5 fused experts: ``experts.gate_up_proj [E, 2I, H]`` (gate first), ``experts.down_proj``."""
    m = re.fullmatch(r"(.*\.mlp\.experts\.)(\d+)\.(gate|up|down)_proj\.weight", read.name)
    if not m:
        return None
    expert = int(m[2])
    if m[3] == "down":
        fused = f"{m[1]}down_proj"
        return [PhysicalRead(fused, (expert,), read.rows, read.cols)] if fused in src.tensors else None
    fused = f"{m[1]}gate_up_proj"
    if fused not in src.tensors:
        return None
    half = src.tensors[fused][1].shape[1] // 2
    start, stop = read.rows or (0, half)
    offset = 0 if m[3] == "gate" else half
    return [PhysicalRead(fused, (expert,), (start + offset, stop + offset), read.cols)]


# Logical (Tencent) name pattern -> the name transformers' hy_v3 class saves the same tensor under.
_ALIASES = (
    (re.compile(r"(.*\.mlp\.)router\.gate\.weight"), r"\1gate.weight"),
    (re.compile(r"(.*\.mlp\.)expert_bias"), r"\1e_score_correction_bias"),
    (re.compile(r"(.*\.mlp\.)shared_mlp\.(.*)"), r"\1shared_experts.\2"),
)


def _aliased(src: SourceCheckpoint, read: Read) -> list[PhysicalRead] | None:
    """A tensor stored under transformers' hy_v3 name instead of Tencent's."""
    for pattern, replacement in _ALIASES:
        stored = pattern.sub(replacement, read.name) if pattern.fullmatch(read.name) else None
        if stored is not None and stored in src.tensors:
            return [PhysicalRead(stored, (), read.rows, read.cols)]
    return None


LAYOUT_RULES: list[Callable[[SourceCheckpoint, Read], list[PhysicalRead] | None]] = [
    _fused_qkv,
    _fused_gate_up,
    _fused_experts,
    _aliased,
]
