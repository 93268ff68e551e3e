"""`hunyuan-trtllm build`: checkpoint validation against the weight plan, the BuildConfig, the plan, and the engine
directory (built here by a stand-in for TensorRT-LLM in the same spawned worker processes the real build uses)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from hunyuan_trtllm.builder.build_config import A13B_CONTEXT, resolve_limits
from hunyuan_trtllm.builder.build_plan import make_plan
from hunyuan_trtllm.builder.checkpoint import open_checkpoint
from hunyuan_trtllm.builder.engines import build_engines
from hunyuan_trtllm.builder.rank_build import RankJob, RankResult, engine_path, run_rank_jobs
from hunyuan_trtllm.builder.validate import checkpoint_digest, validate_rank_files
from hunyuan_trtllm.checkpoints.convert import convert
from hunyuan_trtllm.checkpoints.fp8 import linear_weight_names
from hunyuan_trtllm.checkpoints.fp8_scales import Fp8Scales
from hunyuan_trtllm.checkpoints.mapping import Mapping
from hunyuan_trtllm.checkpoints.source import open_source
from hunyuan_trtllm.checkpoints.weight_plan import WeightPlan
from hunyuan_trtllm.cli import cli
from hunyuan_trtllm.errors import UserError
from hunyuan_trtllm.serve.repository import read_engine_facts
from hunyuan_trtllm.synth.checkpoint import synth_config

from .conftest import SHARED

A13B_CONFIG = SHARED / "fixtures" / "hunyuan-files" / "a13b" / "config.json"


def run(*args):
    return CliRunner().invoke(cli, ["build", *(str(a) for a in args)])


def fp8_scales(model: Path, mapping: Mapping) -> Fp8Scales:
    """Made-up per-tensor scales for every linear (their values do not matter to a build)."""
    spec = open_source(model).spec
    names = linear_weight_names(WeightPlan.build(spec, mapping, torch.bfloat16))
    kv = {layer: 0.02 for layer in range(spec.num_layers) if spec.is_kv_producer(layer)}
    return Fp8Scales({n: 0.001 for n in names}, {n: 0.01 for n in names}, kv, origin="test")


@pytest.fixture(scope="module")
def checkpoints(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """Tiny conversions of every architecture, one of them FP8 with an FP8 KV cache."""
    base = tmp_path_factory.mktemp("build-ckpts")
    layouts = {"a13b": Mapping(tp=2, moe_ep=2), "large": Mapping(tp=2, pp=2, moe_ep=2), "dense": Mapping(tp=2)}
    out = {}
    for arch, mapping in layouts.items():
        out[arch] = base / arch
        convert(tiny_models[arch], out[arch], mapping, dtype="float32")
    mapping = Mapping(tp=2, moe_ep=2)
    out["a13b-fp8"] = base / "a13b-fp8"
    convert(tiny_models["a13b"], out["a13b-fp8"], mapping, dtype="fp8", scales=fp8_scales(tiny_models["a13b"], mapping),
            kv_cache_fp8=True)
    return out


def copy_of(ckpt: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(ckpt, tmp_path / "ckpt"))


# ---- reading a converted checkpoint back --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a13b", "large", "dense", "a13b-fp8"])
def test_plan_read_back_from_config_equals_the_converters_plan(checkpoints, name):
    manifest = json.loads((checkpoints[name] / "manifest.json").read_text())
    model = open_checkpoint(checkpoints[name])
    ours = {r: [(t["name"], t["shape"], t["dtype"]) for t in ts] for r, ts in model.plan.to_json().items()}
    theirs = {r: [(t["name"], t["shape"], t["dtype"]) for t in ts] for r, ts in manifest["plan"].items()}
    assert ours == theirs
    for field in ("architecture", "num_layers", "num_kv_heads", "head_dim", "num_experts", "top_k",
                  "expert_intermediate_size", "shared_intermediate_size", "cla_share_factor", "rope_alpha"):
        assert getattr(model.spec, field) == manifest["spec"][field], field
    assert model.fp8 == model.kv_cache_fp8 == (name == "a13b-fp8")


def test_validation_accepts_a_converted_checkpoint_and_digests_it(checkpoints, tmp_path):
    model = open_checkpoint(checkpoints["large"])
    files = validate_rank_files(model.path, model.plan)
    assert [f.rank for f in files] == [0, 1, 2, 3]
    digest = checkpoint_digest(model.path, files)
    ckpt = copy_of(checkpoints["large"], tmp_path)
    rank = load_file(ckpt / "rank3.safetensors")
    save_file({k: v.clone() for k, v in reversed(rank.items())}, ckpt / "rank3.safetensors")  # same tensors, new order
    copied = open_checkpoint(ckpt)
    assert checkpoint_digest(ckpt, validate_rank_files(ckpt, copied.plan)) != digest


def tamper(ckpt: Path, rank: int, change) -> None:
    tensors = load_file(ckpt / f"rank{rank}.safetensors")
    change(tensors)
    save_file(tensors, ckpt / f"rank{rank}.safetensors")


FC = "transformer.layers.1.mlp.fc.weight"
BROKEN = {
    "missing tensor": (lambda t: t.pop(FC), f"rank1.safetensors: tensor '{FC}' is missing"),
    "wrong shape": (lambda t: t.update({FC: t[FC][:, :-2].contiguous()}),
                    f"tensor '{FC}' has shape [4, 126, 128], the weight plan for rank 1 needs [4, 128, 128]"),
    "wrong dtype": (lambda t: t.update({FC: t[FC].bfloat16()}), f"tensor '{FC}' is BF16, the weight plan"),
    "extra tensor": (lambda t: t.update({"transformer.layers.9.mlp.fc.weight": t[FC].clone()}),
                     "unexpected tensor 'transformer.layers.9.mlp.fc.weight'"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_each_broken_tensor_is_one_line_naming_file_and_tensor(checkpoints, tmp_path, case):
    change, message = BROKEN[case]
    ckpt = copy_of(checkpoints["a13b"], tmp_path)
    tamper(ckpt, 1, change)
    result = run(ckpt, "--dry-run")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr and str(ckpt) in result.stderr


def test_missing_and_unexpected_rank_files(checkpoints, tmp_path):
    ckpt = copy_of(checkpoints["a13b"], tmp_path)
    shutil.copy(ckpt / "rank1.safetensors", ckpt / "rank2.safetensors")
    (ckpt / "rank1.safetensors").unlink()
    result = run(ckpt, "--dry-run")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "rank1.safetensors: rank file is missing" in result.stderr and "(and 1 more problem)" in result.stderr
    (ckpt / "rank2.safetensors").rename(ckpt / "rank1.safetensors")
    (ckpt / "rank1.safetensors").write_bytes((ckpt / "rank1.safetensors").read_bytes()[:-64])
    assert "rank1.safetensors: truncated" in run(ckpt, "--dry-run").stderr


@pytest.mark.parametrize(("path", "value", "field"), [
    (("moe", "normalization_mode"), 0, "moe.normalization_mode"),
    (("rotary_base",), 10000.0, "rotary_base"),
    (("mapping", "moe_tp_size"), 2, "mapping.moe_tp_size"),
    (("quantization", "quant_algo"), "FP8", "quantization.exclude_modules"),
])
def test_an_edited_config_json_is_refused_naming_the_field(checkpoints, tmp_path, path, value, field):
    ckpt = copy_of(checkpoints["a13b"], tmp_path)
    config = json.loads((ckpt / "config.json").read_text())
    section = config
    for key in path[:-1]:
        section = section[key]
    section[path[-1]] = value
    (ckpt / "config.json").write_text(json.dumps(config))
    result = run(ckpt, "--dry-run")
    assert result.exit_code == 2 and f"field '{field}'" in result.stderr


def test_an_hf_model_or_an_engine_dir_is_not_a_checkpoint(tiny_models, tmp_path):
    assert "run hunyuan-trtllm convert first" in run(tiny_models["a13b"], "--dry-run").stderr
    (tmp_path / "config.json").write_text(json.dumps({"build_config": {}, "pretrained_config": {}}))
    assert "already an engine directory" in run(tmp_path, "--dry-run").stderr


def test_dry_run_of_a_converted_checkpoint(checkpoints):
    plan = dry_run_json(checkpoints["a13b-fp8"])
    assert plan["checkpoint"]["rank_files_validated"] and len(plan["checkpoint"]["digest"]) == 64
    assert [(r["rank"], r["device"]) for r in plan["ranks"]] == [(0, 0), (1, 1)]  # the checkpoint's 2 GPUs per node
    assert plan["tokenizer"] and Path(plan["tokenizer"], "hy.tiktoken").is_file()  # the source the manifest names
    assert plan["build_config"]["plugin_config"]["use_fp8_context_fmha"] is True
    table = run(checkpoints["a13b-fp8"], "--dry-run")
    assert table.exit_code == 0 and "paged, fp8" in table.stdout and "match the weight plan" in table.stdout
    settings = json.loads(table.stdout[table.stdout.index("{"):])
    assert settings == plan["build_config"] and "Examples:" in run("--help").stdout


# ---- BuildConfig and limits ---------------------------------------------------------------------------------


def dry_run_json(*args) -> dict:
    result = run(*args, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def a13b_config() -> Path:
    if not A13B_CONFIG.is_file():
        pytest.skip("../shared (the released Hunyuan-A13B config.json) is absent")
    return A13B_CONFIG


@pytest.mark.parametrize("dtype", ["bfloat16", "fp8"])
def test_a13b_tp8_ep8_plan_and_build_config(a13b_config, dtype):
    plan = dry_run_json(a13b_config, "--from-config", "--tp", 8, "--ep", 8, "--dtype", dtype)
    settings, plugins = plan["build_config"], plan["build_config"]["plugin_config"]
    fp8 = dtype == "fp8"
    assert plugins["gemm_plugin"] == ("fp8" if fp8 else "auto") and plugins["use_fp8_context_fmha"] is fp8
    assert plugins["gpt_attention_plugin"] == plugins["moe_plugin"] == plugins["dtype"] == "bfloat16"
    assert plugins["context_fmha"] and plugins["use_paged_context_fmha"] and plugins["remove_input_padding"]
    assert plugins["paged_kv_cache"] and settings["kv_cache_type"] == "PAGED" and settings["strongly_typed"]
    assert (settings["max_batch_size"], settings["max_input_len"], settings["max_seq_len"],
            settings["max_num_tokens"], settings["max_beam_width"]) == (64, 8192, 32768, 8192, 1)
    assert [(r["rank"], r["device"], r["moe_ep_rank"]) for r in plan["ranks"]] == [(r, r, r) for r in range(8)]
    assert plan["checkpoint"]["quantization"]["quant_algo"] == ("FP8" if fp8 else None)
    assert not plan["checkpoint"]["converted"] and plan["workers"] == 8


def test_fp8_engines_are_about_half_the_bf16_ones(a13b_config):
    sizes = {dtype: dry_run_json(a13b_config, "--from-config", "--tp", 8, "--ep", 8, "--dtype", dtype)["ranks"][3]
             ["weight_bytes"] for dtype in ("bfloat16", "fp8")}
    assert 0.5 < sizes["fp8"] / sizes["bfloat16"] < 0.6  # expert GEMMs in 1 byte; embeddings, lm_head, norms not


def test_large_tp8_ep8_fp8_plan_from_a_full_size_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(synth_config("large", "full-width", layers=64)))
    plan = dry_run_json(tmp_path, "--from-config", "--tp", 8, "--ep", 8, "--dtype", "fp8", "--kv-cache-dtype", "fp8")
    assert plan["checkpoint"]["architecture"] == "HunYuanForCausalLM" and len(plan["ranks"]) == 8
    assert plan["checkpoint"]["quantization"]["kv_cache_quant_algo"] == "FP8"
    assert plan["build_config"]["plugin_config"]["gemm_plugin"] == "fp8"
    table = run(tmp_path, "--from-config", "--tp", 8, "--ep", 8, "--dtype", "fp8", "--dry-run")
    assert table.exit_code == 0 and "cuda:7" in table.stdout and '"use_fp8_context_fmha": true' in table.stdout


def test_a13b_accepts_256k_and_refuses_more(a13b_config):
    plan = dry_run_json(a13b_config, "--from-config", "--max-seq-len", A13B_CONTEXT, "--max-input-len", 131072)
    assert plan["build_config"]["max_seq_len"] == 262144 and plan["position_table"] == 262144
    assert any("RoPE table extended" in note for note in plan["notes"])
    result = run(a13b_config, "--from-config", "--max-seq-len", A13B_CONTEXT + 1, "--dry-run")
    assert result.exit_code == 2 and "--max-seq-len 262145 exceeds the model's context of 262144" in result.stderr


@pytest.mark.parametrize("arch", ["large", "dense"])
def test_other_models_stop_at_max_position_embeddings(checkpoints, arch):
    spec = open_checkpoint(checkpoints[arch]).spec
    assert resolve_limits(spec, max_seq_len=spec.max_position_embeddings).max_seq_len == spec.max_position_embeddings
    with pytest.raises(UserError, match=f"exceeds the model's context of {spec.max_position_embeddings} tokens "
                                        f"\\(max_position_embeddings"):
        resolve_limits(spec, max_seq_len=spec.max_position_embeddings + 1)


def test_defaults_are_capped_and_explicit_limits_checked(checkpoints):
    import dataclasses

    spec = dataclasses.replace(open_checkpoint(checkpoints["dense"]).spec, max_position_embeddings=4096)
    limits = resolve_limits(spec, max_batch_size=1)
    assert (limits.max_seq_len, limits.max_input_len, limits.max_num_tokens) == (4096, 4096, 4096)
    for kwargs, flag in (({"max_input_len": 5000}, "--max-input-len 5000 exceeds --max-seq-len 4096"),
                         ({"max_num_tokens": 5000, "max_batch_size": 1}, "--max-num-tokens 5000 exceeds"),
                         ({"max_batch_size": 0}, "--max-batch-size must be a positive integer")):
        with pytest.raises(UserError, match=flag):
            resolve_limits(spec, **kwargs)


def test_flags_that_do_not_go_together(checkpoints, tiny_models):
    assert "-o/--output ENGINES is required" in run(checkpoints["a13b"]).stderr
    assert "--from-config only plans" in run(tiny_models["a13b"], "--from-config", "-o", "x").stderr
    assert "--tp applies with --from-config" in run(checkpoints["a13b"], "--tp", 2, "--dry-run").stderr
    assert "--workers must be at least 1" in run(checkpoints["a13b"], "--dry-run", "--workers", 0).stderr


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_llm") is not None, reason="TensorRT-LLM is installed here")
def test_build_without_tensorrt_llm_is_one_line_and_writes_nothing(checkpoints, tmp_path):
    cache = tmp_path / "cache" / "timing.cache"
    result = run(checkpoints["a13b"], "-o", tmp_path / "engines", "--timing-cache", cache)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "TensorRT-LLM is not installed" in result.stderr and "tensorrt-llm/release:1.2.1" in result.stderr
    assert list(tmp_path.iterdir()) == []


# ---- building (TensorRT-LLM replaced by a stand-in that writes what Engine.save writes) ------------------------


def fake_build(job: RankJob) -> RankResult:
    """Write rank{N}.engine (recording whether the timing cache was there to read) and, on rank 0, config.json
    and the updated timing cache, as TensorRT-LLM's build() and Engine.save() do."""
    settings = job.build_config
    cache = Path(settings["input_timing_cache"])
    seen = cache.read_text() if cache.is_file() else "none"
    engine_path(job.out_dir, job.rank).write_text(f"engine {job.rank}; cache seen: {seen}")
    if job.rank == 0:
        pretrained = json.loads((job.checkpoint / "config.json").read_text())
        pretrained["max_position_embeddings"] = job.position_table
        engine_config = {"version": "1.2.1", "pretrained_config": pretrained, "build_config": settings}
        (job.out_dir / "config.json").write_text(json.dumps(engine_config))
        Path(settings["output_timing_cache"]).write_text(f"tactics from a build on cuda:{job.device}")
    return RankResult(job.rank, job.device, 0.01, engine_path(job.out_dir, job.rank).stat().st_size)


def fail_on_rank_1(job: RankJob) -> RankResult:
    if job.rank == 1:
        raise RuntimeError("Engine building failed, please check the error log.\ndetails")
    return fake_build(job)


def timed_job(job: RankJob) -> RankResult:
    """Record when this rank ran (for the scheduling test)."""
    start = time.time()
    time.sleep(0.3)
    (job.out_dir / f"rank{job.rank}.times").write_text(f"{job.device} {start} {time.time()}")
    return RankResult(job.rank, job.device, time.time() - start, 0)


def plan_for(ckpt: Path, tmp_path: Path, **kwargs):
    model = open_checkpoint(ckpt)
    limits = resolve_limits(model.spec, max_batch_size=4, max_seq_len=512)
    digest = checkpoint_digest(ckpt, validate_rank_files(ckpt, model.plan))
    return make_plan(model, limits, 2, None, tmp_path / "cache" / "timing.cache", None, checkpoint_digest=digest,
                     **kwargs)


def test_engine_dir_layout_plan_tokenizer_and_timing_cache(checkpoints, tmp_path, monkeypatch):
    plan = plan_for(checkpoints["a13b"], tmp_path)
    assert plan.tokenizer_dir is not None and (plan.tokenizer_dir / "hy.tiktoken").is_file()  # the manifest's source
    first = build_engines(plan, tmp_path / "engines", "1.2.1", build=fake_build)
    out = tmp_path / "engines"
    assert sorted(p.name for p in out.iterdir()) == ["build_plan.json", "config.json", "rank0.engine", "rank1.engine",
                                                     "tokenizer"]
    assert {"hy.tiktoken", "tokenizer_config.json", "generation_config.json"} <= set(first["tokenizer_files"])
    assert (out / "rank0.engine").read_text() == "engine 0; cache seen: none"  # the cache appears when rank 0 ends
    assert plan.timing_cache.read_text() == "tactics from a build on cuda:0"
    recorded = json.loads((out / "build_plan.json").read_text())
    assert recorded["checkpoint"]["digest"] == plan.checkpoint_digest and recorded["tensorrt_llm"] == "1.2.1"
    assert [(r["rank"], r["device"]) for r in recorded["ranks"]] == [(0, 0), (1, 1)]
    assert all(r["engine_bytes"] > 0 and "seconds" in r for r in recorded["ranks"])
    facts = read_engine_facts(out)  # what triton-repo / serve read from an engine directory
    assert (facts.tp, facts.max_seq_len, facts.max_batch_size, facts.paged_context_fmha) == (2, 512, 4, False)
    assert recorded["build_config"]["plugin_config"]["context_fmha"] is False  # float32: FMHA kernels are 16/8-bit
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "engines"]  # no partial directory left

    from hunyuan_trtllm.builder import engines  # the command, with TensorRT-LLM and two GPUs stood in for

    monkeypatch.setattr(engines, "tensorrt_llm_version", lambda: "1.2.1")
    monkeypatch.setattr(engines, "require_gpus", lambda: 2)
    monkeypatch.setattr(engines, "build_engines", lambda *args, **kw: build_engines(*args, build=fake_build, **kw))
    again = run(checkpoints["a13b"], "-o", tmp_path / "engines-2", "--timing-cache", plan.timing_cache,
                "--max-seq-len", 1024, "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["build_config"]["max_seq_len"] == 1024
    reused = (tmp_path / "engines-2" / "rank0.engine").read_text()
    assert reused == "engine 0; cache seen: tactics from a build on cuda:0"
    assert sorted(p.name for p in plan.timing_cache.parent.iterdir()) == ["timing.cache"]
    table = run(checkpoints["a13b"], "-o", tmp_path / "engines-3", "--timing-cache", plan.timing_cache)
    assert table.exit_code == 0 and "build_plan.json" in table.stdout and "rank 1 built on cuda:1" in table.stderr


def test_a_failed_rank_leaves_no_engine_directory(checkpoints, tmp_path):
    plan = plan_for(checkpoints["a13b"], tmp_path)
    with pytest.raises(UserError, match=r"rank 1 on cuda:1 failed: RuntimeError: Engine building failed, please "
                                        r"check the error log\. \(see the log above\)$"):
        build_engines(plan, tmp_path / "engines", "1.2.1", build=fail_on_rank_1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
    assert not any(plan.timing_cache.parent.glob(".timing.cache.partial-*"))
    with pytest.raises(UserError, match="already exists and is not empty"):
        (tmp_path / "engines").mkdir()
        (tmp_path / "engines" / "old").write_text("")
        build_engines(plan, tmp_path / "engines", "1.2.1", build=fake_build)


def test_ranks_run_in_parallel_but_never_two_on_one_gpu(tmp_path):
    devices = [0, 0, 1, 2]  # ranks 0 and 1 share a GPU; three GPUs but only two workers
    jobs = [RankJob(r, d, tmp_path, tmp_path, "HunYuanMoEV1ForCausalLM", {}, 0) for r, d in enumerate(devices)]
    done = []
    results = run_rank_jobs(jobs, 2, build=timed_job, done=done.append)
    assert [r.rank for r in results] == [0, 1, 2, 3] and sorted(r.rank for r in done) == [0, 1, 2, 3]
    spans = [[float(x) for x in (tmp_path / f"rank{r}.times").read_text().split()[1:]] for r in range(4)]
    assert spans[0][1] <= spans[1][0]  # rank 1 waited for rank 0's GPU
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = [sum(step for _, step in events[: i + 1]) for i in range(len(events))]
    assert max(running) <= 2
