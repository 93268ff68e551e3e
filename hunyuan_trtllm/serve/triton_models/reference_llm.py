"""Triton model ``tensorrt_llm`` of the ``reference`` flavor: TensorRT-LLM's inputs and outputs, computed on CPU.

It runs :class:`hunyuan_trtllm.reference.executor.ReferenceExecutor` on a converted checkpoint and behaves like
the C++ in-flight batcher as far as a client can tell: decoupled, one worker thread that advances every active
request by one token per round (each with its own KV cache: the prompt once, then one token per step), at most
``max_batch_size`` active at a time, the rest queued. Streaming responses carry the new token only, the last one
flagged final (a stream that ends on ``end_id`` ends with a final response without tokens); otherwise one
response carries the whole output (the prompt first unless ``exclude_input_in_output``). Inputs the reference
cannot honour (beams, LoRA, logits) are refused unless at their neutral value.

Honoured like TensorRT-LLM: sampling, ``repetition_penalty`` / ``presence_penalty`` / ``frequency_penalty``,
``return_log_probs`` (``output_log_probs`` ``[1, beam, tokens]`` of the tokens in the response, ``cum_log_probs``),
and guided decoding (``guided_decoding_guide_type`` / ``guided_decoding_guide`` through xgrammar on CPU, see
:mod:`hunyuan_trtllm.serve.guided`; needs the ``tokenizer_dir`` parameter, as TensorRT-LLM's template does).
One addition of ours, since the template has no top-k log probabilities: the input ``num_top_log_probs`` (INT32)
asks for the ``k`` best alternatives of each token, returned as ``top_log_probs`` (FP32) and ``top_log_prob_ids``
(INT32), both ``[1, beam, tokens, k]``.

Parameters: ``checkpoint_dir``, ``max_batch_size``, ``max_input_len``, ``max_seq_len`` (outputs are cut to fit),
``exclude_input_in_output`` (default for requests without that input), ``allow_streaming``, ``tokenizer_dir``.

Torch runs single-threaded here: Triton puts every model's stub process on the same cores, and intra-op threads
spinning against another busy process made a 2-core host crawl (a 20-token stream took over a minute).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from hunyuan_trtllm.reference.executor import ReferenceExecutor
from hunyuan_trtllm.serve.reference_decoding import Generation, SamplingParams, decode_word_list
from hunyuan_trtllm.serve.triton_pb import (
    RequestError,
    error_response,
    model_parameters,
    optional_array,
    required_array,
    scalar,
    tensor,
)

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
# Inputs accepted only at these values (what TensorRT-LLM does with them is not emulated).
NEUTRAL = {"beam_width": 1, "num_return_sequences": 1, "runtime_top_p_decay": 1.0,
           "return_context_logits": False, "return_generation_logits": False, "return_perf_metrics": False,
           "stop": False}
ABSENT = ("embedding_bias", "lora_task_id", "lora_weights", "lora_config")
MAX_TOP_LOG_PROBS = 20
IDLE_WAIT_S = 0.1


@dataclass
class _Job:
    """One admitted request: its sequence and how to answer it."""

    request: Any
    sender: Any
    sequence: Generation
    streaming: bool
    exclude_input: bool
    count_input: bool
    count_output: bool
    sent: int = 0  # tokens already streamed (their log probs went with them)


class TritonPythonModel:
    """Greedy / sampled generation over the reference executor, answered from a worker thread."""

    def initialize(self, args: dict) -> None:
        params = model_parameters(args)
        torch.set_num_threads(1)
        self.executor = ReferenceExecutor(Path(params["checkpoint_dir"]))
        self.max_active = int(params["max_batch_size"])
        self.max_input_len = int(params["max_input_len"])
        self.max_seq_len = int(params["max_seq_len"])
        self.exclude_input = params.get("exclude_input_in_output", "true").lower() == "true"
        self.allow_streaming = params.get("allow_streaming", "true").lower() == "true"
        self.tokenizer_dir = params.get("tokenizer_dir")
        self.grammars = None  # GrammarFactory, built on the first guided request
        self.pending: queue.Queue[_Job] = queue.Queue()
        self.stopping = threading.Event()
        self.worker = threading.Thread(target=self._run, name="reference-llm", daemon=True)
        self.worker.start()

    def execute(self, requests: list) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                self.pending.put(self._admit(request, sender))
            except Exception as exc:  # a bad request is answered at once; the others go on
                sender.send(error_response(exc), flags=FINAL)
        return None

    def finalize(self) -> None:
        self.stopping.set()
        self.worker.join(timeout=10)

    # ---- requests ------------------------------------------------------------------------------------------
    def _admit(self, request: Any, sender: Any) -> _Job:
        ids = required_array(request, "input_ids")
        if ids.shape[0] != 1:
            raise RequestError(f"one sequence per request, got a batch of {ids.shape[0]}")
        length = int(required_array(request, "input_lengths").reshape(-1)[0])
        prompt = [int(t) for t in ids.reshape(-1)[:length]]
        if not prompt:
            raise RequestError("input_ids is empty")
        if len(prompt) > self.max_input_len:
            raise RequestError(f"the prompt has {len(prompt)} tokens; max_input_len is {self.max_input_len}")
        wanted = int(required_array(request, "request_output_len").reshape(-1)[0])
        if wanted <= 0:
            raise RequestError(f"request_output_len must be positive, got {wanted}")
        streaming = bool(scalar(request, "streaming", False))
        if streaming and not self.allow_streaming:
            raise RequestError("streaming needs a repository generated with streaming (decoupled) enabled")
        self._check_unsupported(request)
        params = SamplingParams(
            temperature=float(scalar(request, "temperature", 1.0)),
            top_k=int(scalar(request, "runtime_top_k", 0)),
            top_p=float(scalar(request, "runtime_top_p", 0.0)),
            seed=int(scalar(request, "seed", 0)),
            repetition_penalty=float(scalar(request, "repetition_penalty", 1.0)),
            presence_penalty=float(scalar(request, "presence_penalty", 0.0)),
            frequency_penalty=float(scalar(request, "frequency_penalty", 0.0)),
        )
        top = int(scalar(request, "num_top_log_probs", 0))
        if not 0 <= top <= MAX_TOP_LOG_PROBS:
            raise RequestError(f"num_top_log_probs must be in 0..{MAX_TOP_LOG_PROBS}, got {top}")
        try:
            params.check()
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        sequence = Generation(
            prompt=prompt,
            max_new_tokens=min(wanted, self.max_seq_len - len(prompt)),
            end_id=int(scalar(request, "end_id", -1)),
            params=params,
            stop_words=self._words(request, "stop_words_list"),
            bad_words=self._words(request, "bad_words_list"),
            min_tokens=int(scalar(request, "min_tokens", 0)),
            log_probs=bool(scalar(request, "return_log_probs", False)),
            top_log_probs=top,
            guide=self._guide(request),
        )
        if sequence.max_new_tokens <= 0:
            raise RequestError(f"the prompt leaves no room to generate within max_seq_len {self.max_seq_len}")
        return _Job(request, sender, sequence, streaming,
                    exclude_input=bool(scalar(request, "exclude_input_in_output", self.exclude_input)),
                    count_input=bool(scalar(request, "return_num_input_tokens", False)),
                    count_output=bool(scalar(request, "return_num_output_tokens", False)))

    @staticmethod
    def _check_unsupported(request: Any) -> None:
        for name, neutral in NEUTRAL.items():
            value = scalar(request, name, neutral)
            if value != neutral:
                raise RequestError(f"{name}={value} is not supported by the reference backend (only {neutral})")
        for name in ABSENT:
            if optional_array(request, name) is not None:
                raise RequestError(f"{name} is not supported by the reference backend")

    def _guide(self, request: Any):
        """A grammar matcher for the request's guide, or None (guide type ``none`` or absent)."""
        kind = scalar(request, "guided_decoding_guide_type", None)
        if kind is None or kind == "none":
            return None
        if not self.tokenizer_dir:
            raise RequestError("guided decoding needs the tokenizer_dir parameter in tensorrt_llm/config.pbtxt")
        from hunyuan_trtllm.serve.guided import GrammarFactory, Guide

        if self.grammars is None:
            self.grammars = GrammarFactory(Path(self.tokenizer_dir), self.executor.vocab)
        try:
            return self.grammars.matcher(Guide(kind, scalar(request, "guided_decoding_guide", "") or ""))
        except ValueError as exc:
            raise RequestError(str(exc)) from None

    @staticmethod
    def _words(request: Any, name: str) -> list[list[int]]:
        array = optional_array(request, name)
        return [] if array is None else decode_word_list(array)

    # ---- the worker ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_num_threads(1)  # OpenMP's thread count is per calling thread
        active: list[_Job] = []
        while not self.stopping.is_set():
            if not active:
                try:
                    active.append(self.pending.get(timeout=IDLE_WAIT_S))
                except queue.Empty:
                    continue
            while len(active) < self.max_active and not self.pending.empty():
                active.append(self.pending.get_nowait())
            active = [job for job in active if self._advance(job)]

    def _advance(self, job: _Job) -> bool:
        """One step of ``job``; False once it has been answered for good."""
        try:
            if job.request.is_cancelled():
                pb_utils.Logger.log_info(f"reference tensorrt_llm: request cancelled after "
                                         f"{len(job.sequence.tokens)} tokens")
                _send_quietly(job.sender, None)
                return False
            token = job.sequence.step(self.executor)
            finished = job.sequence.finished
            if job.streaming and (token is not None or finished):
                new = [] if token is None else [token]  # a stream ending on end_id ends with no token
                job.sender.send(self._response(job, new, job.sent, final=finished), flags=FINAL if finished else 0)
                job.sent += len(new)
            elif finished:
                tokens = job.sequence.tokens if job.exclude_input else job.sequence.prompt + job.sequence.tokens
                job.sender.send(self._response(job, tokens, 0, final=True), flags=FINAL)
            return not finished
        except Exception as exc:  # the request fails, the worker goes on
            pb_utils.Logger.log_error(f"reference tensorrt_llm: {type(exc).__name__}: {exc}")
            _send_quietly(job.sender, error_response(exc))
        return False

    @staticmethod
    def _response(job: _Job, tokens: list[int], first: int, final: bool = False) -> Any:
        """``tokens`` (the generated ones from index ``first`` on, the prompt first in a whole non-streamed answer)."""
        outputs = [
            tensor("output_ids", np.array(tokens, dtype=np.int32).reshape(1, 1, len(tokens)), np.int32),
            tensor("sequence_length", [[len(tokens)]], np.int32),
        ]
        sequence = job.sequence
        if sequence.log_probs:
            chosen = sequence.token_log_probs[first:] if job.streaming else sequence.token_log_probs
            outputs.append(tensor("output_log_probs", np.array(chosen, dtype=np.float32).reshape(1, 1, -1),
                                  np.float32))
            outputs.append(tensor("cum_log_probs", [[sum(sequence.token_log_probs)]], np.float32))
        if sequence.top_log_probs:
            top = sequence.top[first:] if job.streaming else sequence.top
            k = sequence.top_log_probs
            ids = np.array([[i for i, _ in row] for row in top], dtype=np.int32).reshape(1, 1, len(top), k)
            values = np.array([[v for _, v in row] for row in top], dtype=np.float32).reshape(1, 1, len(top), k)
            outputs += [tensor("top_log_prob_ids", ids, np.int32), tensor("top_log_probs", values, np.float32)]
        if final and job.count_input:
            outputs.append(tensor("num_input_tokens", [[len(job.sequence.prompt)]], np.int32))
        if final and job.count_output:
            outputs.append(tensor("num_output_tokens", [[len(job.sequence.tokens)]], np.int32))
        return pb_utils.InferenceResponse(output_tensors=outputs)


def _send_quietly(sender: Any, response: Any) -> None:
    """Close a request with a final response; a client that already went away (cancelled stream) is not an error."""
    try:
        if response is None:
            sender.send(flags=FINAL)
        else:
            sender.send(response, flags=FINAL)
    except Exception as exc:  # the stub raises plain exceptions for closed streams
        pb_utils.Logger.log_verbose(f"reference tensorrt_llm: final response not delivered ({exc})")
