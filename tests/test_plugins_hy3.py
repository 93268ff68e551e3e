"""Hy3 in the TensorRT-engine model definition: declares exactly the WeightPlan's tensors (every layout and
precision, tiny and full-width TP8xEP8), with Hy3's MoE (routing in the graph), dense layer 0, float32 lm_head and
QK-norm before RoPE. Same machinery as tests/test_plugins_model.py (the stand-in tests/fake_trtllm)."""

from __future__ import annotations

import pytest

from hunyuan_trtllm.checkpoints.mapping import Mapping
from hunyuan_trtllm.checkpoints.spec import parse_spec
from hunyuan_trtllm.synth.checkpoint import synth_config

from . import standin
from .test_plugins_model import PRECISIONS, assert_declares_the_plan, build_rank, checkpoint, tiny_spec


@pytest.fixture
def trt():
    """``hunyuan_trtllm.plugins`` registered on the TensorRT-LLM stand-in (as in test_plugins_model)."""
    yield standin.load()
    standin.forget()


HY3_LAYOUTS = [Mapping(), Mapping(tp=2), Mapping(tp=2, moe_ep=2), Mapping(tp=2, pp=2, moe_ep=2)]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("mapping", HY3_LAYOUTS, ids=str)
def test_tiny_hy3_declares_the_weight_plan(trt, mapping, precision):
    assert_declares_the_plan(trt, tiny_spec("hy3"), mapping, precision)


@pytest.mark.parametrize(("mapping", "precision"), [(Mapping(tp=8, moe_ep=8), "bf16"), (Mapping(tp=8, moe_ep=8), "fp8"),
                                                    (Mapping(tp=4, moe_ep=4), "fp8-kv")])
def test_full_width_hy3_shapes(trt, mapping, precision):
    """tencent/Hy3's widths (64 heads / 8 KV x 128, 192 experts of 1536, dense 13312, vocab 120832), 2 layers."""
    spec = parse_spec(synth_config("hy3", "full-width", layers=2, dtype="bfloat16"))
    assert_declares_the_plan(trt, spec, mapping, precision)


def test_hy3_layers_routing_head_and_attention_order(trt):
    spec = tiny_spec("hy3")
    model = build_rank(trt, checkpoint(spec, Mapping(tp=2, moe_ep=2), "fp8")[1], 0)
    dense, moe = model.transformer.layers[0].mlp, model.transformer.layers[1].mlp
    assert type(dense).__name__ == "GatedMLP" and dense.gate.weight.shape == (spec.intermediate_size // 2,
                                                                               spec.hidden_size)
    assert type(moe).__name__ == "Hy3SharedMoE"  # survived the FP8 quantize pass's rebuild
    assert (moe.ROUTED_SCALING, moe.RENORMALIZE) == (spec.routed_scaling_factor, True)
    assert moe.expert_bias.shape == (spec.num_experts,) and moe.expert_bias.dtype == "float32"
    assert moe.router.weight.dtype == "float32" and "shared_expert_gate" not in moe._modules
    assert type(model.lm_head).__name__ == "Float32Head" and model.lm_head.weight.dtype == "float32"
    attention = model.transformer.layers[1].attention
    assert attention.uses_qk_norm and attention.norm_before_rope
    a13b = build_rank(trt, checkpoint(tiny_spec("a13b"), Mapping(), "bf16")[1], 0)
    assert not a13b.transformer.layers[0].attention.norm_before_rope
    assert type(a13b.lm_head).__name__ != "Float32Head"


@pytest.mark.parametrize(("dtype", "per_rank_gib"), [("bfloat16", (69, 71)), ("fp8", (35, 36.5))])
def test_build_dry_run_plans_hy3_tp8_ep8(tmp_path, dtype, per_rank_gib):
    """tencent/Hy3's config (80 layers): TP8 x EP8 engines of ~70 GiB (BF16) / ~35.6 GiB (FP8) per rank; the
    BF16 total matches the release's 597.6 GB of weights plus the float32 lm_head copy."""
    import json

    from click.testing import CliRunner

    from hunyuan_trtllm.cli import cli

    config = tmp_path / "config.json"
    config.write_text(json.dumps(synth_config("hy3", "full-width", layers=80)))
    result = CliRunner().invoke(cli, ["build", str(config), "--dry-run", "--from-config", "--tp", "8", "--ep", "8",
                                      "--dtype", dtype, "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["checkpoint"]["architecture"] == "HYV3ForCausalLM"
    assert plan["checkpoint"]["mapping"]["moe_ep_size"] == 8 and len(plan["ranks"]) == 8
    assert (plan["checkpoint"]["quantization"]["quant_algo"] == "FP8") == (dtype == "fp8")
    sizes = [rank["weight_bytes"] / 2**30 for rank in plan["ranks"]]
    assert all(per_rank_gib[0] < size < per_rank_gib[1] for size in sizes), sizes
