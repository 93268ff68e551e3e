"""Synthetic checkpoints: Tencent's config dialects, tensor names and shapes, seeding, fused layouts, sharding."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from hunyuan_trtllm.checkpoints.hy_tokenizer import load_hy_tiktoken
from hunyuan_trtllm.checkpoints.prompts import DEFAULT_PROMPTS
from hunyuan_trtllm.checkpoints.spec import load_config, parse_spec
from hunyuan_trtllm.errors import UserError
from hunyuan_trtllm.reference.hf_forward import router_gaps
from hunyuan_trtllm.synth import checkpoint as synth
from hunyuan_trtllm.synth import configs as synth_configs
from hunyuan_trtllm.synth.checkpoint import generate_weights, synth_checkpoint, synth_config

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GOLDEN = SHARED / "fixtures" / "golden"
GOLDEN_SEEDS = {"a13b": 13035, "large": 52052, "dense": 7007}
ARCHS = ("a13b", "large", "dense")
ATTN = ["input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
        "self_attn.o_proj", "self_attn.query_layernorm", "self_attn.key_layernorm"]
MLP = ["gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Each tiny arch, separate (``a13b``) and fused (``a13b-fused``) layouts, default seed."""
    base = tmp_path_factory.mktemp("synth")
    paths = {}
    for arch in ARCHS:
        for fused in (False, True):
            paths[arch + "-fused" * fused] = base / (arch + "-fused" * fused)
            synth_checkpoint(paths[arch + "-fused" * fused], arch, fused=fused)
    return paths


def info(path: Path) -> dict:
    return json.loads((path / "synth_info.json").read_text())


def expected_names(arch: str, layers: int) -> set[str]:
    """Tencent's tensor names for a tiny preset, written out plainly."""
    names = {"model.embed_tokens.weight", "model.norm.weight"} | ({"lm_head.weight"} if arch == "large" else set())
    for layer in range(layers):
        attn = [a for a in ATTN if not (arch == "large" and layer % 2 and a[-6:] in ("k_proj", "v_proj"))]
        names |= {f"model.layers.{layer}.{a}.weight" for a in attn}
        if arch == "dense":
            names |= {f"model.layers.{layer}.mlp.{m}.weight" for m in MLP}
            continue
        names.add(f"model.layers.{layer}.mlp.gate.wg.weight")
        mlps = ["shared_mlp"] + [f"experts.{e}" for e in range(8 if arch == "a13b" else 4)]
        names |= {f"model.layers.{layer}.mlp.{x}.{m}.weight" for x in mlps for m in MLP}
    return names


@pytest.mark.parametrize(
    ("arch", "dims"),
    [
        ("a13b", dict(hidden_size=128, num_layers=4, num_heads=8, num_kv_heads=2, head_dim=16, num_experts=8, top_k=2,
                      expert_intermediate_size=64, shared_intermediate_size=64, cla_share_factor=1,
                      tie_word_embeddings=True)),
        ("large", dict(hidden_size=128, num_layers=4, num_heads=8, num_kv_heads=2, head_dim=16, num_experts=4,
                       top_k=1, expert_intermediate_size=64, shared_intermediate_size=64, cla_share_factor=2,
                       tie_word_embeddings=False)),
        ("dense", dict(hidden_size=128, num_layers=2, num_heads=8, num_kv_heads=4, head_dim=16, num_experts=0,
                       intermediate_size=128, cla_share_factor=1, tie_word_embeddings=True)),
    ],
)
def test_tiny_presets_parse_to_the_requested_shapes(tiny, arch: str, dims: dict) -> None:
    spec = parse_spec(load_config(tiny[arch] / "config.json"))
    for key, value in dims.items():
        assert getattr(spec, key) == value, key
    assert spec.vocab_size == 1003 and spec.vocab_size % 2 == 1  # padded at tp=2/4
    assert spec.torch_dtype == "float32" and spec.rope_alpha == 1000.0
    assert spec.num_heads % 4 == 0 and spec.num_layers % 2 == 0 and spec.num_experts % 4 == 0  # tp, pp, moe_ep
    assert spec.num_kv_heads == (4 if arch == "dense" else 2)  # MoE presets: KV heads duplicated at tp=4
    assert spec.eos_token_ids == ((796, 803) if arch != "large" else (796,))


def test_layers_override(tmp_path: Path) -> None:
    spec = synth_checkpoint(tmp_path / "large-3", "large", layers=3, min_router_gap=0.0)
    assert spec.num_layers == 3 and info(tmp_path / "large-3")["seed"] == 0
    assert set(load_file(tmp_path / "large-3" / "model.safetensors")) == expected_names("large", 3)


@pytest.mark.parametrize("arch", ARCHS)
def test_tensor_names_and_shapes_are_tencents(tiny, arch: str) -> None:
    weights = load_file(tiny[arch] / "model.safetensors")
    layers = 2 if arch == "dense" else 4
    assert set(weights) == expected_names(arch, layers)
    assert all(t.dtype == torch.float32 for t in weights.values())
    shapes = {name: tuple(t.shape) for name, t in weights.items()}
    kv_rows = 64 if arch == "dense" else 32
    assert shapes["model.embed_tokens.weight"] == (1003, 128)
    assert shapes["model.layers.0.self_attn.q_proj.weight"] == shapes["model.layers.0.self_attn.o_proj.weight"]
    assert shapes["model.layers.0.self_attn.k_proj.weight"] == (kv_rows, 128)
    assert shapes["model.layers.1.self_attn.key_layernorm.weight"] == (16,)
    mlp = "model.layers.1.mlp." + ("" if arch == "dense" else "experts.3.")
    assert shapes[mlp + "gate_proj.weight"] == (128 if arch == "dense" else 64, 128)
    assert shapes[mlp + "down_proj.weight"] == (128, 128 if arch == "dense" else 64)
    if arch != "dense":
        assert shapes["model.layers.3.mlp.gate.wg.weight"] == (8 if arch == "a13b" else 4, 128)
    with safe_open(tiny[arch] / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}


@pytest.mark.parametrize("arch", ARCHS)
def test_name_patterns_match_the_golden_fixture(tiny, arch: str) -> None:
    fixture = GOLDEN / f"{arch}-tiny" / "model.safetensors"
    if not fixture.is_file():
        pytest.skip("../shared is absent")

    def patterns(path: Path) -> set[str]:
        with safe_open(path, "pt") as f:
            return {re.sub(r"\.\d+\.", ".N.", name) for name in f.keys()}

    ours = patterns(tiny[arch] / "model.safetensors")
    assert ours - {"lm_head.weight"} == patterns(fixture)  # large-tiny is tied; our Large preset is not
    assert ("lm_head.weight" in ours) == (arch == "large")


def test_weights_follow_the_golden_recipe(tiny) -> None:
    weights = load_file(tiny["a13b"] / "model.safetensors")
    for name, tensor in weights.items():
        if name.endswith("norm.weight"):
            assert 0.8 <= tensor.min() and tensor.max() < 1.2 and tensor.std() > 0.05, name  # never all ones
    embed = weights["model.embed_tokens.weight"]
    assert abs(embed.std().item() - 0.05) < 2e-3 and abs(embed.mean().item()) < 2e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_generation_reproduces_the_golden_fixture_weights(arch: str) -> None:
    fixture = GOLDEN / f"{arch}-tiny" / "model.safetensors"
    if not fixture.is_file():
        pytest.skip("../shared is absent")
    expected = load_file(fixture)
    shapes = {name: tuple(t.shape) for name, t in expected.items()}
    for name, start, rows in generate_weights(shapes, GOLDEN_SEEDS[arch], torch.float32):
        assert start == 0 and torch.equal(rows, expected[name]), name


def test_chunked_generation_equals_whole_tensor_draws(monkeypatch) -> None:
    shapes = {"a.weight": (40, 24), "b.norm.weight": (128,), "c.weight": (7, 3)}
    whole = {name: rows for name, _, rows in generate_weights(shapes, 5, torch.float32)}
    monkeypatch.setattr(synth, "_CHUNK_ELEMENTS", 48)
    chunks: dict[str, list[torch.Tensor]] = {}
    for name, start, rows in generate_weights(shapes, 5, torch.float32):
        assert start == sum(len(r) for r in chunks.get(name, []))
        chunks.setdefault(name, []).append(rows)
    assert len(chunks["a.weight"]) == 20 and len(chunks["b.norm.weight"]) == 3
    assert all(torch.equal(torch.cat(chunks[name]), whole[name]) for name in shapes)


def test_same_seed_gives_identical_bytes(tiny, tmp_path: Path) -> None:
    again = synth_checkpoint(tmp_path / "dense", "dense")
    assert again == parse_spec(load_config(tiny["dense"] / "config.json"))
    for file in (tiny["dense"]).iterdir():
        assert (tmp_path / "dense" / file.name).read_bytes() == file.read_bytes(), file.name
    used = info(tiny["a13b"])["seed"]
    synth_checkpoint(tmp_path / "a13b", "a13b", seed=used)  # a good seed: the scan stops at once
    assert info(tmp_path / "a13b")["seed"] == used
    for name in ("model.safetensors", "config.json", "hy.tiktoken"):
        assert (tmp_path / "a13b" / name).read_bytes() == (tiny["a13b"] / name).read_bytes()
    synth_checkpoint(tmp_path / "other", "dense", seed=1)
    assert (tmp_path / "other" / "model.safetensors").read_bytes() != (tiny["dense"] / "model.safetensors").read_bytes()


@pytest.mark.parametrize("arch", ["a13b", "large"])
def test_router_margin_on_the_builtin_prompts(tiny, arch: str) -> None:
    recorded = info(tiny[arch])
    assert recorded["seed_requested"] == 0 and recorded["router_gap"] >= 2e-3
    weights = load_file(tiny[arch] / "model.safetensors")
    spec = parse_spec(load_config(tiny[arch] / "config.json"))
    gaps = [router_gaps(spec, weights.__getitem__, ids) for ids in DEFAULT_PROMPTS.values()]
    assert min(gaps) == pytest.approx(recorded["router_gap"], abs=1e-6)  # matmul rounding may differ a little
    assert info(tiny["dense"])["router_gap"] is None


def test_prompts_fit_every_tiny_vocabulary() -> None:
    assert list(DEFAULT_PROMPTS) == ["prompt_0", "prompt_1", "prompt_2"]
    assert len(DEFAULT_PROMPTS["prompt_2"]) == 24
    assert all(0 <= i < 1000 for ids in DEFAULT_PROMPTS.values() for i in ids)
    input_ids = GOLDEN / "a13b-tiny" / "input_ids.json"
    if input_ids.is_file():
        golden = json.loads(input_ids.read_text())
        assert {k: DEFAULT_PROMPTS[k] for k in golden} == golden


@pytest.mark.parametrize("arch", ARCHS)
def test_fused_layout_holds_the_same_model(tiny, arch: str) -> None:
    spec = parse_spec(load_config(tiny[arch] / "config.json"))
    plain, fused = load_file(tiny[arch] / "model.safetensors"), load_file(tiny[arch + "-fused"] / "model.safetensors")
    assert info(tiny[arch + "-fused"])["seed"] == info(tiny[arch])["seed"]
    heads, kv, d, hidden = spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.hidden_size
    group = heads // kv
    rebuilt = {}
    for name, tensor in fused.items():
        prefix = name.rsplit(".", 2)[0]
        if name.endswith("self_attn.qkv_proj.weight"):  # [kv, group + 2, d, hidden]: q heads of g, k_g, v_g
            blocks = tensor.view(kv, group + 2, d, hidden)
            rebuilt[prefix + ".q_proj.weight"] = blocks[:, :group].reshape(heads * d, hidden)
            rebuilt[prefix + ".k_proj.weight"] = blocks[:, group].reshape(kv * d, hidden)
            rebuilt[prefix + ".v_proj.weight"] = blocks[:, group + 1].reshape(kv * d, hidden)
        elif name.endswith("gate_and_up_proj.weight"):  # cat([up, gate])
            up, gate = tensor.chunk(2, dim=0)
            rebuilt[prefix + ".up_proj.weight"], rebuilt[prefix + ".gate_proj.weight"] = up, gate
        else:
            rebuilt[name] = tensor
    assert rebuilt.keys() == plain.keys()
    assert all(torch.equal(rebuilt[name], plain[name]) for name in plain)
    qkv = {n for n in fused if n.endswith("qkv_proj.weight")}
    assert len(qkv) == (2 if arch == "large" else spec.num_layers)  # CLA consumers keep q_proj alone
    assert not any(re.search(r"\.(k|v|gate|up)_proj\.weight$", n) for n in fused)
    if arch == "large":
        assert "model.layers.1.self_attn.q_proj.weight" in fused


@pytest.mark.parametrize("arch", ARCHS)
def test_tokenizer_files_agree_with_the_config(tiny, arch: str) -> None:
    config = load_config(tiny[arch] / "config.json")
    enc = load_hy_tiktoken(tiny[arch] / "hy.tiktoken")
    assert enc.n_vocab == config["vocab_size"] == 1003
    ids = {t: enc.encode(t, allowed_special="all")[0] for t in ("<|eos|>", "<|pad|>", "<|extra_0|>", "<|extra_5|>")}
    assert config["eos_token_id"] == ids["<|eos|>"] and config["pad_token_id"] == ids["<|pad|>"]
    assert config["bos_token_id"] == 1
    if arch != "large":
        assert config["sep_token_id"] == ids["<|extra_0|>"] and config["eod_token_id"] == ids["<|extra_5|>"]
    generation = json.loads((tiny[arch] / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [ids["<|eos|>"], ids["<|extra_5|>"]]
    assert generation["pad_token_id"] == ids["<|pad|>"] and generation["bos_token_id"] == 1
    tokenizer = json.loads((tiny[arch] / "tokenizer_config.json").read_text())
    assert tokenizer["eos_token"] == "<|eos|>" and tokenizer["pad_token"] == "<|pad|>"
    assert "chat_template" not in tokenizer and tokenizer["model_max_length"] > 0
    text = "用户：hello world 123"
    assert enc.decode(enc.encode(text)) == text


def test_configs_are_tencents_dialects() -> None:
    real = SHARED / "fixtures" / "hunyuan-files" / "a13b" / "config.json"
    if not real.is_file():
        pytest.skip("../shared is absent")
    assert synth_config("a13b", "full-width", layers=32) == json.loads(real.read_text())
    for arch in ARCHS:
        fixture = json.loads((GOLDEN / f"{arch}-tiny" / "config.json").read_text())
        ours = synth_config(arch)
        assert ours.keys() == fixture.keys()
        assert ours["model_type"] == fixture["model_type"] and ours["architectures"] == fixture["architectures"]
    assert synth_config("large")["moe_topk"] == 1 and synth_config("large")["use_cla"] is True


def test_bad_arguments_are_user_errors(tmp_path: Path) -> None:
    for kwargs in ({"arch": "a52b"}, {"arch": "a13b", "preset": "huge"}, {"arch": "a13b", "dtype": "int8"},
                   {"arch": "a13b", "layers": 0}):
        with pytest.raises(UserError) as err:
            synth_checkpoint(tmp_path / "x", **kwargs)
        assert "\n" not in str(err.value)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        synth_checkpoint(tmp_path / "busy", "dense")
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]  # nothing half-written left behind


def test_failures_leave_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    def boom(*_args) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(synth, "_write_tokenizer_files", boom)
    with pytest.raises(OSError):
        synth_checkpoint(tmp_path / "model", "dense")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    (tmp_path / "empty").mkdir()
    synth_checkpoint(tmp_path / "empty", "dense")  # an existing empty folder is fine
    assert (tmp_path / "empty" / "model.safetensors").is_file()


def check_sharded(path: Path, layers: int) -> dict[str, str]:
    """The index names every tensor of every shard exactly once; total_size is the tensor bytes."""
    index = json.loads((path / "model.safetensors.index.json").read_text())
    shard_names = [f"model-{i:05d}-of-{layers:05d}.safetensors" for i in range(1, layers + 1)]
    assert sorted(p.name for p in path.glob("*.safetensors")) == shard_names
    found, total = {}, 0
    for shard in shard_names:
        with safe_open(path / shard, "pt") as f:
            for name in f.keys():
                found[name] = shard
                piece = f.get_slice(name)
                total += math.prod(piece.get_shape()) * {"BF16": 2, "F32": 4}[piece.get_dtype()]
    assert index["weight_map"] == found and index["metadata"]["total_size"] == total
    return found


def test_full_width_dense_one_layer(tmp_path: Path) -> None:
    """The real 7B widths, one layer: ~1.5 GB of bfloat16 in about 10 s, memory bounded by one row chunk."""
    spec = synth_checkpoint(tmp_path / "dense-fw", "dense", preset="full-width", layers=1)
    assert (spec.hidden_size, spec.intermediate_size, spec.vocab_size, spec.torch_dtype) == (
        4096, 14336, 128167, "bfloat16")
    assert set(check_sharded(tmp_path / "dense-fw", 1)) == expected_names("dense", 1)
    with safe_open(tmp_path / "dense-fw" / "model-00001-of-00001.safetensors", "pt") as f:
        embed = f.get_slice("model.embed_tokens.weight")
        assert embed.get_dtype() == "BF16" and embed.get_shape() == [128167, 4096]
        rows = embed[-3:]
    assert 0.04 < rows.float().std() < 0.06
    enc = load_hy_tiktoken(tmp_path / "dense-fw" / "hy.tiktoken")
    assert enc.n_vocab == 128167 and enc.encode("<|eos|>", allowed_special="all") == [127960]
    assert info(tmp_path / "dense-fw")["router_gap"] is None


def test_full_width_sharding_with_shrunk_widths(tmp_path: Path, monkeypatch) -> None:
    small = synth_configs.Dims(64, 2, 4, 2, 16, 4, 1, 32, 128167, False)
    monkeypatch.setitem(synth_configs.PRESET_DIMS, ("large", "full-width"), small)
    spec = synth_checkpoint(tmp_path / "large", "large", preset="full-width", layers=3, fused=True, progress=True)
    assert spec.num_layers == 3 and spec.hidden_size == 64 and spec.torch_dtype == "bfloat16"
    files = check_sharded(tmp_path / "large", 3)
    assert files["model.embed_tokens.weight"] == "model-00001-of-00003.safetensors"
    assert files["lm_head.weight"] == files["model.norm.weight"] == "model-00003-of-00003.safetensors"
    for name, shard in files.items():
        if name.startswith("model.layers."):
            assert shard == f"model-{int(name.split('.')[2]) + 1:05d}-of-00003.safetensors", name
    assert "model.layers.2.self_attn.qkv_proj.weight" in files and "model.layers.1.self_attn.q_proj.weight" in files
