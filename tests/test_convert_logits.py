"""Converted checkpoints reproduce independent references for every valid tp x moe_ep x pp layout.

References: transformers' own Hunyuan classes (A13B, dense), the plain HF-layout forward (Large; it is itself
checked against Tencent's logits in test_reference_forward.py), and Tencent's logits in the golden fixtures.
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from hunyuan_trtllm.checkpoints.convert import convert
from hunyuan_trtllm.checkpoints.mapping import Mapping
from hunyuan_trtllm.checkpoints.prompts import DEFAULT_PROMPTS
from hunyuan_trtllm.checkpoints.source import open_source
from hunyuan_trtllm.reference.executor import ReferenceExecutor
from hunyuan_trtllm.reference.hf_forward import hf_forward
from hunyuan_trtllm.reference.transformers_ref import transformers_logits

from .conftest import golden, golden_logits

LAYOUTS = [(tp, ep, pp) for tp, ep, pp in itertools.product((1, 2, 4), (1, 2, 4), (1, 2)) if tp % ep == 0]
ATOL = 1e-4


def valid_layouts(arch: str) -> list[tuple[int, int, int]]:
    return [(tp, ep, pp) for tp, ep, pp in LAYOUTS if arch != "dense" or ep == 1]


@pytest.fixture(scope="module")
def references(tiny_models) -> dict[str, list[torch.Tensor]]:
    refs = {}
    prompts = list(DEFAULT_PROMPTS.values())
    for arch, path in tiny_models.items():
        src = open_source(path)
        if arch == "large":  # transformers has no CLA: the plain forward, checked against Tencent's code
            refs[arch] = [hf_forward(src.spec, src.get, ids) for ids in prompts]
        else:
            refs[arch] = transformers_logits(path, src.spec, prompts)
    return refs


@pytest.mark.parametrize("arch", ["a13b", "large", "dense"])
def test_every_layout_matches_reference(arch, tiny_models, references, tmp_path):
    worst = 0.0
    for tp, ep, pp in valid_layouts(arch):
        out = tmp_path / f"tp{tp}-ep{ep}-pp{pp}"
        convert(tiny_models[arch], out, Mapping(tp=tp, pp=pp, moe_ep=ep), dtype="float32")
        executor = ReferenceExecutor(out)
        for ids, ref in zip(DEFAULT_PROMPTS.values(), references[arch], strict=True):
            err = (executor.forward(ids) - ref).abs().max().item()
            assert err <= ATOL, f"{arch} tp{tp} ep{ep} pp{pp}: max abs {err:.2e}"
            worst = max(worst, err)
    assert worst > 0.0  # the comparison really compared two computations


GOLDEN_LAYOUTS = {
    "a13b-tiny": [(1, 1, 1), (2, 2, 1), (4, 4, 1), (4, 2, 2), (4, 1, 1), (2, 1, 2)],
    "large-tiny": [(1, 1, 1), (2, 2, 2), (2, 1, 1), (1, 1, 2)],  # 10 heads: tp 4 is invalid
    "dense-tiny": [(1, 1, 1), (2, 1, 2), (4, 1, 1)],
}


@pytest.mark.parametrize("name", sorted(GOLDEN_LAYOUTS))
def test_golden_fixtures(name, tmp_path):
    path = golden(name)
    prompts, expected = golden_logits(path)
    for tp, ep, pp in GOLDEN_LAYOUTS[name]:
        out = tmp_path / f"tp{tp}-ep{ep}-pp{pp}"
        convert(path, out, Mapping(tp=tp, pp=pp, moe_ep=ep), dtype="float32")
        executor = ReferenceExecutor(out)
        for key, ids in prompts.items():
            err = (executor.forward(ids) - expected[key]).abs().max().item()
            assert err <= ATOL, f"{name} tp{tp} ep{ep} pp{pp} {key}: max abs {err:.2e}"


def fuse_like_older_checkpoints(src_dir, dst_dir, heads: int, kv_heads: int, head_dim: int) -> None:
    """Store a separate-layout checkpoint as a fused one (design note 8), written plainly here."""
    tensors = load_file(src_dir / "model.safetensors")
    group = heads // kv_heads
    for name in [n for n in tensors if n.endswith("self_attn.q_proj.weight")]:
        prefix = name.removesuffix("q_proj.weight")
        if prefix + "k_proj.weight" not in tensors:
            continue  # CLA consumer: q_proj alone
        q = tensors.pop(name).view(kv_heads, group, head_dim, -1)
        k = tensors.pop(prefix + "k_proj.weight").view(kv_heads, 1, head_dim, -1)
        v = tensors.pop(prefix + "v_proj.weight").view(kv_heads, 1, head_dim, -1)
        tensors[prefix + "qkv_proj.weight"] = torch.cat([q, k, v], dim=1).reshape(-1, q.shape[-1]).contiguous()
    for name in [n for n in tensors if n.endswith(".gate_proj.weight")]:
        prefix = name.removesuffix("gate_proj.weight")
        gate, up = tensors.pop(name), tensors.pop(prefix + "up_proj.weight")
        tensors[prefix + "gate_and_up_proj.weight"] = torch.cat([up, gate]).contiguous()
    dst_dir.mkdir()
    save_file(tensors, dst_dir / "model.safetensors", metadata={"format": "pt"})
    (dst_dir / "config.json").write_text((src_dir / "config.json").read_text())


@pytest.mark.parametrize(("name", "heads", "kv"), [("a13b-tiny", 8, 2), ("large-tiny", 10, 2)])
def test_fused_qkv_and_gate_up_layouts(name, heads, kv, tmp_path):
    path = golden(name)
    fused = tmp_path / "fused"
    fuse_like_older_checkpoints(path, fused, heads, kv, 16)
    assert any(n.endswith("qkv_proj.weight") for n in load_file(fused / "model.safetensors"))
    prompts, expected = golden_logits(path)
    out = tmp_path / "out"
    convert(fused, out, Mapping(tp=2, moe_ep=2), dtype="float32")
    executor = ReferenceExecutor(out)
    for key, ids in prompts.items():
        assert (executor.forward(ids) - expected[key]).abs().max().item() <= ATOL


def test_transformers_v5_fused_experts_layout(tmp_path):
    """transformers 5 keeps experts as gate_up_proj [E, 2I, H] (gate first) and down_proj [E, H, I]."""
    path = golden("a13b-tiny")
    tensors = load_file(path / "model.safetensors")
    for layer in range(3):
        p = f"model.layers.{layer}.mlp.experts."
        experts = range(8)
        gate = torch.stack([tensors.pop(f"{p}{e}.gate_proj.weight") for e in experts])
        up = torch.stack([tensors.pop(f"{p}{e}.up_proj.weight") for e in experts])
        tensors[p + "gate_up_proj"] = torch.cat([gate, up], dim=1).contiguous()
        tensors[p + "down_proj"] = torch.stack([tensors.pop(f"{p}{e}.down_proj.weight") for e in experts])
    model = tmp_path / "v5"
    model.mkdir()
    save_file(tensors, model / "model.safetensors")
    (model / "config.json").write_text((path / "transformers_v5_config.json").read_text())
    out = tmp_path / "out"
    convert(model, out, Mapping(tp=4, moe_ep=2), dtype="float32")
    prompts, expected = golden_logits(path)
    for key, ids in prompts.items():
        assert (ReferenceExecutor(out).forward(ids) - expected[key]).abs().max().item() <= ATOL


def test_bfloat16_conversion_and_kv_cache(tiny_models, tmp_path):
    out = tmp_path / "bf16"
    convert(tiny_models["a13b"], out, Mapping(tp=2, moe_ep=2), dtype="bfloat16")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    ranks = load_file(out / "rank0.safetensors")
    assert ranks["transformer.layers.0.mlp.router.weight"].dtype == torch.float32
    assert ranks["transformer.layers.0.mlp.fc.weight"].dtype == torch.bfloat16
    executor = ReferenceExecutor(out)
    ids = list(DEFAULT_PROMPTS.values())[-1]
    full = executor.forward(ids)
    cache = executor.new_cache()
    steps = [executor.forward(ids[:5], cache)] + [executor.forward([t], cache) for t in ids[5:]]
    assert (torch.cat(steps) - full).abs().max().item() <= 1e-4  # incremental decoding == one full pass
