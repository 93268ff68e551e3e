"""An executing stand-in for TensorRT-LLM 1.x's LLM API (``tensorrt_llm.LLM`` on the PyTorch backend), on CPU.

It computes, it does not record: ``LLM(model=HF_DIR, **llm_args)`` converts the Hugging Face checkpoint with our
converter (tp 1, into a temporary directory) and generates with :class:`hunyuan_trtllm.reference.executor.
ReferenceExecutor` through :class:`hunyuan_trtllm.serve.reference_decoding.Generation` (TensorRT-LLM's sampling,
seed, penalties, stop words; log probabilities are the log-softmax of the raw logits) and, for guided decoding,
:class:`hunyuan_trtllm.serve.guided.GrammarFactory` (xgrammar on CPU).

The API, with TensorRT-LLM's names (read from ``tensorrt_llm/llmapi/llm.py``, ``llm_args.py``,
``sampling_params.py`` and ``executor/result.py``):

- ``LLM(model, **kwargs)``: ``kwargs`` must be fields of TensorRT-LLM's ``TorchLlmArgs`` (:data:`LLM_ARGS`, a subset;
  anything else is a ``ValueError``, as pydantic's "extra inputs are not permitted"); ``backend`` must be
  ``pytorch``. Parallel sizes, KV-cache and CUDA-graph settings are accepted and have no effect here.
  ``guided_decoding_backend: xgrammar`` enables guided decoding (a guided request is refused without it).
  ``max_seq_len`` defaults to the model's ``max_position_embeddings``; ``dtype`` (``auto``) is the conversion dtype.
- ``llm.tokenizer``: the model's :class:`~hunyuan_trtllm.checkpoints.tokenizer.HunyuanTokenizer` (the real one is a
  ``TransformersTokenizer``; ``encode`` / ``decode`` / ``eos_token_id`` / ``pad_token_id`` exist on both).
- ``llm.generate_async(inputs, sampling_params=None, streaming=False)`` -> :class:`RequestOutput`; ``inputs`` is a
  prompt string, a list of token ids, or a ``{"prompt": ...}`` / ``{"prompt_token_ids": [...]}`` dict. Unhonoured
  :class:`~tensorrt_llm.sampling_params.SamplingParams` fields away from their default are a ``ValueError``.
- :class:`RequestOutput`: ``request_id``, ``prompt``, ``prompt_token_ids``, ``outputs`` (one
  :class:`CompletionOutput`), ``finished``; ``async for`` yields it after every generated token when streaming,
  once at the end otherwise; ``await aresult()`` runs it to the end; ``abort()`` cancels it (``finish_reason``
  ``cancelled``).
- :class:`CompletionOutput`: ``index``, ``text``, ``token_ids``, ``cumulative_logprob``, ``logprobs`` (one
  ``{token_id: Logprob(logprob, rank)}`` per token: the ``logprobs`` best, ranked from 1, plus the sampled token,
  as ``executor/result.py``'s ``compute_logprobs``; one difference: a sampled token outside the best has rank None
  here, its true rank there), ``finish_reason`` (``stop``, ``length``,
  ``cancelled``), ``stop_reason`` (the stop token id or stop string), and the diffs since the previous streamed
  response: ``text_diff``, ``token_ids_diff``, ``logprobs_diff``. ``end_id`` is never in ``token_ids``; a stop word
  is removed unless ``include_stop_str_in_output``; ``text`` is empty unless ``detokenize``.

Generation steps run one at a time in one worker thread (requests interleave token by token, in flight); the
event loop stays free.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tensorrt_llm.sampling_params import HONOURED, GuidedDecodingParams, SamplingParams

__all__ = ["LLM", "CompletionOutput", "GuidedDecodingParams", "Logprob", "RequestOutput", "SamplingParams"]

# TorchLlmArgs fields the stand-in accepts (every key hunyuan_trtllm writes into model.yaml / the LLM-API YAML).
LLM_ARGS = frozenset({
    "model", "tokenizer", "tokenizer_mode", "skip_tokenizer_init", "trust_remote_code", "revision", "dtype",
    "backend", "tensor_parallel_size", "pipeline_parallel_size", "context_parallel_size", "gpus_per_node",
    "moe_cluster_parallel_size", "moe_tensor_parallel_size", "moe_expert_parallel_size", "enable_attention_dp",
    "max_batch_size", "max_num_tokens", "max_seq_len", "max_input_len", "max_beam_width", "kv_cache_config",
    "cuda_graph_config", "moe_config", "guided_decoding_backend", "enable_chunked_prefill", "scheduler_config",
    "stream_interval", "attn_backend", "disable_overlap_scheduler", "enable_iter_perf_stats", "print_iter_log",
    "num_postprocess_workers", "postprocess_tokenizer_dir", "reasoning_parser", "load_format", "checkpoint_format",
    "torch_compile_config", "enable_layerwise_nvtx_marker", "batch_wait_timeout_ms",
})
GUIDED_BACKENDS = ("xgrammar", "llguidance")


@dataclass(slots=True)
class Logprob:
    """A token's log probability and its rank among the vocabulary (1 = best), as ``executor/result.py``."""

    logprob: float
    rank: int | None = None


@dataclass(slots=True)
class CompletionOutput:
    """One sequence of a request (``tensorrt_llm.executor.result.CompletionOutput``)."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    cumulative_logprob: float | None = None
    logprobs: list[dict[int, Logprob]] = field(default_factory=list)
    prompt_logprobs: list[dict[int, Logprob]] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    _last_text_len: int = field(default=0, init=False, repr=False)
    _last_token_ids_len: int = field(default=0, init=False, repr=False)
    _last_logprobs_len: int = field(default=0, init=False, repr=False)

    @property
    def length(self) -> int:
        return len(self.token_ids)

    @property
    def text_diff(self) -> str:
        return self.text[self._last_text_len:]

    @property
    def token_ids_diff(self) -> list[int]:
        return self.token_ids[self._last_token_ids_len:]

    @property
    def logprobs_diff(self) -> list[dict[int, Logprob]]:
        return self.logprobs[self._last_logprobs_len:]

    def _mark(self) -> None:
        """Start a new streamed response: the diffs count from here."""
        self._last_text_len, self._last_token_ids_len = len(self.text), len(self.token_ids)
        self._last_logprobs_len = len(self.logprobs)


class RequestOutput:
    """One request in flight (``tensorrt_llm.llmapi.llm.RequestOutput``)."""

    def __init__(self, llm: LLM, request_id: int, prompt: str | None, prompt_token_ids: list[int],
                 params: SamplingParams, streaming: bool, sequence: Any, stops: list[tuple[int | str, list[int]]]):
        from hunyuan_trtllm.checkpoints.tokenizer import IncrementalDetokenizer

        self.request_id, self.prompt, self.prompt_token_ids = request_id, prompt, prompt_token_ids
        self.outputs = [CompletionOutput(0)]
        self.finished = False
        self._llm, self._params, self._streaming, self._sequence, self._stops = llm, params, streaming, sequence, stops
        self._detokenizer = IncrementalDetokenizer(llm.tokenizer, params.skip_special_tokens)

    def __aiter__(self):
        return self._responses()

    async def _responses(self):
        while not self.finished:
            await self._step()
            if self._streaming:
                yield self
        if not self._streaming:
            yield self

    async def aresult(self) -> RequestOutput:
        """Wait for the whole result."""
        async for _ in self:
            pass
        return self

    def abort(self) -> None:
        """Cancel the request: no further tokens, ``finish_reason`` ``cancelled``."""
        if not self.finished:
            self.finished = True
            self.outputs[0].finish_reason = "cancelled"

    async def _step(self) -> None:
        output = self.outputs[0]
        if self._streaming:
            output._mark()
        token = await self._llm._advance(self._sequence)
        if self.finished:  # aborted meanwhile
            return
        sequence = self._sequence
        if token is not None:
            output.token_ids.append(token)
            if sequence.log_probs:
                output.logprobs.append(self._logprob_entry(token))
                output.cumulative_logprob = sum(sequence.token_log_probs)
            if self._params.detokenize:
                output.text += self._detokenizer.push([token])
        if sequence.finished:
            self._finish(output, ended_on_end_id=token is None)

    def _logprob_entry(self, token: int) -> dict[int, Logprob]:
        sequence = self._sequence
        entry = {int(i): Logprob(float(v), rank) for rank, (i, v) in enumerate(sequence.top[-1], start=1)}
        entry.setdefault(token, Logprob(sequence.token_log_probs[-1], None))
        return entry

    def _finish(self, output: CompletionOutput, ended_on_end_id: bool) -> None:
        self.finished = True
        output.finish_reason = "stop" if ended_on_end_id or self._sequence.guide is not None and \
            self._sequence.guide.terminated else "length"
        for reason, ids in self._stops:
            if output.token_ids[-len(ids):] == ids:
                output.finish_reason, output.stop_reason = "stop", reason
                if not self._params.include_stop_str_in_output:
                    del output.token_ids[-len(ids):]
                    del output.logprobs[len(output.token_ids):]
                break
        if self._params.detokenize:
            output.text = self._llm.tokenizer.decode(output.token_ids, skip_special_tokens=self._params.
                                                     skip_special_tokens)


class LLM:
    """``tensorrt_llm.LLM`` on CPU: the reference executor over our conversion of ``model``."""

    def __init__(self, model: str | Path, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - LLM_ARGS)
        if unknown:
            raise ValueError(f"LLM got unexpected arguments {unknown} (extra inputs are not permitted)")
        if kwargs.get("backend", "pytorch") != "pytorch":
            raise ValueError("the stand-in emulates the PyTorch backend only (backend: pytorch)")
        self.args = {"model": str(model), **kwargs}
        guided = kwargs.get("guided_decoding_backend")
        if guided is not None and guided not in GUIDED_BACKENDS:
            raise ValueError(f"guided_decoding_backend must be one of {GUIDED_BACKENDS}, got {guided!r}")
        from hunyuan_trtllm.checkpoints.convert import convert
        from hunyuan_trtllm.checkpoints.mapping import Mapping
        from hunyuan_trtllm.checkpoints.tokenizer import HunyuanTokenizer
        from hunyuan_trtllm.reference.executor import ReferenceExecutor

        self.model_dir = Path(model)
        self._work = tempfile.TemporaryDirectory(prefix="fake-trtllm-llm-")
        ckpt = convert(self.model_dir, Path(self._work.name) / "ckpt", Mapping(), dtype=kwargs.get("dtype", "auto"))
        self._executor = ReferenceExecutor(ckpt.out_dir)
        self.tokenizer = HunyuanTokenizer.from_model_dir(Path(kwargs.get("tokenizer") or self.model_dir))
        config = json.loads((self.model_dir / "config.json").read_text())
        self.max_seq_len = int(kwargs.get("max_seq_len") or config["max_position_embeddings"])
        self._grammars = None  # GrammarFactory, built on the first guided request
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fake-llm-step")
        self._ids = itertools.count()

    def generate_async(self, inputs: str | list[int] | dict, sampling_params: SamplingParams | None = None,
                       streaming: bool = False) -> RequestOutput:
        """Start one request; iterate the result (streaming) or ``await result.aresult()``."""
        from hunyuan_trtllm.serve.reference_decoding import Generation
        from hunyuan_trtllm.serve.reference_decoding import SamplingParams as Sampling

        params = sampling_params or SamplingParams()
        self._check_honoured(params)
        prompt, ids = self._prompt(inputs)
        if not ids:
            raise ValueError("the prompt is empty")
        if len(ids) >= self.max_seq_len:
            raise ValueError(f"the prompt has {len(ids)} tokens; max_seq_len is {self.max_seq_len}")
        if params.max_tokens < 1:
            raise ValueError(f"max_tokens must be positive, got {params.max_tokens}")
        end_id = self.tokenizer.eos_token_id if params.end_id is None else params.end_id
        sampling = Sampling(temperature=1.0 if params.temperature is None else params.temperature,
                            top_k=params.top_k or 0, top_p=params.top_p or 0.0, seed=params.seed or 0,
                            repetition_penalty=1.0 if params.repetition_penalty is None else params.repetition_penalty,
                            presence_penalty=params.presence_penalty or 0.0,
                            frequency_penalty=params.frequency_penalty or 0.0)
        sampling.check()
        stops = [(t, [t]) for t in params.stop_token_ids or []]
        stop_strings = [params.stop] if isinstance(params.stop, str) else params.stop or []
        stops += [(s, self.tokenizer.encode(s, allow_special=False)) for s in stop_strings]
        bad = [[t] for t in params.bad_token_ids or []]
        bad += [self.tokenizer.encode(s, allow_special=False) for s in ([params.bad] if isinstance(params.bad, str)
                                                                        else params.bad or [])]
        sequence = Generation(prompt=ids, max_new_tokens=min(params.max_tokens, self.max_seq_len - len(ids)),
                              end_id=-1 if params.ignore_eos else end_id, params=sampling,
                              stop_words=[w for _, w in stops], bad_words=bad, min_tokens=params.min_tokens or 0,
                              log_probs=bool(params.logprobs), top_log_probs=params.logprobs or 0,
                              guide=self._guide(params.guided_decoding))
        return RequestOutput(self, next(self._ids), prompt, ids, params, streaming, sequence, stops)

    def shutdown(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)
        self._work.cleanup()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    async def _advance(self, sequence: Any) -> int | None:
        return await asyncio.get_running_loop().run_in_executor(self._worker, sequence.step, self._executor)

    @staticmethod
    def _check_honoured(params: SamplingParams) -> None:
        defaults = SamplingParams()
        for item in fields(SamplingParams):
            if item.name not in HONOURED and getattr(params, item.name) != getattr(defaults, item.name):
                raise ValueError(f"the stand-in LLM does not emulate SamplingParams.{item.name}")
        if params.n != 1 or params.best_of != 1:
            raise ValueError("the stand-in LLM generates one sequence per request (n = best_of = 1)")

    def _prompt(self, inputs: str | list[int] | dict) -> tuple[str | None, list[int]]:
        if isinstance(inputs, dict):
            inputs = inputs["prompt_token_ids"] if "prompt_token_ids" in inputs else inputs["prompt"]
        if isinstance(inputs, str):
            return inputs, self.tokenizer.encode(inputs)
        return None, [int(t) for t in inputs]

    def _guide(self, guided: GuidedDecodingParams | None) -> Any:
        """A grammar matcher for ``guided`` (TensorRT-LLM's guide types mapped as ``_get_guided_decoding_params``)."""
        if guided is None or not any(getattr(guided, f.name) for f in fields(GuidedDecodingParams)):
            return None
        if self.args.get("guided_decoding_backend") is None:
            raise ValueError("guided decoding needs the LLM's guided_decoding_backend (xgrammar)")
        from hunyuan_trtllm.serve.guided import GrammarFactory, Guide

        if guided.json_object:
            guide = Guide("json")
        elif guided.json is not None:
            guide = Guide("json_schema", guided.json if isinstance(guided.json, str) else json.dumps(guided.json))
        elif guided.regex is not None:
            guide = Guide("regex", guided.regex)
        elif guided.grammar is not None:
            guide = Guide("ebnf_grammar", guided.grammar)
        else:
            raise ValueError("the stand-in LLM does not emulate structural_tag guides")
        if self._grammars is None:
            self._grammars = GrammarFactory(self.model_dir, self._executor.vocab)
        return self._grammars.matcher(guide)
