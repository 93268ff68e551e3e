"""The executing LLM-API stand-in (tests/fake_trtllm/tensorrt_llm/llmapi) in process: it takes every argument our
repositories write, refuses what the real classes refuse, and computes what the reference executor computes."""

from __future__ import annotations

import asyncio
import importlib
import json

import pytest

from hunyuan_trtllm.reference.executor import ReferenceExecutor
from hunyuan_trtllm.serve.repository import RepoOptions, llmapi_settings
from tests import standin


@pytest.fixture
def trtllm(monkeypatch):
    standin.forget()
    monkeypatch.syspath_prepend(str(standin.FAKE_TRTLLM))
    yield importlib.import_module("tensorrt_llm")
    standin.forget()


@pytest.fixture
def llm(trtllm, tiny_models):
    settings = llmapi_settings(tiny_models["a13b"], 4, True, RepoOptions(tp=2, ep=2, max_seq_len=64))
    settings.pop("triton_config")
    from tensorrt_llm.llmapi.llm_args import update_llm_args_with_extra_dict

    with trtllm.LLM(**update_llm_args_with_extra_dict({}, settings)) as running:  # every model.yaml key accepted
        yield running


def argmax(executor: ReferenceExecutor, prompt: list[int], n: int, end: int) -> list[int]:
    cache, tokens = executor.new_cache(), []
    logits = executor.forward(prompt, cache)[-1]
    while len(tokens) < n and int(logits.argmax()) != end:
        tokens.append(int(logits.argmax()))
        logits = executor.forward([tokens[-1]], cache)[-1]
    return tokens


def test_the_package_imports_no_torch_and_refuses_unknown_arguments(trtllm, tiny_models) -> None:
    import subprocess
    import sys

    probe = "import sys, tensorrt_llm; assert 'torch' not in sys.modules; tensorrt_llm.SamplingParams"
    subprocess.run([sys.executable, "-c", probe], check=True, env={"PYTHONPATH": str(standin.FAKE_TRTLLM)})
    with pytest.raises(TypeError, match="no_such_field"):
        trtllm.SamplingParams(no_such_field=1)
    with pytest.raises(ValueError, match="no_such_arg"):
        trtllm.LLM(model=str(tiny_models["a13b"]), no_such_arg=1)
    assert trtllm.SamplingParams(logprobs=True).logprobs == 1  # as the real __post_init__


def test_greedy_streaming_logprobs_and_stop_words(llm, trtllm, tiny_models, tmp_path) -> None:
    from hunyuan_trtllm.checkpoints.convert import convert
    from hunyuan_trtllm.checkpoints.mapping import Mapping

    executor = ReferenceExecutor(convert(tiny_models["a13b"], tmp_path / "ckpt", Mapping()).out_dir)
    prompt = llm.tokenizer.encode("The tiny corpus")
    want = argmax(executor, prompt, 8, llm.tokenizer.eos_token_id)

    async def run(params, streaming=False):
        result = llm.generate_async(prompt, params, streaming=streaming)
        return [(list(o.outputs[0].token_ids_diff), list(o.outputs[0].logprobs_diff)) async for o in result], result

    steps, result = asyncio.run(run(trtllm.SamplingParams(max_tokens=8, logprobs=True, detokenize=False), True))
    output = result.outputs[0]
    assert [t for ids, _ in steps for t in ids] == output.token_ids == want and result.prompt_token_ids == prompt
    assert output.finish_reason == ("length" if len(want) == 8 else "stop") and output.text == ""
    chosen = [entry[token] for token, entry in zip(want, output.logprobs, strict=True)]
    assert all(c.rank == 1 for c in chosen)  # greedy: the best token
    assert output.cumulative_logprob == pytest.approx(sum(c.logprob for c in chosen))
    stop = want[1]
    _, result = asyncio.run(run(trtllm.SamplingParams(max_tokens=8, stop_token_ids=[stop])))
    assert result.outputs[0].token_ids == want[: want.index(stop)] and result.outputs[0].stop_reason == stop
    assert result.outputs[0].text == llm.tokenizer.decode(want[: want.index(stop)], skip_special_tokens=True)
    with pytest.raises(ValueError, match="use_beam_search"):
        llm.generate_async(prompt, trtllm.SamplingParams(use_beam_search=True))


def test_guided_json(llm, trtllm) -> None:
    pytest.importorskip("xgrammar", reason="xgrammar (guided decoding on CPU) is not installed")
    from tensorrt_llm.sampling_params import GuidedDecodingParams

    schema = {"type": "object", "properties": {"n": {"type": "integer", "enum": [1, 2]}}, "required": ["n"]}
    params = trtllm.SamplingParams(max_tokens=30, guided_decoding=GuidedDecodingParams(json=schema))
    output = asyncio.run(llm.generate_async("json", params).aresult()).outputs[0]
    assert json.loads(output.text)["n"] in (1, 2) and output.finish_reason == "stop"
