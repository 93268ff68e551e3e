"""MODEL resolution (local directory or Hugging Face repo id from the local cache) and source layouts."""

from __future__ import annotations

import shutil

import pytest
import torch

from hunyuan_trtllm.checkpoints.source import Read, load_spec, open_source, resolve_model
from hunyuan_trtllm.errors import UserError


def fake_hub_cache(home, repo: str, model_dir) -> None:
    """Lay out a model as huggingface_hub's cache does: refs/main -> snapshots/<revision>/files."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    cache = home / "hub" / f"models--{repo.replace('/', '--')}"
    (cache / "refs").mkdir(parents=True)
    (cache / "refs" / "main").write_text(revision)
    shutil.copytree(model_dir, cache / "snapshots" / revision)


def test_repo_id_from_offline_cache(tiny_models, tmp_path, monkeypatch):
    fake_hub_cache(tmp_path, "tencent/Hunyuan-Tiny", tiny_models["dense"])
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    path = resolve_model("tencent/Hunyuan-Tiny")
    assert (path / "config.json").is_file()
    assert open_source("tencent/Hunyuan-Tiny").spec.architecture == "HunYuanDenseV1ForCausalLM"
    assert load_spec("tencent/Hunyuan-Tiny")[1].num_layers == 2
    with pytest.raises(UserError, match="not in the local Hugging Face cache"):
        resolve_model("tencent/Not-Cached")


def test_reads_only_the_requested_rows(tiny_models):
    src = open_source(tiny_models["a13b"])
    name = "model.layers.1.mlp.experts.5.down_proj.weight"
    full = src.get(name)
    assert torch.equal(src.read(Read(name, rows=(3, 9))), full[3:9])
    assert torch.equal(src.read(Read(name, cols=(16, 48))), full[:, 16:48])
    assert src.shape(name) == tuple(full.shape)


def test_fused_layout_reads_equal_separate(tiny_models, tmp_path):
    from hunyuan_trtllm.synth.checkpoint import synth_checkpoint

    fused_dir = tmp_path / "fused"
    synth_checkpoint(fused_dir, "large", preset="tiny", dtype="float32", fused=True)
    separate, fused = open_source(tiny_models["large"]), open_source(fused_dir)
    assert "model.layers.0.self_attn.qkv_proj.weight" in fused.tensors
    for name in ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                 "model.layers.2.self_attn.v_proj.weight", "model.layers.1.mlp.experts.2.gate_proj.weight",
                 "model.layers.3.mlp.shared_mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight"]:
        assert torch.equal(fused.get(name), separate.get(name)), name
        assert torch.equal(fused.read(Read(name, rows=(5, 27))), separate.read(Read(name, rows=(5, 27)))), name
