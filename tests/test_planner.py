"""The planner: weight bytes per rank equal the rank files `convert` really writes; KV bytes, fit verdicts and decode
ceilings equal numbers derived by hand from the published configs; the JSON contract; one-line flag errors."""

from __future__ import annotations

import json
import math
import struct
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from hunyuan_trtllm.builder.planner import make_plan
from hunyuan_trtllm.checkpoints.convert import convert
from hunyuan_trtllm.checkpoints.mapping import Mapping
from hunyuan_trtllm.checkpoints.prompts import DEFAULT_PROMPTS
from hunyuan_trtllm.checkpoints.source import open_source
from hunyuan_trtllm.cli import cli
from hunyuan_trtllm.errors import UserError
from hunyuan_trtllm.reference.calibrate import calibrate

from .conftest import SHARED

PRESETS = Path(__file__).resolve().parents[1] / "hunyuan_trtllm" / "builder" / "presets"
H100 = 80 * 10**9
KIB = 1024

# Every (tp, moe_ep, pp) on 4 and 2 GPUs that the tiny models accept, derived by hand: tiny a13b has 8 heads,
# 2 KV heads, 8 experts of width 64, 4 layers; tiny large has 4 experts and CLA pairs (0,1) (2,3), so pp 4 would put
# consumer layer 1 on its own stage; tiny dense has 2 layers and no experts (moe_ep 1 only).
EXPECTED_LAYOUTS = {
    ("a13b", 4): {(4, 1, 1), (4, 2, 1), (4, 4, 1), (2, 1, 2), (2, 2, 2), (1, 1, 4)},
    ("large", 4): {(4, 1, 1), (4, 2, 1), (4, 4, 1), (2, 1, 2), (2, 2, 2)},
    ("dense", 4): {(4, 1, 1), (2, 1, 2)},  # 2 layers: no pp 4
    ("a13b", 2): {(2, 1, 1), (2, 2, 1), (1, 1, 2)},
    ("large", 2): {(2, 1, 1), (2, 2, 1), (1, 1, 2)},
    ("dense", 2): {(2, 1, 1), (1, 1, 2)},
}


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def safetensors_data_bytes(path: Path) -> int:
    """Bytes of every tensor in a safetensors file, read from its header (8-byte length, then JSON)."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return sum(end - begin for name, entry in header.items() if name != "__metadata__"
               for begin, end in [entry["data_offsets"]])


def preset_plan(preset: str, gpu: str, gpus: int, dtype: str = "bf16", nodes: int = 1, **kw) -> dict:
    return make_plan(None, preset, gpu, gpus, nodes, dtype, kw.pop("kv_cache_dtype", None),
                     kw.pop("max_seq_len", None), **kw)


def config_dir(tmp_path: Path, preset: str, **changes) -> Path:
    """A model directory holding a preset's config.json with some fields changed (per-layer lists cut to fit)."""
    config = json.loads((PRESETS / f"{preset}.json").read_text())
    config.update(changes)
    for key in ("moe_intermediate_size", "moe_topk", "num_shared_expert"):
        if isinstance(config.get(key), list):
            config[key] = config[key][: config["num_hidden_layers"]]
    path = tmp_path / preset
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def tiny_scales(tiny_models):
    """FP8 scales of each tiny model, calibrated on the built-in prompts (the converter needs real ones)."""
    return {arch: calibrate(open_source(path), list(DEFAULT_PROMPTS.values())) for arch, path in tiny_models.items()}


# ---- weight bytes: the plan's bytes are the converter's bytes ------------------------------------------------


@pytest.mark.parametrize("world", [4, 2])
@pytest.mark.parametrize("arch", ["a13b", "large", "dense"])
@pytest.mark.parametrize("dtype,kv_cache_dtype", [("bf16", "bf16"), ("fp8", "fp8"), ("fp8", "bf16")])
def test_weight_bytes_per_rank_equal_the_converted_rank_files(tiny_models, tiny_scales, tmp_path, arch, world,
                                                              dtype, kv_cache_dtype):
    plan = make_plan(str(tiny_models[arch]), None, "h100", world, 1, dtype, kv_cache_dtype, 64)
    layouts = {(lay["tp"], lay["moe_ep"], lay["pp"]): lay for lay in plan["layouts"]}
    assert set(layouts) == EXPECTED_LAYOUTS[(arch, world)]
    for (tp, ep, pp), layout in layouts.items():
        out = tmp_path / f"tp{tp}-ep{ep}-pp{pp}"
        fp8 = {"scales": tiny_scales[arch], "kv_cache_fp8": kv_cache_dtype == "fp8"} if dtype == "fp8" else {}
        convert(tiny_models[arch], out, Mapping(tp=tp, pp=pp, moe_ep=ep), dtype="fp8" if fp8 else "bfloat16", **fp8)
        written = [safetensors_data_bytes(out / f"rank{r}.safetensors") for r in range(world)]
        assert layout["weight_bytes_by_rank"] == written, (tp, ep, pp)
        assert layout["weight_bytes_per_rank"] == max(written)


def test_fp8_kv_cache_adds_exactly_its_scale_tensors(tiny_models):
    """FP8 KV adds one float32 scale per layer (a stage's layers) and nothing else: 4 bytes x layers per rank."""
    def by_rank(kv: str) -> list[int]:
        plan = make_plan(str(tiny_models["large"]), None, "h100", 2, 1, "fp8", kv, 64)
        return next(lay for lay in plan["layouts"] if lay["pp"] == 2)["weight_bytes_by_rank"]

    assert [a - b for a, b in zip(by_rank("fp8"), by_rank("bf16"), strict=True)] == [2 * 4, 2 * 4]


# ---- KV cache: the published configs' numbers ------------------------------------------------------------------


def test_kv_bytes_per_token_of_the_real_configs(tmp_path):
    a13b = preset_plan("hunyuan-a13b", "h100", 8)["model"]["kv_bytes_per_token"]
    assert a13b == {"bf16": 2 * 32 * 8 * 128 * 2, "fp8": 2 * 32 * 8 * 128} == {"bf16": 128 * KIB, "fp8": 64 * KIB}
    large = preset_plan("hunyuan-large", "h100", 8)["model"]["kv_bytes_per_token"]
    assert large == {"bf16": 2 * (64 // 2) * 8 * 80 * 2, "fp8": 40 * KIB} and large["bf16"] == 80 * KIB
    no_cla = make_plan(str(config_dir(tmp_path, "hunyuan-large", use_cla=False)), None, "h100", 8, 1, "bf16", None,
                       None)
    assert no_cla["model"]["kv_bytes_per_token"]["bf16"] == 160 * KIB


def test_a13b_preset_is_the_published_config():
    published = SHARED / "fixtures" / "hunyuan-files" / "a13b" / "config.json"
    if not published.is_file():
        pytest.skip("../shared is absent")
    assert (PRESETS / "hunyuan-a13b.json").read_bytes() == published.read_bytes()


def test_kv_bytes_per_token_per_rank_split_and_replicated():
    large = {(lay["tp"], lay["moe_ep"], lay["pp"]): lay for lay in preset_plan("hunyuan-large", "h200", 8, nodes=2)
             ["layouts"]}
    # tp16 > 8 KV heads: each rank keeps one replicated head, for all 32 KV-owning layers
    assert large[(16, 16, 1)]["kv_bytes_per_token_per_rank"] == 32 * 2 * 1 * 80 * 2
    # tp8 pp2: one head each, 16 of the 32 KV-owning layers per stage
    assert large[(8, 8, 2)]["kv_bytes_per_token_per_rank"] == 16 * 2 * 1 * 80 * 2
    a13b = {(lay["tp"], lay["pp"]): lay for lay in preset_plan("hunyuan-a13b", "h100", 8)["layouts"]}
    assert a13b[(4, 2)]["kv_bytes_per_token_per_rank"] == 16 * 2 * (8 // 4) * 128 * 2


def test_concurrency_is_the_kv_pool_in_whole_blocks():
    plan = preset_plan("hunyuan-a13b", "h100", 8, max_seq_len=30000)
    best = plan["recommended"]
    assert (best["tp"], best["pp"]) == (8, 1)
    pool = math.floor(0.9 * (H100 - best["weight_bytes_per_rank"] - best["workspace_bytes_per_rank"]))
    assert best["kv_cache_bytes_per_rank"] == pool
    per_sequence = math.ceil(30000 / 32) * 32 * 16 * KIB  # 938 blocks of 32 tokens x 16 KiB per token on tp8
    assert best["max_concurrent_sequences"] == pool // per_sequence > 0
    half = preset_plan("hunyuan-a13b", "h100", 8, max_seq_len=30000, free_fraction=0.45)["recommended"]
    assert half["kv_cache_bytes_per_rank"] == math.floor(0.45 * (H100 - best["weight_bytes_per_rank"]
                                                                 - best["workspace_bytes_per_rank"]))


# ---- fit verdicts -------------------------------------------------------------------------------------------


def test_a13b_bf16_does_not_fit_one_h100():
    plan = preset_plan("hunyuan-a13b", "h100", 1)
    (layout,) = plan["layouts"]
    assert not layout["fits"] and layout["overflow"] == "weights" and layout["reason"].startswith("weights:")
    assert layout["weight_bytes_per_rank"] > 160e9  # 80.4B parameters x 2 bytes
    assert layout["max_concurrent_sequences"] == 0 and plan["recommended"] is None


def test_a13b_fp8_fits_one_h200():
    plan = preset_plan("hunyuan-a13b", "h200", 1, dtype="fp8")
    best = plan["recommended"]
    assert best is not None and best["fits"] and (best["tp"], best["pp"]) == (1, 1)
    assert 80e9 < best["weight_bytes_per_rank"] < 85e9  # FP8 linears, 16-bit embedding/lm_head/norms, fp32 routers
    assert best["max_concurrent_sequences"] >= 1 and plan["kv_cache_dtype"] == "fp8"


@pytest.mark.parametrize("layers,max_seq_len,overflow", [(16, None, "weights"), (15, None, "workspace"),
                                                         (14, 100_000, "kv"), (14, None, None)])
def test_a_layout_that_cannot_fit_names_the_term_that_overflows(tmp_path, layers, max_seq_len, overflow):
    """A13B cut to 14-16 layers on one H100 (about 5 GB of weights a layer): each term in turn overflows."""
    model = config_dir(tmp_path, "hunyuan-a13b", num_hidden_layers=layers)
    (layout,) = make_plan(str(model), None, "h100", 1, 1, "bf16", None, max_seq_len)["layouts"]
    assert layout["overflow"] == overflow and layout["fits"] == (overflow is None)
    assert layout["reason"].startswith(f"{overflow or 'fits'}:")
    weights, workspace = layout["weight_bytes_per_rank"], layout["workspace_bytes_per_rank"]
    if overflow == "weights":
        assert weights > H100
    elif overflow == "workspace":
        assert weights < H100 < weights + workspace
    elif overflow == "kv":
        assert layout["kv_cache_bytes_per_rank"] < 100_000 * 128 * KIB and layout["max_concurrent_sequences"] == 0


# ---- decode ceilings ----------------------------------------------------------------------------------------


def test_batch1_ceiling_of_a13b_tp8_by_hand():
    """Bytes one tp8/ep8 rank reads per token, spelled out from the config, then KV at 32768 tokens."""
    h, layers = 4096, 32
    per_layer = (768 * h + h * 512  # qkv: (32 + 2 x 8) heads / 8 x 128 rows; attention dense: 4 heads x 128 columns
                 + 2 * h + 2 * 128  # input/post norms, q/k norms
                 + 768 * h + h * 384  # shared expert: up+gate 2 x 3072 / 8 rows, down 3072 / 8 columns
                 + 6144 * h + h * 3072)  # one whole routed expert: top-8 of 64 over 8 EP ranks is 1 per rank
    weights = 2 * (layers * per_layer + h + h + 16021 * h)  # + one embedding row, ln_f, lm_head rows (128168 / 8)
    weights += layers * 64 * h * 4  # float32 routers
    kv = 32768 * 16 * KIB
    plan = preset_plan("hunyuan-a13b", "h100", 8)
    layout = next(lay for lay in plan["layouts"] if (lay["tp"], lay["moe_ep"], lay["pp"]) == (8, 8, 1))
    assert layout["decode_tokens_per_s_batch1"] == pytest.approx(3.35e12 / (weights + kv), rel=1e-12)
    assert plan["model"]["active_params"] == pytest.approx(12.75e9, rel=5e-3)  # peers_perf.md §1
    assert plan["model"]["total_params"] == pytest.approx(80.4e9, rel=5e-3)
    assert layout["decode_tokens_per_s_compute_bound"] == pytest.approx(
        8 * 989.5e12 / (2 * plan["model"]["active_params"]))


def test_pipeline_stages_add_up_at_batch_1_and_expert_parallelism_does_not_help_top_1():
    layouts = {(lay["tp"], lay["moe_ep"], lay["pp"]): lay for lay in
               preset_plan("hunyuan-large", "h200", 8, dtype="fp8")["layouts"]}
    speed = {key: lay["decode_tokens_per_s_batch1"] for key, lay in layouts.items()}
    assert speed[(8, 1, 1)] > speed[(4, 1, 2)] > speed[(2, 1, 4)]  # TP splits a token's bytes, PP does not
    # top-1 of 16 experts: with ep8 one rank reads the whole chosen expert; with moe_tp8 every rank reads 1/8
    assert speed[(8, 1, 1)] > 2 * speed[(8, 8, 1)]


# ---- ranking, JSON contract, CLI -----------------------------------------------------------------------------


def test_ranking_prefers_fitting_fast_layouts_and_tp_within_a_node():
    plan = preset_plan("hunyuan-large", "h100", 8, nodes=2)
    fitting = [lay for lay in plan["layouts"] if lay["fits"]]
    assert plan["recommended"] == fitting[0] and (fitting[0]["tp"], fitting[0]["pp"]) == (8, 2)
    in_node = [lay for lay in fitting if not lay["tp_spans_nodes"]]
    assert fitting[: len(in_node)] == in_node  # tp16 across the two nodes comes after every in-node layout
    speeds = [lay["decode_tokens_per_s_batch1"] for lay in in_node]
    assert speeds == sorted(speeds, reverse=True)


def test_json_contract(tmp_path):
    result = run("plan", "--preset", "hunyuan-a13b", "--gpu", "h200", "--gpus", "1", "--dtype", "fp8", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {"model", "gpu", "gpus_per_node", "nodes", "dtype", "kv_cache_dtype", "max_seq_len", "layouts",
            "recommended", "source"} <= set(data)
    assert {"name", "architecture", "total_params", "active_params", "kv_bytes_per_token"} <= set(data["model"])
    assert set(data["model"]["kv_bytes_per_token"]) == {"bf16", "fp8"}
    assert {"name", "memory_bytes"} <= set(data["gpu"]) and data["gpu"]["memory_bytes"] == 141 * 10**9
    keys = {"tp", "pp", "moe_ep", "moe_tp", "nodes", "weight_bytes_per_rank", "kv_bytes_per_token_per_rank", "fits",
            "reason", "max_concurrent_sequences", "decode_tokens_per_s_batch1", "decode_tokens_per_s_compute_bound"}
    assert all(keys <= set(layout) for layout in data["layouts"]) and data["recommended"] == data["layouts"][0]
    assert (data["source"], data["dtype"], data["kv_cache_dtype"], data["max_seq_len"]) == (
        "preset:hunyuan-a13b", "fp8", "fp8", 32768)
    model = config_dir(tmp_path, "hunyuan-7b")
    local = json.loads(run("plan", model, "--gpu", "l40s", "--gpus", "2", "--json").stdout)
    assert local["source"] == str(model) and local["model"]["architecture"] == "HunYuanDenseV1ForCausalLM"


def test_table_for_people():
    result = run("plan", "--preset", "hunyuan-large", "--gpu", "h100", "--gpus", "8", "--nodes", "2")
    assert result.exit_code == 0, result.output
    assert "recommended: tp 8, ep 1, pp 2" in result.stdout and "workspace allowance (estimate)" in result.stdout
    assert "tensor parallelism across nodes" in result.stdout


@pytest.mark.parametrize("args,flag", [
    (["--preset", "hunyuan-a13b", "--gpu", "a100-80g", "--dtype", "fp8"], "--dtype fp8"),
    (["--preset", "hunyuan-a13b", "--gpu", "h100", "--kv-cache-dtype", "fp8"], "--kv-cache-dtype"),
    (["--preset", "hunyuan-a13b", "--gpu", "h100", "--gpus", "0"], "--gpus"),
    (["--preset", "hunyuan-a13b", "--gpu", "h100", "--nodes", "0"], "--nodes"),
    (["--preset", "hunyuan-a13b", "--gpu", "h100", "--max-seq-len", "0"], "--max-seq-len"),
    (["--preset", "hunyuan-a13b", "--gpu", "h100", "--free-gpu-memory-fraction", "1.5"], "--free-gpu-memory-fraction"),
    (["--gpu", "h100"], "--preset"),
    (["somewhere/model", "--preset", "hunyuan-a13b", "--gpu", "h100"], "--preset"),
])
def test_bad_input_is_one_line_naming_the_flag(args, flag):
    result = run("plan", *args)
    assert result.exit_code == 2 and result.stderr.startswith("error: ") and flag in result.stderr
    assert result.stderr.count("\n") == 1


def test_make_plan_checks_names_programs_pass():
    with pytest.raises(UserError, match="--gpu"):
        make_plan(None, "hunyuan-a13b", "h800", 8, 1, "bf16", None, None)
    with pytest.raises(UserError, match="--preset"):
        make_plan(None, "hunyuan-a52b", "h100", 8, 1, "bf16", None, None)


def test_64_rank_full_size_plans_stay_fast():
    start = time.perf_counter()
    plan = preset_plan("hunyuan-a13b", "h100", 8, dtype="fp8", nodes=8)
    seconds = time.perf_counter() - start
    assert len(plan["layouts"]) == 20 and all(len(lay["weight_bytes_by_rank"]) == 64 for lay in plan["layouts"])
    assert seconds < 20, f"{seconds:.1f} s for 20 layouts of 64 ranks (about 1 s on a 2-core machine)"
