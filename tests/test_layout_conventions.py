"""TensorRT-LLM 1.2.x layout conventions checked directly on the rank files (not through our own executor).

Each expectation is written from TensorRT-LLM's documented layout (shared/reference/trtllm.md §1.3-1.5) by
indexing the source tensors by hand.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from hunyuan_trtllm.checkpoints.convert import convert
from hunyuan_trtllm.checkpoints.mapping import Mapping

from .conftest import golden


def converted(tmp_path, name: str, tp: int, ep: int = 1, pp: int = 1):
    src_dir = golden(name)
    out = tmp_path / f"{name}-tp{tp}-ep{ep}-pp{pp}"
    convert(src_dir, out, Mapping(tp=tp, pp=pp, moe_ep=ep), dtype="float32")
    src = load_file(src_dir / "model.safetensors")
    ranks = [load_file(out / f"rank{r}.safetensors") for r in range(tp * pp)]
    return src, ranks, json.loads((out / "config.json").read_text())


@pytest.mark.parametrize(("tp", "ep"), [(4, 2), (4, 4), (2, 1)])
def test_a13b_expert_blocks_and_fc_halves(tmp_path, tp, ep):
    src, ranks, _ = converted(tmp_path, "a13b-tiny", tp, ep)
    num_experts, inter = 8, 96
    moe_tp = tp // ep
    width = inter // moe_tp
    for r, rank in enumerate(ranks):
        ep_rank, moe_tp_rank = r % ep, r // ep  # EP rank varies fastest inside the TP group
        fc, proj = rank["transformer.layers.1.mlp.fc.weight"], rank["transformer.layers.1.mlp.proj.weight"]
        assert fc.shape == (num_experts // ep, 2 * width, 128) and proj.shape == (num_experts // ep, 128, width)
        for e in range(num_experts // ep):
            expert = ep_rank * num_experts // ep + e
            rows = slice(moe_tp_rank * width, (moe_tp_rank + 1) * width)
            up = src[f"model.layers.1.mlp.experts.{expert}.up_proj.weight"][rows]
            gate = src[f"model.layers.1.mlp.experts.{expert}.gate_proj.weight"][rows]
            down = src[f"model.layers.1.mlp.experts.{expert}.down_proj.weight"][:, rows]
            assert torch.equal(fc[e, :width], up)  # up (w3) first: the linear half of swiglu
            assert torch.equal(fc[e, width:], gate)  # gate (w1) second: the SiLU half
            assert torch.equal(proj[e], down)
        router = rank["transformer.layers.1.mlp.router.weight"]
        assert router.dtype == torch.float32 and torch.equal(router, src["model.layers.1.mlp.gate.wg.weight"])


def test_a13b_qkv_with_duplicated_kv_heads(tmp_path):
    src, ranks, _ = converted(tmp_path, "a13b-tiny", tp=4, ep=4)
    d, q_per_rank = 16, 2  # 8 q heads and 2 KV heads over 4 ranks: each KV head lives on 2 ranks
    q, k, v = (src[f"model.layers.0.self_attn.{p}_proj.weight"] for p in "qkv")
    for r, rank in enumerate(ranks):
        qkv = rank["transformer.layers.0.attention.qkv.weight"]
        kv_head = r * 2 // 4
        expected = torch.cat([
            q[r * q_per_rank * d:(r + 1) * q_per_rank * d],
            k[kv_head * d:(kv_head + 1) * d],
            v[kv_head * d:(kv_head + 1) * d],
        ])
        assert torch.equal(qkv, expected)
        dense = rank["transformer.layers.0.attention.dense.weight"]
        o = src["model.layers.0.self_attn.o_proj.weight"]
        assert torch.equal(dense, o[:, r * q_per_rank * d:(r + 1) * q_per_rank * d])
        assert torch.equal(rank["transformer.layers.0.attention.q_layernorm.weight"],
                           src["model.layers.0.self_attn.query_layernorm.weight"])


def test_a13b_shared_expert_lm_head_and_config(tmp_path):
    src, ranks, config = converted(tmp_path, "a13b-tiny", tp=4, ep=2, pp=1)
    emb = src["model.embed_tokens.weight"]  # tied: lm_head is a copy of the embedding, vocab 1024 over 4 ranks
    for r, rank in enumerate(ranks):
        shared_fc = rank["transformer.layers.2.mlp.shared_expert.fc.weight"]
        rows = slice(r * 24, (r + 1) * 24)
        assert torch.equal(shared_fc[:24], src["model.layers.2.mlp.shared_mlp.up_proj.weight"][rows])
        assert torch.equal(shared_fc[24:], src["model.layers.2.mlp.shared_mlp.gate_proj.weight"][rows])
        assert torch.equal(rank["transformer.layers.2.mlp.shared_expert.proj.weight"],
                           src["model.layers.2.mlp.shared_mlp.down_proj.weight"][:, rows])
        assert torch.equal(rank["lm_head.weight"], emb[r * 256:(r + 1) * 256])
        assert torch.equal(rank["transformer.vocab_embedding.weight"], emb)
    assert config["rotary_base"] == pytest.approx(10000 * 1000 ** (16 / 14))
    assert config["rotary_scaling"] is None and config["qk_layernorm"] is True
    assert config["moe"]["normalization_mode"] == 1 and config["moe"]["top_k"] == 2
    assert config["hidden_act"] == "swiglu" and config["architecture"] == "HunYuanMoEV1ForCausalLM"
    assert config["mapping"]["moe_tp_size"] == 2 and config["mapping"]["moe_ep_size"] == 2


def test_vocab_padding_is_zero_rows(tmp_path):
    # The golden vocabularies (1024) divide by tp; a 1001-token vocabulary must be padded to 1004 at tp 4.
    from hunyuan_trtllm.checkpoints.spec import parse_spec
    from hunyuan_trtllm.checkpoints.weight_plan import WeightPlan

    cfg = json.loads((golden("dense-tiny") / "config.json").read_text())
    spec = parse_spec({**cfg, "vocab_size": 1001})
    plan = WeightPlan.build(spec, Mapping(tp=4), torch.float32)
    heads = [next(t for t in plan.ranks[r] if t.name == "lm_head.weight") for r in range(4)]
    assert [h.shape[0] for h in heads] == [251] * 4  # 1001 padded to 1004
    assert [h.pad_rows for h in heads] == [0, 0, 0, 3]


def test_large_cla_consumer_layers(tmp_path):
    src, ranks, config = converted(tmp_path, "large-tiny", tp=2, ep=2, pp=2)
    # pp 2: layers 0,1 on stage 0 (ranks 0,1), layers 2,3 on stage 1 (ranks 2,3), local indices 0,1
    assert config["num_kv_heads_per_layer"] == [2, 0, 2, 0] and config["cla_kv_source_layer"] == [0, 0, 2, 2]
    assert config["moe"]["normalization_mode"] == 0 and config["moe"]["top_k"] == 1
    d = 16
    for r in (2, 3):
        rank, tp_rank = ranks[r], r % 2
        assert "transformer.layers.1.attention.qkv.weight" not in rank
        assert "transformer.layers.1.attention.k_layernorm.weight" not in rank
        q = rank["transformer.layers.1.attention.q.weight"]  # global layer 3, a consumer: Q rows only
        assert torch.equal(q, src["model.layers.3.self_attn.q_proj.weight"][tp_rank * 5 * d:(tp_rank + 1) * 5 * d])
        folded = (src["model.layers.3.self_attn.query_layernorm.weight"]
                  * src["model.layers.3.self_attn.key_layernorm.weight"]
                  / src["model.layers.2.self_attn.key_layernorm.weight"])
        assert torch.allclose(rank["transformer.layers.1.attention.q_layernorm.weight"], folded, rtol=0, atol=1e-7)
        qkv = rank["transformer.layers.0.attention.qkv.weight"]  # global layer 2, a producer
        k_proj = src["model.layers.2.self_attn.k_proj.weight"]
        assert torch.equal(qkv[5 * d:6 * d], k_proj[tp_rank * d:(tp_rank + 1) * d])
    assert "transformer.vocab_embedding.weight" in ranks[0] and "transformer.vocab_embedding.weight" not in ranks[2]
    assert "lm_head.weight" in ranks[2] and "lm_head.weight" not in ranks[0]


def test_dense_gated_mlp_names(tmp_path):
    src, ranks, config = converted(tmp_path, "dense-tiny", tp=2)
    assert config["hidden_act"] == "silu" and config["moe"]["num_experts"] == 0
    for r, rank in enumerate(ranks):
        rows = slice(r * 128, (r + 1) * 128)
        assert torch.equal(rank["transformer.layers.0.mlp.fc.weight"], src["model.layers.0.mlp.gate_proj.weight"][rows])
        assert torch.equal(rank["transformer.layers.0.mlp.gate.weight"], src["model.layers.0.mlp.up_proj.weight"][rows])
        assert torch.equal(rank["transformer.layers.0.mlp.proj.weight"],
                           src["model.layers.0.mlp.down_proj.weight"][:, rows])
