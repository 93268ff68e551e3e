"""Bad input gets one clear line and a non-zero exit; an interrupted conversion never looks complete."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from hunyuan_trtllm.checkpoints import rank_tasks
from hunyuan_trtllm.checkpoints.convert import convert
from hunyuan_trtllm.checkpoints.mapping import Mapping
from hunyuan_trtllm.checkpoints.source import open_source
from hunyuan_trtllm.checkpoints.weight_plan import WeightPlan
from hunyuan_trtllm.cli import cli
from hunyuan_trtllm.reference.executor import ReferenceExecutor


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def model(tmp_path, tiny_models):
    path = tmp_path / "model"
    shutil.copytree(tiny_models["a13b"], path)
    return path


def rewrite(path, change) -> None:
    tensors = load_file(path / "model.safetensors")
    change(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_missing_tensor(model, tmp_path):
    rewrite(model, lambda t: t.pop("model.layers.1.mlp.experts.3.up_proj.weight"))
    assert_one_line_error(run("convert", model, "-o", tmp_path / "out"), "model.layers.1.mlp.experts.3.up_proj.weight",
                          "missing")


def test_wrong_shape(model, tmp_path):
    def shrink(tensors):
        tensors["model.layers.0.self_attn.k_proj.weight"] = tensors["model.layers.0.self_attn.k_proj.weight"][:16]

    rewrite(model, shrink)
    assert_one_line_error(run("convert", model, "-o", tmp_path / "out"), "model.layers.0.self_attn.k_proj.weight",
                          "[16, 128]", "[32, 128]")


def test_truncated_file(model, tmp_path):
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    assert_one_line_error(run("convert", model, "-o", tmp_path / "out"), "model.safetensors", "truncated")


def test_missing_shard(model, tmp_path):
    tensors = load_file(model / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, model / file, metadata={"format": "pt"})
    (model / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {n: f for f, part in shards.items() for n in part}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    (model / "model-00002-of-00002.safetensors").unlink()
    assert_one_line_error(run("inspect", model), "model-00002-of-00002.safetensors", "missing")
    assert_one_line_error(run("convert", model, "-o", tmp_path / "out"), "model-00002-of-00002.safetensors")


def test_unsupported_architecture(model, tmp_path):
    config = json.loads((model / "config.json").read_text())
    config["architectures"] = ["Qwen3MoeForCausalLM"]
    (model / "config.json").write_text(json.dumps(config))
    assert_one_line_error(run("convert", model, "-o", tmp_path / "out"), "Qwen3MoeForCausalLM",
                          "HunYuanMoEV1ForCausalLM", "HunYuanForCausalLM", "HunYuanDenseV1ForCausalLM")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [(["--tp", "3"], "attention heads"), (["--tp", "8", "--ep", "3"], "--ep 3 must divide --tp 8"),
     (["--tp", "2", "--ep", "4"], "must divide --tp"), (["--pp", "5"], "--pp 5 exceeds the 4 layers")],
)
def test_bad_layouts(tiny_models, tmp_path, args, fragment):
    out = tmp_path / "out"
    assert_one_line_error(run("convert", tiny_models["a13b"], "-o", out, *args), fragment)
    assert not (out / "rank0.safetensors").exists()


def test_experts_not_divisible(tiny_models, tmp_path):
    result = run("convert", tiny_models["large"], "-o", tmp_path / "out", "--tp", "8", "--ep", "8")
    assert_one_line_error(result, "does not divide the 4 experts")


def test_output_not_writable(tiny_models, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert_one_line_error(run("convert", tiny_models["dense"], "-o", blocker), "not a directory")
    assert_one_line_error(run("convert", tiny_models["dense"], "-o", blocker / "sub"), "not writable")


def test_second_run_into_finished_directory(tiny_models, tmp_path):
    out = tmp_path / "out"
    assert run("convert", tiny_models["dense"], "-o", out, "--tp", "2", "--quiet").exit_code == 0
    assert_one_line_error(run("convert", tiny_models["dense"], "-o", out, "--tp", "2"), "already holds a finished")
    assert_one_line_error(run("convert", tiny_models["dense"], "-o", out, "--tp", "1"), "different settings")
    assert run("convert", tiny_models["dense"], "-o", out, "--tp", "1", "--overwrite", "--quiet").exit_code == 0
    assert sorted(p.name for p in out.glob("rank*")) == ["rank0.safetensors"]


def test_unknown_model(tmp_path):
    assert_one_line_error(run("inspect", tmp_path / "nope"), "no such directory")
    assert_one_line_error(run("inspect", tmp_path), "config.json")


def test_interrupted_conversion_never_looks_complete_and_resumes(tiny_models, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = rank_tasks.materialize
    calls = {"n": 0}
    plan = WeightPlan.build(open_source(tiny_models["a13b"]).spec, Mapping(tp=2, moe_ep=2), torch.float32)
    rank0_tasks = sum(len(t.parts) if t.stacked else 1 for t in plan.ranks[0])

    def crash_midway(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == rank0_tasks + 3:  # rank 0 is finished, rank 1 is cut off
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(rank_tasks, "materialize", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        convert(tiny_models["a13b"], out, Mapping(tp=2, moe_ep=2), dtype="float32")
    assert (out / "rank0.safetensors").is_file()
    assert not (out / "rank1.safetensors").exists() and not (out / ".rank1.safetensors.partial").exists()
    assert not (out / "config.json").exists()
    assert json.loads((out / "manifest.json").read_text())["complete"] is False

    monkeypatch.setattr(rank_tasks, "materialize", real)
    result = convert(tiny_models["a13b"], out, Mapping(tp=2, moe_ep=2), dtype="float32")
    assert result.skipped_ranks == [0] and result.converted_ranks == [1] and result.complete
    assert not list(out.glob(".*.partial"))
    fresh = tmp_path / "fresh"
    convert(tiny_models["a13b"], fresh, Mapping(tp=2, moe_ep=2), dtype="float32")
    ids = [1, 5, 9, 200, 17]
    assert torch.equal(ReferenceExecutor(out).forward(ids), ReferenceExecutor(fresh).forward(ids))


def test_ranks_split_over_two_runs(tiny_models, tmp_path):
    out = tmp_path / "out"
    first = convert(tiny_models["large"], out, Mapping(tp=2, pp=2), dtype="float32", ranks=[0, 1])
    assert not first.complete and not (out / "config.json").exists()
    second = convert(tiny_models["large"], out, Mapping(tp=2, pp=2), dtype="float32", ranks=[2, 3])
    assert second.complete and (out / "config.json").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["ranks_done"] == [0, 1, 2, 3]
    assert {f["file"] for f in manifest["source"]["files"]} >= {"config.json", "model.safetensors"}


def test_zero_key_norm_refused_for_cla_fold(tmp_path, tiny_models):
    model = tmp_path / "model"
    shutil.copytree(tiny_models["large"], model)

    def zero(tensors):
        tensors["model.layers.0.self_attn.key_layernorm.weight"][3] = 0.0

    rewrite(model, zero)
    assert_one_line_error(run("convert", model, "-o", tmp_path / "out"), "model.layers.0.self_attn.key_layernorm",
                          "divide by zero")


def hostile_copy(tiny_models, tmp_path, arch="a13b"):
    """A model directory linking the tiny model's files, with its own config.json to damage."""
    path = tmp_path / "hostile"
    path.mkdir()
    for file in tiny_models[arch].iterdir():
        (path / file.name).symlink_to(file)
    (path / "config.json").unlink()
    return path, json.loads((tiny_models[arch] / "config.json").read_text())


@pytest.mark.parametrize(("field", "value", "fragment"), [
    ("num_attention_heads", 0, "'num_attention_heads' must be a positive integer, got 0"),
    ("num_hidden_layers", "four", "'num_hidden_layers' must be a positive integer, got 'four'"),
    ("hidden_size", "1e400", "'hidden_size' must be a positive integer, got inf"),
    ("rope_scaling", "dynamic", "'rope_scaling' must be an object"),
    ("eos_token_id", "abc", "'eos_token_id' must be a token id"),
    ("moe_intermediate_size", ["x"], "'moe_intermediate_size' must be a positive integer"),
    ("architectures", 5, "'architectures' must be a list"),
    ("use_qk_norm", "false", "'use_qk_norm' must be true or false"),
    ("rope_scaling", {"type": "dynamic", "alpha": "big"}, "'rope_scaling.alpha' must be a positive number"),
    ("num_key_value_heads", 3, "not a multiple of 'num_key_value_heads' 3"),
    ("quantization_config", "fp8", "'quantization_config' must be an object"),
])
def test_hostile_config_field_is_one_error_line(tiny_models, tmp_path, field, value, fragment):
    model, config = hostile_copy(tiny_models, tmp_path)
    text = json.dumps({**config, field: value})
    if value == "1e400":  # a JSON number too large for a float: Python reads it as inf
        text = text.replace('"1e400"', "1e400")
    (model / "config.json").write_text(text)
    out = tmp_path / "out"
    assert_one_line_error(run("convert", model, "-o", out, "--quiet"), f"{model / 'config.json'}", fragment)
    assert_one_line_error(run("inspect", model), fragment)
    assert not out.exists()


def write_safetensors(path, header, data: bytes) -> None:
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + data)


def f32(offsets, shape=(2,)):
    return {"dtype": "F32", "shape": list(shape), "data_offsets": list(offsets)}


@pytest.mark.parametrize(("header", "data", "fragment"), [
    ([1, 2, 3], b"", "a JSON list, not an object"),
    ("hello", b"", "a JSON str, not an object"),
    ({"a": f32([-8, 0])}, bytes(8), "tensor 'a' has corrupt data_offsets [-8, 0]"),
    ({"a": f32([8, 0])}, bytes(8), "tensor 'a' has corrupt data_offsets [8, 0]"),
    ({"a": f32([0, 8]), "b": f32([4, 12])}, bytes(12), "tensor 'b' overlaps tensor 'a'"),
    ({"a": f32([0, 8]), "b": f32([0, 8])}, bytes(8), "overlaps tensor"),
    ({"a": f32([8, 16])}, bytes(16), "tensor 'a' starts at byte 8"),
    ({"a": f32([0, 8])}, bytes(16), "8 bytes after the last tensor"),
    ({"a": f32([0, 8])}, bytes(4), "truncated: tensor 'a' ends at byte 8"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0.0, 8.0]}}, bytes(8), "corrupt data_offsets"),
    ({"a": {"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]}}, bytes(8), "corrupt shape"),
    ({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, bytes(8), "unsupported or corrupt dtype"),
    ({"a": 7}, b"", "unsupported or corrupt dtype"),
    ({"__metadata__": {"format": 1}, "a": f32([0, 8])}, bytes(8), "'__metadata__' must map strings to strings"),
])
def test_corrupt_safetensors_header_is_refused_like_the_library_does(tmp_path, header, data, fragment):
    from safetensors import SafetensorError, safe_open

    from hunyuan_trtllm.checkpoints.safetensors_io import read_header
    from hunyuan_trtllm.errors import CheckpointError

    path = tmp_path / "model.safetensors"
    write_safetensors(path, header, data)
    with pytest.raises(SafetensorError), safe_open(path, framework="pt"):  # the library refuses it too
        pass
    with pytest.raises(CheckpointError) as caught:
        read_header(path)
    assert str(caught.value).startswith(f"{path}: ") and fragment in str(caught.value), caught.value


def test_overlapping_offsets_in_a_model_are_one_error_line(tiny_models, tmp_path):
    model, config = hostile_copy(tiny_models, tmp_path, "dense")
    (model / "config.json").write_text(json.dumps(config))
    weights = model / "model.safetensors"
    raw = weights.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    victim = "model.layers.0.input_layernorm.weight"
    begin, end = header[victim]["data_offsets"]
    header[victim]["data_offsets"] = [begin - 4, end - 4]  # reads 4 bytes of the tensor before it
    weights.unlink()
    write_safetensors(weights, header, raw[8 + size:])
    assert_one_line_error(run("convert", model, "-o", tmp_path / "out"), str(weights), "overlaps")


@pytest.mark.parametrize(("weight_map", "fragment"), [
    ({"model.embed_tokens.weight": 7}, "weight_map['model.embed_tokens.weight'] is 7"),
    ({"model.embed_tokens.weight": "../elsewhere/model.safetensors"}, "in the same directory"),
    ([1, 2], "malformed index"),
])
def test_malformed_index_is_one_error_line(tiny_models, tmp_path, weight_map, fragment):
    model, config = hostile_copy(tiny_models, tmp_path, "dense")
    (model / "config.json").write_text(json.dumps(config))
    (model / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert_one_line_error(run("convert", model, "-o", tmp_path / "out"), "model.safetensors.index.json", fragment)


def test_verify_a_model_directory_says_it_is_not_a_converted_checkpoint(tiny_models):
    result = run("verify", tiny_models["dense"], "--against", tiny_models["dense"])
    assert_one_line_error(result, "config.json", "not a converted TensorRT-LLM checkpoint")


def test_huge_rank_range_is_refused_before_it_is_built(tiny_models, tmp_path):
    import time

    start = time.perf_counter()
    result = run("convert", tiny_models["dense"], "-o", tmp_path / "out", "--ranks", "0-30000000")
    assert_one_line_error(result, "--ranks '0-30000000'", "0..0")
    assert time.perf_counter() - start < 5  # it used to build a 30M-element set first (12 s, 2.4 GB)
    assert not (tmp_path / "out").exists()
