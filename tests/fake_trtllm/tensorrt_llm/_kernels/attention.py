"""The GPT-attention plugin (cpp/tensorrt_llm/plugins/gptAttentionPlugin, kernels/unfusedAttentionKernels) for
what the Hunyuan engine uses: packed tokens (``remove_input_padding``), context and generation requests in one
batch, paged KV cache, GQA, FP8 KV cache, no rotary inside the plugin.

Contract (checked; a violation raises):

- ``qkv`` [T, (nh + 2 nkv) d] per rank, T = the sum of this step's tokens; requests are ordered context first
  (``host_request_types`` 0), then generation (1) — the plugin splits the batch at the first generation request;
- a context request brings ``host_context_lengths[b]`` tokens starting at position 0 (no chunked context); a
  generation request brings one token; ``sequence_length[b]`` is the length after this step and
  ``host_past_key_value_lengths[b]`` the length before it;
- paged KV cache: the layer's pool and its index inside the pool come from
  ``host_kv_cache_pool_mapping[layer_idx]``; ``kv_cache_block_offsets[pool, b, 0, i]`` is the pool block that holds
  tokens ``[i * tokens_per_block, (i + 1) * tokens_per_block)`` of request b (the stand-in's block layout is
  [block, layer-in-pool, K|V, token-in-block, kv head, d]; the real pool interleaves differently, the indirection is
  the same); the current tokens' K and V are written on every call, then attention reads keys 0..p for the token at
  position p (paged context FMHA reads the cache too);
- FP8 KV cache (``kv_cache_quant_mode.has_fp8_kv_cache()``): K and V are stored as e4m3 of
  ``x * kv_orig_quant_scale`` (saturating) and read back times ``kv_quant_orig_scale``;
- ``position_embedding_type`` learned_absolute with ``rotary_embedding_dim`` 0: the plugin applies no rotary
  (a RoPE type would need ``rotary_inv_freq``/``rotary_cos_sin``, which the stand-in does not model);
- scores scaled by ``1 / (sqrt(d) * q_scaling)``, softmax and the weighted sum in float32; output in qkv's dtype.
"""

from __future__ import annotations

import math

import torch

from tensorrt_llm._kernels import resolve_pool
from tensorrt_llm.functional import AttentionMaskType, PositionEmbeddingType, wrap
from tensorrt_llm.network import default_net

CONTEXT, GENERATION = 0, 1
E4M3_MAX = 448.0


def run_gpt_attention(*, qkv, layer_idx, num_heads, num_kv_heads, hidden_size_per_head, q_scaling=1.0,
                      position_embedding_type=PositionEmbeddingType.learned_absolute, rotary_embedding_dim=0,
                      mask_type=AttentionMaskType.causal, use_cache=True, kv_cache_quant_mode=None,
                      kv_orig_quant_scale=None, kv_quant_orig_scale=None, attention_output_orig_quant_scale=None,
                      past_key_value=None, **inputs):
    if position_embedding_type != PositionEmbeddingType.learned_absolute or rotary_embedding_dim:
        raise NotImplementedError("stand-in GPT attention: rotary inside the plugin is not modelled")
    if mask_type != AttentionMaskType.causal or not use_cache or inputs.get("kv_cache_block_offsets") is None:
        raise NotImplementedError("stand-in GPT attention: causal, paged KV cache only")
    if attention_output_orig_quant_scale is not None:
        raise NotImplementedError("stand-in GPT attention: FP8 attention output is not modelled")
    d = hidden_size_per_head
    value = qkv.value
    if value.dim() != 2 or value.shape[1] != (num_heads + 2 * num_kv_heads) * d:
        raise ValueError(f"gpt_attention layer {layer_idx}: qkv {list(value.shape)} is not [T, "
                         f"({num_heads} + 2 x {num_kv_heads}) x {d}]")
    spans = _token_spans(inputs, value.shape[0])
    q, k, v = value.split([num_heads * d, num_kv_heads * d, num_kv_heads * d], dim=1)
    fp8 = kv_cache_quant_mode is not None and kv_cache_quant_mode.has_fp8_kv_cache()
    if fp8 and (kv_orig_quant_scale is None or kv_quant_orig_scale is None):
        raise ValueError("gpt_attention: an FP8 KV cache needs kv_orig_quant_scale and kv_quant_orig_scale")
    cache = _LayerCache(inputs, layer_idx, num_kv_heads, d, (kv_orig_quant_scale.value, kv_quant_orig_scale.value)
                        if fp8 else None)
    out = torch.empty(value.shape[0], num_heads * d, dtype=value.dtype)
    scale = 1.0 / (math.sqrt(d) * q_scaling)
    for b, (start, count, past) in enumerate(spans):
        cache.write(b, past, k[start:start + count].reshape(count, num_kv_heads, d),
                    v[start:start + count].reshape(count, num_kv_heads, d))
        keys, values = cache.read(b, past + count)  # [S, nkv, d] float32
        for i in range(count):  # one query token at a time: independent of the batch's composition
            query = q[start + i:start + i + 1].reshape(1, num_heads, d).float()
            out[start + i:start + i + 1] = _attend(query, keys, values, past + i, scale).to(value.dtype)
    return wrap(out), None


def _token_spans(inputs, num_tokens: int) -> list[tuple[int, int, int]]:
    """(first packed token, token count, past length) per request, checking the batch's bookkeeping."""
    types = inputs["host_request_types"].value.tolist()
    if types != sorted(types) or not set(types) <= {CONTEXT, GENERATION}:
        raise ValueError(f"host_request_types {types}: context requests (0) must come before generation ones (1)")
    context_lengths = inputs["host_context_lengths"].value.tolist()
    past = inputs["host_past_key_value_lengths"].value.tolist()
    total = inputs["sequence_length"].value.tolist()
    spans, start = [], 0
    for b, kind in enumerate(types):
        count = context_lengths[b] if kind == CONTEXT else 1
        if kind == CONTEXT and past[b] != 0:
            raise ValueError(f"request {b}: a context request with {past[b]} past tokens (chunked context is not "
                             "modelled)")
        if total[b] != past[b] + count:
            raise ValueError(f"request {b}: sequence_length {total[b]} != past {past[b]} + {count} new tokens")
        spans.append((start, count, past[b]))
        start += count
    if start != num_tokens:
        raise ValueError(f"the batch's requests bring {start} tokens, qkv has {num_tokens}")
    return spans


class _LayerCache:
    """One layer's view of the paged KV cache of this rank."""

    def __init__(self, inputs, layer_idx: int, num_kv_heads: int, d: int, fp8_scales) -> None:
        mapping = inputs["host_kv_cache_pool_mapping"].value
        if not 0 <= layer_idx < mapping.shape[0]:
            raise IndexError(f"layer_idx {layer_idx} is outside the stage's {mapping.shape[0]} KV-cache layers")
        self.pool_index, self.layer_in_pool = (int(x) for x in mapping[layer_idx])
        address = inputs["host_kv_cache_pool_pointers"].value[self.pool_index, 0]
        self.pool = resolve_pool(int(address))  # [blocks, layers, 2, tokens_per_block, nkv, d]
        if tuple(self.pool.shape[-2:]) != (num_kv_heads, d):
            raise ValueError(f"KV pool holds [{', '.join(map(str, self.pool.shape[-2:]))}] per token, the layer "
                             f"writes [{num_kv_heads}, {d}]")
        self.offsets = inputs["kv_cache_block_offsets"].value[self.pool_index]  # [B, 2, max_blocks]
        self.block = default_net().plugin_config.tokens_per_block
        if self.pool.shape[3] != self.block:
            raise ValueError(f"KV pool blocks hold {self.pool.shape[3]} tokens, tokens_per_block is {self.block}")
        self.fp8_scales = fp8_scales

    def _slots(self, b: int, positions: range) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = self.offsets[b, 0, [p // self.block for p in positions]].long()
        return blocks, torch.tensor([p % self.block for p in positions])

    def write(self, b: int, past: int, k: torch.Tensor, v: torch.Tensor) -> None:
        blocks, within = self._slots(b, range(past, past + k.shape[0]))
        for kind, x in ((0, k), (1, v)):
            if self.fp8_scales is not None:
                x = (x.float() * self.fp8_scales[0]).clamp(-E4M3_MAX, E4M3_MAX)
            self.pool[blocks, self.layer_in_pool, kind, within] = x.to(self.pool.dtype)

    def read(self, b: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        blocks, within = self._slots(b, range(length))
        keys, values = (self.pool[blocks, self.layer_in_pool, kind, within].float() for kind in (0, 1))
        if self.fp8_scales is not None:
            keys, values = keys * self.fp8_scales[1], values * self.fp8_scales[1]
        return keys, values


def _attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, past: int, scale: float) -> torch.Tensor:
    """q [n, nh, d] at positions past..past+n-1 over keys/values [S, nkv, d] (causal, GQA) -> [n, nh d]."""
    n, nh, d = q.shape
    group = nh // keys.shape[1]
    keys, values = keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)
    scores = torch.einsum("thd,shd->hts", q, keys) * scale
    allowed = torch.arange(keys.shape[0])[None, :] <= torch.arange(past, past + n)[:, None]
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
    return torch.einsum("hts,shd->thd", probs, values).reshape(n, nh * d)
