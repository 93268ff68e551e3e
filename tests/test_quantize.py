"""FP8 Hugging Face checkpoints: the layout TensorRT-LLM's PyTorch backend loads, e4m3 accuracy, Tencent's format.

The layout assertions restate what TensorRT-LLM 1.2.x's loader reads (see the docstring of
hunyuan_trtllm/checkpoints/quantize.py for the source files), not what the writer happens to produce:
- ``hf_quant_config.json`` ``quantization.quant_algo == "FP8"`` turns the FP8 path on; ``exclude_modules`` is
  matched with ``fnmatchcase`` against module names (newer versions: also their ancestors);
- Hunyuan's ``load_weights`` gives each module every key under its prefix (``filter_weights``): q/k/v and
  gate/up are fused from separate ``*_proj`` keys, experts ``{e}.{gate,up,down}_proj`` become ``{e}.w1/w3/w2``,
  the router is ``mlp.gate.wg``;
- FP8 linears read ``weight`` (e4m3) and ``weight_scale`` / ``input_scale`` with ``.reshape([])`` (one element);
  fused MoE reads ``{e}.w1/w2/w3.weight_scale`` and ``input_scale`` of every expert.
"""

from __future__ import annotations

import json
from fnmatch import fnmatchcase
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from hunyuan_trtllm.checkpoints.fp8_scales import E4M3_MAX, Fp8Scales
from hunyuan_trtllm.checkpoints.quantize import (
    fp8_linear_names,
    quantize_checkpoint,
    weight_scales,
)
from hunyuan_trtllm.checkpoints.source import SourceCheckpoint
from hunyuan_trtllm.cli import cli
from hunyuan_trtllm.errors import UserError
from hunyuan_trtllm.synth.checkpoint import synth_checkpoint
from hunyuan_trtllm.synth.fp8 import synth_fp8_checkpoint

SEED = 389  # tiny A13B's first seed whose bfloat16 router margins pass: synth needs no seed scan
E4M3 = torch.float8_e4m3fn
EXPERT_NAMES = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}  # CutlassFusedMoE / VanillaMoE renames


def filter_weights(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The keys TensorRT-LLM's Hunyuan load_weights hands the module at ``prefix`` (prefix stripped)."""
    return {k[len(prefix) + 1 :]: v for k, v in weights.items() if k.startswith(prefix + ".")}


def load_all(path: Path) -> dict[str, torch.Tensor]:
    weight_map = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(set(weight_map.values())):
        tensors.update(load_file(path / file))
    assert set(tensors) == set(weight_map)
    return tensors


def excluded(patterns: list[str], module: str) -> bool:
    """QuantConfig.is_module_excluded_from_quantization: fnmatchcase on the name (newer: or an ancestor)."""
    parts = module.split(".")
    return any(fnmatchcase(".".join(parts[:i]), p) for p in patterns for i in range(1, len(parts) + 1))


def assert_fp8_linear(found: dict[str, torch.Tensor], where: str) -> None:
    assert found["weight"].dtype == E4M3, where
    for scale in ("weight_scale", "input_scale"):
        value = found[scale]
        assert value.dtype == torch.float32 and value.numel() == 1, f"{where}.{scale}"
        assert value.reshape([]).item() > 0


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def bf16_a13b(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("quantize") / "a13b-bf16"
    synth_checkpoint(path, "a13b", seed=SEED, dtype="bfloat16")
    return path


@pytest.fixture(scope="module")
def scales_a13b(bf16_a13b) -> Fp8Scales:
    source = SourceCheckpoint(bf16_a13b)
    names = fp8_linear_names(source.spec)
    return Fp8Scales(weight=weight_scales(source, names), activation={n: 0.01 for n in names},
                     kv={layer: 0.02 for layer in range(source.spec.num_layers)}, origin="test")


@pytest.fixture(scope="module")
def fp8_a13b(bf16_a13b, scales_a13b, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quantize") / "a13b-fp8"
    return quantize_checkpoint(SourceCheckpoint(bf16_a13b), out, scales_a13b, kv_cache_fp8=True)


@pytest.fixture(scope="module")
def tencent_a13b(tmp_path_factory) -> Path:
    return synth_fp8_checkpoint(tmp_path_factory.mktemp("quantize") / "a13b-tencent", "a13b", seed=SEED)


def test_moe_layout_is_what_the_pytorch_backend_loads(fp8_a13b):
    config = json.loads((fp8_a13b / "config.json").read_text())
    quant = json.loads((fp8_a13b / "hf_quant_config.json").read_text())["quantization"]
    assert quant["quant_algo"] == "FP8" and quant["kv_cache_quant_algo"] == "FP8"
    assert config["quantization_config"] == {"quant_method": "fp8", "activation_scheme": "static"}
    layers, experts = config["num_hidden_layers"], config["num_experts"]
    weights = load_all(fp8_a13b)
    patterns = quant["exclude_modules"]
    assert excluded(patterns, "lm_head") and excluded(patterns, "model.embed_tokens")
    for layer in range(layers):
        p = f"model.layers.{layer}."
        assert excluded(patterns, p + "mlp.gate")
        for module in ("self_attn.qkv_proj", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                       "self_attn.o_proj", "mlp.shared_mlp.gate_up_proj", "mlp.shared_mlp.gate_proj",
                       "mlp.shared_mlp.up_proj", "mlp.shared_mlp.down_proj", "mlp.experts"):
            assert not excluded(patterns, p + module), module
        for proj in ("q", "k", "v", "o"):
            assert_fp8_linear(filter_weights(weights, f"{p}self_attn.{proj}_proj"), f"{p}{proj}_proj")
        for proj in ("gate", "up", "down"):
            assert_fp8_linear(filter_weights(weights, f"{p}mlp.shared_mlp.{proj}_proj"), f"{p}shared {proj}")
        moe = filter_weights(weights, p + "mlp.experts")
        for old, new in EXPERT_NAMES.items():
            moe = {k.replace(old, new): v for k, v in moe.items()}
        for e in range(experts):
            for w in ("w1", "w2", "w3"):
                assert_fp8_linear(filter_weights(moe, f"{e}.{w}"), f"{p}experts.{e}.{w}")
        router = filter_weights(weights, p + "mlp.gate.wg")
        assert set(router) == {"weight"} and router["weight"].dtype == torch.bfloat16
        assert filter_weights(weights, p + "self_attn.k_proj")["k_scale"].numel() == 1
        assert filter_weights(weights, p + "self_attn.v_proj")["v_scale"].numel() == 1
    for name in ("model.embed_tokens.weight", "model.norm.weight", "model.layers.0.input_layernorm.weight",
                 "model.layers.0.self_attn.query_layernorm.weight"):
        assert weights[name].dtype == torch.bfloat16, name
    for name in (k for k in weights if k.endswith(("weight_scale", "input_scale"))):  # only beside e4m3 weights
        assert weights[name.rsplit(".", 1)[0] + ".weight"].dtype == E4M3, name
    files = sorted(p.name for p in fp8_a13b.glob("*.safetensors"))
    assert files == [f"model-{i:05d}-of-{layers:05d}.safetensors" for i in range(1, layers + 1)]
    assert (fp8_a13b / "hy.tiktoken").is_file() and (fp8_a13b / "generation_config.json").is_file()


def test_weights_dequantize_within_e4m3_rounding(bf16_a13b, fp8_a13b, scales_a13b):
    source, weights = SourceCheckpoint(bf16_a13b), load_all(fp8_a13b)
    for name in fp8_linear_names(source.spec):
        base, original = name.removesuffix(".weight"), source.get(name).float()
        scale = weights[base + ".weight_scale"].item()
        assert scale == pytest.approx(scales_a13b.weight[name], rel=1e-6)
        assert weights[base + ".input_scale"].item() == pytest.approx(0.01, rel=1e-6)
        quantized = weights[name].float()
        assert quantized.abs().max().item() == E4M3_MAX  # amax / 448: the largest entry lands on 448
        bound = torch.maximum(original.abs() * 2**-4, torch.full_like(original, scale * 2**-10))  # 3 mantissa bits
        assert bool(((quantized * scale - original).abs() <= bound * 1.0001).all()), name
    assert weights["model.layers.1.mlp.gate.wg.weight"].equal(source.get("model.layers.1.mlp.gate.wg.weight"))


def test_dense_layout(tmp_path):
    source_dir, out = tmp_path / "dense", tmp_path / "dense-fp8"
    synth_checkpoint(source_dir, "dense", dtype="float32")
    source = SourceCheckpoint(source_dir)
    names = fp8_linear_names(source.spec)
    scales = Fp8Scales(weight=weight_scales(source, names), activation={n: 0.01 for n in names})
    weights = load_all(quantize_checkpoint(source, out, scales))
    for layer in range(source.spec.num_layers):
        for proj in ("gate", "up", "down"):
            assert_fp8_linear(filter_weights(weights, f"model.layers.{layer}.mlp.{proj}_proj"), proj)
    assert not any(k.endswith(("k_scale", "v_scale")) for k in weights)  # no FP8 KV cache asked for
    quant = json.loads((out / "hf_quant_config.json").read_text())["quantization"]
    assert quant["kv_cache_quant_algo"] is None and weights["model.embed_tokens.weight"].dtype == torch.float32


def test_synthetic_tencent_fp8_checkpoint(tencent_a13b):
    config = json.loads((tencent_a13b / "config.json").read_text())
    assert config["quantization_config"] == {"quant_method": "fp8", "activation_scheme": "static"}
    assert not (tencent_a13b / "hf_quant_config.json").exists()  # Tencent's release has none
    weights = load_all(tencent_a13b)
    layers, experts = config["num_hidden_layers"], config["num_experts"]
    for layer in range(layers):
        p = f"model.layers.{layer}.mlp."
        for proj in ("gate", "up", "down"):
            per_expert = [weights[f"{p}experts.{e}.{proj}_proj.input_scale"].item() for e in range(experts)]
            assert len(set(per_expert)) == experts, (layer, proj)
        assert weights[p + "experts.0.gate_proj.input_scale"] != weights[p + "experts.0.up_proj.input_scale"]
        qkv = {weights[f"model.layers.{layer}.self_attn.{x}_proj.input_scale"].item() for x in "qkv"}
        assert len(qkv) == 3
        assert weights[p + "gate.wg.weight"].dtype == torch.bfloat16
        assert weights[f"model.layers.{layer}.self_attn.k_proj.k_scale"].dtype == torch.float32
    assert weights["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert weights["lm_head.weight" if "lm_head.weight" in weights else "model.norm.weight"].dtype == torch.bfloat16
    source = SourceCheckpoint(tencent_a13b)
    assert source.fp8 and source.get("model.layers.0.mlp.experts.1.up_proj.weight").dtype == torch.float32


def test_refuses_a_non_empty_output_and_leaves_nothing_on_failure(bf16_a13b, scales_a13b, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        quantize_checkpoint(SourceCheckpoint(bf16_a13b), busy, scales_a13b)
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    partial = Fp8Scales(weight=dict(scales_a13b.weight), activation={})  # fails at the first input scale
    with pytest.raises(UserError, match="input"):
        quantize_checkpoint(SourceCheckpoint(bf16_a13b), tmp_path / "out", partial)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]  # no out, no .out.quantize-* temp folder
    with pytest.raises(UserError, match="format"):
        quantize_checkpoint(SourceCheckpoint(bf16_a13b), tmp_path / "out", scales_a13b, format="gguf")


@pytest.mark.parametrize(("value", "message"), [(float("nan"), "NaN or Inf"), (float("inf"), "NaN or Inf"),
                                                (0.0, "all zeros")])
def test_bad_weights_name_the_tensor(tmp_path, value, message):
    source_dir = tmp_path / "dense"
    synth_checkpoint(source_dir, "dense", dtype="float32")
    bad = "model.layers.1.mlp.up_proj.weight"
    tensors = load_file(source_dir / "model.safetensors")
    tensors[bad] = tensors[bad].clone()
    if value == 0.0:
        tensors[bad].zero_()
    else:
        tensors[bad][3, 5] = value
    save_file(tensors, source_dir / "model.safetensors", metadata={"format": "pt"})
    source = SourceCheckpoint(source_dir)
    names = fp8_linear_names(source.spec)
    with pytest.raises(UserError, match=f"^{bad}: {message}"):
        weight_scales(source, names)
    if value != 0.0:  # with scales from elsewhere (calibration), the writer refuses the tensor itself
        scales = Fp8Scales(weight={n: 1e-3 for n in names}, activation={n: 1e-2 for n in names})
        with pytest.raises(UserError, match=f"^{bad}: NaN or Inf"):
            quantize_checkpoint(source, tmp_path / "out", scales)
        assert not (tmp_path / "out").exists()


def test_cli_reuses_the_scales_of_an_fp8_source(tencent_a13b, tmp_path):
    assert "Example" in run("quantize", "--help").output
    out = tmp_path / "trtllm"
    result = run("quantize", tencent_a13b, "-o", out, "--kv-cache-dtype", "fp8", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["scales"].startswith("FP8 checkpoint") and summary["fp8_tensors"] > 0
    before, after = load_all(tencent_a13b), load_all(out)
    assert set(before) == set(after)
    for name, tensor in before.items():  # requantizing with the same scales gives the same bytes
        assert after[name].reshape(-1).view(torch.uint8).equal(tensor.reshape(-1).view(torch.uint8)), name
    assert json.loads((out / "hf_quant_config.json").read_text())["quantization"]["kv_cache_quant_algo"] == "FP8"


def test_cli_with_a_scales_file_and_without_scales(bf16_a13b, scales_a13b, tmp_path):
    scales_a13b.save(tmp_path / "scales.json")
    out = tmp_path / "fp8"
    result = run("quantize", bf16_a13b, "-o", out, "--scales", tmp_path / "scales.json", "--quiet")
    assert result.exit_code == 0, result.output
    assert "quantize" in result.output and (out / "hf_quant_config.json").is_file()
    missing = run("quantize", bf16_a13b, "-o", tmp_path / "none")
    assert missing.exit_code == 2 and "--calib-builtin" in missing.output and "Traceback" not in missing.output


def test_cli_calibrates_an_unquantized_model(bf16_a13b, tmp_path):
    out = tmp_path / "calibrated"
    result = run("quantize", bf16_a13b, "-o", out, "--calib-builtin", "--calib-samples", "2", "--calib-seq-len", "8",
                 "--json")
    assert result.exit_code == 0, result.output
    weights = load_all(out)
    scales = [v.item() for k, v in weights.items() if k.endswith(".input_scale")]
    assert scales and all(s > 0 for s in scales)

