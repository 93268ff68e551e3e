"""The TensorRT-LLM checkpoint's config.json (``PretrainedConfig`` fields, TensorRT-LLM 1.2.x).

Hunyuan-specific facts are written explicitly rather than left to defaults:
- RoPE: NTK-alpha folded into ``rotary_base = theta * alpha ** (d / (d - 2))``, ``rotary_scaling`` null
  (TensorRT-LLM's own "dynamic" scaling is length-dependent NTK and would be wrong);
- ``qk_layernorm`` true, with ``hunyuan.qk_norm_after_rope`` (TensorRT-LLM's stock layer norms before RoPE);
- ``moe.normalization_mode``: RENORMALIZE (1) for top-k > 1, NONE (0) for Hunyuan-Large's top-1;
- CLA: ``num_kv_heads_per_layer`` (0 for layers that own no KV cache, as DeciLM marks them) and
  ``cla_kv_source_layer`` (the global layer whose KV cache each layer reads).
- routing, exactly (``hunyuan.routing``; ``moe`` holds only TensorRT-LLM's ``MoeConfig`` fields): ``scoring``
  softmax (older Hunyuan) or sigmoid (Hy3); ``expert_bias`` ``selection_only`` (Hy3: ``layers.{l}.mlp.expert_bias``
  is added to the scores for the top-k choice only, the weights are the unbiased scores) or ``none``;
  ``renormalize`` (weights / (sum + ``renormalize_epsilon``)); and ``routed_scaling_factor`` (weights x factor
  after renormalising; Hy3: 2.826). No stock TensorRT-LLM normalization mode computes sigmoid scores, so
  ``moe.normalization_mode`` (1, RENORMALIZE, for Hy3) alone does not describe Hy3;
- per-layer MLP kind ``hunyuan.mlp_layer_types`` (``dense`` layers use ``hunyuan.dense_intermediate_size``),
  QK-norm position ``hunyuan.qk_norm_position`` (Hy3: ``before_rope``), ``hunyuan.lm_head_dtype`` and, when an MTP
  layer exists, ``hunyuan.mtp`` (whether the draft part was written, and where).
"""

from __future__ import annotations

from typing import Any

import torch

from hunyuan_trtllm import __version__
from hunyuan_trtllm.checkpoints.mapping import Mapping
from hunyuan_trtllm.checkpoints.spec import ModelSpec

DTYPE_STRINGS = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


MTP_DIR = "mtp"  # the MTP draft part's folder inside a converted checkpoint (convert --mtp keep)


def routing(spec: ModelSpec) -> dict[str, Any]:
    """How the router's output becomes expert choices and weights (see the module docstring)."""
    return {
        "scoring": spec.router_scoring,
        "expert_bias": "selection_only" if spec.expert_bias else "none",
        "renormalize": spec.normalization_mode == 1,
        "renormalize_epsilon": 1e-20 if spec.is_hy3 else 0.0,
        "routed_scaling_factor": spec.routed_scaling_factor,
    }


def trtllm_config(spec: ModelSpec, mapping: Mapping, dtype: torch.dtype,
                  quantization: dict[str, Any] | None = None, mtp_kept: bool = False,
                  parallel_embedding: bool = False) -> dict[str, Any]:
    """Build config.json for a converted checkpoint (``quantization``: see :mod:`hunyuan_trtllm.checkpoints.fp8`;
    ``parallel_embedding``: the embedding's rows split over the tp ranks, ``embedding_sharding_dim`` 0)."""
    layers = range(spec.num_layers)
    config: dict[str, Any] = {
        "architecture": spec.architecture,
        "dtype": DTYPE_STRINGS[dtype],
        "logits_dtype": "float32",
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_size": spec.head_dim,
        "intermediate_size": spec.expert_intermediate_size if spec.is_moe else spec.intermediate_size,
        "max_position_embeddings": spec.max_position_embeddings,
        "hidden_act": "swiglu" if spec.is_moe else "silu",
        "norm_epsilon": spec.rms_norm_eps,
        "position_embedding_type": "rope_gpt_neox",
        "rotary_embedding_dim": spec.head_dim,
        "rotary_base": spec.rotary_base,
        "rotary_scaling": None,
        "mapping": mapping.to_dict(),
        "quantization": quantization or {"quant_algo": None, "kv_cache_quant_algo": None, "exclude_modules": None},
        "use_parallel_embedding": parallel_embedding,
        "embedding_sharding_dim": 0,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "qk_layernorm": spec.use_qk_norm,
        "attn_bias": False,
        "mlp_bias": False,
        "moe": {
            "num_experts": spec.num_experts,
            "top_k": spec.top_k,
            "shared_expert_intermediate_size": spec.shared_intermediate_size,
            "normalization_mode": int(spec.normalization_mode) if spec.is_moe else 0,
            "sparse_mixer_epsilon": 0.01,
            "tp_mode": 0,
            "device_limited_n_group": 0,
            "device_limited_topk_group": 0,
            "device_limited_routed_scaling_factor": 1.0,
        },
        "use_cla": spec.uses_cla,
        "cla_share_factor": spec.cla_share_factor,
        "num_kv_heads_per_layer": [spec.num_kv_heads if spec.is_kv_producer(i) else 0 for i in layers],
        "cla_kv_source_layer": [spec.kv_source_layer(i) for i in layers],
        "hunyuan": {
            "rope_theta": spec.rope_theta,
            "rope_alpha": spec.rope_alpha,
            "routing": routing(spec) if spec.is_moe else None,
            "qk_norm_after_rope": not spec.qk_norm_before_rope,
            "qk_norm_position": "before_rope" if spec.qk_norm_before_rope else "after_rope",
            "mlp_layer_types": ["moe" if spec.is_moe_layer(i) else "dense" for i in layers],
            "dense_intermediate_size": spec.intermediate_size,
            "lm_head_dtype": "float32" if spec.lm_head_fp32 else DTYPE_STRINGS[dtype],
            "cla_query_norm_folded": spec.uses_cla and spec.use_qk_norm,
            "eos_token_ids": list(spec.eos_token_ids),
            "pad_token_id": spec.pad_token_id,
            "converter": f"hunyuan-trtllm {__version__}",
        },
    }
    if spec.num_mtp_layers:
        config["hunyuan"]["mtp"] = {"num_layers": spec.num_mtp_layers, "kept": mtp_kept,
                                    "path": MTP_DIR if mtp_kept else None}
    return config
