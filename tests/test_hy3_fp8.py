"""Hy3 FP8: `convert --dtype fp8` with calibration, and Tencent's Hy3-FP8 release format imported without
calibration; the FP8 reference executor equals transformers' hy_v3 model fake-quantized independently here."""

from __future__ import annotations

import json
import random
import re
from contextlib import contextmanager

import pytest
import torch
from safetensors.torch import load_file

from hunyuan_trtllm.checkpoints.convert import convert
from hunyuan_trtllm.checkpoints.mapping import Mapping
from hunyuan_trtllm.checkpoints.prompts import DEFAULT_PROMPTS
from hunyuan_trtllm.checkpoints.quantize import quantize_checkpoint
from hunyuan_trtllm.checkpoints.source import SourceCheckpoint, open_source
from hunyuan_trtllm.reference.calibrate import calibrate
from hunyuan_trtllm.reference.executor import ReferenceExecutor
from hunyuan_trtllm.synth.checkpoint import synth_checkpoint
from hunyuan_trtllm.synth.fp8 import _synth_scales

from .conftest import golden, golden_logits

F8 = torch.float8_e4m3fn


def e4m3(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x rounded through float8 e4m3 with a per-tensor dequantization scale, back in float32."""
    return (x.float() / scale).clamp(-448, 448).to(F8).float() * scale


def merged_weight_scale(w: dict[str, float], name: str) -> float:
    """TensorRT-LLM's fused tensors share one scale: q/k/v, and [up; gate] of experts and the shared expert.
    The dense layer's gate and up are separate GatedMLP linears (fc, gate) and keep their own."""
    if re.search(r"self_attn\.[qkv]_proj", name):
        return max(w[re.sub(r"[qkv]_proj", p, name)] for p in ("q_proj", "k_proj", "v_proj"))
    if re.search(r"(experts\.\d+|shared_mlp)\.(up|gate)_proj", name):
        return max(w[re.sub(r"(up|gate)_proj", p, name)] for p in ("up_proj", "gate_proj"))
    return w[name]


def input_scale(a: dict[str, float], name: str) -> float:
    """Input scales of fused parts merge by max; a layer's experts share one per GEMM (max over the experts)."""
    if ".experts." in name:
        kind = "down_proj" if "down_proj" in name else "(up|gate)_proj"
        prefix = name.split(".experts.")[0] + ".experts."
        return max(v for k, v in a.items() if k.startswith(prefix) and re.search(kind, k))
    return merged_weight_scale(a, name)


@contextmanager
def quantized_expert_down_inputs(state: dict[str, float], down_shape: tuple[int, int]):
    """While active, transformers' expert loop sees e4m3-rounded inputs to each expert's down projection (the
    only [H, I] F.linear it calls; gate_up is [2I, H]) while ``state["on"]``, rounded with ``state["down"]``
    (both set per layer by hooks)."""
    original = torch.nn.functional.linear

    def linear(x, weight, bias=None):
        if tuple(weight.shape) == down_shape and state.get("on"):
            state["calls"] = state.get("calls", 0) + 1
            x = e4m3(x, state["down"])
        return original(x, weight, bias)

    torch.nn.functional.linear = linear
    try:
        yield
    finally:
        torch.nn.functional.linear = original


def fake_quantized_transformers(model_dir, weights, w_scales, a_scales, prompts, round_bf16: bool):
    """transformers' hy_v3 model with every FP8 linear's weight (``weights(name)``, Tencent names) and input
    rounded through e4m3 with TensorRT-LLM's merged scales; norms and embedding rounded to bfloat16 when the
    checkpoint stores them so; router, expert bias and lm_head as stored (float32)."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(  # eager experts: the loop that calls F.linear
        model_dir, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager").eval()
    assert model.config._experts_implementation == "eager"
    down_shape = (model.config.hidden_size, model.config.moe_intermediate_size)
    state: dict[str, float] = {}
    with torch.no_grad():
        if round_bf16:
            for name, p in model.named_parameters():
                if name.endswith("norm.weight") or "embed_tokens" in name:
                    p.copy_(p.bfloat16().float())
        for i, layer in enumerate(model.model.layers):
            base = f"model.layers.{i}."

            def set_linear(module, name, input_name=None):
                module.weight.copy_(e4m3(weights(name), merged_weight_scale(w_scales, name)))
                s = input_scale(a_scales, input_name or name)
                module.register_forward_pre_hook(lambda _m, args, s=s: (e4m3(args[0], s),))

            attn = layer.self_attn
            for p in ("q", "k", "v", "o"):
                set_linear(getattr(attn, f"{p}_proj"), f"{base}self_attn.{p}_proj.weight")
            mlp = layer.mlp
            if hasattr(mlp, "experts"):
                shared = mlp.shared_experts
                for p in ("gate", "up", "down"):
                    set_linear(getattr(shared, f"{p}_proj"), f"{base}mlp.shared_mlp.{p}_proj.weight")
                experts = mlp.experts
                for e in range(experts.num_experts):
                    gate, up, down = (f"{base}mlp.experts.{e}.{p}_proj.weight" for p in ("gate", "up", "down"))
                    fc = merged_weight_scale(w_scales, gate)
                    experts.gate_up_proj[e].copy_(torch.cat([e4m3(weights(gate), fc), e4m3(weights(up), fc)]))
                    experts.down_proj[e].copy_(e4m3(weights(down), w_scales[down]))
                fc_in, down_in = (input_scale(a_scales, f"{base}mlp.experts.0.{p}_proj.weight") for p in ("up", "down"))

                def enter(_m, args, fc_in=fc_in, down_in=down_in):
                    state.update(on=1.0, down=down_in)
                    return (e4m3(args[0], fc_in), *args[1:])

                experts.register_forward_pre_hook(enter)
                experts.register_forward_hook(lambda *_: state.update(on=0.0))
            else:
                for p in ("gate", "up", "down"):
                    set_linear(getattr(mlp, f"{p}_proj"), f"{base}mlp.{p}_proj.weight")
        with quantized_expert_down_inputs(state, down_shape):
            logits = [model(input_ids=torch.tensor([ids])).logits[0] for ids in prompts]
    assert state["calls"] > 0  # the expert down inputs really were rounded
    return logits


def samples_for(vocab: int, count: int = 8, length: int = 32) -> list[list[int]]:
    rng = random.Random(0)
    return [[rng.randrange(vocab) for _ in range(length)] for _ in range(count)]


def test_calibrated_fp8_equals_fake_quantized_transformers(tmp_path):
    path = golden("hy3-tiny")
    src = open_source(path)
    scales = calibrate(src, samples_for(src.spec.vocab_size))
    assert "model.layers.0.mlp.gate_proj.weight" in scales.activation  # the dense layer 0 is calibrated
    prompts = list(golden_logits(path)[0]["prompts"])
    expected = fake_quantized_transformers(path, src.get, scales.weight, scales.activation, prompts, round_bf16=True)
    for tp, ep, pp in ((2, 2, 1), (4, 2, 2)):
        out = tmp_path / f"tp{tp}-ep{ep}-pp{pp}"
        convert(path, out, Mapping(tp=tp, pp=pp, moe_ep=ep), dtype="fp8", scales=scales)
        executor = ReferenceExecutor(out)
        assert executor.fp8
        for ids, ref in zip(prompts, expected, strict=True):
            assert (executor.forward(ids) - ref).abs().max().item() <= 1e-4, (tp, ep, pp)


@pytest.fixture(scope="module")
def hy3_fp8_release(tmp_path_factory):
    """A synthetic Hy3 (bfloat16) and its copy in Tencent's Hy3-FP8 format."""
    base = tmp_path_factory.mktemp("hy3-fp8")
    synth_checkpoint(base / "bf16", "hy3", preset="tiny", dtype="bfloat16", min_router_gap=0.0)
    source = SourceCheckpoint(base / "bf16")
    quantize_checkpoint(source, base / "fp8", _synth_scales(source, "test"), kv_cache_fp8=True, format="tencent")
    stored = {k: v for f in (base / "fp8").glob("*.safetensors") for k, v in load_file(f).items()}
    return base / "bf16", base / "fp8", stored


def test_synth_writes_tencents_hy3_fp8_format(hy3_fp8_release):
    _, fp8, stored = hy3_fp8_release
    config = json.loads((fp8 / "config.json").read_text())["quantization_config"]
    assert config == {"quant_method": "fp8", "activation_scheme": "static", "kv_cache_scheme": "static",
                      "ignored_layers": ["lm_head", "model.embed_tokens"]}
    p = "model.layers.1."
    for linear in ("self_attn.q_proj", "mlp.experts.5.down_proj", "mlp.shared_mlp.up_proj"):
        assert stored[p + linear + ".weight"].dtype == F8
        assert stored[p + linear + ".weight_scale"].dtype == torch.bfloat16
        assert stored[p + linear + ".weight_scale"].shape == ()
        assert stored[p + linear + ".input_scale"].dtype == torch.float32
        assert stored[p + linear + ".input_scale"].shape == (1,)
    assert stored["model.layers.0.mlp.gate_proj.weight"].dtype == F8  # the dense layer too
    assert stored["lm_head.weight"].dtype == stored["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert stored[p + "mlp.router.gate.weight"].dtype == torch.bfloat16
    assert stored[p + "mlp.expert_bias"].dtype == torch.float32
    assert stored["model.layers.4.eh_proj.weight"].dtype == torch.bfloat16  # MTP layer present, unquantized


def test_hy3_fp8_release_imports_without_calibration(hy3_fp8_release, tmp_path):
    bf16, fp8, stored = hy3_fp8_release
    assert open_source(fp8).fp8
    out = tmp_path / "ckpt"
    convert(fp8, out, Mapping(tp=2, moe_ep=2), dtype="fp8")  # no scales given: the release's own

    def scale(name: str) -> float:
        return stored[name].float().item()

    for rank in range(2):
        t = load_file(out / f"rank{rank}.safetensors")
        p, s = "transformer.layers.2.", "model.layers.2."
        o_proj = stored[s + "self_attn.o_proj.weight"]
        width = o_proj.shape[1] // 2
        assert torch.equal(t[p + "attention.dense.weight"].view(torch.uint8),
                           o_proj[:, rank * width:(rank + 1) * width].contiguous().view(torch.uint8))
        assert t[p + "attention.dense.weights_scaling_factor"].item() == scale(s + "self_attn.o_proj.weight_scale")
        for local in range(4):  # experts' down projections are unmerged: their bytes pass through
            down = stored[s + f"mlp.experts.{rank * 4 + local}.down_proj.weight"]
            assert torch.equal(t[p + "mlp.proj.weight"][local].view(torch.uint8), down.view(torch.uint8))
            gate_up = [s + f"mlp.experts.{rank * 4 + local}.{x}_proj.weight_scale" for x in ("up", "gate")]
            assert t[p + "mlp.fc.weights_scaling_factor"][local].item() == max(scale(n) for n in gate_up)
        dense = stored["model.layers.0.mlp.up_proj.weight"]  # layer 0: GatedMLP gate = up_proj rows of this rank
        rows = dense.shape[0] // 2
        assert torch.equal(t["transformer.layers.0.mlp.gate.weight"].view(torch.uint8),
                           dense[rank * rows:(rank + 1) * rows].view(torch.uint8))
        qkv = [s + f"self_attn.{x}_proj" for x in "qkv"]
        assert t[p + "attention.qkv.weights_scaling_factor"].item() == max(scale(n + ".weight_scale") for n in qkv)
        assert t[p + "attention.qkv.activation_scaling_factor"].item() == max(scale(n + ".input_scale") for n in qkv)
        ups = [scale(k) for k in stored if re.fullmatch(s.replace(".", r"\.") + r"mlp\.experts\.\d+\.(up|gate)_proj"
                                                             r"\.input_scale", k)]
        assert len(set(ups)) > 1 and t[p + "mlp.fc.activation_scaling_factor"].item() == max(ups)
        assert t[p + "mlp.router.weight"].dtype == t[p + "mlp.expert_bias"].dtype == torch.float32

    weights = {k.removesuffix("_scale"): v for k, v in stored.items() if k.endswith(".weight_scale")}
    w_scales = {name: float(v) for name, v in weights.items()}
    a_scales = {k.removesuffix(".input_scale") + ".weight": float(v) for k, v in stored.items()
                if k.endswith(".input_scale")}

    def dequantized(name: str) -> torch.Tensor:  # the release's values, computed here from its bytes
        return stored[name].float() * w_scales[name]

    prompts = list(DEFAULT_PROMPTS.values())
    expected = fake_quantized_transformers(bf16, dequantized, w_scales, a_scales, prompts, round_bf16=False)
    executor = ReferenceExecutor(out)
    for ids, ref in zip(prompts, expected, strict=True):
        assert (executor.forward(ids) - ref).abs().max().item() <= 1e-4


def test_cli_calibrates_converts_and_verifies_a_synthetic_hy3(hy3_fp8_release, tmp_path):
    """synth's Hy3 carries a tokenizer.json, so the built-in calibration set runs end to end from the CLI."""
    from click.testing import CliRunner

    from hunyuan_trtllm.cli import cli

    bf16 = hy3_fp8_release[0]
    out = tmp_path / "fp8"
    result = CliRunner().invoke(cli, ["convert", str(bf16), "-o", str(out), "--tp", "2", "--ep", "2", "--dtype",
                                      "fp8", "--calib-builtin", "--calib-samples", "4", "--calib-seq-len", "32",
                                      "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    report = CliRunner().invoke(cli, ["verify", str(out), "--against", str(bf16), "--json"])
    data = json.loads(report.output[report.output.index("{"):])
    assert data["quantization"] == "FP8" and data["reference"].startswith("transformers (hy_v3)")
    assert 0.9 < data["min_cosine"] < 1.0  # random tiny weights: e4m3 moves logits a little
    assert report.exit_code == (0 if data["passed"] else 1) and data["passed"] == (data["min_cosine"] >= 0.99)
