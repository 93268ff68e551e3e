"""The TensorRT-engine model definition (hunyuan_trtllm/plugins) declares exactly the tensors the WeightPlan writes,
for every architecture, parallel layout and precision; and ``register()`` fails with one line without TensorRT-LLM.

The real model classes are built per rank on ``tests/fake_trtllm``, a recording stand-in for TensorRT-LLM 1.2.1
whose layers declare the parameter names/shapes/dtypes of the real ones (each fact cites its TensorRT-LLM source).
Each rank then goes through TensorRT-LLM's own checkpoint-loading steps (``PretrainedModel.from_checkpoint``):
config.json -> ``PretrainedConfig.from_dict`` (through ``MODEL_MAP``) -> ``set_rank`` -> ``preprocess_weights`` ->
``cls(config)`` (FP8 layers swapped in by ``quantize``) -> ``load(weights)``, with the rank's WeightPlan tensors as
meta tensors. ``load`` fails on a missing tensor or a shape/dtype mismatch; extra tensors are checked here.
"""

from __future__ import annotations

import copy
import importlib
import json
import sys

import pytest
import torch

from hunyuan_trtllm.checkpoints.fp8 import fp8_plan, linear_weight_names, quantization_config
from hunyuan_trtllm.checkpoints.fp8_scales import Fp8Scales
from hunyuan_trtllm.checkpoints.mapping import Mapping
from hunyuan_trtllm.checkpoints.spec import LARGE, ModelSpec, load_config, parse_spec
from hunyuan_trtllm.checkpoints.trtllm_config import trtllm_config
from hunyuan_trtllm.checkpoints.weight_plan import WeightPlan
from hunyuan_trtllm.errors import ConfigError, MappingError, UserError
from hunyuan_trtllm.plugins.kv_layout import KvLayout
from hunyuan_trtllm.synth.checkpoint import synth_config

from . import standin
from .conftest import SHARED

REAL_A13B = SHARED / "fixtures" / "hunyuan-files" / "a13b" / "config.json"
PRECISIONS = ("bf16", "fp8", "fp8-kv")

TINY_LAYOUTS = {  # tiny presets: a13b 8 heads / 2 KV / 8 experts; large the same with 4 experts, CLA; dense 4 KV
    "a13b": [Mapping(), Mapping(tp=2), Mapping(tp=4), Mapping(tp=2, moe_ep=2), Mapping(tp=4, moe_ep=2),
             Mapping(tp=4, moe_ep=4), Mapping(pp=2), Mapping(tp=2, pp=2, moe_ep=2)],
    "large": [Mapping(), Mapping(tp=2), Mapping(tp=4), Mapping(tp=2, moe_ep=2), Mapping(tp=4, moe_ep=4),
              Mapping(pp=2), Mapping(tp=2, pp=2, moe_ep=2)],
    "dense": [Mapping(), Mapping(tp=2), Mapping(tp=4), Mapping(pp=2), Mapping(tp=2, pp=2)],
}
TINY_CASES = [(arch, m, p) for arch, layouts in TINY_LAYOUTS.items() for m in layouts for p in PRECISIONS]


@pytest.fixture
def trt():
    """``hunyuan_trtllm.plugins`` registered on the TensorRT-LLM stand-in; the stand-in is forgotten afterwards."""
    yield standin.load()
    standin.forget()


def tiny_spec(arch: str) -> ModelSpec:
    return parse_spec(synth_config(arch, "tiny", dtype="bfloat16"))


def checkpoint(spec: ModelSpec, mapping: Mapping, precision: str,
               parallel_embedding: bool = False) -> tuple[WeightPlan, dict]:
    """The converter's WeightPlan and config.json for this layout and precision (FP8 with made-up scales)."""
    plan = WeightPlan.build(spec, mapping, torch.bfloat16, parallel_embedding=parallel_embedding)
    quantization = None
    if precision != "bf16":
        kv_fp8 = precision == "fp8-kv"
        names = linear_weight_names(plan)
        kv = {layer: 0.02 for layer in range(spec.num_layers) if spec.is_kv_producer(layer)}
        plan = fp8_plan(plan, Fp8Scales({n: 1e-3 for n in names}, {n: 1e-2 for n in names}, kv), kv_fp8)
        quantization = quantization_config(kv_fp8)
    return plan, trtllm_config(spec, mapping, torch.bfloat16, quantization, parallel_embedding=parallel_embedding)


def rank_weights(plan: WeightPlan, rank: int) -> dict[str, torch.Tensor]:
    return {t.name: torch.empty(t.shape, dtype=t.dtype, device="meta") for t in plan.ranks[rank]}


def build_rank(trt, config_json: dict, rank: int):
    """TensorRT-LLM's config steps for one rank: from_dict through MODEL_MAP, set_rank, the model constructor."""
    modeling_utils = importlib.import_module("tensorrt_llm.models.modeling_utils")
    config = modeling_utils.PretrainedConfig.from_dict(copy.deepcopy(config_json))
    config.set_rank(rank)
    return trt.model_class(config_json["architecture"])(config)


def load_rank(trt, plan: WeightPlan, config_json: dict, rank: int):
    """from_checkpoint for one rank, with the plan's tensors: preprocess_weights, construct, load."""
    model = build_rank(trt, config_json, rank)
    modeling_utils = importlib.import_module("tensorrt_llm.models.modeling_utils")
    model.load(modeling_utils.preprocess_weights(rank_weights(plan, rank), model.config))
    return model


def assert_declares_the_plan(trt, spec: ModelSpec, mapping: Mapping, precision: str,
                             parallel_embedding: bool = False) -> None:
    plan, config_json = checkpoint(spec, mapping, precision, parallel_embedding)
    for rank in range(mapping.world_size):
        model = load_rank(trt, plan, config_json, rank)
        assert model.unused_tensors == [], f"rank {rank}: the plan writes tensors the model does not declare"
        if precision == "fp8-kv":  # the KV-cache quant scale is derived from the checkpoint's dequant scale
            rcp = {n for n, _ in model.named_parameters() if n.endswith("kv_cache_rcp_scaling_factor")}
            assert len(rcp) == len(mapping.pp_layers(spec.num_layers, mapping.coords(rank).pp_rank))


@pytest.mark.parametrize(("arch", "mapping", "precision"), TINY_CASES)
def test_model_declares_the_weight_plan(trt, arch, mapping, precision):
    assert_declares_the_plan(trt, tiny_spec(arch), mapping, precision)


@pytest.mark.parametrize(("arch", "mapping"), [("a13b", Mapping(tp=2, moe_ep=2)), ("large", Mapping(tp=4, pp=2))])
def test_parallel_embedding_declares_the_split_rows(trt, arch, mapping):
    """use_parallel_embedding: the Embedding is built with the rank's tp size and declares ceil(V/tp) rows."""
    assert_declares_the_plan(trt, tiny_spec(arch), mapping, "bf16", parallel_embedding=True)
    plan, config_json = checkpoint(tiny_spec(arch), mapping, "bf16", parallel_embedding=True)
    embedding = build_rank(trt, config_json, 1).transformer.vocab_embedding.weight
    assert tuple(embedding.shape) == (-(-config_json["vocab_size"] // mapping.tp), config_json["hidden_size"])


@pytest.mark.parametrize(("mapping", "precision"), [(Mapping(tp=8, moe_ep=8), "bf16"), (Mapping(tp=8), "fp8-kv"),
                                                    (Mapping(tp=4, pp=2, moe_ep=2), "fp8")])
def test_real_a13b_config_shapes(trt, mapping, precision):
    if not REAL_A13B.is_file():
        pytest.skip("Hunyuan-A13B's config.json is not available (../shared is absent)")
    assert_declares_the_plan(trt, parse_spec(load_config(REAL_A13B)), mapping, precision)


@pytest.mark.parametrize(("mapping", "precision"), [(Mapping(tp=8, moe_ep=8), "bf16"),
                                                    (Mapping(tp=16, moe_ep=16), "fp8-kv"),
                                                    (Mapping(tp=8, pp=2, moe_ep=4), "fp8")])
def test_full_width_large_shapes(trt, mapping, precision):
    """Hunyuan-Large's widths (80 heads, 8 KV heads duplicated at tp 16, 16 experts) with 4 CLA layers."""
    spec = parse_spec(synth_config("large", "full-width", layers=4, dtype="bfloat16"))
    assert_declares_the_plan(trt, spec, mapping, precision)


@pytest.mark.parametrize("mapping", [Mapping(), Mapping(tp=2, moe_ep=2)])
def test_moe_without_shared_expert(trt, mapping):
    """use_mixed_mlp_moe false: routed experts only (TensorRT-LLM's MOE, no shared_expert tensors)."""
    config = synth_config("a13b", "tiny", dtype="bfloat16")
    spec = parse_spec({**config, "use_mixed_mlp_moe": False})
    assert spec.shared_intermediate_size == 0
    assert_declares_the_plan(trt, spec, mapping, "fp8")


def test_a_missing_tensor_fails_the_load(trt):
    plan, config_json = checkpoint(tiny_spec("large"), Mapping(), "bf16")
    weights = rank_weights(plan, 0)
    del weights["transformer.layers.1.attention.q_layernorm.weight"]
    model = build_rank(trt, config_json, 0)
    with pytest.raises(RuntimeError, match="Required but not provided.*layers.1.attention.q_layernorm"):
        model.load(weights)


def test_a_wrong_shape_or_dtype_fails_the_load(trt):
    plan, config_json = checkpoint(tiny_spec("a13b"), Mapping(tp=2), "fp8")
    for name, bad in (("transformer.layers.0.mlp.fc.weights_scaling_factor", torch.empty(1, device="meta")),
                      ("transformer.layers.0.attention.qkv.weight", torch.empty(96, 128, device="meta"))):
        weights = rank_weights(plan, 0)
        weights[name] = bad
        with pytest.raises(RuntimeError, match=name):
            build_rank(trt, config_json, 0).load(weights)


@pytest.mark.parametrize(("arch", "mapping"), [("large", Mapping()), ("large", Mapping(tp=2, pp=2)),
                                               ("a13b", Mapping(pp=2))])
def test_kv_cache_slots_and_runtime_layout(trt, arch, mapping):
    """Producers get consecutive slots; a CLA consumer reuses its producer's; the engine config lists KV heads
    for producers only and marks consumers no_op (what TensorRT-LLM's runtime reads)."""
    spec = tiny_spec(arch)
    _, config_json = checkpoint(spec, mapping, "bf16")
    for rank in range(mapping.world_size):
        model = build_rank(trt, config_json, rank)
        stage = mapping.pp_layers(spec.num_layers, mapping.coords(rank).pp_rank)
        layers = list(model.transformer.layers)
        assert [layer.attention.local_layer_idx for layer in layers] == [
            (idx - stage[0]) // spec.cla_share_factor for idx in stage]
        assert [layer.attention.owns_kv_cache for layer in layers] == [
            idx % spec.cla_share_factor == 0 for idx in stage]
        engine_config = model.config.to_dict()
        json.dumps(engine_config)
        assert engine_config["num_kv_heads_per_layer"] == [spec.num_kv_heads] * spec.num_kv_layers
        assert engine_config["layer_types"].count("attention") == spec.num_kv_layers
        network = importlib.import_module("tensorrt_llm.network")
        with network.net_guard(network.Network()):
            inputs = model.prepare_attention_inputs(
                max_batch_size=8, max_beam_width=1, max_input_len=16, max_seq_len=32,
                num_kv_heads=spec.num_kv_heads, head_size=spec.head_dim, num_layers=spec.num_layers,
                kv_dtype="bfloat16", kv_cache_type="paged", use_gpt_attention_plugin=True,
                remove_input_padding=True)
        kv_layers = len([idx for idx in stage if idx % spec.cla_share_factor == 0])  # what the C++ runtime feeds
        assert inputs["host_kv_cache_pool_mapping"].shape == (kv_layers, 2)
        assert inputs["host_max_attention_window_sizes"].shape == (kv_layers,)
        assert len(inputs["past_key_value"]) == kv_layers


def test_moe_routing_and_shared_expert_follow_the_spec(trt):
    for arch in ("a13b", "large"):
        spec = tiny_spec(arch)
        model = build_rank(trt, checkpoint(spec, Mapping(), "bf16")[1], 0)
        mlp = model.transformer.layers[0].mlp
        assert type(mlp).__name__ == "SharedMoE" and "shared_expert_gate" not in mlp._modules
        assert (mlp.moe_config.top_k, int(mlp.moe_config.normalization_mode)) == (
            spec.top_k, int(spec.normalization_mode))
    dense = build_rank(trt, checkpoint(tiny_spec("dense"), Mapping(), "bf16")[1], 0)
    assert type(dense.transformer.layers[0].mlp).__name__ == "GatedMLP"


def test_engine_config_reloads(trt):
    """The engine's config.json (runtime KV form) is read back by the same config class to the same config."""
    _, config_json = checkpoint(tiny_spec("large"), Mapping(tp=2), "fp8-kv")
    engine_config = build_rank(trt, config_json, 1).config.to_dict()
    assert engine_config["num_kv_heads_per_layer"] == [2, 2] and config_json["num_kv_heads_per_layer"] == [2, 0, 2, 0]
    assert build_rank(trt, engine_config, 1).config.to_dict() == engine_config


@pytest.mark.parametrize(("change", "message"), [
    ({"rotary_scaling": {"type": "dynamic", "factor": 2.0}}, "rotary_scaling must be null"),
    ({"position_embedding_type": "learned_absolute"}, "position_embedding_type"),
    ({"hidden_act": "silu"}, "hidden_act 'silu' must be 'swiglu'"),
    ({"cla_kv_source_layer": [0, 0, 1, 2]}, r"cla_kv_source_layer\[2\] = 1"),
    ({"num_kv_heads_per_layer": [2, 2, 2, 2]}, "num_kv_heads_per_layer"),
    ({"hunyuan": {"qk_norm_after_rope": False}}, "qk_norm_after_rope"),
    ({"moe": {"num_experts": 4, "top_k": 1, "normalization_mode": 2}}, "normalization_mode 2"),
    ({"moe": {"num_experts": 4, "top_k": 0}}, "moe"),
    ({"mapping": {**Mapping().to_dict(), "auto_parallel": True}}, "auto_parallel"),
    ({"use_parallel_embedding": True, "embedding_sharding_dim": 1}, "embedding_sharding_dim 0"),
])
def test_bad_config_fields_are_one_line_errors(trt, change, message):
    _, config_json = checkpoint(tiny_spec("large"), Mapping(), "bf16")
    with pytest.raises(ConfigError, match=message) as error:
        build_rank(trt, {**config_json, **change}, 0)
    assert "\n" not in str(error.value)


def test_pipeline_split_inside_a_cla_pair_is_refused(trt):
    spec = tiny_spec("large")
    config_json = trtllm_config(spec, Mapping(pp=4), torch.bfloat16)  # stage 1 would hold consumer layer 1 alone
    with pytest.raises(MappingError, match="layer 1 reads the KV cache of layer 0"):
        build_rank(trt, config_json, 1)


def test_model_class_refuses_unknown_architectures(trt):
    with pytest.raises(UserError, match="'LlamaForCausalLM' is not a Hunyuan architecture"):
        trt.model_class("LlamaForCausalLM")
    assert trt.model_class(LARGE) is trt.model_class(LARGE)


def test_register_without_tensorrt_llm_is_one_clear_line(monkeypatch):
    standin.forget()
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # "import tensorrt_llm" raises ModuleNotFoundError
    plugins = importlib.import_module("hunyuan_trtllm.plugins")
    with pytest.raises(UserError) as error:
        plugins.register()
    message = str(error.value)
    assert "\n" not in message
    assert "TensorRT-LLM 1.2.1" in message and "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3" in message
    with pytest.raises(UserError, match="not installed"):
        plugins.model_class(LARGE)


def test_register_refuses_other_tensorrt_llm_versions(trt, monkeypatch):
    monkeypatch.setattr(sys.modules["tensorrt_llm"], "__version__", "1.3.0")
    with pytest.raises(UserError, match="found TensorRT-LLM 1.3.0"):
        trt.register()


def test_kv_layout_forms():
    layout = KvLayout.from_config(6, 8, cla_share_factor=2)
    assert layout.producers == [0, 2, 4]
    assert layout.checkpoint_num_kv_heads_per_layer() == [8, 0, 8, 0, 8, 0]
    assert layout.runtime_num_kv_heads_per_layer() == [8, 8, 8]
    assert layout.runtime_layer_types() == ["attention", "no_op"] * 3
    assert [layout.cache_slot(layer, [2, 3, 4, 5]) for layer in (2, 3, 4, 5)] == [0, 0, 1, 1]
    for form in ([8, 0, 8, 0, 8, 0], [8, 8, 8]):  # the converter's and the runtime's form are both accepted
        assert KvLayout.from_config(6, 8, cla_kv_source_layer=layout.source_layer, num_kv_heads_per_layer=form) == \
            layout
    with pytest.raises(MappingError):
        layout.cache_slot(3, [3, 4, 5])
    with pytest.raises(ConfigError, match="has 5 entries for 6 layers"):
        KvLayout.from_config(6, 8, cla_kv_source_layer=[0, 0, 2, 2, 4])
