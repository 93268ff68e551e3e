"""Peak memory of a conversion does not grow with the model: two checkpoints 4x apart in size, same peak RSS."""

from __future__ import annotations

import json

import torch

from hunyuan_trtllm.checkpoints.hf_shapes import hf_shape
from hunyuan_trtllm.checkpoints.mapping import Mapping
from hunyuan_trtllm.checkpoints.safetensors_io import OutputEntry, save_file_streaming
from hunyuan_trtllm.checkpoints.spec import parse_spec
from hunyuan_trtllm.checkpoints.weight_plan import WeightPlan

from .conftest import measure_rss

CONFIG = {
    "architectures": ["HunYuanMoEV1ForCausalLM"], "model_type": "hunyuan", "hidden_size": 512,
    "num_attention_heads": 8, "num_key_value_heads": 2, "attention_head_dim": 64, "intermediate_size": 512,
    "moe_intermediate_size": [512], "num_experts": 16, "moe_topk": [2], "num_shared_expert": [1],
    "use_mixed_mlp_moe": True, "use_qk_norm": True, "vocab_size": 1024, "tie_word_embeddings": True,
    "rope_theta": 10000.0, "rope_scaling": {"type": "dynamic", "alpha": 1000.0, "factor": 1.0},
    "torch_dtype": "bfloat16",
}
MB = 1024 * 1024


def write_model(path, layers: int) -> int:
    """A random A13B-shaped bf16 checkpoint, written one tensor at a time; returns its size in bytes."""
    config = {**CONFIG, "num_hidden_layers": layers}
    spec = parse_spec(config)
    names = WeightPlan.build(spec, Mapping(), torch.bfloat16).hf_tensors()
    entries = [OutputEntry(n, torch.bfloat16, hf_shape(spec, n)) for n in names]
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    generator = torch.Generator().manual_seed(0)
    tensors = ((e.name, (0.8 + 0.4 * torch.rand(e.shape, generator=generator)).bfloat16()) for e in entries)
    save_file_streaming(path / "model.safetensors", tensors, entries)
    return (path / "model.safetensors").stat().st_size


def peak_rss(model, out, tp: int, ep: int) -> tuple[int, int]:
    """(RSS after imports, peak RSS) in bytes of a conversion in a fresh process."""
    setup = ("from pathlib import Path\nfrom hunyuan_trtllm.checkpoints.convert import convert\n"
             "from hunyuan_trtllm.checkpoints.mapping import Mapping")
    work = "convert(Path(sys.argv[1]), Path(sys.argv[2]), Mapping(tp=int(sys.argv[3]), moe_ep=int(sys.argv[4])))"
    return measure_rss(setup, work, str(model), str(out), str(tp), str(ep))


def test_peak_rss_is_flat_across_model_sizes(tmp_path):
    small = write_model(tmp_path / "small", layers=2)
    large = write_model(tmp_path / "large", layers=8)
    assert large > 3.5 * small
    largest_output = 16 * 2 * 512 * 512 * 2  # mlp.fc [E, 2I, H] in bf16 at tp 1: 16 MiB
    for tp, ep in [(1, 1), (2, 2)]:
        base_small, peak_small = peak_rss(tmp_path / "small", tmp_path / f"out-small-{tp}", tp, ep)
        base_large, peak_large = peak_rss(tmp_path / "large", tmp_path / f"out-large-{tp}", tp, ep)
        growth_small, growth_large = peak_small - base_small, peak_large - base_large
        # The conversion itself uses well under 2x the largest output tensor, whatever the model's size ...
        assert growth_large <= 2 * largest_output, f"tp{tp}: conversion grew RSS by {growth_large / MB:.1f} MiB"
        # ... and a model 4x larger costs (almost) nothing more.
        assert growth_large - growth_small <= 8 * MB, (growth_small / MB, growth_large / MB, large / MB)


def test_verify_runs_layer_by_layer_in_flat_memory(tmp_path):
    """verify holds one decoder layer of the checkpoint at a time: 4x the layers, (almost) the same peak."""
    growth = {}
    for name, layers in (("small", 2), ("large", 8)):
        write_model(tmp_path / name, layers=layers)
        peak_rss(tmp_path / name, tmp_path / f"ckpt-{name}", 2, 2)
        setup = "from pathlib import Path\nfrom hunyuan_trtllm.reference.verify import verify"
        work = "verify(Path(sys.argv[1]), sys.argv[2], reference='plain')"
        before, peak = measure_rss(setup, work, str(tmp_path / f"ckpt-{name}"), str(tmp_path / name))
        growth[name] = peak - before
    layer_fp32 = 16 * 3 * 512 * 512 * 4  # one layer's experts in float32, as the executor computes: 48 MiB
    assert growth["large"] - growth["small"] <= layer_fp32 // 2, {k: v / MB for k, v in growth.items()}
