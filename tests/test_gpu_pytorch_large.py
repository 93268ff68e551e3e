"""GPU: the golden tiny Hunyuan-Large served by TensorRT-LLM's PyTorch backend with our model, against hf_forward.

Needs TensorRT-LLM >= 1.2 and a CUDA GPU (skipped otherwise). The golden float32 checkpoint is written as bfloat16,
once as stored (separate q/k/v, gate/up) and once in the fused layout of older checkpoints; both must give the
logits of the float32 reference run on the same bfloat16-rounded weights, within bfloat16 activation noise. CUDA
graphs stay on (the default), so the CLA hand-over is exercised under graph capture and replay.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hunyuan_trtllm.checkpoints.spec import ModelSpec, load_config, parse_spec
from hunyuan_trtllm.reference.hf_forward import hf_forward
from tests.conftest import golden
from tests.test_pytorch_large import fused_layout

pytestmark = pytest.mark.gpu
STEPS = 6
ATOL = 0.1  # logits reach ~2.6; bfloat16 weights alone move them by ~0.03


def bf16_copy(src: Path, out: Path, layout: str) -> dict[str, torch.Tensor]:
    """Write the golden checkpoint as bfloat16 in ``layout``; return the rounded weights (float32, separate names)."""
    out.mkdir(parents=True)
    config = json.loads((src / "config.json").read_text()) | {"torch_dtype": "bfloat16"}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    weights = {name: t.bfloat16() for name, t in load_file(src / "model.safetensors").items()}
    spec = parse_spec(config)
    stored = fused_layout(weights, spec) if layout == "fused" else weights
    save_file({n: t.contiguous() for n, t in stored.items()}, out / "model.safetensors", metadata={"format": "pt"})
    shutil.copy(src / "input_ids.json", out / "input_ids.json")
    return {name: t.float() for name, t in weights.items()}


def run_llm(model_dir: Path, prompts: list[list[int]], spec: ModelSpec) -> list:
    """Greedy generation with context and generation logits, through the LLM API (PyTorch backend)."""
    import tensorrt_llm  # noqa: F401  (first: our package registers the model when TensorRT-LLM is loaded)
    from tensorrt_llm import LLM, SamplingParams
    from tensorrt_llm.llmapi import KvCacheConfig

    import hunyuan_trtllm.plugins.pytorch  # noqa: F401  (registers HunYuanForCausalLM)

    params = SamplingParams(max_tokens=STEPS, end_id=spec.eos_token_ids[0], pad_id=spec.pad_token_id,
                            ignore_eos=True, return_context_logits=True, return_generation_logits=True)
    with LLM(model=str(model_dir), backend="pytorch", skip_tokenizer_init=True, max_batch_size=2, max_seq_len=64,
             max_num_tokens=128, disable_overlap_scheduler=True,
             kv_cache_config=KvCacheConfig(free_gpu_memory_fraction=0.2, enable_block_reuse=False)) as llm:
        return llm.generate(prompts, params)


@pytest.mark.parametrize("layout", ["separate", "fused"])
def test_golden_large_on_the_pytorch_backend(layout: str, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt_llm", reason="needs TensorRT-LLM >= 1.2 (PyTorch backend)")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    src = golden("large-tiny")
    weights = bf16_copy(src, tmp_path / layout, layout)
    spec = parse_spec(load_config(tmp_path / layout / "config.json"))
    prompts = json.loads((src / "input_ids.json").read_text())
    outputs = run_llm(tmp_path / layout, list(prompts.values()), spec)
    for (name, ids), output in zip(prompts.items(), outputs, strict=True):
        tokens = list(output.outputs[0].token_ids)
        assert len(tokens) == STEPS, name
        reference = hf_forward(spec, weights.__getitem__, ids + tokens[:-1])  # [T + STEPS - 1, V], teacher-forced
        context = output.context_logits.float().cpu()  # [T, V]
        generation = output.outputs[0].generation_logits.float().cpu().reshape(STEPS, -1)  # [STEPS, V]
        assert (context - reference[: len(ids)]).abs().max().item() < ATOL, name
        assert (generation - reference[len(ids) - 1:]).abs().max().item() < ATOL, name
        for step, token in enumerate(tokens):  # greedy: the reference's choice wherever it is not a near-tie
            best, second = reference[len(ids) - 1 + step].topk(2).values.tolist()
            if best - second > 2 * ATOL:
                assert token == reference[len(ids) - 1 + step].argmax().item(), (name, step)
