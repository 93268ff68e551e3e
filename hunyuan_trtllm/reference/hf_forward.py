"""A plain float32 forward pass of a Hunyuan model, written from the :class:`ModelSpec`.

Reads Tencent's Hugging Face tensor names through a callable ``get(name) -> Tensor`` (so the weights may come
from a safetensors file, a dict, or a converted checkpoint mapped back to these names) and computes the logits of
one prompt: batch 1, causal, positions 0..T-1, no KV cache, everything in float32 (weights are upcast).

Semantics (those of Tencent's published code with token dropping disabled, see the golden fixtures' READMEs and
/work/shared/reference/hunyuan.md sections 2 and 3):

- pre-norm decoder: ``x + attn(input_layernorm(x))`` then ``x + mlp(post_attention_layernorm(x))``, final
  ``model.norm``, lm_head (tied to the embedding when ``tie_word_embeddings``);
- RMSNorm in float32, weight applied after normalising;
- RoPE with rotate-half (NeoX) pairing and the static NTK-alpha base ``spec.rotary_base``;
- per-head QK RMSNorm **after** RoPE (only when ``use_qk_norm``); GQA by repeat-interleave; scale head_dim**-0.5;
- MoE: router softmax in float32 over all experts, top-k, renormalised iff top_k > 1 (Hunyuan-Large's top-1 keeps
  the softmax probability), no token dropping; shared expert always on and ungated; SwiGLU experts;
- CLA (Hunyuan-Large): a consumer layer has no k_proj/v_proj; it reuses the *raw* K/V projections of its
  producer layer (computed from the producer's own input_layernorm output, before RoPE and norm), then applies
  RoPE and its own ``key_layernorm`` to that K; V is used unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from hunyuan_trtllm.checkpoints.spec import ModelSpec, NormalizationMode

WeightGetter = Callable[[str], torch.Tensor]
# Called once per MoE layer with (layer index, router softmax probabilities [T, E] in float32).
RouterHook = Callable[[int, torch.Tensor], None]


# ---- building blocks ----------------------------------------------------------------------------------------


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension, in float32: ``weight * x / sqrt(mean(x^2) + eps)``."""
    x = x.float()
    variance = x.pow(2).mean(dim=-1, keepdim=True)  # [..., 1]
    return weight.float() * (x * torch.rsqrt(variance + eps))


def rope_cos_sin(num_positions: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [T, head_dim] for positions 0..T-1 in the rotate-half layout (frequencies repeated twice)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))  # [d/2]
    positions = torch.arange(num_positions, dtype=torch.float32)  # [T]
    freqs = torch.outer(positions, inv_freq)  # [T, d/2]
    angles = torch.cat((freqs, freqs), dim=-1)  # [T, d]
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` over the last dimension: dim i pairs with dim i + d/2."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, heads, d]; cos/sin: [T, d]."""
    cos, sin = cos[:, None, :], sin[:, None, :]  # [T, 1, d]
    return x * cos + rotate_half(x) * sin


def swiglu(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """``down(silu(gate(x)) * up(x))``; x: [T, H], gate/up: [I, H], down: [H, I]."""
    return F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q: [T, nH, d]; k, v: [T, nKV, d] -> [T, nH * d]. GQA: KV head j serves query heads j*g .. j*g+g-1."""
    num_tokens, num_heads, head_dim = q.shape
    group = num_heads // k.shape[1]
    q = q.transpose(0, 1)  # [nH, T, d]
    k = k.transpose(0, 1).repeat_interleave(group, dim=0)  # [nH, T, d]
    v = v.transpose(0, 1).repeat_interleave(group, dim=0)  # [nH, T, d]
    scores = torch.matmul(q, k.transpose(1, 2)) * scale  # [nH, T, T]
    future = torch.ones(num_tokens, num_tokens, dtype=torch.bool).triu(diagonal=1)  # [T, T]
    scores = scores.masked_fill(future, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1)  # [nH, T, T]
    out = torch.matmul(probs, v)  # [nH, T, d]
    return out.transpose(0, 1).reshape(num_tokens, num_heads * head_dim)  # [T, nH*d]


# ---- the model ----------------------------------------------------------------------------------------------


def hf_forward(spec: ModelSpec, get: WeightGetter, input_ids: Sequence[int]) -> torch.Tensor:
    """Float32 logits [T, vocab] of one prompt (causal, positions 0..T-1)."""
    return _forward(spec, get, input_ids, router_hook=None)


def router_gaps(spec: ModelSpec, get: WeightGetter, input_ids: Sequence[int]) -> float:
    """Smallest gap, over every token and MoE layer, between the k-th and (k+1)-th router probability.

    A small gap means a tiny numeric difference could flip an expert choice (design note 7). Returns +inf when
    no routing decision exists (dense models, or top_k == num_experts).
    """
    smallest = math.inf
    top_k = spec.top_k

    def record(layer: int, probs: torch.Tensor) -> None:
        nonlocal smallest
        if top_k >= probs.shape[-1]:
            return
        ranked = probs.sort(dim=-1, descending=True).values  # [T, E]
        gap = (ranked[:, top_k - 1] - ranked[:, top_k]).min().item()
        smallest = min(smallest, gap)

    _forward(spec, get, input_ids, router_hook=record)
    return smallest


@torch.no_grad()
def _forward(
    spec: ModelSpec, get: WeightGetter, input_ids: Sequence[int], router_hook: RouterHook | None
) -> torch.Tensor:
    def w(name: str) -> torch.Tensor:
        return get(name).float()

    ids = torch.tensor(list(input_ids), dtype=torch.long)  # [T]
    embedding = w("model.embed_tokens.weight")  # [V, H]
    hidden = embedding[ids]  # [T, H]
    cos, sin = rope_cos_sin(len(ids), spec.head_dim, spec.rotary_base)  # [T, d] each

    shared_kv: tuple[torch.Tensor, torch.Tensor] | None = None  # raw (k, v) projections of the CLA producer
    for layer in range(spec.num_layers):
        prefix = f"model.layers.{layer}"

        # ---- attention -------------------------------------------------------------------------------------
        normed = rms_norm(hidden, w(f"{prefix}.input_layernorm.weight"), spec.rms_norm_eps)  # [T, H]
        attn_out, raw_kv = _attention(spec, w, layer, normed, cos, sin, shared_kv)
        if spec.is_kv_producer(layer):
            shared_kv = raw_kv
        hidden = hidden + attn_out  # [T, H]

        # ---- MLP / MoE -------------------------------------------------------------------------------------
        normed = rms_norm(hidden, w(f"{prefix}.post_attention_layernorm.weight"), spec.rms_norm_eps)  # [T, H]
        if spec.is_moe:
            mlp_out = _moe(spec, w, layer, normed, router_hook)
        else:
            mlp_out = swiglu(
                normed,
                w(f"{prefix}.mlp.gate_proj.weight"),
                w(f"{prefix}.mlp.up_proj.weight"),
                w(f"{prefix}.mlp.down_proj.weight"),
            )
        hidden = hidden + mlp_out  # [T, H]

    hidden = rms_norm(hidden, w("model.norm.weight"), spec.rms_norm_eps)  # [T, H]
    lm_head = embedding if spec.tie_word_embeddings else w("lm_head.weight")  # [V, H]
    return F.linear(hidden, lm_head)  # [T, V]


def _attention(
    spec: ModelSpec,
    w: WeightGetter,
    layer: int,
    normed: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    shared_kv: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One attention block. Returns (output [T, H], the raw (k, v) projections it attended over)."""
    prefix = f"model.layers.{layer}.self_attn"
    num_tokens, d = normed.shape[0], spec.head_dim

    q = F.linear(normed, w(f"{prefix}.q_proj.weight")).view(num_tokens, spec.num_heads, d)  # [T, nH, d]
    if spec.is_kv_producer(layer):
        k_raw = F.linear(normed, w(f"{prefix}.k_proj.weight"))  # [T, nKV*d]
        v_raw = F.linear(normed, w(f"{prefix}.v_proj.weight"))  # [T, nKV*d]
    else:
        # CLA consumer: the producer's raw projections of the producer's own input (no k_proj/v_proj here).
        assert shared_kv is not None, f"layer {layer}: CLA consumer before any producer"
        k_raw, v_raw = shared_kv
    k = k_raw.view(num_tokens, spec.num_kv_heads, d)  # [T, nKV, d]
    v = v_raw.view(num_tokens, spec.num_kv_heads, d)  # [T, nKV, d]

    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if spec.use_qk_norm:  # per head, after RoPE, with this layer's own weights (also in a CLA consumer)
        q = rms_norm(q, w(f"{prefix}.query_layernorm.weight"), spec.rms_norm_eps)
        k = rms_norm(k, w(f"{prefix}.key_layernorm.weight"), spec.rms_norm_eps)

    context = causal_attention(q, k, v, scale=d**-0.5)  # [T, nH*d]
    return F.linear(context, w(f"{prefix}.o_proj.weight")), (k_raw, v_raw)  # [T, H]


def _moe(
    spec: ModelSpec, w: WeightGetter, layer: int, normed: torch.Tensor, router_hook: RouterHook | None
) -> torch.Tensor:
    """Shared expert (always on, ungated) + the top-k routed experts; no capacity limit."""
    prefix = f"model.layers.{layer}.mlp"

    router_logits = F.linear(normed.float(), w(f"{prefix}.gate.wg.weight"))  # [T, E]
    probs = torch.softmax(router_logits, dim=-1, dtype=torch.float32)  # [T, E]
    if router_hook is not None:
        router_hook(layer, probs)
    weights, experts = torch.topk(probs, spec.top_k, dim=-1)  # [T, k] each
    if spec.normalization_mode == NormalizationMode.RENORMALIZE:
        weights = weights / weights.sum(dim=-1, keepdim=True)

    out = torch.zeros_like(normed)  # [T, H]
    if spec.shared_intermediate_size > 0:
        out = out + swiglu(
            normed,
            w(f"{prefix}.shared_mlp.gate_proj.weight"),
            w(f"{prefix}.shared_mlp.up_proj.weight"),
            w(f"{prefix}.shared_mlp.down_proj.weight"),
        )
    for expert in experts.unique().tolist():  # only the experts some token chose
        tokens, slots = torch.nonzero(experts == expert, as_tuple=True)  # [n], [n]
        expert_out = swiglu(
            normed[tokens],
            w(f"{prefix}.experts.{expert}.gate_proj.weight"),
            w(f"{prefix}.experts.{expert}.up_proj.weight"),
            w(f"{prefix}.experts.{expert}.down_proj.weight"),
        )  # [n, H]
        out = out.index_add(0, tokens, expert_out * weights[tokens, slots, None])
    return out  # [T, H]
