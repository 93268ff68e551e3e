"""GPU: the golden tiny Hy3 served by TensorRT-LLM's PyTorch backend with our HYV3ForCausalLM, against hf_forward.

Needs TensorRT-LLM >= 1.2 and a CUDA GPU (skipped otherwise; not run yet: no GPU was available when this was
written). The golden float32 checkpoint is written as bfloat16 in Tencent's layout (with its MTP layer, which the
model must skip); the logits must match the float32 reference on the same bfloat16-rounded weights within
bfloat16 activation noise, and greedy tokens must be the reference's wherever it has no near-tie.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hunyuan_trtllm.checkpoints.spec import load_config, parse_spec
from hunyuan_trtllm.reference.hf_forward import hf_forward
from tests.conftest import golden

pytestmark = pytest.mark.gpu
STEPS = 6
ATOL = 0.1


def test_golden_hy3_on_the_pytorch_backend(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt_llm", reason="needs TensorRT-LLM >= 1.2 (PyTorch backend)")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    import tensorrt_llm  # noqa: F401  (first: our package registers the model when TensorRT-LLM is loaded)
    from tensorrt_llm import LLM, SamplingParams
    from tensorrt_llm.llmapi import KvCacheConfig

    import hunyuan_trtllm.plugins.pytorch  # noqa: F401  (registers HYV3ForCausalLM)

    src, out = golden("hy3-tiny"), tmp_path / "hy3-bf16"
    out.mkdir()
    config = json.loads((src / "config.json").read_text()) | {"dtype": "bfloat16", "torch_dtype": "bfloat16"}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tensors = load_file(src / "model.safetensors")
    stored = {n: (t if n.endswith("expert_bias") else t.bfloat16()) for n, t in tensors.items()}
    save_file({n: t.contiguous() for n, t in stored.items()}, out / "model.safetensors", metadata={"format": "pt"})
    shutil.copy(src / "input_ids.json", out / "input_ids.json")
    weights = {n: t.float() for n, t in stored.items()}
    spec = parse_spec(load_config(out / "config.json"))
    prompts = json.loads((src / "input_ids.json").read_text())["prompts"]
    params = SamplingParams(max_tokens=STEPS, end_id=spec.eos_token_ids[0], pad_id=spec.pad_token_id,
                            ignore_eos=True, return_context_logits=True, return_generation_logits=True)
    with LLM(model=str(out), backend="pytorch", skip_tokenizer_init=True, max_batch_size=2, max_seq_len=64,
             max_num_tokens=128, disable_overlap_scheduler=True,
             kv_cache_config=KvCacheConfig(free_gpu_memory_fraction=0.2, enable_block_reuse=False)) as llm:
        outputs = llm.generate(prompts, params)
    for index, (ids, output) in enumerate(zip(prompts, outputs, strict=True)):
        tokens = list(output.outputs[0].token_ids)
        assert len(tokens) == STEPS, index
        reference = hf_forward(spec, weights.__getitem__, ids + tokens[:-1])
        context = output.context_logits.float().cpu()
        generation = output.outputs[0].generation_logits.float().cpu().reshape(STEPS, -1)
        assert (context - reference[: len(ids)]).abs().max().item() < ATOL, index
        assert (generation - reference[len(ids) - 1:]).abs().max().item() < ATOL, index
        for step, token in enumerate(tokens):
            best, second = reference[len(ids) - 1 + step].topk(2).values.tolist()
            if best - second > 2 * ATOL:
                assert token == reference[len(ids) - 1 + step].argmax().item(), (index, step)
