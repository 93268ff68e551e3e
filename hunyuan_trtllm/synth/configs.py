"""config.json literals for synthetic checkpoints, in each Tencent dialect, and the size presets.

- ``a13b``: the key set and values of Hunyuan-A13B-Instruct's ``models/config.json`` (per-layer lists
  ``moe_topk`` / ``num_shared_expert`` / ``moe_intermediate_size``, ``attention_head_dim``, the inert ViT keys);
- ``large``: the key set of the large-tiny golden fixture (Tencent's Large configuration class: scalar
  ``moe_topk`` / ``num_shared_expert``, ``use_cla`` with ``cla_share_factor`` 2, no head-dim key);
- ``dense``: the key set of the dense-tiny golden fixture (``hunyuan_v1_dense`` with ``head_dim`` and
  ``attention_head_dim``);
- ``hy3``: the 40 keys of tencent/Hy3's config.json, in its order (shared/reference/hy3.md §a.1, the hy3-tiny
  golden fixture), with one MTP layer. A one-layer stack is a MoE layer (``first_k_dense_replace`` 0), the kind
  that makes up the model; deeper stacks keep the released dense layer 0.

Special-token ids follow the tokenizer: the 210 specials come right after the BPE ranks (hy_tokenizer.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hunyuan_trtllm.checkpoints.hy_tokenizer import special_token_id


@dataclass(frozen=True)
class Dims:
    """The sizes of a preset (``experts`` 0 for dense models)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    experts: int
    top_k: int
    intermediate: int  # dense MLP width, or the routed and shared expert width of MoE models
    vocab: int
    tie: bool
    dense_intermediate: int = 0  # Hy3: the dense layer 0's MLP width


@dataclass(frozen=True)
class SpecialIds:
    eos: int  # <|eos|>
    pad: int  # <|pad|>
    sep: int  # <|extra_0|>
    eod: int  # <|extra_5|>

    @classmethod
    def of(cls, num_ranks: int) -> SpecialIds:
        """The ids in a vocabulary with ``num_ranks`` BPE ranks (127957 in the real one)."""
        return cls(*(special_token_id(t, num_ranks) for t in ("<|eos|>", "<|pad|>", "<|extra_0|>", "<|extra_5|>")))


PRESET_DIMS: dict[tuple[str, str], Dims] = {
    # tiny: tp in {1,2,4}, moe_ep in {1,2,4} and pp in {1,2} all divide; 2 KV heads are duplicated at tp=4; the
    # vocabulary (793 BPE ranks + 210 specials) needs padding at tp=2 and tp=4.
    ("a13b", "tiny"): Dims(128, 4, 8, 2, 16, 8, 2, 64, 1003, True),
    ("large", "tiny"): Dims(128, 4, 8, 2, 16, 4, 1, 64, 1003, False),
    ("dense", "tiny"): Dims(128, 2, 8, 4, 16, 0, 0, 128, 1003, True),
    # full-width: the released widths (dense: the 7B shape) with few layers, for benchmarks.
    ("a13b", "full-width"): Dims(4096, 2, 32, 8, 128, 64, 8, 3072, 128167, True),
    ("large", "full-width"): Dims(6400, 2, 80, 8, 80, 16, 1, 18304, 128167, False),
    ("dense", "full-width"): Dims(4096, 2, 32, 8, 128, 0, 0, 14336, 128167, True),
    # hy3 tiny: the hy3-tiny golden fixture's shape; full-width: tencent/Hy3's widths (a MoE layer is ~3.6 GB bf16).
    ("hy3", "tiny"): Dims(64, 4, 8, 2, 16, 8, 2, 32, 1003, False, 96),
    ("hy3", "full-width"): Dims(4096, 2, 64, 8, 128, 192, 8, 1536, 120832, False, 13312),
}


def _rope_scaling() -> dict[str, Any]:
    return {"alpha": 1000.0, "beta_fast": 32, "beta_slow": 1, "factor": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0,
            "type": "dynamic"}


def a13b_config(d: Dims, layers: int, ids: SpecialIds, dtype: str) -> dict[str, Any]:
    """Hunyuan-A13B's config.json with the sizes of ``d`` (equal to the real file for the real sizes)."""
    return {
        "add_classification_head": False, "anyres_pooling_size": 2, "anyres_vit_max_image_size": None,
        "anyres_vit_two_views": False, "architectures": ["HunYuanMoEV1ForCausalLM"], "attention_bias": False,
        "attention_dropout": 0.1, "attention_head_dim": d.head_dim,
        "auto_map": {"AutoConfig": "configuration_hunyuan.HunYuanConfig", "AutoModel": "hunyuan.HunYuanModel",
                     "AutoModelForCausalLM": "hunyuan.HunYuanMoEV1ForCausalLM"},
        "bos_token_id": 1, "cla_share_factor": 2, "class_num": 0, "dense_list": [d.hidden, 0],
        "eod_token_id": ids.eod, "eos_token_id": ids.eos, "group_limited_greedy": False, "hidden_act": "silu",
        "hidden_size": d.hidden, "im_end_id": 6, "im_newline_id": 12, "im_start_id": 5, "image_token_id": 9,
        "initializer_range": 0.02, "intermediate_size": d.intermediate, "kv_lora_rank": None, "mask_init_id": 13,
        "max_position_embeddings": 32768, "mlp_bias": False, "model_type": "hunyuan", "moe_drop_tokens": False,
        "moe_intermediate_size": [d.intermediate] * layers, "moe_layer_num_skipped": 0,
        "moe_random_routing_dropped_token": False, "moe_topk": [d.top_k] * layers, "n_group": None,
        "norm_topk_prob": True, "norm_type": "rms", "num_attention_heads": d.heads, "num_experts": d.experts,
        "num_hidden_layers": layers, "num_key_value_heads": d.kv_heads, "num_media_embeds": 257,
        "num_shared_expert": [1] * layers, "org_vocab_size": d.vocab, "pad_id": ids.pad, "pad_token_id": ids.pad,
        "pool_type": "last", "position_embedding_xdrope": False, "pretraining_tp": 1, "q_lora_rank": None,
        "qk_nope_head_dim": None, "qk_rope_head_dim": None, "rms_norm_eps": 1e-05, "rope_scaling": _rope_scaling(),
        "rope_theta": 10000.0, "routed_scaling_factor": 1.0, "sep_token_id": ids.sep, "skip_cls_token": False,
        "text_end_id": 8, "text_start_id": 7, "tie_word_embeddings": d.tie, "topk_group": None,
        "torch_dtype": dtype, "transformers_version": "4.41.2", "use_cache": True, "use_cla": False,
        "use_mixed_mlp_moe": True, "use_mla": False, "use_qk_norm": True, "use_rotary_pos_emb": True,
        "v_head_dim": None, "video_end_id": 11, "video_start_id": 10, "vit_add_patchemb_bias": False,
        "vit_input_resolution": 224, "vit_mapping_type": "resampler", "vit_norm_type": "fused", "vit_patch": 1,
        "vit_path": None, "vit_remove_prenorm": False, "vit_token": 64, "vit_type": None,
        "vit_used_rms_norm": False, "vocab_size": d.vocab, "xdrope_section": None,
    }


def large_config(d: Dims, layers: int, ids: SpecialIds, dtype: str) -> dict[str, Any]:
    """A Hunyuan-Large config.json (the keys Tencent's Large configuration class reads; head dim = hidden/heads)."""
    if d.hidden != d.heads * d.head_dim:
        raise ValueError("Hunyuan-Large configs have no head-dim key: hidden must equal heads * head_dim")
    return {
        "architectures": ["HunYuanForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_hunyuan.HunYuanConfig", "AutoModel": "modeling_hunyuan.HunYuanModel",
                     "AutoModelForCausalLM": "modeling_hunyuan.HunYuanForCausalLM"},
        "bos_token_id": 1, "capacity_factor": 1.0, "cla_share_factor": 2, "eos_token_id": ids.eos,
        "hidden_act": "silu", "hidden_size": d.hidden, "initializer_range": 0.02, "intermediate_size": d.intermediate,
        "max_position_embeddings": 131072, "model_type": "hunyuan", "moe_drop_tokens": False,
        "moe_random_routing_dropped_token": False, "moe_topk": d.top_k, "num_attention_heads": d.heads,
        "num_experts": d.experts, "num_hidden_layers": layers, "num_key_value_heads": d.kv_heads,
        "num_shared_expert": 1, "pad_token_id": ids.pad, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
        "rope_scaling": {"alpha": 1000.0, "factor": 1.0, "type": "dynamic"}, "rope_theta": 10000.0,
        "tie_word_embeddings": d.tie, "torch_dtype": dtype, "transformers_version": "4.41.2", "use_cache": True,
        "use_cla": True, "use_mixed_mlp_moe": True, "use_qk_norm": True, "vocab_size": d.vocab,
    }


def dense_config(d: Dims, layers: int, ids: SpecialIds, dtype: str) -> dict[str, Any]:
    """A Hunyuan dense (``hunyuan_v1_dense``) config.json."""
    return {
        "add_classification_head": False, "architectures": ["HunYuanDenseV1ForCausalLM"], "attention_bias": False,
        "attention_dropout": 0.1, "attention_head_dim": d.head_dim, "bos_token_id": 1, "cla_share_factor": 2,
        "class_num": 0, "dense_list": [d.hidden, 0], "eod_token_id": ids.eod, "eos_token_id": ids.eos,
        "head_dim": d.head_dim, "hidden_act": "silu", "hidden_size": d.hidden, "initializer_range": 0.02,
        "intermediate_size": d.intermediate, "max_position_embeddings": 32768, "mlp_bias": False,
        "model_type": "hunyuan_v1_dense", "norm_type": "rms", "num_attention_heads": d.heads,
        "num_hidden_layers": layers, "num_key_value_heads": d.kv_heads, "org_vocab_size": d.vocab,
        "pad_id": ids.pad, "pad_token_id": ids.pad, "pool_type": "last", "pretraining_tp": 1,
        "rms_norm_eps": 1e-05, "rope_scaling": _rope_scaling(), "rope_theta": 10000.0, "sep_token_id": ids.sep,
        "tie_word_embeddings": d.tie, "torch_dtype": dtype, "transformers_version": "5.23.0", "use_cache": True,
        "use_cla": False, "use_qk_norm": True, "use_rotary_pos_emb": True, "vocab_size": d.vocab,
    }


def hy3_config(d: Dims, layers: int, ids: SpecialIds, dtype: str) -> dict[str, Any]:
    """tencent/Hy3's config.json with the sizes of ``d``; the special ids keep their offsets from bos (bos 120000 in
    the real vocabulary, 12 below the end of small ones); ``ids`` (the hy.tiktoken ids) do not apply."""
    real = d.vocab > 100000
    bos = d.vocab - 832 if real else d.vocab - 12
    eos, eod = (bos + 25, bos + 26) if real else (bos + 5, bos + 6)
    return {
        "architectures": ["HYV3ForCausalLM"], "bos_token_id": bos, "dtype": dtype,
        "enable_attention_fp32_softmax": False, "enable_lm_head_fp32": True, "enable_moe_fp32_combine": False,
        "eod_token_id": eod, "eos_token_id": eos,
        "expert_hidden_dim": d.intermediate, "first_k_dense_replace": 1 if layers > 1 else 0,
        "head_dim": d.head_dim, "hidden_act": "silu", "hidden_size": d.hidden, "initializer_range": 0.006,
        "intermediate_size": d.dense_intermediate, "max_position_embeddings": 262144 if real else 4096,
        "model_type": "hy_v3", "moe_intermediate_size": d.intermediate, "moe_router_enable_expert_bias": True,
        "moe_router_use_sigmoid": True, "num_attention_heads": d.heads, "num_experts": d.experts,
        "num_experts_per_tok": d.top_k, "num_hidden_layers": layers, "num_key_value_heads": d.kv_heads,
        "num_nextn_predict_layers": 1, "num_shared_experts": 1, "output_router_logits": True, "pad_token_id": bos + 2,
        "qk_norm": True, "rms_norm_eps": 1e-05, "rope_parameters": {"rope_theta": 11158840.0, "rope_type": "default"},
        "route_norm": True, "router_scaling_factor": 2.826, "sep_token_id": bos + 7, "tie_word_embeddings": d.tie,
        "transformers_version": "5.6.0", "use_cache": True, "use_grouped_mm": False, "vocab_size": d.vocab,
    }


BUILDERS: dict[str, Callable[[Dims, int, SpecialIds, str], dict[str, Any]]] = {
    "a13b": a13b_config,
    "large": large_config,
    "dense": dense_config,
    "hy3": hy3_config,
}
