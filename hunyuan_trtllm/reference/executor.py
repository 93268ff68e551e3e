"""The reference executor: runs a converted TensorRT-LLM checkpoint the way TensorRT-LLM's network does.

It reads only what TensorRT-LLM reads, config.json and the per-rank files, and emulates the parallel
execution on one CPU: each TP rank computes its slice, partial outputs are summed (the all-reduce), experts run
on the EP rank that holds them, PP stages run in order. Everything is computed in float32 from the stored
weights, so differences against a reference measure the checkpoint, not the arithmetic.

Semantics, in the order they happen in one decoder layer:
- attention: ``qkv`` GEMM -> split q | k | v per rank -> RoPE (NeoX pairing, ``rotary_base``) -> per-head
  RMSNorm of q and k (QK-norm *after* RoPE; *before* it when ``hunyuan.qk_norm_position`` is ``before_rope``,
  Hy3) -> causal GQA attention over the KV cache -> ``dense`` (row-parallel, summed over ranks). CLA consumer
  layers have a Q-only projection and attend over their producer's cache;
- MoE: router in float32 on the full hidden state, then ``hunyuan.routing``: softmax scores (``RENORMALIZE``:
  softmax over the top-k logits, ``NONE``: top-k of the softmax), or sigmoid scores (Hy3) with top-k of
  ``scores + mlp.expert_bias`` and the unbiased scores as weights, renormalised (``/ (sum + eps)``) and times
  ``routed_scaling_factor``; experts ``fc`` -> ``swiglu`` (``x, gate = chunk(fc(h), 2); silu(gate) * x``) ->
  ``proj``; plus the always-on shared expert, summed over ranks;
- dense MLP (``GatedMLP``): ``proj(silu(fc(h)) * gate(h))``, on every layer of a dense model and on the layers
  ``hunyuan.mlp_layer_types`` marks ``dense`` (Hy3's layer 0).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from hunyuan_trtllm.checkpoints.fp8_scales import fake_quant
from hunyuan_trtllm.checkpoints.mapping import Mapping
from hunyuan_trtllm.checkpoints.safetensors_io import read_header, read_tensor
from hunyuan_trtllm.errors import CheckpointError


@dataclass
class KVCache:
    """Post-RoPE, post-norm keys and values per (KV-producing layer, TP rank): ``[S, kv_heads_per_rank, d]``."""

    length: int = 0
    entries: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def append(self, layer: int, tp_rank: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if (layer, tp_rank) in self.entries:
            old_k, old_v = self.entries[(layer, tp_rank)]
            k, v = torch.cat([old_k, k]), torch.cat([old_v, v])
        self.entries[(layer, tp_rank)] = (k, v)
        return k, v


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope_tables(positions: torch.Tensor, dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))  # [d/2]
    angles = positions.float()[:, None] * inv_freq[None, :]  # [T, d/2]
    emb = torch.cat([angles, angles], dim=-1)  # [T, d]
    return emb.cos()[:, None, :], emb.sin()[:, None, :]  # [T, 1, d]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


EMBEDDING = "transformer.vocab_embedding.weight"


_REQUIRED = {"architecture": str, "dtype": str, "vocab_size": int, "num_hidden_layers": int,
             "num_attention_heads": int, "num_key_value_heads": int, "head_size": int, "norm_epsilon": (int, float),
             "rotary_base": (int, float)}


def _converted_config(path: Path) -> dict:
    """config.json of a converted checkpoint; an HF model directory or a damaged file is one clear error."""
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: not valid JSON") from None
    mapping = cfg.get("mapping") if isinstance(cfg, dict) else None
    if not isinstance(mapping, dict):
        raise CheckpointError(f"{path}: not a converted TensorRT-LLM checkpoint (no 'mapping'; is this the Hugging "
                              "Face model? verify takes the output of `hunyuan-trtllm convert`)")
    fields = [(key, cfg.get(key), kind) for key, kind in _REQUIRED.items()]
    fields += [(f"mapping.{key}", mapping.get(key), int) for key in ("tp_size", "pp_size", "moe_ep_size")]
    for key, value, kind in fields:
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CheckpointError(f"{path}: field '{key}' is missing or of the wrong type (not a checkpoint written "
                                  "by `hunyuan-trtllm convert`?)")
    return cfg


class ReferenceExecutor:
    """Execute a converted checkpoint directory on CPU in float32."""

    def __init__(self, ckpt_dir: Path, cache_weights: bool = True):
        self.dir = ckpt_dir
        config_path = ckpt_dir / "config.json"
        if not config_path.is_file():
            raise CheckpointError(f"{ckpt_dir}: no config.json (not a converted checkpoint, or conversion unfinished)")
        self.config = cfg = _converted_config(config_path)
        m = cfg["mapping"]
        self.mapping = Mapping(tp=m["tp_size"], pp=m["pp_size"], moe_ep=m["moe_ep_size"])
        self.n_layers = cfg["num_hidden_layers"]
        self.n_heads, self.n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.d = cfg["head_size"]
        self.eps = cfg["norm_epsilon"]
        self.base = cfg["rotary_base"]
        self.qk_norm = cfg.get("qk_layernorm", False)
        self.moe = cfg.get("moe") or {}
        self.vocab = cfg["vocab_size"]
        self.parallel_embedding = bool(cfg.get("use_parallel_embedding"))  # rows split over tp (sharding dim 0)
        self.kv_source = cfg.get("cla_kv_source_layer") or list(range(self.n_layers))
        extra = cfg.get("hunyuan") or {}
        self.norm_before_rope = extra.get("qk_norm_position") == "before_rope"
        moe_kind = "moe" if self.moe.get("num_experts", 0) > 1 else "dense"
        self.mlp_kinds = extra.get("mlp_layer_types") or [moe_kind] * self.n_layers
        self.routing = extra.get("routing") or {"scoring": "softmax", "expert_bias": "none",
                                                   "renormalize": self.moe.get("normalization_mode", 0) == 1,
                                                   "routed_scaling_factor": 1.0}
        quant = cfg.get("quantization") or {}
        self.fp8 = quant.get("quant_algo") == "FP8"  # e4m3 weights, inputs quantized before each GEMM
        self.kv_fp8 = quant.get("kv_cache_quant_algo") == "FP8"  # K and V stored in e4m3
        self.cache_weights = cache_weights
        self._weights: dict[tuple[int, str], torch.Tensor] = {}
        self._headers = {}
        for rank in range(self.mapping.world_size):
            path = ckpt_dir / f"rank{rank}.safetensors"
            if not path.is_file():
                raise CheckpointError(f"{path}: missing rank file")
            self._headers[rank] = read_header(path)
        self._names = {rank: set(header.tensors) for rank, header in self._headers.items()}
        self.bytes_read = 0

    # ---- weights ------------------------------------------------------------------------------------------
    def w(self, rank: int, name: str) -> torch.Tensor:
        key = (rank, name)
        if key in self._weights:
            return self._weights[key]
        stored = read_tensor(self._headers[rank], name)  # pread: nothing stays mapped after use
        self.bytes_read += stored.nbytes
        tensor = stored.float()
        if self.cache_weights:
            self._weights[key] = tensor
        return tensor

    def gemm(self, rank: int, base: str, x: torch.Tensor, expert: int | None = None) -> torch.Tensor:
        """``x @ W^T`` for linear ``base`` (``expert``: one slice of a stacked expert weight).

        FP8 checkpoints: the e4m3 weight times its ``weights_scaling_factor`` (per expert for experts), and the
        input rounded through e4m3 with ``activation_scaling_factor`` first, as TensorRT-LLM's FP8 GEMMs do.
        """
        w = self.w(rank, base + ".weight")
        w = w if expert is None else w[expert]
        if self.fp8 and (base + ".weights_scaling_factor") in self._names[rank]:
            scale = self.w(rank, base + ".weights_scaling_factor")
            w = w * (scale if expert is None else scale[expert])
            x = fake_quant(x, self.w(rank, base + ".activation_scaling_factor"))
        return x @ w.T

    def new_cache(self) -> KVCache:
        return KVCache()

    # ---- forward ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, input_ids: Sequence[int], cache: KVCache | None = None) -> torch.Tensor:
        """Logits ``[T, vocab]`` (float32) for ``input_ids`` following whatever ``cache`` already holds."""
        cache = cache if cache is not None else KVCache()
        x, rope = self._embed(input_ids, cache.length)
        for ranks, local, layer in self._layers():
            x = self._decoder_layer(x, ranks, local, layer, cache, rope)
        cache.length += len(input_ids)
        return self._logits(x)

    @property
    def checkpoint_bytes(self) -> int:
        """Bytes of tensor data in the rank files (what a layer-by-layer pass reads, each tensor once)."""
        return sum(info.nbytes for header in self._headers.values() for info in header.tensors.values())

    @torch.no_grad()
    def forward_layer_by_layer(self, prompts: Sequence[Sequence[int]],
                               progress: Callable[[int], None] | None = None) -> list[torch.Tensor]:
        """Logits ``[T, vocab]`` of each prompt (from position 0), computed layer-major: every decoder layer's
        weights are read once, used for all prompts and dropped, so memory holds one layer (of every rank) plus
        the prompts' activations and KV caches, whatever the depth of the model. ``progress(n)`` is called with
        the bytes read by each step (the embedding, every layer, the head)."""
        reported = self.bytes_read

        def report() -> None:
            nonlocal reported
            if progress is not None:
                progress(self.bytes_read - reported)
            reported = self.bytes_read

        caches = [KVCache() for _ in prompts]
        states = [self._embed(ids, 0) for ids in prompts]
        self._weights.clear()
        report()
        for ranks, local, layer in self._layers():
            states = [(self._decoder_layer(x, ranks, local, layer, cache, rope), rope)
                      for (x, rope), cache in zip(states, caches, strict=True)]
            self._weights.clear()
            report()
        logits = [self._logits(x) for x, _ in states]
        self._weights.clear()
        report()
        return logits

    def _layers(self) -> list[tuple[list[int], int, int]]:
        """(the ranks of its PP stage, local index, global index) of every decoder layer, in order."""
        tp = self.mapping.tp
        return [([stage * tp + r for r in range(tp)], local, layer)
                for stage in range(self.mapping.pp)
                for local, layer in enumerate(self.mapping.pp_layers(self.n_layers, stage))]

    def _embed(self, input_ids: Sequence[int], start: int) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Hidden states ``[T, H]`` of ``input_ids`` and the RoPE tables of positions ``start..start+T-1``."""
        ids = torch.as_tensor(list(input_ids), dtype=torch.long)
        rope = rope_tables(torch.arange(start, start + len(ids)), self.d, self.base)
        if not self.parallel_embedding:
            return F.embedding(ids, self.w(0, EMBEDDING)), rope  # [T, H]
        # Vocab-parallel, as TensorRT-LLM's Embedding with sharding_dim 0: first-stage rank r holds rows
        # r*rows..(r+1)*rows-1, looks up the ids in its range (zeros for the others), and the ranks all-reduce.
        x = None
        for rank in range(self.mapping.tp):
            table = self.w(rank, EMBEDDING)
            local = ids - rank * table.shape[0]
            inside = (local >= 0) & (local < table.shape[0])
            part = F.embedding(torch.where(inside, local, 0), table) * inside.unsqueeze(-1)
            x = part if x is None else x + part
        return x, rope

    def _decoder_layer(self, x, ranks, local, layer, cache, rope) -> torch.Tensor:
        prefix = f"transformer.layers.{local}."
        x = x + self._attention(x, ranks, prefix, layer, cache, *rope)
        return x + self._mlp(x, ranks, prefix, self.mlp_kinds[layer] == "moe")

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """``ln_f`` then the vocab-parallel ``lm_head`` of the last stage, gathered: ``[T, vocab]``."""
        tp, pp = self.mapping.tp, self.mapping.pp
        last = [(pp - 1) * tp + r for r in range(tp)]
        h = rms_norm(x, self.w(last[0], "transformer.ln_f.weight"), self.eps)
        logits = torch.cat([h @ self.w(r, "lm_head.weight").T for r in last], dim=-1)  # gather over tp
        return logits[:, : self.vocab]

    def _attention(self, x, ranks, prefix, layer, cache, cos, sin) -> torch.Tensor:
        t, d = x.shape[0], self.d
        a = rms_norm(x, self.w(ranks[0], prefix + "input_layernorm.weight"), self.eps)
        producer = self.kv_source[layer] == layer
        q_heads = self.n_heads // len(ranks)
        kv_heads = max(1, self.n_kv // len(ranks))
        out = torch.zeros_like(x)
        for tp_rank, rank in enumerate(ranks):
            if producer:
                qkv = self.gemm(rank, prefix + "attention.qkv", a)  # [T, (q + 2 kv) * d]
                q, k, v = qkv.split([q_heads * d, kv_heads * d, kv_heads * d], dim=-1)
            else:
                q = self.gemm(rank, prefix + "attention.q", a)  # [T, q * d]
            q = self._rope_and_norm(q.view(t, q_heads, d), rank, prefix + "attention.q_layernorm.weight", cos, sin)
            if producer:
                k = self._rope_and_norm(k.reshape(t, kv_heads, d), rank, prefix + "attention.k_layernorm.weight",
                                        cos, sin)
                v = v.reshape(t, kv_heads, d)
                if self.kv_fp8:  # the cache holds e4m3 K and V
                    kv_scale = self.w(rank, prefix + "attention.kv_cache_scaling_factor")
                    k, v = fake_quant(k, kv_scale), fake_quant(v, kv_scale)
                keys, values = cache.append(layer, tp_rank, k, v)
            else:
                keys, values = cache.entries[(self.kv_source[layer], tp_rank)]
            attn = _causal_gqa(q, keys, values, d)  # [T, q_heads * d]
            out += self.gemm(rank, prefix + "attention.dense", attn)  # all-reduce of row-parallel dense
        return out

    def _rope_and_norm(self, x, rank, norm, cos, sin) -> torch.Tensor:
        """RoPE and the per-head QK-norm ``norm`` (if the model has one), in the configured order."""
        if not self.qk_norm:
            return apply_rope(x, cos, sin)
        if self.norm_before_rope:
            return apply_rope(rms_norm(x, self.w(rank, norm), self.eps), cos, sin)
        return rms_norm(apply_rope(x, cos, sin), self.w(rank, norm), self.eps)

    def _mlp(self, x, ranks, prefix, moe: bool) -> torch.Tensor:
        m = rms_norm(x, self.w(ranks[0], prefix + "post_layernorm.weight"), self.eps)
        out = torch.zeros_like(x)
        if not moe:
            for rank in ranks:
                h = F.silu(self.gemm(rank, prefix + "mlp.fc", m)) * self.gemm(rank, prefix + "mlp.gate", m)
                out += self.gemm(rank, prefix + "mlp.proj", h)
            return out
        bias = self.w(ranks[0], prefix + "mlp.expert_bias") if self.routing["expert_bias"] != "none" else None
        weights, experts = self._route(m, self.w(ranks[0], prefix + "mlp.router.weight"), bias)  # [T, k] each
        per_rank = self.moe["num_experts"] // self.mapping.moe_ep
        for tp_rank, rank in enumerate(ranks):
            first = self.mapping.coords(tp_rank).moe_ep_rank * per_rank
            for local in range(per_rank):
                token, slot = (experts == first + local).nonzero(as_tuple=True)
                if token.numel():
                    h = _swiglu(self.gemm(rank, prefix + "mlp.fc", m[token], local))
                    y = self.gemm(rank, prefix + "mlp.proj", h, local)  # [n, H]
                    out.index_add_(0, token, y * weights[token, slot, None])
            if self.moe.get("shared_expert_intermediate_size", 0):
                shared = _swiglu(self.gemm(rank, prefix + "mlp.shared_expert.fc", m))
                out += self.gemm(rank, prefix + "mlp.shared_expert.proj", shared)
        return out

    def _route(self, m: torch.Tensor, router: torch.Tensor,
               bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        logits = m.float() @ router.T  # [T, E] float32
        k, routing = self.moe["top_k"], self.routing
        if routing["scoring"] == "sigmoid":  # Hy3: the bias picks the experts, the unbiased scores weigh them
            scores = logits.sigmoid()
            experts = (scores if bias is None else scores + bias).topk(k, dim=-1).indices
            weights = scores.gather(-1, experts)
            if routing["renormalize"]:
                weights = weights / (weights.sum(dim=-1, keepdim=True) + routing.get("renormalize_epsilon", 0.0))
            return weights * routing["routed_scaling_factor"], experts
        if routing["renormalize"]:  # RENORMALIZE: softmax over the top-k logits
            values, experts = logits.topk(k, dim=-1)
            return values.softmax(dim=-1), experts
        return logits.softmax(dim=-1).topk(k, dim=-1)  # NONE: top-k of the softmax


def _swiglu(h: torch.Tensor) -> torch.Tensor:
    """TensorRT-LLM's ``swiglu``: the second half is the gate (SiLU), the first half the linear branch."""
    x, gate = h.chunk(2, dim=-1)
    return F.silu(gate) * x


def _causal_gqa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, d: int) -> torch.Tensor:
    """q ``[T, Hq, d]`` attends over k, v ``[S, Hkv, d]`` (the last T of S are the new tokens)."""
    t, hq, _ = q.shape
    s, hkv, _ = k.shape
    k = k.repeat_interleave(hq // hkv, dim=1)  # kv head j serves q heads j*g .. j*g+g-1
    v = v.repeat_interleave(hq // hkv, dim=1)
    scores = torch.einsum("thd,shd->hts", q, k) * d**-0.5  # [Hq, T, S]
    allowed = torch.arange(s)[None, :] <= torch.arange(s - t, s)[:, None]  # [T, S]
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = scores.softmax(dim=-1)
    return torch.einsum("hts,shd->thd", probs, v).reshape(t, hq * d)
