"""The shape of every Hugging Face Hunyuan tensor (Tencent's names, separate q/k/v and gate/up), as a table.

The weight plan cuts these shapes into ranks; the converter checks a checkpoint's tensors against them, and the
parameter counts and synthetic checkpoints are computed from them.
"""

from __future__ import annotations

import re

from hunyuan_trtllm.checkpoints.spec import ModelSpec


def hf_shape(spec: ModelSpec, name: str) -> tuple[int, ...]:
    """The shape a Hugging Face (Tencent-named) tensor must have for this spec."""
    h, d, v = spec.hidden_size, spec.head_dim, spec.vocab_size
    q, kv = spec.num_heads * d, spec.num_kv_heads * d
    i_e, i_s, i_d = spec.expert_intermediate_size, spec.shared_intermediate_size, spec.intermediate_size
    shapes = {
        r"model\.embed_tokens\.weight|lm_head\.weight": (v, h),
        r"model\.norm\.weight|.*(input|post_attention)_layernorm\.weight": (h,),
        r".*self_attn\.q_proj\.weight": (q, h),
        r".*self_attn\.[kv]_proj\.weight": (kv, h),
        r".*self_attn\.o_proj\.weight": (h, q),
        r".*self_attn\.(query|key)_layernorm\.weight|.*self_attn\.[qk]_norm\.weight": (d,),
        r".*mlp\.gate\.wg\.weight|.*mlp\.router\.gate\.weight": (spec.num_experts, h),
        r".*mlp\.expert_bias": (spec.num_experts,),
        r".*\.(enorm|hnorm|final_layernorm)\.weight": (h,),
        r".*\.eh_proj\.weight": (h, 2 * h),
        r".*mlp\.experts\.\d+\.(gate|up)_proj\.weight": (i_e, h),
        r".*mlp\.experts\.\d+\.down_proj\.weight": (h, i_e),
        r".*mlp\.shared_mlp\.(gate|up)_proj\.weight": (i_s, h),
        r".*mlp\.shared_mlp\.down_proj\.weight": (h, i_s),
        r".*mlp\.(gate|up)_proj\.weight": (i_d, h),
        r".*mlp\.down_proj\.weight": (h, i_d),
    }
    for pattern, shape in shapes.items():
        if re.fullmatch(pattern, name):
            return shape
    raise KeyError(name)
