"""Hy3 on TensorRT-LLM's PyTorch backend: the pure parts of hunyuan_trtllm.plugins.pytorch (no TensorRT-LLM here).

References: transformers' own ``hy_v3`` router (HYV3TopKRouter), the hy3-tiny golden logits (made by transformers
5.24's HYV3ForCausalLM), and the fixture README's description of transformers' saved layout. The forward pass
below is written here, over the *mapped* names our PyTorch-backend model loads, so a wrong rename, a wrong
w1/w3 order, a dropped bias or the wrong routing changes the logits.
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from hunyuan_trtllm.checkpoints.spec import HYV3, load_config, parse_spec
from hunyuan_trtllm.errors import CheckpointError
from hunyuan_trtllm.plugins.pytorch.hy3_routing import deepseek_v3_grouped, route_sigmoid_bias
from hunyuan_trtllm.plugins.pytorch.hy3_weights import hy3_module_weights, module_weights
from hunyuan_trtllm.serve.trtllm_serve import pytorch_plugin_dir
from tests.conftest import golden, golden_logits

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def hy3():
    path = golden("hy3-tiny")
    return path, parse_spec(load_config(path / "config.json")), load_file(path / "model.safetensors")


def by_expert(experts: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    order = experts.long().argsort(dim=-1)
    return experts.long().gather(-1, order), weights.gather(-1, order)


def test_routing_equals_transformers_hy_v3_router():
    from transformers.models.hy_v3.configuration_hy_v3 import HYV3Config
    from transformers.models.hy_v3.modeling_hy_v3 import HYV3TopKRouter

    config = HYV3Config(hidden_size=64, num_experts=192, num_experts_per_tok=8, router_scaling_factor=2.826)
    router = HYV3TopKRouter(config)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        router.weight.copy_(torch.randn(router.weight.shape, generator=generator) * 0.5)
    bias = torch.randn(192, generator=generator) * 0.05
    hidden = torch.randn(40, 64, generator=generator).to(torch.bfloat16)
    logits, weights, experts = router(hidden, bias)
    ours = route_sigmoid_bias(logits, bias, 8, 2.826)
    ref_e, ref_w = by_expert(experts, weights)
    our_e, our_w = by_expert(*ours)
    assert torch.equal(ref_e, our_e) and torch.allclose(ref_w, our_w, rtol=0, atol=1e-6)
    assert torch.allclose(our_w.sum(-1), torch.full((40,), 2.826), atol=1e-5)  # scaled, not summing to 1
    # TensorRT-LLM's DeepSeek-V3 routing with one group is the same routing (hy3_routing's docstring) ...
    grouped = by_expert(*deepseek_v3_grouped(logits, bias, 8, n_group=1, topk_group=1, scaling=2.826))
    assert torch.equal(grouped[0], our_e) and torch.allclose(grouped[1], our_w, atol=1e-6)
    # ... while real grouping (DeepSeek-V3's 8 groups, 4 kept) would not be
    limited = by_expert(*deepseek_v3_grouped(logits, bias, 8, n_group=8, topk_group=4, scaling=2.826))
    assert not torch.equal(limited[0], our_e)
    # the bias selects but does not weigh; without it the selection differs for these inputs
    unbiased = by_expert(*route_sigmoid_bias(logits, torch.zeros(192), 8, 2.826))
    assert not torch.equal(unbiased[0], our_e)


def rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """NeoX rotary embedding over the last dim of [T, heads, d] at positions 0..T-1."""
    tokens, _, d = x.shape
    inv = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = torch.arange(tokens, dtype=torch.float64)[:, None] * inv[None]
    cos, sin = torch.cat([angles.cos()] * 2, -1)[:, None].float(), torch.cat([angles.sin()] * 2, -1)[:, None].float()
    half = torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1)
    return x * cos + half * sin


def forward_over_module_names(w: dict[str, torch.Tensor], spec, ids: list[int]) -> torch.Tensor:
    """Hy3's forward (hy3.md §c) over the names HYV3ForCausalLM.load_weights reads."""
    eps, d, nq, nkv = spec.rms_norm_eps, spec.head_dim, spec.num_heads, spec.num_kv_heads
    x = w["model.embed_tokens.weight"][ids]
    tokens = len(ids)
    mask = torch.full((tokens, tokens), float("-inf")).triu(1)
    for layer in range(spec.num_layers):
        p = f"model.layers.{layer}."
        h = rms(x, w[p + "input_layernorm.weight"], eps)
        q = (h @ w[p + "self_attn.q_proj.weight"].T).view(tokens, nq, d)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).view(tokens, nkv, d)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).view(tokens, nkv, d)
        q = rope(rms(q, w[p + "self_attn.q_norm.weight"], eps), spec.rope_theta)  # norm first, then RoPE
        k = rope(rms(k, w[p + "self_attn.k_norm.weight"], eps), spec.rope_theta)
        k, v = k.repeat_interleave(nq // nkv, 1), v.repeat_interleave(nq // nkv, 1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(d) + mask
        attn = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(tokens, nq * d)
        x = x + attn @ w[p + "self_attn.o_proj.weight"].T
        h = rms(x, w[p + "post_attention_layernorm.weight"], eps)

        def mlp(prefix: str, gate: str, up: str, down: str, h=h) -> torch.Tensor:
            return (torch.nn.functional.silu(h @ w[prefix + gate].T) * (h @ w[prefix + up].T)) @ w[prefix + down].T

        if not spec.is_moe_layer(layer):
            x = x + mlp(p + "mlp.", "gate_proj.weight", "up_proj.weight", "down_proj.weight")
            continue
        experts, weights = route_sigmoid_bias(h @ w[p + "mlp.gate.weight"].T, w[p + "mlp.gate.e_score_correction_bias"],
                                              spec.top_k, spec.routed_scaling_factor)
        routed = torch.zeros_like(x)
        for t in range(tokens):
            for e, weight in zip(experts[t].tolist(), weights[t], strict=True):
                one = mlp(f"{p}mlp.experts.{e}.", "w1.weight", "w3.weight", "w2.weight", h=h[t:t + 1])
                routed[t] += weight * one[0]
        x = x + routed + mlp(p + "mlp.shared_experts.", "gate_proj.weight", "up_proj.weight", "down_proj.weight")
    return rms(x, w["model.norm.weight"], eps) @ w["lm_head.weight"].T


def test_mapped_weights_reproduce_the_golden_logits(hy3):
    path, spec, tensors = hy3
    mapped = hy3_module_weights(tensors, spec)
    assert not any(name.startswith(f"model.layers.{spec.num_layers}.") for name in mapped)  # MTP dropped
    assert mapped["model.layers.1.mlp.gate.e_score_correction_bias"].dtype == torch.float32
    prompts, golden_out = golden_logits(path)
    for index, ids in enumerate(prompts["prompts"]):
        logits = forward_over_module_names(mapped, spec, ids)
        expected = golden_out[f"prompt{index}"]
        assert (logits - expected).abs().max().item() < TOLERANCE


def test_swapped_expert_halves_or_a_dropped_bias_are_caught(hy3):
    path, spec, tensors = hy3
    mapped = hy3_module_weights(tensors, spec)
    prompts, golden_out = golden_logits(path)
    ids, expected = prompts["prompts"][1], golden_out["prompt1"]
    swapped = dict(mapped)
    for e in range(spec.num_experts):
        a, b = f"model.layers.2.mlp.experts.{e}.w1.weight", f"model.layers.2.mlp.experts.{e}.w3.weight"
        swapped[a], swapped[b] = mapped[b], mapped[a]
    assert (forward_over_module_names(swapped, spec, ids) - expected).abs().max().item() > 1e-3
    unbiased = {**mapped, "model.layers.1.mlp.gate.e_score_correction_bias": torch.zeros(spec.num_experts)}
    assert (forward_over_module_names(unbiased, spec, ids) - expected).abs().max().item() > 1e-3


def test_transformers_saved_layout_maps_to_the_same_tensors(hy3):
    _, spec, tensors = hy3
    outer: dict[str, torch.Tensor] = {}
    width = spec.expert_intermediate_size
    for name, value in tensors.items():  # the fixture README's transformers <- Tencent mapping, inverted by hand
        if ".mlp.experts." in name:
            continue
        name = name.replace("mlp.router.gate.", "mlp.gate.").replace("mlp.expert_bias", "mlp.e_score_correction_bias")
        outer[name.replace("mlp.shared_mlp.", "mlp.shared_experts.")] = value
    for layer in range(1, spec.num_layers + 1):
        p = f"model.layers.{layer}.mlp.experts."
        outer[p + "gate_up_proj"] = torch.stack([torch.cat([tensors[f"{p}{e}.gate_proj.weight"],
                                                            tensors[f"{p}{e}.up_proj.weight"]]) for e in range(8)])
        outer[p + "down_proj"] = torch.stack([tensors[f"{p}{e}.down_proj.weight"] for e in range(8)])
    assert outer["model.layers.1.mlp.experts.gate_up_proj"].shape == (8, 2 * width, spec.hidden_size)
    ours, theirs = hy3_module_weights(tensors, spec), hy3_module_weights(outer, spec)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    bad = {**outer, "model.layers.1.mlp.experts.down_proj": outer["model.layers.1.mlp.experts.down_proj"][:4]}
    with pytest.raises(CheckpointError, match="down_proj has shape"):
        hy3_module_weights(bad, spec)


def test_fp8_release_names_and_scales(hy3):
    _, spec, _ = hy3
    weights = {"model.layers.1.mlp.experts.3.up_proj.weight": torch.zeros(32, 64, dtype=torch.float8_e4m3fn),
               "model.layers.1.mlp.experts.3.up_proj.weight_scale": torch.tensor(0.5, dtype=torch.bfloat16),
               "model.layers.1.mlp.experts.3.up_proj.input_scale": torch.tensor([0.25]),
               "model.layers.0.self_attn.q_proj.weight_scale": torch.tensor(0.125, dtype=torch.bfloat16)}
    mapped = hy3_module_weights(weights, spec)
    scale = mapped["model.layers.1.mlp.experts.3.w3.weight_scale"]
    assert scale.dtype == torch.float32 and scale.shape == (1,) and scale.item() == 0.5
    assert mapped["model.layers.1.mlp.experts.3.w3.weight"].dtype == torch.float8_e4m3fn
    assert module_weights(mapped, "model.layers.1.mlp.experts.3.w3").keys() == {"weight", "weight_scale",
                                                                                "input_scale"}


def test_custom_module_dir_and_config_class(hy3):
    path, _, _ = hy3
    directory = pytorch_plugin_dir(HYV3)
    assert directory.name == "hy3_trtllm" and (directory / "__init__.py").is_file()
    from hunyuan_trtllm.plugins.pytorch.hy3_config import HYV3TrtllmConfig

    config = HYV3TrtllmConfig(**load_config(path / "config.json"))
    assert config.rope_theta == 11158840.0 and config.head_dim == 16
    # transformers >= 5 aliases rope_scaling to rope_parameters; older ones (TensorRT-LLM 1.2's) keep None
    assert config.rope_scaling is None or config.rope_scaling.get("rope_type") == "default"


def test_serving_paths_import_the_hy3_module(hy3, tmp_path):
    """trtllm-serve's command line and the Triton llmapi flavor both name the Hy3 custom-module dir (alone in its
    parent); imported without TensorRT-LLM it registers nothing and loads nothing."""
    import subprocess
    import sys

    from hunyuan_trtllm.serve.repository import RepoOptions, llmapi_settings
    from hunyuan_trtllm.serve.trtllm_serve import ServeOptions, detect_target, trtllm_serve_command

    path, _, _ = hy3
    directory = pytorch_plugin_dir(HYV3)
    assert [p.name for p in directory.parent.iterdir() if p.name != "__pycache__"] == ["hy3_trtllm"]
    command = trtllm_serve_command(detect_target(path), ServeOptions(tp=8, ep=8), tmp_path / "extra.yaml")
    assert command[command.index("--custom_module_dirs") + 1] == str(directory)
    settings = llmapi_settings(path, 4, True, RepoOptions(tp=8, ep=8))
    assert settings["triton_config"]["custom_module_dirs"] == [str(directory)]
    assert settings["moe_expert_parallel_size"] == 8 and settings["backend"] == "pytorch"
    code = (f"import sys, importlib; sys.path.insert(0, {str(directory.parent)!r}); importlib.import_module("
            "'hy3_trtllm'); print(sorted(m for m in sys.modules if m.endswith('modeling_hy3') or m == 'tensorrt_llm'))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          timeout=120).stdout.strip() == "[]"
