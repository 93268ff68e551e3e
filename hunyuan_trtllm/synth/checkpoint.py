"""Random-weight checkpoints in Tencent's exact on-disk format (A13B, Large, dense, Hy3), for tests and benchmarks.

Weights are made as the golden fixtures' were: tensor names (Tencent's separate q/k/v and gate/up layout) sorted
as strings, one CPU ``torch.Generator`` seeded with the seed drawing every tensor in that order, ``0.8 +
0.4*rand`` for names ending in ``norm.weight`` and ``0.05*randn`` otherwise, drawn in float32 and stored in the
requested dtype. Big tensors are drawn in row chunks (the values are the same as one draw) and written straight to
their place in the safetensors file, so memory stays at one chunk whatever the model size. ``fused=True`` places
the same rows into the older fused layouts (design note 8), so it holds exactly the same model.

Hy3 checkpoints also hold the MTP layer (``model.layers.{num_hidden_layers}``) and store ``mlp.expert_bias`` in
float32 whatever the dtype, as tencent/Hy3 does (``FLOAT32_TENSORS``).

Tiny MoE presets scan seeds upward until every router decision on the built-in prompts has a probability margin
of at least ``min_router_gap`` (design note 7); ``synth_info.json`` records the seed used and the margin. The scan
from seed 0 was run once for the usual tiny configurations (:data:`FIRST_GOOD_SEEDS`): a request at or below such a
seed starts there (every seed before it is known to fail), checks it, and falls back to the full scan if the check
fails, so the result is the scan's, in a fraction of a second instead of about 30 s.

``whole_char_head=True`` (the demo's model) zeroes the output-head rows (the tied embedding, or ``lm_head``) of
every token that is not whole UTF-8 text (lone bytes of a multi-byte character, special tokens): their logit is
then exactly 0 while ordinary tokens' logits spread around it, so greedy decoding picks whole characters and words
and the random model's answer reads as (meaningless) text instead of U+FFFD.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.progress import Progress

from hunyuan_trtllm.checkpoints.hy_tokenizer import (
    SPECIAL_TOKENS,
    filled_ranks,
    tiny_corpus,
    train_tiny_bpe,
    write_hy_tiktoken,
)
from hunyuan_trtllm.checkpoints.prompts import DEFAULT_PROMPTS
from hunyuan_trtllm.checkpoints.safetensors_io import (
    OutputEntry,
    atomic_output_dir,
    check_new_output_dir,
    create_partial,
    dtype_size,
    finish_partial,
    plan_file,
    pwrite_tensor,
    write_atomic,
)
from hunyuan_trtllm.checkpoints.spec import ModelSpec, load_config, parse_spec
from hunyuan_trtllm.checkpoints.weight_plan import stored_dtype, tensor_shapes
from hunyuan_trtllm.errors import UserError
from hunyuan_trtllm.reference.hf_forward import router_gaps
from hunyuan_trtllm.synth import configs as synth_configs
from hunyuan_trtllm.synth.hy3_tokenizer import write_hy3_tokenizer_files

ARCHS = ("a13b", "large", "dense", "hy3")
PRESETS = ("tiny", "full-width")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TINY_RANKS = 793  # BPE ranks of the tiny tokenizer: 793 + 210 specials = 1003 ids
MAX_SEED_TRIES = 4000  # tiny A13B (4 layers, top-2 of 8) meets a 2e-3 margin on about 1 seed in 600
# (arch, layers, dtype, whole_char_head) -> the first seed from 0 whose tiny model meets the default 2e-3 margin,
# found by the full scan (tests/test_synth.py re-checks that the seed just before each fails).
FIRST_GOOD_SEEDS: dict[tuple[str, int, str, bool], int] = {
    ("a13b", 4, "float32", False): 198,
    ("a13b", 4, "bfloat16", False): 389,
    ("a13b", 4, "float32", True): 1096,  # the demo's model
}
DEFAULT_MIN_ROUTER_GAP = 2e-3
_CHUNK_ELEMENTS = 1 << 22  # rows drawn per step: at most 4 Mi float32 values (16 MiB; bigger chunks page-fault more)
WeightStream = Iterator[tuple[str, int, torch.Tensor]]  # (tensor name, first row, rows in the stored dtype)


@dataclass(frozen=True)
class _Place:
    """Rows ``src_row .. src_row+rows`` of a generated tensor go to row ``dst_row`` of the stored tensor ``dest``."""

    dest: str
    src_row: int
    rows: int
    dst_row: int


def synth_checkpoint(
    out_dir: Path,
    arch: str,
    preset: str = "tiny",
    layers: int | None = None,
    seed: int = 0,
    dtype: str | None = None,
    fused: bool = False,
    min_router_gap: float = DEFAULT_MIN_ROUTER_GAP,
    progress: bool = False,
    whole_char_head: bool = False,
) -> ModelSpec:
    """Write a random checkpoint (config, safetensors, tokenizer files) to ``out_dir``; return its spec.

    ``out_dir`` must not exist or be empty; the folder is built beside it and renamed into place when complete.
    """
    out_dir = Path(out_dir)
    config = synth_config(arch, preset, layers, dtype)
    spec = parse_spec(config, "synthetic config.json")
    if fused and spec.is_hy3:
        raise UserError("--fused: Hy3 has no fused qkv_proj / gate_and_up_proj layout")
    shapes = tensor_shapes(spec)
    check_new_output_dir(out_dir, sum(math.prod(s) for s in shapes.values()) * dtype_size(DTYPES[spec.torch_dtype]))
    with atomic_output_dir(out_dir, "synth") as tmp:
        with Progress(disable=not progress) as bar:
            head = _non_text_rows(spec) if whole_char_head else None
            known = FIRST_GOOD_SEEDS.get((arch, spec.num_layers, spec.torch_dtype, whole_char_head)) \
                if min_router_gap == DEFAULT_MIN_ROUTER_GAP else None
            stream, used_seed, gap = _weights(spec, shapes, seed, preset, min_router_gap, bar, head, known)
            _write_weights(tmp, spec, shapes, stream, fused, sharded=preset == "full-width", bar=bar)
        if spec.is_hy3:  # a Hy3-style tokenizer.json (no chat_template: serving uses the built-in Hy3 one)
            write_hy3_tokenizer_files(tmp, config)
            generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
                          "pad_token_id": config["pad_token_id"], "do_sample": True, "temperature": 0.9, "top_p": 1.0}
            write_atomic(tmp / "generation_config.json", json.dumps(generation, indent=2) + "\n")
        else:
            _write_tokenizer_files(tmp, arch, spec.vocab_size)
        info = {"arch": arch, "preset": preset, "dtype": spec.torch_dtype, "fused": fused,
                "whole_char_head": whole_char_head, "seed_requested": seed,
                "seed": used_seed, "min_router_gap": min_router_gap, "router_gap": gap,
                "router_gap_prompts": list(DEFAULT_PROMPTS)}
        write_atomic(tmp / "synth_info.json", json.dumps(info, indent=2) + "\n")
        write_atomic(tmp / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    return parse_spec(load_config(out_dir / "config.json"), str(out_dir / "config.json"))


def synth_config(arch: str, preset: str = "tiny", layers: int | None = None, dtype: str | None = None) -> dict:
    """The config.json that :func:`synth_checkpoint` writes, in the Tencent dialect of ``arch``."""
    if arch not in ARCHS:
        raise UserError(f"unknown arch '{arch}'; choose one of {', '.join(ARCHS)}")
    if preset not in PRESETS:
        raise UserError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
    dtype = dtype or ("float32" if preset == "tiny" else "bfloat16")
    if dtype not in DTYPES:
        raise UserError(f"unsupported dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
    dims = synth_configs.PRESET_DIMS[(arch, preset)]
    if layers is not None and (isinstance(layers, bool) or not isinstance(layers, int) or layers < 1):
        raise UserError(f"layers must be a positive integer, got {layers!r}")
    num_ranks = dims.vocab - len(SPECIAL_TOKENS)
    return synth_configs.BUILDERS[arch](dims, layers or dims.layers, synth_configs.SpecialIds.of(num_ranks), dtype)


def generate_weights(shapes: dict[str, tuple[int, ...]], seed: int, dtype: torch.dtype) -> WeightStream:
    """Draw every tensor in sorted-name order from one generator, yielding row chunks in the stored dtype.

    Chunks hold a multiple of 16 values, so chunked draws give exactly the values of one whole-tensor draw.
    """
    generator = torch.Generator().manual_seed(seed)
    for name in sorted(shapes):
        shape = shapes[name]
        row_values = math.prod(shape[1:])
        step = 16 // math.gcd(16, row_values)
        rows_per_chunk = max(step, _CHUNK_ELEMENTS // row_values // step * step)
        for start in range(0, shape[0], rows_per_chunk):
            part = (min(rows_per_chunk, shape[0] - start), *shape[1:])
            if name.endswith("norm.weight"):
                values = 0.8 + 0.4 * torch.rand(part, generator=generator)
            else:
                values = 0.05 * torch.randn(part, generator=generator)
            yield name, start, values.to(stored_dtype(name, dtype))


# ---- weights ------------------------------------------------------------------------------------------------


def _weights(
    spec: ModelSpec,
    shapes: dict[str, tuple[int, ...]],
    seed: int,
    preset: str,
    min_gap: float,
    bar: Progress,
    head: tuple[str, list[int]] | None = None,
    known: int | None = None,
) -> tuple[WeightStream, int, float | None]:
    """The weight stream to write, the seed it came from and its router margin (None when not measured).

    ``head``: (output-head tensor, rows to zero), see :func:`_non_text_rows`; ``known``: the recorded first good
    seed of this configuration (:data:`FIRST_GOOD_SEEDS`).
    """
    dtype = DTYPES[spec.torch_dtype]

    def draw(candidate: int) -> WeightStream:
        stream = generate_weights(shapes, candidate, dtype)
        return stream if head is None else _zero_rows(stream, *head)

    if preset != "tiny" or not spec.is_moe:
        return draw(seed), seed, None
    tries: Iterable[int] = range(seed, seed + MAX_SEED_TRIES)
    if known is not None and seed <= known:
        tries = itertools.chain([known], tries)  # the seeds below `known` fail; the full scan if `known` does too
    task = bar.add_task(f"picking a seed whose expert choices are clear-cut (router margin >= {min_gap:g})",
                        total=MAX_SEED_TRIES)
    checked: set[int] = set()
    for candidate in tries:
        if candidate in checked:
            continue
        checked.add(candidate)
        weights = _materialize(draw(candidate), shapes, dtype)
        gap = math.inf
        for ids in sorted(DEFAULT_PROMPTS.values(), key=len):  # cheapest first: most seeds fail early
            gap = min(gap, router_gaps(spec, weights.__getitem__, ids))
            if gap < min_gap:
                break
        bar.advance(task)
        if gap >= min_gap:
            bar.update(task, total=len(checked), description=f"seed {candidate}: every expert choice is clear-cut "
                       f"(router margin {gap:.4f} >= {min_gap:g})")
            return ((name, 0, t) for name, t in weights.items()), candidate, gap
    raise UserError(
        f"no seed in {seed}..{seed + MAX_SEED_TRIES - 1} gives every router decision a margin >= {min_gap:g}; "
        "try another seed or a smaller min_router_gap"
    )


def _non_text_rows(spec: ModelSpec) -> tuple[str, list[int]]:
    """The output head's name and the ids of its tokens that are not whole UTF-8 text (byte pieces, specials)."""
    num_ranks = spec.vocab_size - len(SPECIAL_TOKENS)
    ranks = _tokenizer_ranks(num_ranks)
    rows = [rank for token, rank in ranks.items() if not _is_text(token)]
    rows += range(num_ranks, spec.vocab_size)
    name = "model.embed_tokens.weight" if spec.tie_word_embeddings else "lm_head.weight"
    return name, sorted(rows)


def _is_text(token: bytes) -> bool:
    try:
        token.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _zero_rows(stream: WeightStream, name: str, rows: list[int]) -> WeightStream:
    """``stream`` with ``rows`` of tensor ``name`` set to zero."""
    for tensor, start, values in stream:
        if tensor == name:
            local = [r - start for r in rows if start <= r < start + values.shape[0]]
            values[local] = 0
        yield tensor, start, values


def _materialize(
    stream: WeightStream, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Assemble a weight stream into whole tensors (tiny models only)."""
    weights = {name: torch.empty(shape, dtype=stored_dtype(name, dtype)) for name, shape in shapes.items()}
    for name, start, rows in stream:
        weights[name][start : start + rows.shape[0]] = rows
    return weights


def _placements(
    spec: ModelSpec, shapes: dict[str, tuple[int, ...]], fused: bool
) -> tuple[dict[str, tuple[int, ...]], dict[str, list[_Place]]]:
    """Stored tensors (name -> shape) and where each generated tensor's rows go.

    Fused layouts: ``self_attn.qkv_proj.weight`` interleaved per KV group (group g's query heads, then k_g, then
    v_g; CLA consumers keep ``q_proj`` alone) and ``*.gate_and_up_proj.weight`` = cat(up, gate).
    """
    stored = dict(shapes)
    places = {name: [_Place(name, 0, shape[0], 0)] for name, shape in shapes.items()}
    if not fused:
        return stored, places
    d, group = spec.head_dim, spec.num_heads // spec.num_kv_heads
    for layer in filter(spec.is_kv_producer, range(spec.num_layers)):  # CLA consumers keep q_proj alone
        p = f"model.layers.{layer}.self_attn."
        qkv = p + "qkv_proj.weight"
        stored[qkv] = ((spec.num_heads + 2 * spec.num_kv_heads) * d, spec.hidden_size)
        for proj in ("q", "k", "v"):
            del stored[f"{p}{proj}_proj.weight"]
        block = (group + 2) * d  # rows of one KV group in the fused tensor
        kv = range(spec.num_kv_heads)
        places[p + "q_proj.weight"] = [_Place(qkv, g * group * d, group * d, g * block) for g in kv]
        places[p + "k_proj.weight"] = [_Place(qkv, g * d, d, g * block + group * d) for g in kv]
        places[p + "v_proj.weight"] = [_Place(qkv, g * d, d, g * block + (group + 1) * d) for g in kv]
    for gate in [name for name in shapes if name.endswith("gate_proj.weight")]:
        base, (width, hidden) = gate.removesuffix("gate_proj.weight"), shapes[gate]
        gate_up = base + "gate_and_up_proj.weight"
        stored[gate_up] = (2 * width, hidden)
        del stored[gate], stored[base + "up_proj.weight"]
        places[base + "up_proj.weight"] = [_Place(gate_up, 0, width, 0)]
        places[gate] = [_Place(gate_up, 0, width, width)]
    return dict(sorted(stored.items())), places


def _shard_files(stored: dict[str, tuple[int, ...]], num_layers: int, sharded: bool) -> dict[str, str]:
    """File of each stored tensor: one ``model.safetensors``, or about one decoder layer (MTP layers included)
    per shard (HF names)."""
    if not sharded:
        return {name: "model.safetensors" for name in stored}
    shards = max([num_layers] + [int(n.split(".")[2]) + 1 for n in stored if n.startswith("model.layers.")])
    files = {}
    for name in stored:
        if name.startswith("model.layers."):
            shard = int(name.split(".")[2])
        else:  # embeddings with the first layer; final norm and lm_head with the last
            shard = 0 if name == "model.embed_tokens.weight" else num_layers - 1
        files[name] = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
    return files


def _write_weights(
    folder: Path,
    spec: ModelSpec,
    shapes: dict[str, tuple[int, ...]],
    stream: WeightStream,
    fused: bool,
    sharded: bool,
    bar: Progress,
) -> None:
    """Write the stream into the (possibly fused, possibly sharded) safetensors files, one chunk at a time."""
    stored, places = _placements(spec, shapes, fused)
    files = _shard_files(stored, spec.num_layers, sharded)
    dtype = DTYPES[spec.torch_dtype]
    layouts = {}
    fds: dict[str, int] = {}
    for file in sorted(set(files.values())):
        layouts[file] = plan_file([OutputEntry(name, stored_dtype(name, dtype), stored[name]) for name in stored
                                   if files[name] == file])
        fds[file] = os.open(create_partial(folder / file, layouts[file]), os.O_WRONLY)
    total = sum(math.prod(shape) * dtype_size(stored_dtype(name, dtype)) for name, shape in stored.items())
    task = bar.add_task("writing weights", total=total)
    try:
        for name, start, rows in stream:
            row_bytes = rows[0].numel() * rows.element_size()
            for place in places[name]:
                lo, hi = max(start, place.src_row), min(start + rows.shape[0], place.src_row + place.rows)
                if lo < hi:
                    file = files[place.dest]
                    offset = layouts[file].offset(place.dest) + (place.dst_row + lo - place.src_row) * row_bytes
                    pwrite_tensor(fds[file], offset, rows[lo - start : hi - start])
            bar.advance(task, rows.numel() * rows.element_size())
    finally:
        for fd in fds.values():
            os.close(fd)
    for file in layouts:
        finish_partial(folder / file)
    if sharded:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(files.items()))}
        write_atomic(folder / "model.safetensors.index.json", json.dumps(index, indent=2) + "\n")


# ---- tokenizer files ----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _tokenizer_ranks(num_ranks: int) -> dict[bytes, int]:
    """The BPE ranks of ``hy.tiktoken``: the toy BPE of the tiny corpus, filled up to ``num_ranks`` (cached: the
    whole-character head needs them before the tokenizer is written; callers do not modify them)."""
    ranks = train_tiny_bpe(tiny_corpus(), min(num_ranks, TINY_RANKS))
    return filled_ranks(ranks, num_ranks) if num_ranks > TINY_RANKS else ranks


def _write_tokenizer_files(folder: Path, arch: str, vocab_size: int) -> None:
    """``hy.tiktoken``, ``generation_config.json`` and a minimal ``tokenizer_config.json`` (no chat template)."""
    num_ranks = vocab_size - len(SPECIAL_TOKENS)
    write_hy_tiktoken(folder / "hy.tiktoken", _tokenizer_ranks(num_ranks))
    ids = synth_configs.SpecialIds.of(num_ranks)
    generation = {"bos_token_id": 1, "eos_token_id": [ids.eos, ids.eod], "pad_token_id": ids.pad,
                  "do_sample": True, "top_k": 20, "top_p": 0.6 if arch == "large" else 0.8,
                  "repetition_penalty": 1.05, "temperature": 0.7, "transformers_version": "4.31.0"}
    tokenizer = {"model_max_length": 1048576, "tokenizer_class": "HYTokenizer", "eos_token": "<|eos|>",
                 "pad_token": "<|pad|>",
                 "additional_special_tokens": ["<|startoftext|>", "<|extra_0|>", "<|extra_4|>", "<|extra_5|>",
                                               "<|eos|>"]}
    write_atomic(folder / "generation_config.json", json.dumps(generation, indent=2) + "\n")
    write_atomic(folder / "tokenizer_config.json", json.dumps(tokenizer, indent=2) + "\n")
