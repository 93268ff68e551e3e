"""Mapping follows TensorRT-LLM 1.2.x's rank arithmetic and refuses layouts it cannot build."""

from __future__ import annotations

import pytest

from hunyuan_trtllm.checkpoints.mapping import Mapping, parse_ranks
from hunyuan_trtllm.checkpoints.spec import parse_spec
from hunyuan_trtllm.errors import MappingError

from .test_spec import LARGE_CONFIG


def test_docstring_example_of_tensorrt_llm_mapping():
    # tensorrt_llm/mapping.py: 8 GPUs, moe_tp 2, moe_ep 4 -> moe_tp groups [0,4] [1,5] [2,6] [3,7],
    # moe_ep groups [0,1,2,3] [4,5,6,7]: the EP rank varies fastest inside the TP group.
    m = Mapping(tp=8, moe_ep=4)
    assert m.moe_tp == 2
    coords = [m.coords(r) for r in range(8)]
    assert [c.moe_ep_rank for c in coords] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert [c.moe_tp_rank for c in coords] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert list(m.ep_experts(64, 3)) == list(range(48, 64))


def test_pp_layers_follow_tensor_split():
    m = Mapping(pp=3)
    assert [list(m.pp_layers(8, s)) for s in range(3)] == [[0, 1, 2], [3, 4, 5], [6, 7]]
    tp_pp = Mapping(tp=2, pp=2)
    assert [tp_pp.coords(r).pp_rank for r in range(4)] == [0, 0, 1, 1]


def test_to_dict_has_tensorrt_llm_keys():
    d = Mapping(tp=8, moe_ep=8).to_dict()
    assert d["world_size"] == 8 and d["moe_tp_size"] == 1 and d["moe_ep_size"] == 8 and "rank" not in d


@pytest.mark.parametrize(
    ("mapping", "change", "message"),
    [
        (Mapping(tp=3), {}, "does not divide the 80 attention heads"),
        (Mapping(tp=16, moe_ep=32), {}, "must divide --tp"),
        (Mapping(tp=16, moe_ep=16), {"num_experts": 24}, "does not divide the 24 experts"),
        (Mapping(tp=16, moe_ep=2), {"intermediate_size": 18300}, "does not divide the expert width"),
        (Mapping(tp=5), {"num_key_value_heads": 2}, "KV heads must divide"),
        (Mapping(pp=3), {}, "CLA layer"),  # 64 layers over 3 stages: 22/21/21 splits a producer from its consumer
    ],
)
def test_invalid_layouts(mapping, change, message):
    with pytest.raises(MappingError, match=message):
        mapping.validate(parse_spec({**LARGE_CONFIG, **change}))


def test_cla_pairs_kept_on_one_stage():
    Mapping(pp=4).validate(parse_spec(LARGE_CONFIG))  # 16 layers per stage: pairs never split


def test_parse_ranks():
    assert parse_ranks("0-3,6", 8) == [0, 1, 2, 3, 6]
    assert parse_ranks(None, 2) == [0, 1]
    with pytest.raises(MappingError, match="--ranks"):
        parse_ranks("9", 8)
    with pytest.raises(MappingError, match="--ranks"):
        parse_ranks("a-b", 8)
