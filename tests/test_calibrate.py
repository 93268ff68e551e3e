"""Streaming FP8 calibration: equal to a brute-force whole-model computation, clear errors, flat peak memory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hunyuan_trtllm.checkpoints.fp8_scales import Fp8Scales
from hunyuan_trtllm.checkpoints.prompts import DEFAULT_PROMPTS
from hunyuan_trtllm.checkpoints.source import SourceCheckpoint
from hunyuan_trtllm.checkpoints.tokenizer import HunyuanTokenizer
from hunyuan_trtllm.errors import UserError
from hunyuan_trtllm.reference.calibrate import calibrate, load_calibration_samples
from hunyuan_trtllm.reference.hf_forward import hf_forward
from hunyuan_trtllm.synth import configs as synth_configs
from hunyuan_trtllm.synth.checkpoint import synth_checkpoint

from .conftest import measure_rss

SAMPLES = list(DEFAULT_PROMPTS.values())  # router margins >= 2e-3 on the tiny presets (synth's seed scan)
MB = 1024 * 1024


def brute_force(model: Path, samples: list[list[int]]) -> tuple[Fp8Scales, set[str]]:
    """The scales written out plainly: the whole-model forward of each sample with recording hooks, then maxima.

    Also returns the experts' weight names that no token reached.
    """
    source = SourceCheckpoint(model)
    spec = source.spec
    weight_amax: dict[str, float] = {}
    input_amax: dict[str, float] = {}
    kv_amax: dict[int, float] = {}

    def linear(name: str, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        weight_amax[name] = weight.abs().max().item()
        input_amax[name] = max(input_amax.get(name, 0.0), x.abs().max().item())
        return x @ weight.T

    def kv_hook(layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        kv_amax[layer] = max(kv_amax.get(layer, 0.0), k.abs().max().item(), v.abs().max().item())

    for ids in samples:
        hf_forward(spec, source.get, ids, linear=linear, kv_hook=kv_hook)

    unreached = set()
    for layer in range(spec.num_layers):
        for proj in ("gate", "up", "down"):
            names = [f"model.layers.{layer}.mlp.experts.{e}.{proj}_proj.weight" for e in range(spec.num_experts)]
            reached_max = max((input_amax[n] for n in names if n in input_amax), default=0.0)
            for name in names:
                if name not in input_amax:
                    unreached.add(name)
                    weight_amax[name] = source.get(name).abs().max().item()
                    input_amax[name] = reached_max
    scales = Fp8Scales(
        weight={name: amax / 448 for name, amax in weight_amax.items()},
        activation={name: amax / 448 for name, amax in input_amax.items()},
        kv={layer: amax / 448 for layer, amax in kv_amax.items()},
    )
    return scales, unreached


def assert_same_scales(actual: Fp8Scales, expected: Fp8Scales) -> None:
    assert actual.weight.keys() == expected.weight.keys()
    assert actual.activation.keys() == expected.activation.keys()
    assert actual.kv.keys() == expected.kv.keys()
    for name, scale in expected.weight.items():
        assert actual.weight[name] == pytest.approx(scale, rel=1e-6), name
    for name, scale in expected.activation.items():
        assert actual.activation[name] == pytest.approx(scale, rel=1e-5), name
    for layer, scale in expected.kv.items():
        assert actual.kv[layer] == pytest.approx(scale, rel=1e-5), layer


# ---- scales ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["a13b", "large", "dense"])
def test_scales_equal_brute_force(tiny_models: dict[str, Path], arch: str) -> None:
    source = SourceCheckpoint(tiny_models[arch])
    spec = source.spec
    done: list[tuple[int, int]] = []
    scales = calibrate(source, SAMPLES, progress=lambda i, n: done.append((i, n)))
    expected, _ = brute_force(tiny_models[arch], SAMPLES)
    assert_same_scales(scales, expected)
    assert done == [(i + 1, spec.num_layers) for i in range(spec.num_layers)]
    assert scales.origin.startswith("calibration (3 samples")
    # KV scales only for the layers that own a cache: every layer, or Large's producers (consumers read theirs).
    assert sorted(scales.kv) == [layer for layer in range(spec.num_layers) if spec.is_kv_producer(layer)]
    if arch == "large":
        assert sorted(scales.kv) == [0, 2]
        assert "model.layers.1.self_attn.k_proj.weight" not in scales.weight
        assert "model.layers.1.self_attn.q_proj.weight" in scales.activation
    if arch != "dense":  # the router is not an FP8 linear
        assert not [name for name in scales.weight if ".mlp.gate.wg." in name]
        assert f"model.layers.0.mlp.experts.{spec.num_experts - 1}.down_proj.weight" in scales.weight


def test_unreached_experts_get_the_layers_max_input(tiny_models: dict[str, Path]) -> None:
    samples = [DEFAULT_PROMPTS["prompt_0"][:2]]  # 2 tokens, top-2 of 8 experts: most experts see no token
    scales = calibrate(SourceCheckpoint(tiny_models["a13b"]), samples)
    expected, unreached = brute_force(tiny_models["a13b"], samples)
    assert len(unreached) >= 3 * 4 * 4  # at least 4 of 8 experts per layer, 3 projections each, 4 layers
    assert_same_scales(scales, expected)


def test_samples_and_device_errors(tiny_models: dict[str, Path]) -> None:
    source = SourceCheckpoint(tiny_models["dense"])
    with pytest.raises(UserError, match="at least one sample"):
        calibrate(source, [])
    with pytest.raises(UserError, match="sample 1 is empty"):
        calibrate(source, [[1, 2], []])
    with pytest.raises(UserError, match="token id 5000 is outside"):
        calibrate(source, [[1, 5000]])
    with pytest.raises(UserError, match="'tpu' is not supported"):
        calibrate(source, SAMPLES, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            calibrate(source, SAMPLES, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(tiny_models: dict[str, Path]) -> None:
    source = SourceCheckpoint(tiny_models["large"])
    expected = calibrate(source, SAMPLES)
    scales = calibrate(source, SAMPLES, device="cuda")
    assert scales.kv.keys() == expected.kv.keys() and scales.weight == expected.weight
    for name, scale in expected.activation.items():
        assert scales.activation[name] == pytest.approx(scale, rel=1e-3), name


@pytest.mark.parametrize(
    ("name", "corrupt", "message"),
    [
        ("model.layers.0.self_attn.k_proj.weight", lambda t: t.index_fill_(0, torch.tensor([3]), float("nan")),
         "NaN or Inf"),
        ("model.layers.1.mlp.up_proj.weight", lambda t: t.zero_(), "all zeros"),
        ("model.layers.1.mlp.down_proj.weight", lambda t: t.index_fill_(1, torch.tensor([0]), float("inf")),
         "NaN or Inf"),
    ],
)
def test_bad_weights_name_the_tensor(tiny_models: dict[str, Path], tmp_path: Path, name, corrupt, message) -> None:
    model = tmp_path / "dense"
    shutil.copytree(tiny_models["dense"], model)
    weights = load_file(model / "model.safetensors")
    corrupt(weights[name])
    save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match=message) as error:
        calibrate(SourceCheckpoint(model), SAMPLES)
    assert name in str(error.value)


# ---- calibration text ----------------------------------------------------------------------------------------


def test_load_samples_from_jsonl(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    messages = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "Hello!"}]
    lines = [{"text": "def f(x):\n    return x * 2"}, {"messages": messages}, {"text": "春眠不觉晓 " * 20}]
    path = tmp_path / "calib.jsonl"
    path.write_text("\n".join(json.dumps(line, ensure_ascii=False) for line in lines) + "\n\n", encoding="utf-8")
    tokenizer = HunyuanTokenizer.from_model_dir(tiny_models["a13b"])
    samples = load_calibration_samples(path, tiny_models["a13b"], num_samples=10, seq_len=16)
    assert samples == [
        tokenizer.encode(lines[0]["text"])[:16],
        tokenizer.encode(tokenizer.render_chat(messages, add_generation_prompt=False))[:16],
        tokenizer.encode(lines[2]["text"])[:16],
    ]
    assert len(samples[2]) == 16
    assert load_calibration_samples(path, tiny_models["a13b"], num_samples=2, seq_len=16) == samples[:2]


def test_builtin_samples(tiny_models: dict[str, Path]) -> None:
    samples = load_calibration_samples(None, tiny_models["large"], num_samples=100, seq_len=64)
    assert len(samples) == 40
    assert all(0 < len(ids) <= 64 for ids in samples)
    assert sum(len(ids) == 64 for ids in samples) >= 20  # most lines are longer than 64 tokens
    assert load_calibration_samples(None, tiny_models["large"], num_samples=8, seq_len=32) == [
        ids[:32] for ids in samples[:8]
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "no calibration samples"),
        ("\n  \n", "no calibration samples"),
        ('{"text": "ok"}\n{"text": "broken\n', ":2: invalid JSON"),
        ('{"text": "ok"}\n\n{"prompt": "no text field"}\n', ":3: no text"),
        ('{"text": ""}\n', ":1: no text"),
        ('["text"]\n', ":1: expected a JSON object"),
        ('{"messages": [{"content": "no role"}]}\n', ":1: cannot render 'messages'"),
    ],
)
def test_jsonl_errors_name_file_and_line(tiny_models: dict[str, Path], tmp_path: Path, content, message) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message) as error:
        load_calibration_samples(path, tiny_models["a13b"], num_samples=4, seq_len=8)
    assert str(path) in str(error.value)
    with pytest.raises(UserError, match="cannot read"):
        load_calibration_samples(tmp_path / "missing.jsonl", tiny_models["a13b"], num_samples=4, seq_len=8)


# ---- memory ------------------------------------------------------------------------------------------------------

# Samples this process's RSS every 2 ms while calibrating (ru_maxrss would hide it under the import of torch).
# A first calibration of one sample warms torch's kernels and thread pools (a one-time ~17 MiB) before measuring.
PROBE_SETUP = """
import json
from pathlib import Path
from hunyuan_trtllm.reference.calibrate import calibrate
from hunyuan_trtllm.checkpoints.source import SourceCheckpoint
source = SourceCheckpoint(Path(sys.argv[1]))
samples = json.loads(sys.argv[2])
calibrate(source, samples[:1])  # one-time torch start-up costs, outside the measurement
"""
# glibc's default mmap threshold slides up to the largest block freed so far, after which the freed layers'
# sub-threshold blocks stay in the heap as holes: RSS then also holds about one more layer's worth of free
# memory (measured: 54 MiB for 4 layers, 105 for 8, 103 for 16). A fixed threshold returns every freed block of
# 128 KiB or more to the OS, so RSS shows what calibration itself holds.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def calibration_growth(model: Path, samples: list[list[int]]) -> int:
    """Peak RSS minus RSS before calibrating, in bytes, of a calibration in a fresh process."""
    before, peak = measure_rss(PROBE_SETUP, "calibrate(source, samples)", str(model), json.dumps(samples),
                               env=MALLOC_ENV)
    return peak - before


def test_peak_rss_is_one_layer_whatever_the_depth(tmp_path: Path, monkeypatch) -> None:
    # A13B's layout at a shrunk width: 16 experts of 512x512, ~27 MiB of bfloat16 per layer.
    dims = synth_configs.Dims(512, 2, 8, 2, 64, 16, 2, 512, 1003, True)
    monkeypatch.setitem(synth_configs.PRESET_DIMS, ("a13b", "full-width"), dims)
    synth_checkpoint(tmp_path / "shallow", "a13b", preset="full-width", layers=2)
    synth_checkpoint(tmp_path / "deep", "a13b", preset="full-width", layers=8)
    files = sorted((tmp_path / "deep").glob("*.safetensors"))
    deep_bytes = sum(f.stat().st_size for f in files)
    layer_bytes = (files[1].stat().st_size + files[2].stat().st_size) // 2  # shards 2, 3 hold one layer each

    generator = torch.Generator().manual_seed(0)
    samples = torch.randint(0, 1003, (8, 128), generator=generator).tolist()  # activations: 2 MiB per layer
    shallow = calibration_growth(tmp_path / "shallow", samples)
    deep = calibration_growth(tmp_path / "deep", samples)
    print(f"layer {layer_bytes / MB:.1f} MiB, deep model {deep_bytes / MB:.1f} MiB; "
          f"RSS growth: 2 layers {shallow / MB:.1f} MiB, 8 layers {deep / MB:.1f} MiB")
    # One layer plus activations and transients (a float32 copy of the weight in use, |x| for amax) ...
    assert deep <= layer_bytes + 16 * MB, f"calibrating 8 layers grew RSS by {deep / MB:.1f} MiB"
    # ... and a model 4x deeper costs (almost) nothing more.
    assert deep - shallow <= 6 * MB, (shallow / MB, deep / MB)
