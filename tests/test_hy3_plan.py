"""Hy3 in the planner, inspect and deploy: the published config's numbers derived by hand (shared/reference/hy3.md),
and the MTP draft part's memory equal to what `convert --mtp keep` writes."""

from __future__ import annotations

import json

from click.testing import CliRunner

from hunyuan_trtllm.builder.planner import make_plan
from hunyuan_trtllm.checkpoints.convert import convert
from hunyuan_trtllm.checkpoints.mapping import Mapping
from hunyuan_trtllm.cli import cli

from .conftest import golden
from .test_planner import safetensors_data_bytes

KIB = 1024


def layout(plan: dict, tp: int, ep: int, pp: int) -> dict:
    return next(lay for lay in plan["layouts"] if (lay["tp"], lay["moe_ep"], lay["pp"]) == (tp, ep, pp))


def test_published_config_parameters_and_kv():
    model = make_plan(None, "hy3", "h200", 8, 1, None, None, None)["model"]
    # Trunk: embedding + lm_head 2 x 120832 x 4096; per layer attention 2 x 8192 x 4096 + 2 x 1024 x 4096 + norms;
    # layer 0 dense 3 x 13312 x 4096; layers 1-79: 192 experts + 1 shared of 3 x 1536 x 4096, router, bias.
    assert model["total_params"] == 295_033_543_488  # 295.03B (hy3.md: 298,786,140,416 with the MTP layer)
    assert model["total_params"] + model["mtp_params"] == 298_786_140_416 + 15_360  # BF16 + F32 (80 expert biases)
    assert round(model["mtp_params"] / 1e9, 2) == 3.75 and round(model["active_params"] / 1e9, 1) == 20.7
    assert model["kv_bytes_per_token"] == {"bf16": 80 * 2 * 8 * 128 * 2, "fp8": 160 * KIB} == {"bf16": 320 * KIB,
                                                                                                "fp8": 160 * KIB}


def test_bf16_does_not_fit_8xh100_usefully_and_fits_8xh200():
    full = make_plan(None, "hy3", "h100", 8, 1, None, None, None)
    assert full["dtype"] == "bf16" and full["recommended"] is None  # not even one 262,144-token sequence
    short = make_plan(None, "hy3", "h100", 8, 1, None, None, 32768)["recommended"]
    assert short is None or short["max_concurrent_sequences"] <= 1  # at most one 32K sequence: not useful
    h200 = make_plan(None, "hy3", "h200", 8, 1, None, None, None)["recommended"]
    assert h200["fits"] and h200["tp"] == 8 and h200["max_concurrent_sequences"] >= 4
    assert 70e9 < h200["weight_bytes_per_rank"] < 80e9  # ~598 GB / 8, the dense layer and lm_head included
    assert make_plan(None, "hy3", "h200", 4, 1, None, None, None)["recommended"] is None


def test_fp8_preset_fits_4xh200():
    plan = make_plan(None, "hy3-fp8", "h200", 4, 1, None, None, None)
    assert plan["dtype"] == "fp8" and plan["kv_cache_dtype"] == "fp8"  # the FP8 release's default
    best = plan["recommended"]
    assert best["fits"] and best["tp"] == 4 and best["max_concurrent_sequences"] >= 4
    assert 70e9 < best["weight_bytes_per_rank"] < 80e9  # ~300 GB / 4


def test_mtp_memory_is_what_convert_writes(tmp_path):
    path = golden("hy3-tiny")
    out = tmp_path / "keep"
    convert(path, out, Mapping(tp=2, pp=2, moe_ep=2), dtype="bfloat16", mtp="keep")
    kept = make_plan(str(path), None, "h100", 4, 1, "bf16", None, 64, mtp=True)
    dropped = make_plan(str(path), None, "h100", 4, 1, "bf16", None, 64)
    a, b = layout(kept, 2, 2, 2), layout(dropped, 2, 2, 2)
    extra = [x - y for x, y in zip(a["weight_bytes_by_rank"], b["weight_bytes_by_rank"], strict=True)]
    written = [safetensors_data_bytes(out / "mtp" / f"rank{r}.safetensors") for r in range(2)]
    assert extra == [0, 0, *written]  # on the last pipeline stage only
    main = [safetensors_data_bytes(out / f"rank{r}.safetensors") for r in range(4)]
    assert b["weight_bytes_by_rank"] == main
    assert a["kv_bytes_per_token_per_rank"] - b["kv_bytes_per_token_per_rank"] == 2 * 1 * 16 * 2  # one layer's K, V
    full = make_plan(None, "hy3", "h200", 8, 1, None, None, None, mtp=True)
    assert layout(full, 8, 8, 1)["kv_bytes_per_token_per_rank"] == (80 + 1) * 2 * 1 * 128 * 2


def test_inspect_shows_routing_mtp_and_counts():

    result = CliRunner().invoke(cli, ["inspect", str(golden("hy3-tiny")), "--json"])
    data = json.loads(result.output)
    assert data["routing"] == {"scoring": "sigmoid", "expert_bias": "selection_only", "renormalize": True,
                               "renormalize_epsilon": 1e-20, "routed_scaling_factor": 2.826}
    assert data["params_mtp"] == 84_840 and data["params_total"] == 334_040
    table = CliRunner().invoke(cli, ["inspect", str(golden("hy3-tiny"))]).output
    assert "sigmoid + expert bias" in table and "before RoPE" in table and "MTP layers" in table


def test_deploy_accepts_the_presets(tmp_path):

    for preset, gpus, repo in (("hy3", "8", "tencent/Hy3"), ("hy3-fp8", "4", "tencent/Hy3-FP8")):
        out = tmp_path / preset
        result = CliRunner().invoke(cli, ["deploy", "compose", "--preset", preset, "--gpu", "h200", "--gpus", gpus,
                                          "-o", str(out)])
        assert result.exit_code == 0, result.output
        assert repo in "".join(p.read_text() for p in out.rglob("*") if p.is_file())


def test_real_config_tp8_ep8_shapes():
    """192 experts over EP 8: 24 per rank; the dense layer 0 and the float32 head split by tp."""
    import torch

    from hunyuan_trtllm.builder.planner_models import preset_spec
    from hunyuan_trtllm.checkpoints.weight_plan import WeightPlan

    plan = WeightPlan.build(preset_spec("hy3"), Mapping(tp=8, moe_ep=8), torch.bfloat16, only_ranks={0})
    t = {p.name: (p.shape, p.dtype) for p in plan.ranks[0]}
    layer = "transformer.layers.{}.".format
    assert t[layer(1) + "mlp.fc.weight"] == ((24, 2 * 1536, 4096), torch.bfloat16)
    assert t[layer(79) + "mlp.proj.weight"] == ((24, 4096, 1536), torch.bfloat16)
    assert t[layer(1) + "mlp.router.weight"] == ((192, 4096), torch.float32)
    assert t[layer(1) + "mlp.expert_bias"] == ((192,), torch.float32)
    assert t[layer(0) + "mlp.fc.weight"] == ((13312 // 8, 4096), torch.bfloat16)
    assert layer(0) + "mlp.router.weight" not in t and layer(80) + "input_layernorm.weight" not in t
    assert t[layer(5) + "attention.qkv.weight"] == (((64 + 2 * 8) * 128 // 8, 4096), torch.bfloat16)
    assert t["lm_head.weight"] == ((120832 // 8, 4096), torch.float32)
