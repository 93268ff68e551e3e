"""Hy3's TensorRT-engine network executed on the TensorRT-LLM 1.2.1 stand-in (tests/fake_trtllm), with the
in-flight-batching schedule of tests/test_trtllm_standin.py: every request's logits at every context and
generation step equal the reference executor's and the golden hy3-tiny logits (transformers' hy_v3) within 1e-4.
Exercises the routing computed in the graph (sigmoid, top-k of scores + expert_bias, gather, renormalise,
x 2.826) handed to the MoE plugin through ``forward_experts``, QK-norm before RoPE, the dense layer 0 and the
float32 lm_head, over TP, EP and PP."""

from __future__ import annotations

import random

import pytest

from hunyuan_trtllm.checkpoints.convert import convert
from hunyuan_trtllm.checkpoints.mapping import Mapping
from hunyuan_trtllm.checkpoints.source import open_source
from hunyuan_trtllm.reference.calibrate import calibrate

from . import standin
from .conftest import golden, golden_logits
from .test_trtllm_standin import ATOL, BF16_ATOL, float32_activations, run_and_compare


@pytest.fixture(scope="module")
def trt():
    yield standin.load()
    standin.forget()


@pytest.mark.parametrize(("tp", "ep", "pp"), [(1, 1, 1), (2, 2, 2), (4, 4, 1), (2, 1, 1)])
def test_golden_hy3_float32(trt, tp, ep, pp, tmp_path):
    path = golden("hy3-tiny")
    prompts, logits = golden_logits(path)
    named = {"prompt_0": prompts["prompts"][0], "prompt_1": prompts["prompts"][1]}
    expected = {"prompt_0": logits["prompt0"], "prompt_1": logits["prompt1"]}
    convert(path, tmp_path / "ckpt", Mapping(tp=tp, pp=pp, moe_ep=ep), dtype="float32")
    run_and_compare(tmp_path / "ckpt", named, expected)


def test_golden_hy3_bfloat16(trt, tmp_path):
    """A bfloat16 engine computes in bfloat16 (the lm_head in float32, from a float32-cast hidden state): close to
    the float32 executor on the same weights, not equal."""
    path = golden("hy3-tiny")
    prompts, _ = golden_logits(path)
    named = {"prompt_0": prompts["prompts"][0], "prompt_1": prompts["prompts"][1]}
    convert(path, tmp_path / "ckpt", Mapping(tp=2, moe_ep=2), dtype="bfloat16")
    assert run_and_compare(tmp_path / "ckpt", named, atol=BF16_ATOL) > ATOL


def test_golden_hy3_fp8_equals_the_executors_fp8_path(trt, tmp_path):
    """FP8 (calibrated, FP8 KV cache) through TensorRT-LLM's quantize pass, which rebuilds the Hy3 MoE layer."""
    path = golden("hy3-tiny")
    prompts, _ = golden_logits(path)
    named = {"prompt_0": prompts["prompts"][0], "prompt_1": prompts["prompts"][1]}
    source = open_source(path)
    rng = random.Random(0)
    samples = [[rng.randrange(source.spec.vocab_size) for _ in range(32)] for _ in range(8)]
    convert(path, tmp_path / "ckpt", Mapping(tp=2, pp=2, moe_ep=2), dtype="fp8", scales=calibrate(source, samples),
            kv_cache_fp8=True)
    float32_activations(tmp_path / "ckpt")
    run_and_compare(tmp_path / "ckpt", named)
