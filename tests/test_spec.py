"""ModelSpec: every config dialect parses to the same facts; bad configs fail with one clear line."""

from __future__ import annotations

import json

import pytest

from hunyuan_trtllm.checkpoints.spec import LARGE, MOE_V1, NormalizationMode, parse_spec
from hunyuan_trtllm.errors import ConfigError

from .conftest import SHARED, golden

# Hunyuan-Large's published shape (shared/reference/hunyuan.md §3.1), in Tencent's scalar dialect.
LARGE_CONFIG = {
    "architectures": ["HunYuanForCausalLM"], "model_type": "hunyuan", "hidden_size": 6400, "num_hidden_layers": 64,
    "num_attention_heads": 80, "num_key_value_heads": 8, "intermediate_size": 18304, "num_experts": 16,
    "moe_topk": 1, "num_shared_expert": 1, "use_mixed_mlp_moe": True, "use_qk_norm": True, "use_cla": True,
    "cla_share_factor": 2, "rope_theta": 10000.0, "rope_scaling": {"alpha": 1000.0, "factor": 1.0, "type": "dynamic"},
    "vocab_size": 128167, "rms_norm_eps": 1e-5, "max_position_embeddings": 131072,
}


def real_a13b_config() -> dict:
    path = SHARED / "fixtures" / "hunyuan-files" / "a13b" / "config.json"
    if not path.is_file():
        pytest.skip("../shared is absent")
    return json.loads(path.read_text())


def test_real_a13b_config():
    spec = parse_spec(real_a13b_config())
    assert spec.architecture == MOE_V1
    shape = (spec.num_layers, spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dim)
    assert shape == (32, 4096, 32, 8, 128)
    assert (spec.num_experts, spec.top_k, spec.expert_intermediate_size, spec.shared_intermediate_size) == (
        64, 8, 3072, 3072)
    assert spec.normalization_mode == NormalizationMode.RENORMALIZE
    assert spec.rotary_base == pytest.approx(11158839.925, rel=1e-9)
    assert spec.kv_bytes_per_token(2) == 128 * 1024  # 32 layers x K,V x 8 heads x 128 x 2 bytes
    assert spec.kv_bytes_per_token(1) == 64 * 1024
    assert spec.tie_word_embeddings and spec.eos_token_ids == (127960, 127967)


def test_large_config_cla_and_top1():
    spec = parse_spec(LARGE_CONFIG)
    assert spec.architecture == LARGE and spec.uses_cla and spec.head_dim == 80
    assert spec.normalization_mode == NormalizationMode.NONE
    assert spec.rotary_base == pytest.approx(11937766.42, rel=1e-8)
    assert spec.kv_bytes_per_token(2) == 80 * 1024  # 32 KV-owning layers with CLA
    assert [spec.kv_source_layer(i) for i in range(4)] == [0, 0, 2, 2]
    no_cla = parse_spec({**LARGE_CONFIG, "use_cla": False})
    assert no_cla.kv_bytes_per_token(2) == 160 * 1024


def test_transformers_dialect_matches_tencent_dialect():
    tencent = json.loads((golden("a13b-tiny") / "config.json").read_text())
    hf = json.loads((golden("a13b-tiny") / "transformers_v5_config.json").read_text())
    fields = ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "num_experts", "top_k",
              "expert_intermediate_size", "shared_intermediate_size", "rotary_base", "architecture")
    a, b = parse_spec(tencent), parse_spec(hf)
    assert {f: getattr(a, f) for f in fields} == {f: getattr(b, f) for f in fields}


def test_rope_parameters_v5_form():
    cfg = {**LARGE_CONFIG, "rope_scaling": None,
           "rope_parameters": {"rope_type": "dynamic", "alpha": 1000.0, "rope_theta": 10000.0}}
    assert parse_spec(cfg).rotary_base == pytest.approx(11937766.42, rel=1e-8)
    plain = {**LARGE_CONFIG, "rope_scaling": None}
    assert parse_spec(plain).rotary_base == 10000.0


def test_dense_config():
    spec = parse_spec(json.loads((golden("dense-tiny") / "config.json").read_text()))
    assert not spec.is_moe and spec.intermediate_size == 256 and spec.num_kv_heads == 4


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, "supported: HunYuanMoEV1ForCausalLM"),
        ({"moe_topk": [1, 2]}, "'moe_topk' differs between layers"),
        ({"hidden_size": None}, "required field 'hidden_size'"),
        ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "rope type 'yarn'"),
        ({"moe_topk": 32}, "moe_topk 32"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ],
)
def test_bad_configs(change, message):
    with pytest.raises(ConfigError, match=message):
        parse_spec({**LARGE_CONFIG, **change}, "config.json")
