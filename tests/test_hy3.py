"""Hy3 (HYV3ForCausalLM): converted checkpoints reproduce transformers' hy_v3 and the hy3-tiny golden logits for
every valid tp x ep x pp, from Tencent's on-disk layout and from transformers' own; config.json records the
routing; the MTP layer is left out or written as a draft part; impossible layouts are refused with one line."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from hunyuan_trtllm.checkpoints.convert import convert
from hunyuan_trtllm.checkpoints.mapping import Mapping
from hunyuan_trtllm.checkpoints.prompts import DEFAULT_PROMPTS
from hunyuan_trtllm.checkpoints.source import open_source
from hunyuan_trtllm.checkpoints.spec import parse_spec
from hunyuan_trtllm.errors import MappingError, UserError
from hunyuan_trtllm.reference.executor import ReferenceExecutor
from hunyuan_trtllm.reference.transformers_ref import transformers_logits
from hunyuan_trtllm.reference.verify import verify
from hunyuan_trtllm.synth.checkpoint import synth_checkpoint

from .conftest import golden, golden_logits

LAYOUTS = [(tp, ep, pp) for tp, ep, pp in itertools.product((1, 2, 4), (1, 2, 4), (1, 2)) if tp % ep == 0]
ATOL = 1e-4
# Config keys only Tencent's release writes; transformers' own hy_v3 config has mlp_layer_types instead.
TENCENT_ONLY_KEYS = ("first_k_dense_replace", "moe_router_use_sigmoid", "moe_router_enable_expert_bias", "route_norm",
                     "expert_hidden_dim", "enable_lm_head_fp32", "num_nextn_predict_layers", "qk_norm")


def convert_all(model, base) -> dict[tuple[int, int, int], ReferenceExecutor]:
    """Every layout of LAYOUTS converted in float32 (once per module)."""
    executors = {}
    for tp, ep, pp in LAYOUTS:
        out = base / f"tp{tp}-ep{ep}-pp{pp}"
        convert(model, out, Mapping(tp=tp, pp=pp, moe_ep=ep), dtype="float32")
        executors[(tp, ep, pp)] = ReferenceExecutor(out)
    return executors


@pytest.fixture(scope="module")
def hy3_golden():
    path = golden("hy3-tiny")
    prompts, logits = golden_logits(path)
    ids = {f"prompt{i}": p for i, p in enumerate(prompts["prompts"])}
    return path, ids, logits


@pytest.fixture(scope="module")
def golden_layouts(hy3_golden, tmp_path_factory):
    return convert_all(hy3_golden[0], tmp_path_factory.mktemp("hy3-golden"))


@pytest.fixture(scope="module")
def transformers_layout(tmp_path_factory):
    """A synthetic Hy3 saved in transformers' own layout (its state_dict: mlp.gate, e_score_correction_bias,
    shared_experts, fused experts) with transformers' config (mlp_layer_types, no Tencent routing keys), and the
    logits of that transformers model."""
    import transformers

    base = tmp_path_factory.mktemp("hy3-transformers")
    tencent = synth_checkpoint(base / "tencent", "hy3", preset="tiny", dtype="float32")
    assert tencent.num_mtp_layers == 1
    model = transformers.AutoModelForCausalLM.from_pretrained(base / "tencent", dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    path = base / "transformers"
    path.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path / "model.safetensors")
    config = {k: v for k, v in model.config.to_dict().items() if k not in TENCENT_ONLY_KEYS}
    (path / "config.json").write_text(json.dumps(config))
    with torch.no_grad():
        logits = [model(input_ids=torch.tensor([ids])).logits[0] for ids in DEFAULT_PROMPTS.values()]
    return path, logits


def test_transformers_layout_is_transformers_own(transformers_layout):
    path, _ = transformers_layout
    names = set(load_file(path / "model.safetensors"))
    assert {"model.layers.1.mlp.gate.weight", "model.layers.1.mlp.e_score_correction_bias",
            "model.layers.1.mlp.experts.gate_up_proj", "model.layers.1.mlp.experts.down_proj",
            "model.layers.1.mlp.shared_experts.up_proj.weight", "model.layers.0.mlp.up_proj.weight"} <= names
    assert not any("router" in n or "shared_mlp" in n or "expert_bias" in n for n in names)
    spec = open_source(path).spec
    assert (spec.first_dense_layers, spec.router_scoring, spec.expert_bias, spec.num_mtp_layers) == (1, "sigmoid",
                                                                                                    True, 0)


def test_golden_every_layout_matches_stored_and_transformers_logits(hy3_golden, golden_layouts):
    path, prompts, stored = hy3_golden
    spec = open_source(path).spec
    reference = dict(zip(prompts, transformers_logits(path, spec, list(prompts.values())), strict=True))
    for key in prompts:  # transformers' hy_v3 itself reproduces the fixture
        assert (reference[key] - stored[key]).abs().max().item() <= 1e-5
    for layout, executor in golden_layouts.items():
        for key, ids in prompts.items():
            got = executor.forward(ids)
            for name, expected in (("stored", stored[key]), ("transformers", reference[key])):
                err = (got - expected).abs().max().item()
                assert err <= ATOL, f"tp{layout[0]} ep{layout[1]} pp{layout[2]} {key} vs {name}: {err:.2e}"


def test_transformers_layout_every_layout_matches_transformers(transformers_layout, tmp_path_factory):
    path, expected = transformers_layout
    for layout, executor in convert_all(path, tmp_path_factory.mktemp("hy3-tf-out")).items():
        for ids, ref in zip(DEFAULT_PROMPTS.values(), expected, strict=True):
            err = (executor.forward(ids) - ref).abs().max().item()
            assert err <= ATOL, f"tp{layout[0]} ep{layout[1]} pp{layout[2]}: {err:.2e}"


def test_config_records_routing_qk_norm_position_mlp_kinds_and_precisions(hy3_golden, golden_layouts):
    config = golden_layouts[(4, 2, 2)].config
    assert config["architecture"] == "HYV3ForCausalLM"
    assert config["hunyuan"]["routing"] == {"scoring": "sigmoid", "expert_bias": "selection_only", "renormalize": True,
                                        "renormalize_epsilon": 1e-20, "routed_scaling_factor": 2.826}
    extra = config["hunyuan"]
    assert extra["qk_norm_position"] == "before_rope" and extra["qk_norm_after_rope"] is False
    assert extra["mlp_layer_types"] == ["dense", "moe", "moe", "moe"] and extra["dense_intermediate_size"] == 96
    assert extra["lm_head_dtype"] == "float32" and extra["mtp"] == {"num_layers": 1, "kept": False, "path": None}
    assert config["rotary_base"] == 11158840.0 and config["moe"]["num_experts"] == 8


def test_bfloat16_keeps_router_bias_and_lm_head_in_float32_and_verifies(hy3_golden, tmp_path):
    path, prompts, _ = hy3_golden
    out = tmp_path / "bf16"
    convert(path, out, Mapping(tp=2, moe_ep=2), dtype="bfloat16")
    for rank in range(2):
        t = load_file(out / f"rank{rank}.safetensors")
        assert t["transformer.layers.1.mlp.router.weight"].dtype == torch.float32
        bias = t["transformer.layers.1.mlp.expert_bias"]
        assert bias.dtype == torch.float32
        assert torch.equal(bias, open_source(path).get("model.layers.1.mlp.expert_bias"))
        assert t["lm_head.weight"].dtype == torch.float32 and t["lm_head.weight"].shape == (256, 64)
        assert t["transformer.layers.0.mlp.fc.weight"].dtype == torch.bfloat16
        assert t["transformer.layers.0.mlp.fc.weight"].shape == (48, 64)  # dense layer 0: 96 / tp 2
        assert "transformer.layers.0.mlp.router.weight" not in t
    report = verify(out, str(path), prompts)
    assert report.reference == "transformers (hy_v3)" and report.passed and report.max_abs > 0


def test_mtp_layer_left_out_by_default_and_kept_as_a_draft_part(hy3_golden, tmp_path):
    path, _, _ = hy3_golden
    dropped = convert(path, tmp_path / "drop", Mapping(tp=2, moe_ep=2), dtype="float32")
    assert any("MTP layer (model.layers.4" in note and "--mtp keep" in note for note in dropped.notes)
    assert not (tmp_path / "drop" / "mtp").exists()
    src = open_source(path)
    out = tmp_path / "keep"
    convert(path, out, Mapping(tp=2, pp=2, moe_ep=2), dtype="float32", mtp="keep")
    assert json.loads((out / "config.json").read_text())["hunyuan"]["mtp"] == {"num_layers": 1, "kept": True,
                                                                               "path": "mtp"}
    part = json.loads((out / "mtp" / "config.json").read_text())
    assert part["kind"] == "hy3_mtp_draft" and part["source_layers"] == [4] and part["mapping"]["tp_size"] == 2
    for rank in range(2):
        t = load_file(out / "mtp" / f"rank{rank}.safetensors")
        assert torch.equal(t["mtp.layers.0.eh_proj.weight"], src.get("model.layers.4.eh_proj.weight"))
        for norm in ("enorm", "hnorm", "final_layernorm"):
            assert torch.equal(t[f"mtp.layers.0.{norm}.weight"], src.get(f"model.layers.4.{norm}.weight"))
        assert torch.equal(t["mtp.layers.0.mlp.expert_bias"], src.get("model.layers.4.mlp.expert_bias"))
        expert = rank * 4 + 1  # EP rank = tp rank: experts 4r..4r+3; fc = [up; gate]
        fc = torch.cat([src.get(f"model.layers.4.mlp.experts.{expert}.{p}_proj.weight") for p in ("up", "gate")])
        assert torch.equal(t["mtp.layers.0.mlp.fc.weight"][1], fc)
        assert not any(name.startswith("transformer.") for name in t)
    with pytest.raises(UserError, match="declares no MTP layer"):
        convert(golden("a13b-tiny"), tmp_path / "a13b", Mapping(), dtype="float32", mtp="keep")


@pytest.mark.parametrize(("flags", "message"), [
    (["--tp", "3"], "error: --tp 3 does not divide the 8 attention heads"),
    (["--tp", "4", "--ep", "3"], "error: --ep 3 must divide --tp 4"),
    (["--tp", "16"], "error: --tp 16 does not divide the 8 attention heads"),
    (["--pp", "5"], "error: --pp 5 exceeds the 4 layers"),
])
def test_impossible_layouts_refused_with_one_line(hy3_golden, tmp_path, flags, message):
    from hunyuan_trtllm.cli import cli

    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["convert", str(hy3_golden[0]), "-o", str(out), *flags])
    text = result.output.strip()
    assert result.exit_code == 2 and text.startswith(message) and "\n" not in text
    assert not out.exists() or not any(out.iterdir())


def test_dense_layer_width_and_hy3_config_errors(hy3_golden):
    config = json.loads((hy3_golden[0] / "config.json").read_text())
    spec = parse_spec({**config, "intermediate_size": 90})
    with pytest.raises(MappingError, match="dense layers' MLP width 90"):
        Mapping(tp=4).validate(spec)
    from hunyuan_trtllm.errors import ConfigError

    for change, message in [({"expert_hidden_dim": 16}, "disagree"), ({"moe_router_use_sigmoid": False}, "softmax"),
                            ({"mlp_layer_types": ["sparse", "dense", "sparse", "sparse"]}, "only leading dense"),
                            ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "rope type 'yarn'"),
                            ({"num_attention_heads": 0}, "'num_attention_heads' must be a positive integer"),
                            ({"moe_intermediate_size": "32"}, "'moe_intermediate_size' must be a positive")]:
        with pytest.raises(ConfigError, match=message):
            parse_spec({**config, **change})


def test_engine_build_reads_hy3_back_from_the_converted_config(golden_layouts, hy3_golden):
    """build re-derives the spec from a converted config.json: every Hy3 field survives (MTP is not engine part)."""
    import dataclasses

    from hunyuan_trtllm.builder.checkpoint import spec_from_trtllm_config

    spec = spec_from_trtllm_config(golden_layouts[(1, 1, 1)].config, "config.json")
    source = parse_spec(json.loads((hy3_golden[0] / "config.json").read_text()))
    differ = {f.name for f in dataclasses.fields(spec) if getattr(spec, f.name) != getattr(source, f.name)}
    assert differ <= {"num_mtp_layers", "notes"}, differ


def test_synth_hy3_writes_tencents_layout(hy3_golden, tmp_path):
    from safetensors import safe_open

    from hunyuan_trtllm.builder.planner_models import preset_spec
    from hunyuan_trtllm.synth.checkpoint import synth_config

    path = hy3_golden[0]
    synth_checkpoint(tmp_path / "s", "hy3", dtype="bfloat16", min_router_gap=0.0)
    ours = json.loads((tmp_path / "s" / "config.json").read_text())
    assert set(ours) == set(json.loads((path / "config.json").read_text()))  # the release's 40 keys
    with safe_open(tmp_path / "s" / "model.safetensors", "pt") as mine, safe_open(path / "model.safetensors",
                                                                                     "pt") as fixture:
        assert set(mine.keys()) == set(fixture.keys())  # 166 tensors, MTP layer included
        for name in mine.keys():
            tensor = mine.get_slice(name)
            assert tensor.get_dtype() == ("F32" if name.endswith("expert_bias") else "BF16"), name
            if "embed_tokens" not in name and "lm_head" not in name:
                assert tensor.get_shape() == fixture.get_slice(name).get_shape(), name
    full, real = parse_spec(synth_config("hy3", "full-width")), preset_spec("hy3")
    same = ("hidden_size", "num_heads", "num_kv_heads", "head_dim", "intermediate_size", "num_experts", "top_k",
            "expert_intermediate_size", "shared_intermediate_size", "vocab_size", "rope_theta", "first_dense_layers",
            "routed_scaling_factor", "lm_head_fp32", "num_mtp_layers", "eos_token_ids", "max_position_embeddings")
    assert {f: getattr(full, f) for f in same} == {f: getattr(real, f) for f in same}
