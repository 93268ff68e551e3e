"""hf_forward (float32 reference) and the transformers adapter vs the golden fixtures and each other."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hunyuan_trtllm.checkpoints.spec import MOE_V1, ModelSpec, load_config, parse_spec
from hunyuan_trtllm.errors import UserError
from hunyuan_trtllm.reference.hf_forward import hf_forward, router_gaps
from hunyuan_trtllm.reference.transformers_ref import transformers_logits, transformers_supports

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GOLDEN = SHARED / "fixtures" / "golden"
TOLERANCE = 1e-4


@dataclasses.dataclass
class Fixture:
    path: Path
    spec: ModelSpec
    weights: dict[str, torch.Tensor]
    prompts: dict[str, list[int]]
    logits: dict[str, torch.Tensor]

    @property
    def get(self) -> Callable[[str], torch.Tensor]:
        return self.weights.__getitem__


def golden(name: str) -> Fixture:
    path = GOLDEN / name
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"golden fixture {path} is not available")
    return Fixture(
        path=path,
        spec=parse_spec(load_config(path / "config.json"), str(path / "config.json")),
        weights=load_file(path / "model.safetensors"),
        prompts=json.loads((path / "input_ids.json").read_text()),
        logits=load_file(path / "logits.safetensors"),
    )


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


# ---- (a) hf_forward reproduces the golden logits ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["a13b-tiny", "large-tiny", "dense-tiny"])
def test_hf_forward_matches_golden(name: str) -> None:
    fx = golden(name)
    for key, ids in fx.prompts.items():
        logits = hf_forward(fx.spec, fx.get, ids)
        assert logits.dtype == torch.float32
        assert max_abs(logits, fx.logits[key]) <= TOLERANCE, (name, key)


def test_hf_forward_cla_uses_consumer_key_norm() -> None:
    """Large-tiny's README: ignoring the consumer layer's own key_layernorm moves the logits by ~0.25."""
    fx = golden("large-tiny")
    assert fx.spec.uses_cla and not fx.spec.is_kv_producer(1)
    weights = dict(fx.weights)
    weights["model.layers.1.self_attn.key_layernorm.weight"] = torch.ones(fx.spec.head_dim)
    ids = fx.prompts["prompt_1"]
    assert max_abs(hf_forward(fx.spec, weights.__getitem__, ids), fx.logits["prompt_1"]) > 1e-2


# ---- (b) transformers reproduces the golden logits -------------------------------------------------------------


@pytest.mark.parametrize("name", ["a13b-tiny", "dense-tiny"])
def test_transformers_matches_golden(name: str) -> None:
    fx = golden(name)
    assert transformers_supports(fx.spec) is None
    outputs = transformers_logits(fx.path, fx.spec, list(fx.prompts.values()))
    for key, logits in zip(fx.prompts, outputs, strict=True):
        assert logits.dtype == torch.float32
        assert max_abs(logits, fx.logits[key]) <= TOLERANCE, (name, key)


def test_transformers_refuses_large() -> None:
    fx = golden("large-tiny")
    reason = transformers_supports(fx.spec)
    assert reason is not None and "Large" in reason
    with pytest.raises(UserError):
        transformers_logits(fx.path, fx.spec, [[1, 2, 3]])


def test_transformers_supports_reasons() -> None:
    spec = synthetic_spec()
    assert transformers_supports(spec) is None
    assert "CLA" in str(transformers_supports(dataclasses.replace(spec, cla_share_factor=2)))
    assert "top-1" in str(transformers_supports(dataclasses.replace(spec, top_k=1)))
    assert "expert width" in str(transformers_supports(dataclasses.replace(spec, expert_intermediate_size=32)))
    assert "shared" in str(transformers_supports(dataclasses.replace(spec, shared_intermediate_size=0)))


# ---- (c) hf_forward == transformers on a differently shaped random MoE model ------------------------------------

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, EXPERTS, TOP_K, LAYERS, VOCAB, WIDTH = 64, 4, 2, 16, 8, 2, 2, 300, 48
PROMPTS = [[3, 250, 17, 99, 180], [1, 42, 299, 7, 7, 123, 64, 211, 5, 88, 150]]


def tencent_config() -> dict:
    """A Tencent-dialect (A13B) config.json: per-layer lists, attention_head_dim, auto_map to absent .py files."""
    return {
        "architectures": [MOE_V1],
        "model_type": "hunyuan",
        "auto_map": {
            "AutoConfig": "configuration_hunyuan.HunYuanConfig",
            "AutoModelForCausalLM": "hunyuan.HunYuanMoEV1ForCausalLM",
        },
        "vocab_size": VOCAB,
        "org_vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": WIDTH,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "attention_head_dim": HEAD_DIM,
        "num_experts": EXPERTS,
        "moe_topk": [TOP_K] * LAYERS,
        "num_shared_expert": [1] * LAYERS,
        "moe_intermediate_size": [WIDTH] * LAYERS,
        "use_mixed_mlp_moe": True,
        "use_qk_norm": True,
        "use_cla": False,
        "cla_share_factor": 2,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": {
            "alpha": 50.0,
            "beta_fast": 32,
            "beta_slow": 1,
            "factor": 1.0,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
            "type": "dynamic",
        },
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "max_position_embeddings": 4096,
        "bos_token_id": 1,
        "eos_token_id": 290,
        "pad_token_id": 291,
        "moe_layer_num_skipped": 0,
        "attention_bias": False,
        "mlp_bias": False,
        "transformers_version": "4.41.2",
    }


def synthetic_spec() -> ModelSpec:
    return parse_spec(tencent_config(), "synthetic config.json")


def tencent_tensor_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (VOCAB, HIDDEN),
        "model.norm.weight": (HIDDEN,),
        "lm_head.weight": (VOCAB, HIDDEN),
    }
    for layer in range(LAYERS):
        p = f"model.layers.{layer}"
        shapes |= {
            f"{p}.input_layernorm.weight": (HIDDEN,),
            f"{p}.post_attention_layernorm.weight": (HIDDEN,),
            f"{p}.self_attn.q_proj.weight": (HEADS * HEAD_DIM, HIDDEN),
            f"{p}.self_attn.k_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
            f"{p}.self_attn.v_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
            f"{p}.self_attn.o_proj.weight": (HIDDEN, HEADS * HEAD_DIM),
            f"{p}.self_attn.query_layernorm.weight": (HEAD_DIM,),
            f"{p}.self_attn.key_layernorm.weight": (HEAD_DIM,),
            f"{p}.mlp.gate.wg.weight": (EXPERTS, HIDDEN),
        }
        for mlp in ["shared_mlp", *(f"experts.{e}" for e in range(EXPERTS))]:
            shapes |= {
                f"{p}.mlp.{mlp}.gate_proj.weight": (WIDTH, HIDDEN),
                f"{p}.mlp.{mlp}.up_proj.weight": (WIDTH, HIDDEN),
                f"{p}.mlp.{mlp}.down_proj.weight": (HIDDEN, WIDTH),
            }
    return shapes


def random_weights(seed: int) -> dict[str, torch.Tensor]:
    """Norm weights uniform in [0.8, 1.2), everything else N(0, 0.1^2); stored as bfloat16."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in sorted(tencent_tensor_shapes().items()):
        if name.endswith("norm.weight"):
            tensor = 0.8 + 0.4 * torch.rand(shape, generator=generator)
        else:
            tensor = 0.1 * torch.randn(shape, generator=generator)
        weights[name] = tensor.to(torch.bfloat16)
    return weights


@pytest.fixture(scope="module")
def synthetic_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    spec = synthetic_spec()
    for seed in range(1000, 1200):  # the first seed whose routing is nowhere near tied (design note 7)
        weights = random_weights(seed)
        if min(router_gaps(spec, weights.__getitem__, ids) for ids in PROMPTS) >= 2e-3:
            break
    else:
        pytest.fail("no seed with router gaps >= 2e-3")
    model_dir = tmp_path_factory.mktemp("synthetic-moe")
    save_file(weights, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    (model_dir / "config.json").write_text(json.dumps(tencent_config(), indent=2))
    return model_dir, weights


def test_hf_forward_matches_transformers_on_synthetic_moe(synthetic_model) -> None:
    model_dir, weights = synthetic_model
    spec = parse_spec(load_config(model_dir / "config.json"))
    assert (spec.head_dim, spec.top_k, spec.rope_alpha, spec.tie_word_embeddings) == (HEAD_DIM, TOP_K, 50.0, False)
    reference = transformers_logits(model_dir, spec, PROMPTS)
    for ids, expected in zip(PROMPTS, reference, strict=True):
        logits = hf_forward(spec, weights.__getitem__, ids)
        assert logits.shape == (len(ids), VOCAB)
        assert max_abs(logits, expected) <= TOLERANCE
    # Plain RoPE (alpha 1) goes through transformers' default rope type.
    plain = dataclasses.replace(spec, rope_alpha=1.0)
    reference = transformers_logits(model_dir, plain, PROMPTS[:1])
    assert max_abs(hf_forward(plain, weights.__getitem__, PROMPTS[0]), reference[0]) <= TOLERANCE


# ---- (d) router_gaps ---------------------------------------------------------------------------------------------


def test_router_gaps_golden_a13b() -> None:
    fx = golden("a13b-tiny")
    gaps = [router_gaps(fx.spec, fx.get, ids) for ids in fx.prompts.values()]
    assert min(gaps) >= 2e-3  # README: measured minimum 0.0020
    assert all(math.isfinite(gap) and gap < 1.0 for gap in gaps)


def test_router_gaps_without_routing_decisions() -> None:
    fx = golden("dense-tiny")
    assert router_gaps(fx.spec, fx.get, fx.prompts["prompt_0"]) == math.inf
    spec = dataclasses.replace(synthetic_spec(), top_k=EXPERTS)  # every expert chosen: nothing to tie
    weights = random_weights(0)
    assert router_gaps(spec, weights.__getitem__, PROMPTS[0]) == math.inf
