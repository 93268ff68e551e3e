"""A plain float32 forward pass of a Hunyuan model, written from the :class:`ModelSpec`.

Reads Tencent's Hugging Face tensor names through a callable ``get(name) -> Tensor`` (so the weights may come
from a safetensors file, a dict, or a converted checkpoint mapped back to these names) and computes the logits of
one prompt: batch 1, causal, positions 0..T-1, no KV cache, everything in float32 (weights are upcast). The
computation runs on the device of the tensors ``get`` returns.

Semantics (those of Tencent's published code with token dropping disabled, see the golden fixtures' READMEs and
/work/shared/reference/hunyuan.md sections 2 and 3):

- pre-norm decoder: ``x + attn(input_layernorm(x))`` then ``x + mlp(post_attention_layernorm(x))``, final
  ``model.norm``, lm_head (tied to the embedding when ``tie_word_embeddings``);
- RMSNorm in float32, weight applied after normalising;
- RoPE with rotate-half (NeoX) pairing and the static NTK-alpha base ``spec.rotary_base``;
- per-head QK RMSNorm **after** RoPE (only when ``use_qk_norm``); GQA by repeat-interleave; scale head_dim**-0.5;
- MoE: router softmax in float32 over all experts, top-k, renormalised iff top_k > 1 (Hunyuan-Large's top-1 keeps
  the softmax probability), no token dropping; shared expert always on and ungated; SwiGLU experts;
- Hy3 (``spec.is_hy3``, transformers' ``hy_v3``): QK-norm (``q_norm``/``k_norm``) *before* RoPE; layers below
  ``first_dense_layers`` have a dense MLP; the router ``mlp.router.gate`` gives sigmoid scores, the top-k is taken
  of ``scores + mlp.expert_bias`` (selection only), the weights are the unbiased scores renormalised
  (``/ (sum + 1e-20)``) and times ``routed_scaling_factor``;
- CLA (Hunyuan-Large): a consumer layer has no k_proj/v_proj; it reuses the *raw* K/V projections of its
  producer layer (computed from the producer's own input_layernorm output, before RoPE and norm), then applies
  RoPE and its own ``key_layernorm`` to that K; V is used unchanged.

The forward is built from stages usable one layer at a time (layer-wise calibration runs them so):
:func:`embed`, :func:`decoder_layer` per layer (a :class:`ClaState` carries the producer's raw K/V to CLA
consumers), :func:`final_logits`. Two hooks observe or alter it:

- ``linear(hf_weight_name, x, weight) -> x @ weight.T`` is called for every projection that FP8 quantizes:
  q/k/v/o, the shared expert's, every routed expert's and the dense MLP's gate/up/down, each with its own input
  (an expert sees only the tokens routed to it). The router (``mlp.gate.wg``), the embedding and lm_head are not
  FP8 linears and never go through it.
- ``kv_hook(layer, k, v)`` is called once per KV-producing layer with what its KV cache holds: the post-RoPE,
  post-``key_layernorm`` K and the V, each [T, nKV, d]. CLA consumers own no cache and are not reported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hunyuan_trtllm.checkpoints.spec import ModelSpec, NormalizationMode

WeightGetter = Callable[[str], torch.Tensor]
# Called once per MoE layer with (layer index, the scores top-k selects from [T, E] in float32: softmax
# probabilities, or Hy3's sigmoid scores plus the expert bias).
RouterHook = Callable[[int, torch.Tensor], None]
# (Hugging Face weight name, input x [N, in], weight [out, in] in float32) -> x @ weight.T [N, out].
Linear = Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor]
# (KV-producing layer index, K [T, nKV, d] after RoPE and key norm, V [T, nKV, d]): what its KV cache stores.
KVHook = Callable[[int, torch.Tensor, torch.Tensor], None]


# Per-head QK-norm weight names: older Hunyuan (query_layernorm/key_layernorm), Hy3 (q_norm/k_norm).
_QK_NORMS = {False: ("query_layernorm", "key_layernorm"), True: ("q_norm", "k_norm")}


# ---- building blocks ----------------------------------------------------------------------------------------


def plain_linear(name: str, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The default :data:`Linear`: ``x @ weight.T`` (``name`` is unused)."""
    return F.linear(x, weight)


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


def swiglu(
    x: torch.Tensor,
    gate: torch.Tensor,
    up: torch.Tensor,
    down: torch.Tensor,
    linear: Linear | None = None,
    prefix: str = "",
) -> torch.Tensor:
    """``down(silu(gate(x)) * up(x))``; x: [T, H], gate/up: [I, H], down: [H, I].

    Each projection goes through ``linear`` (default :func:`plain_linear`) as ``{prefix}.gate_proj.weight``,
    ``{prefix}.up_proj.weight`` and ``{prefix}.down_proj.weight``.
    """
    linear = linear or plain_linear
    gated = F.silu(linear(f"{prefix}.gate_proj.weight", x, gate))  # [T, I]
    hidden = gated * linear(f"{prefix}.up_proj.weight", x, up)  # [T, I]
    return linear(f"{prefix}.down_proj.weight", hidden, down)  # [T, H]


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q: [T, nH, d]; k, v: [T, nKV, d] -> [T, nH * d]. GQA: KV head j serves query heads j*g .. j*g+g-1."""
    num_tokens, num_heads, head_dim = q.shape
    group = num_heads // k.shape[1]
    q = q.transpose(0, 1)  # [nH, T, d]
    k = k.transpose(0, 1).repeat_interleave(group, dim=0)  # [nH, T, d]
    v = v.transpose(0, 1).repeat_interleave(group, dim=0)  # [nH, T, d]
    scores = torch.matmul(q, k.transpose(1, 2)) * scale  # [nH, T, T]
    future = torch.ones(num_tokens, num_tokens, dtype=torch.bool, device=q.device).triu(diagonal=1)  # [T, T]
    scores = scores.masked_fill(future, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1)  # [nH, T, T]
    out = torch.matmul(probs, v)  # [nH, T, d]
    return out.transpose(0, 1).reshape(num_tokens, num_heads * head_dim)  # [T, nH*d]


def linear_weight_names(spec: ModelSpec, layer: int) -> list[str]:
    """The weights of ``layer`` that go through the ``linear`` hook (FP8 linears), attention first.

    CLA consumers have no k_proj/v_proj; MoE layers list the shared expert (if any), then every routed expert.
    """
    attn = f"model.layers.{layer}.self_attn"
    projections = ("q", "k", "v", "o") if spec.is_kv_producer(layer) else ("q", "o")
    names = [f"{attn}.{p}_proj.weight" for p in projections]
    mlp = f"model.layers.{layer}.mlp"
    if not spec.is_moe_layer(layer):
        mlps = [mlp]
    else:
        mlps = [f"{mlp}.shared_mlp"] if spec.shared_intermediate_size > 0 else []
        mlps += [f"{mlp}.experts.{e}" for e in range(spec.num_experts)]
    return names + [f"{m}.{p}_proj.weight" for m in mlps for p in ("gate", "up", "down")]


# ---- the model, stage by stage ------------------------------------------------------------------------------


@dataclass
class ClaState:
    """What one sequence carries from layer to layer: the raw (k, v) projections [T, nKV*d] of the latest
    KV-producing layer, which the CLA consumers after it attend over (``None`` before the first layer)."""

    raw_kv: tuple[torch.Tensor, torch.Tensor] | None = None


@torch.no_grad()
def embed(spec: ModelSpec, get: WeightGetter, input_ids: Sequence[int]) -> torch.Tensor:
    """Float32 hidden states [T, H] of ``input_ids``: rows of ``model.embed_tokens.weight``."""
    embedding = get("model.embed_tokens.weight")  # [V, H]
    ids = torch.tensor(list(input_ids), dtype=torch.long, device=embedding.device)  # [T]
    return embedding[ids].float()  # [T, H]


@torch.no_grad()
def decoder_layer(
    spec: ModelSpec,
    get: WeightGetter,
    layer: int,
    hidden: torch.Tensor,
    cla_state: ClaState,
    linear: Linear | None = None,
    kv_hook: KVHook | None = None,
    router_hook: RouterHook | None = None,
) -> torch.Tensor:
    """Decoder layer ``layer`` on hidden [T, H] -> [T, H]; a KV producer stores its raw K/V in ``cla_state``."""
    linear = linear or plain_linear
    prefix = f"model.layers.{layer}"

    def w(name: str) -> torch.Tensor:
        return get(name).float()

    # ---- attention -----------------------------------------------------------------------------------------
    normed = rms_norm(hidden, w(f"{prefix}.input_layernorm.weight"), spec.rms_norm_eps)  # [T, H]
    attn_out, raw_kv = _attention(spec, w, linear, kv_hook, layer, normed, cla_state.raw_kv)
    if spec.is_kv_producer(layer):
        cla_state.raw_kv = raw_kv
    hidden = hidden + attn_out  # [T, H]

    # ---- MLP / MoE -----------------------------------------------------------------------------------------
    normed = rms_norm(hidden, w(f"{prefix}.post_attention_layernorm.weight"), spec.rms_norm_eps)  # [T, H]
    if spec.is_moe_layer(layer):
        mlp_out = _moe(spec, w, linear, layer, normed, router_hook)
    else:
        mlp_out = _mlp(w, linear, f"{prefix}.mlp", normed)
    return hidden + mlp_out  # [T, H]


@torch.no_grad()
def final_logits(spec: ModelSpec, get: WeightGetter, hidden: torch.Tensor) -> torch.Tensor:
    """Float32 logits [T, V] of the last layer's hidden states [T, H]: ``model.norm``, then lm_head."""
    hidden = rms_norm(hidden, get("model.norm.weight").float(), spec.rms_norm_eps)  # [T, H]
    lm_head = get("model.embed_tokens.weight" if spec.tie_word_embeddings else "lm_head.weight")  # [V, H]
    return F.linear(hidden, lm_head.float())  # [T, V]


@torch.no_grad()
def hf_forward(
    spec: ModelSpec,
    get: WeightGetter,
    input_ids: Sequence[int],
    linear: Linear | None = None,
    kv_hook: KVHook | None = None,
    router_hook: RouterHook | None = None,
) -> torch.Tensor:
    """Float32 logits [T, vocab] of one prompt (causal, positions 0..T-1): the stages in order."""
    hidden = embed(spec, get, input_ids)  # [T, H]
    cla_state = ClaState()
    for layer in range(spec.num_layers):
        hidden = decoder_layer(spec, get, layer, hidden, cla_state, linear, kv_hook, router_hook)  # [T, H]
    return final_logits(spec, get, hidden)  # [T, V]


def router_gaps(spec: ModelSpec, get: WeightGetter, input_ids: Sequence[int]) -> float:
    """Smallest gap, over every token and MoE layer, between the k-th and (k+1)-th router selection score.

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

    hf_forward(spec, get, input_ids, router_hook=record)
    return smallest


# ---- blocks -------------------------------------------------------------------------------------------------


def _attention(
    spec: ModelSpec,
    w: WeightGetter,
    linear: Linear,
    kv_hook: KVHook | None,
    layer: int,
    normed: torch.Tensor,
    shared_kv: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One attention block. Returns (output [T, H], the raw (k, v) projections it attended over)."""
    prefix = f"model.layers.{layer}.self_attn"
    num_tokens, d = normed.shape[0], spec.head_dim

    def project(name: str, x: torch.Tensor) -> torch.Tensor:
        return linear(f"{prefix}.{name}.weight", x, w(f"{prefix}.{name}.weight"))

    q = project("q_proj", normed).view(num_tokens, spec.num_heads, d)  # [T, nH, d]
    if spec.is_kv_producer(layer):
        k_raw = project("k_proj", normed)  # [T, nKV*d]
        v_raw = project("v_proj", normed)  # [T, nKV*d]
    else:
        # CLA consumer: the producer's raw projections of the producer's own input (no k_proj/v_proj here).
        assert shared_kv is not None, f"layer {layer}: CLA consumer before any producer"
        k_raw, v_raw = shared_kv
    k = k_raw.view(num_tokens, spec.num_kv_heads, d)  # [T, nKV, d]
    v = v_raw.view(num_tokens, spec.num_kv_heads, d)  # [T, nKV, d]

    cos, sin = (t.to(normed.device) for t in rope_cos_sin(num_tokens, d, spec.rotary_base))  # [T, d] each
    q_norm, k_norm = _QK_NORMS[spec.is_hy3]
    if spec.use_qk_norm and spec.qk_norm_before_rope:  # Hy3: per head, before RoPE
        q = rms_norm(q, w(f"{prefix}.{q_norm}.weight"), spec.rms_norm_eps)
        k = rms_norm(k, w(f"{prefix}.{k_norm}.weight"), spec.rms_norm_eps)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if spec.use_qk_norm and not spec.qk_norm_before_rope:  # per head, after RoPE, this layer's own (also CLA)
        q = rms_norm(q, w(f"{prefix}.{q_norm}.weight"), spec.rms_norm_eps)
        k = rms_norm(k, w(f"{prefix}.{k_norm}.weight"), spec.rms_norm_eps)
    if kv_hook is not None and spec.is_kv_producer(layer):
        kv_hook(layer, k, v)  # what this layer's KV cache holds

    context = causal_attention(q, k, v, scale=d**-0.5)  # [T, nH*d]
    return project("o_proj", context), (k_raw, v_raw)  # [T, H]


def _mlp(w: WeightGetter, linear: Linear, prefix: str, x: torch.Tensor) -> torch.Tensor:
    """The SwiGLU MLP whose weights are ``{prefix}.{gate,up,down}_proj.weight``; x: [N, H] -> [N, H]."""
    gate, up, down = (w(f"{prefix}.{p}_proj.weight") for p in ("gate", "up", "down"))
    return swiglu(x, gate, up, down, linear, prefix)


def _moe(
    spec: ModelSpec,
    w: WeightGetter,
    linear: Linear,
    layer: int,
    normed: torch.Tensor,
    router_hook: RouterHook | None,
) -> torch.Tensor:
    """Shared expert (always on, ungated) + the top-k routed experts; no capacity limit."""
    prefix = f"model.layers.{layer}.mlp"

    if spec.router_scoring == "sigmoid":
        weights, experts = _sigmoid_routing(spec, w, layer, normed, router_hook)
    else:
        router_logits = F.linear(normed.float(), w(f"{prefix}.gate.wg.weight"))  # [T, E]; not an FP8 linear
        probs = torch.softmax(router_logits, dim=-1, dtype=torch.float32)  # [T, E]
        if router_hook is not None:
            router_hook(layer, probs)
        weights, experts = torch.topk(probs, spec.top_k, dim=-1)  # [T, k] each
        if spec.normalization_mode == NormalizationMode.RENORMALIZE:
            weights = weights / weights.sum(dim=-1, keepdim=True)

    out = torch.zeros_like(normed)  # [T, H]
    if spec.shared_intermediate_size > 0:
        out = out + _mlp(w, linear, f"{prefix}.shared_mlp", normed)
    for expert in experts.unique().tolist():  # only the experts some token chose
        tokens, slots = torch.nonzero(experts == expert, as_tuple=True)  # [n], [n]
        expert_out = _mlp(w, linear, f"{prefix}.experts.{expert}", normed[tokens])  # [n, H]
        out = out.index_add(0, tokens, expert_out * weights[tokens, slots, None])
    return out  # [T, H]


def _sigmoid_routing(
    spec: ModelSpec, w: WeightGetter, layer: int, normed: torch.Tensor, router_hook: RouterHook | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hy3: sigmoid scores; top-k of scores + expert bias; the unbiased scores, renormalised, times the factor."""
    prefix = f"model.layers.{layer}.mlp"
    scores = torch.sigmoid(F.linear(normed.float(), w(f"{prefix}.router.gate.weight")))  # [T, E] float32
    choice = scores + w(f"{prefix}.expert_bias") if spec.expert_bias else scores  # selection only
    if router_hook is not None:
        router_hook(layer, choice)
    experts = torch.topk(choice, spec.top_k, dim=-1).indices  # [T, k]
    weights = scores.gather(-1, experts)  # [T, k]
    if spec.route_norm:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * spec.routed_scaling_factor, experts
