"""Hunyuan-Large on TensorRT-LLM's PyTorch backend: the pure pieces of hunyuan_trtllm.plugins.pytorch (no TensorRT-LLM).

References are independent of the code under test: Tencent's golden logits and README facts, the tensors present in
the golden checkpoint, ModelSpec, hf_forward, and the fused layouts built here by hand from design note 8.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from hunyuan_trtllm.checkpoints.spec import ModelSpec, load_config, parse_spec
from hunyuan_trtllm.errors import CheckpointError, MappingError
from hunyuan_trtllm.plugins.pytorch.cla import ClaPlan, SharedKV
from hunyuan_trtllm.plugins.pytorch.routing import route_top_k
from hunyuan_trtllm.plugins.pytorch.weights import fold_query_norm, prepare_weights, split_fused_qkv
from hunyuan_trtllm.reference.hf_forward import hf_forward
from hunyuan_trtllm.serve.repository import RepoOptions, llmapi_settings
from hunyuan_trtllm.serve.trtllm_serve import pytorch_plugin_dir
from tests.conftest import golden, golden_logits

PLUGIN_DIR = (Path(__file__).resolve().parents[1] / "hunyuan_trtllm" / "plugins" / "pytorch" / "custom_module"
              / "hunyuan_large_trtllm")
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def large() -> tuple[Path, ModelSpec, dict[str, torch.Tensor]]:
    path = golden("large-tiny")
    return path, parse_spec(load_config(path / "config.json")), load_file(path / "model.safetensors")


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# ---- CLA: which layer reads which KV cache ----------------------------------------------------------------------
def test_cla_plan_matches_spec_and_the_golden_checkpoint(large) -> None:
    path, spec, _ = large
    plan = ClaPlan.from_spec(spec)
    assert list(plan.producer_of) == [spec.kv_source_layer(layer) for layer in range(spec.num_layers)]
    with safe_open(path / "model.safetensors", "pt") as f:  # a layer owns a KV cache iff it stores k_proj/v_proj
        stored = set(f.keys())
    owners = [layer for layer in range(spec.num_layers) if f"model.layers.{layer}.self_attn.k_proj.weight" in stored]
    assert plan.kv_layers == owners == [0, 2]  # the README's owner -> consumer pairs: 0 -> 1, 2 -> 3
    assert [plan.consumers(p) for p in owners] == [[1], [3]]
    assert [plan.is_last_consumer(layer) for layer in range(4)] == [False, True, False, True]


@pytest.mark.parametrize("layers,factor", [(7, 3), (5, 2), (4, 1)])
def test_cla_plan_other_factors(large, layers: int, factor: int) -> None:
    spec = dataclasses.replace(large[1], num_layers=layers, cla_share_factor=factor)
    plan = ClaPlan.from_spec(spec)
    assert list(plan.producer_of) == [spec.kv_source_layer(layer) for layer in range(layers)]
    assert len(plan.kv_layers) == spec.num_kv_layers
    last = [layer for layer in range(layers) if plan.is_last_consumer(layer)]
    assert last == [layer for layer in range(layers)
                    if layer % factor and (layer + 1 == layers or (layer + 1) % factor == 0)]


def test_pipeline_stage_must_keep_pairs_together(large) -> None:
    plan = ClaPlan.from_spec(large[1])
    plan.check_stage([0, 1])
    plan.check_stage([2, 3])
    with pytest.raises(MappingError, match="consumer layer 3 but not its KV-cache producer layer 2"):
        plan.check_stage([3])


def test_shared_kv_hands_over_and_releases() -> None:
    shared = SharedKV(producer=2)
    with pytest.raises(RuntimeError, match="producer layer 2"):
        shared.get()
    k, v = torch.ones(3, 4), torch.zeros(3, 4)
    shared.put(k, v)
    assert shared.get()[0] is k and shared.get()[1] is v
    shared.release()
    with pytest.raises(RuntimeError):
        shared.get()


# ---- routing ----------------------------------------------------------------------------------------------------
def test_top1_routing_keeps_the_softmax_probability(large) -> None:
    path, spec, weights = large
    prompts, _ = golden_logits(path)
    probs: dict[int, torch.Tensor] = {}
    hf_forward(spec, weights.__getitem__, prompts["prompt_0"], router_hook=lambda layer, p: probs.setdefault(layer, p))
    experts, combine = route_top_k(probs[0].log(), top_k=1, renormalize=spec.top_k > 1)
    assert experts.dtype == torch.int32 and combine.dtype == torch.float32 and combine.shape == (7, 1)
    # Tencent's top1gating: argmax expert, weight = its softmax probability (README: 0.409, 0.574, 0.461, 0.604)
    assert torch.equal(experts[:, 0].long(), probs[0].argmax(-1))
    assert max_abs(combine[:, 0], probs[0].max(-1).values) < 1e-6
    assert combine[:4, 0].tolist() == pytest.approx([0.409, 0.574, 0.461, 0.604], abs=1e-3)


def test_top_k_renormalized_equals_topk_then_softmax() -> None:
    logits = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    experts, combine = route_top_k(logits, top_k=3, renormalize=True)
    top_logits, top_experts = torch.topk(logits, 3, dim=-1)  # TensorRT-LLM's Renormalize form
    assert torch.equal(experts.long(), top_experts)
    assert max_abs(combine, torch.softmax(top_logits, dim=-1)) < 1e-6


# ---- weights: fused layouts and the CLA key-norm fold -----------------------------------------------------------
def fuse_per_kv_group(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """Design note 8, written out: for each KV head g, the q heads of group g, then k_g, then v_g."""
    d, group = spec.head_dim, spec.num_heads // spec.num_kv_heads
    rows = []
    for g in range(spec.num_kv_heads):
        rows += [q[(g * group + i) * d:(g * group + i + 1) * d] for i in range(group)]
        rows += [k[g * d:(g + 1) * d], v[g * d:(g + 1) * d]]
    return torch.cat(rows)


def fused_layout(weights: dict[str, torch.Tensor], spec: ModelSpec) -> dict[str, torch.Tensor]:
    """The golden weights as older checkpoints store them: fused qkv_proj (producers) and gate_and_up_proj."""
    fused = dict(weights)
    for name in [n for n in weights if n.endswith("self_attn.k_proj.weight")]:
        prefix = name.removesuffix("k_proj.weight")
        parts = [fused.pop(prefix + f"{p}_proj.weight") for p in "qkv"]
        fused[prefix + "qkv_proj.weight"] = fuse_per_kv_group(*parts, spec)
    for name in [n for n in weights if n.endswith(".gate_proj.weight")]:
        prefix = name.removesuffix("gate_proj.weight")
        gate, up = fused.pop(name), fused.pop(prefix + "up_proj.weight")
        fused[prefix + "gate_and_up_proj.weight"] = torch.cat([up, gate])  # up half first
    return fused


def test_fused_checkpoint_loads_the_same_tensors(large) -> None:
    _, spec, weights = large
    fused = fused_layout(weights, spec)
    assert "model.layers.0.self_attn.qkv_proj.weight" in fused and "model.layers.1.self_attn.q_proj.weight" in fused
    assert "model.layers.0.mlp.experts.3.gate_and_up_proj.weight" in fused
    from_fused, from_separate = prepare_weights(fused, spec), prepare_weights(weights, spec)
    assert from_fused.keys() == from_separate.keys() == weights.keys()
    for name, tensor in from_separate.items():
        assert torch.equal(from_fused[name], tensor), name


def test_split_fused_qkv_exact_and_checked(large) -> None:
    _, spec, weights = large
    parts = [weights[f"model.layers.2.self_attn.{p}_proj.weight"] for p in "qkv"]
    for split, original in zip(split_fused_qkv(fuse_per_kv_group(*parts, spec), spec), parts, strict=True):
        assert torch.equal(split, original)
    with pytest.raises(CheckpointError, match="fused qkv_proj has 160 rows"):
        split_fused_qkv(parts[0], spec)


def cla_shared_cache(prepared: dict[str, torch.Tensor], plan: ClaPlan) -> dict[str, torch.Tensor]:
    """What the TensorRT-LLM model computes, in hf_forward terms: a consumer's keys are its producer's cached keys,
    i.e. normalized with the producer's key_layernorm."""
    emulated = dict(prepared)
    for layer, producer in enumerate(plan.producer_of):
        emulated[f"model.layers.{layer}.self_attn.key_layernorm.weight"] = \
            prepared[f"model.layers.{producer}.self_attn.key_layernorm.weight"]
    return emulated


def test_consumers_reading_the_producer_cache_reproduce_tencent_logits(large) -> None:
    path, spec, weights = large
    prompts, reference = golden_logits(path)
    plan = ClaPlan.from_spec(spec)
    folded = cla_shared_cache(prepare_weights(weights, spec), plan)
    unfolded = cla_shared_cache(weights, plan)  # shared cache without the fold: the consumer's key norm is lost
    for name, ids in prompts.items():
        assert max_abs(hf_forward(spec, folded.__getitem__, ids), reference[name]) < TOLERANCE, name
        assert max_abs(hf_forward(spec, unfolded.__getitem__, ids), reference[name]) > 1e-2, name


def test_fold_is_float32_then_cast_once() -> None:
    q, k, kp = (torch.rand(16, generator=torch.Generator().manual_seed(s)) + 0.5 for s in (1, 2, 3))
    folded = fold_query_norm(q.bfloat16(), k.bfloat16(), kp.bfloat16())
    assert folded.dtype == torch.bfloat16
    assert torch.equal(folded, (q.bfloat16().float() * k.bfloat16().float() / kp.bfloat16().float()).bfloat16())
    with pytest.raises(CheckpointError, match="zero"):
        fold_query_norm(q, k, torch.zeros(16))


def test_prepare_weights_refusals_and_lazy_values(large) -> None:
    _, spec, weights = large

    class LazySlice:  # how TensorRT-LLM may hand safetensors tensors: readable with [:]
        def __init__(self, tensor: torch.Tensor):
            self.tensor = tensor

        def __getitem__(self, index: slice) -> torch.Tensor:
            return self.tensor[index]

    fused = fused_layout(weights, spec)
    lazy = {name: LazySlice(t) for name, t in fused.items()}
    prepared = prepare_weights(lazy, spec)
    v_proj = "model.layers.0.self_attn.v_proj.weight"
    assert torch.equal(prepared[v_proj], weights[v_proj])
    assert torch.equal(prepared["model.layers.1.self_attn.query_layernorm.weight"],
                       prepare_weights(weights, spec)["model.layers.1.self_attn.query_layernorm.weight"])
    both = {**fused, "model.layers.0.self_attn.q_proj.weight": weights["model.layers.0.self_attn.q_proj.weight"]}
    with pytest.raises(CheckpointError, match="both the fused 'model.layers.0.self_attn.qkv_proj.weight'"):
        prepare_weights(both, spec)
    missing = {n: t for n, t in weights.items() if n != "model.layers.2.self_attn.key_layernorm.weight"}
    with pytest.raises(CheckpointError, match="layers.2.self_attn.key_layernorm.weight' is missing.*layer 3"):
        prepare_weights(missing, spec)


# ---- the package as TensorRT-LLM imports it ----------------------------------------------------------------------
IMPORT_LIKE_TRTLLM = textwrap.dedent("""
    import importlib, sys
    sys.path.insert(0, sys.argv[1])  # what import_custom_module_from_dir does: parent dir first, then the dir's name
    try:
        importlib.import_module("hunyuan_large_trtllm")
    except Exception as exc:
        print(type(exc).__name__, exc)
        tb, modules = exc.__traceback__, []
        while tb is not None:  # the modules the failing import ran through, by the names they were imported under
            modules.append(tb.tb_frame.f_globals["__name__"])
            tb = tb.tb_next
        print("through:", [m for m in modules if "pytorch" in m or "hunyuan_large" in m])
    print("loaded:", sorted(m for m in sys.modules if m.endswith("modeling_large") or m == "tensorrt_llm"))
""")


def run_plugin_import(stub_version: str | None, tmp_path: Path) -> str:
    """Import the plugin dir the way TensorRT-LLM does, optionally after a stub ``tensorrt_llm`` of that version."""
    code = IMPORT_LIKE_TRTLLM
    if stub_version is not None:
        (tmp_path / "tensorrt_llm").mkdir()
        (tmp_path / "tensorrt_llm" / "__init__.py").write_text(f"__version__ = {stub_version!r}\n")
        code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import tensorrt_llm\n" + code
    done = subprocess.run([sys.executable, "-c", code, str(PLUGIN_DIR.parent)], capture_output=True, text=True,
                          check=True, timeout=120)
    return done.stdout


def test_plugin_dir_imports_without_tensorrt_llm(tmp_path) -> None:
    assert pytorch_plugin_dir() == PLUGIN_DIR and (PLUGIN_DIR / "__init__.py").is_file()
    assert run_plugin_import(None, tmp_path).splitlines() == ["loaded: []"]  # nothing registered, nothing imported


def test_plugin_registers_inside_tensorrt_llm(tmp_path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir(), new.mkdir()
    assert "UserError the Hunyuan PyTorch-backend models need TensorRT-LLM >= 1.2, found 1.1.0" in \
        run_plugin_import("1.1.0", old)
    error, through, _ = run_plugin_import("1.2.1", new).splitlines()  # the stub has no _torch: the import fails
    assert error == "ModuleNotFoundError No module named 'tensorrt_llm._torch'"
    # imported as the top-level `hunyuan_large_trtllm` package, it runs the model module under its installed name
    assert through.startswith("through: ['hunyuan_large_trtllm'")
    assert sorted(p.name for p in PLUGIN_DIR.parent.iterdir() if p.name != "__pycache__") == [PLUGIN_DIR.name]
    assert through.endswith("'hunyuan_trtllm.plugins.pytorch.modeling_large']")


def test_llmapi_flavor_imports_the_plugin_for_large(tiny_models) -> None:
    settings = llmapi_settings(tiny_models["large"], 4, True, RepoOptions())
    assert settings["triton_config"]["custom_module_dirs"] == [str(PLUGIN_DIR)]
    assert "custom_module_dirs" not in llmapi_settings(tiny_models["a13b"], 4, True, RepoOptions())["triton_config"]


def test_hf_config_reads_large_without_remote_code(large) -> None:
    path, spec, _ = large
    code = textwrap.dedent("""
        import json, sys
        from transformers import AutoConfig
        from hunyuan_trtllm.plugins.pytorch.hf_config import HunYuanLargeConfig, register_hf_config
        register_hf_config(); register_hf_config()
        config = AutoConfig.from_pretrained(sys.argv[1])
        assert isinstance(config, HunYuanLargeConfig), type(config)
        print(json.dumps({"dict": config.to_dict(), "bias": config.attention_bias,
                          "default_tie": HunYuanLargeConfig().tie_word_embeddings}, default=str))
    """)
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True,
                          timeout=300)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert parse_spec(result["dict"]) == spec  # ModelSpec reads the same model through the transformers config
    assert result["bias"] is False and result["default_tie"] is False
