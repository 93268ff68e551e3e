"""Triton model ``tensorrt_llm`` of the ``llmapi`` flavor: ``tensorrt_llm.LLM`` (PyTorch backend) behind Triton.

Two interfaces, chosen per request:

- text: ``text_input`` (+ ``sampling_param_*``) -> ``text_output`` (+ ``finish_reason`` / ``stop_reason`` /
  ``cumulative_logprob`` on request);
- tokens, when the request carries ``input_ids``: the inputs TensorRT-LLM's C++ ``tensorrt_llm`` model takes
  (``input_ids``, ``input_lengths``, ``request_output_len``, ``end_id``, ``pad_id``, ``streaming``, ``temperature``,
  ``runtime_top_k`` / ``runtime_top_p``, ``seed``, the penalties, single-token ``stop_words_list``,
  ``return_log_probs``, ``guided_decoding_guide_type`` / ``guided_decoding_guide``) -> ``output_ids`` ``[1, 1, n]``
  (the new tokens of each step when streaming, all of them otherwise; a stop word is kept, ``end_id`` is not, as
  the C++ backend does), ``sequence_length`` and, with ``return_log_probs``, ``output_log_probs`` (the sampled
  tokens' log probabilities). This is what the Hunyuan-aware OpenAI endpoint speaks (``TritonTokenBackend``).
  Guided decoding needs ``guided_decoding_backend: xgrammar`` in ``model.yaml``.

Self-contained (it runs inside NVIDIA's Triton + TensorRT-LLM image, where this project need not be installed).
``1/model.yaml`` holds the LLM's arguments (every key but ``triton_config`` goes to ``LLM(...)``;
``triton_config.custom_module_dirs`` are imported first, like trtllm-serve's ``--custom_module_dirs``). The LLM's
asyncio API runs on one event loop in a background thread; each request is a coroutine there, so requests are
batched in flight by TensorRT-LLM. Decoupled configs answer ``streaming`` requests with the new text or tokens of
each step, the last response flagged final (``RequestOutput.finished``), so a gRPC stream ends with data as the C++
backend's does; otherwise one response carries the whole output, or an error after
``triton_config.request_timeout_s``.
A cancelled streaming request is aborted.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
import yaml

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
LOOP_STOP_S = 30.0
DEFAULT_REQUEST_TIMEOUT_S = 600.0
# request input -> SamplingParams field
SAMPLING_INPUTS = {
    "sampling_param_best_of": "best_of", "sampling_param_temperature": "temperature",
    "sampling_param_top_k": "top_k", "sampling_param_top_p": "top_p",
    "sampling_param_frequency_penalty": "frequency_penalty", "sampling_param_presence_penalty": "presence_penalty",
    "sampling_param_max_tokens": "max_tokens", "sampling_param_seed": "seed",
    "sampling_param_exclude_input_from_output": "exclude_input_from_output",
    "sampling_param_return_perf_metrics": "return_perf_metrics",
}
# token interface: request input -> SamplingParams field
TOKEN_INPUTS = {
    "end_id": "end_id", "pad_id": "pad_id", "temperature": "temperature", "runtime_top_k": "top_k",
    "runtime_top_p": "top_p", "seed": "seed", "repetition_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
}
# guided_decoding_guide_type -> GuidedDecodingParams field (json: any JSON object)
GUIDES = {"json_schema": "json", "regex": "regex", "ebnf_grammar": "grammar"}


class BadRequest(ValueError):
    """Answered with INVALID_ARG."""


def _scalar(request: Any, name: str) -> Any:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None or tensor.as_numpy().size == 0:
        return None
    value = tensor.as_numpy().reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else value.item()


def _strings(request: Any, name: str) -> list[str]:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return []
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in tensor.as_numpy().reshape(-1)]


def _array(request: Any, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _words(array: np.ndarray | None) -> list[list[int]]:
    """The words of TensorRT-LLM's ``[2, L]`` word list: row 0 the ids, row 1 each word's end offset (-1 padded)."""
    if array is None:
        return []
    rows, words, start = array.reshape(2, -1), [], 0
    for end in rows[1]:
        if end < 0:
            break
        words.append([int(t) for t in rows[0, start:end]])
        start = int(end)
    return [w for w in words if w]


def _strings_tensor(name: str, text: str) -> Any:
    return pb_utils.Tensor(name, np.array([[text.encode("utf-8")]], dtype=np.object_))


def _log_prob(entry: Any, token: int) -> float:
    """A token's log probability from one ``CompletionOutput.logprobs`` entry: a float (TensorRT flow) or a
    ``{token_id: Logprob}`` dict (PyTorch backend)."""
    if isinstance(entry, dict):
        value = entry[token]
        return float(getattr(value, "logprob", value))
    return float(entry)


def _error(exc: BaseException) -> Any:
    code = pb_utils.TritonError.INVALID_ARG if isinstance(exc, BadRequest) else pb_utils.TritonError.INTERNAL
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc), code))


class TritonPythonModel:
    """One ``tensorrt_llm.LLM`` serving every request of this model."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        settings = yaml.safe_load((Path(args["model_repository"]) / args["model_version"] / "model.yaml").read_text())
        triton_config = settings.pop("triton_config", None) or {}
        self.timeout = float(triton_config.get("request_timeout_s", DEFAULT_REQUEST_TIMEOUT_S))
        from tensorrt_llm import LLM  # only inside the TensorRT-LLM image
        from tensorrt_llm.llmapi.llm_args import update_llm_args_with_extra_dict

        for directory in triton_config.get("custom_module_dirs", []):  # as trtllm-serve --custom_module_dirs
            from tensorrt_llm.tools.importlib_utils import import_custom_module_from_dir

            import_custom_module_from_dir(directory)
        self.llm = LLM(**update_llm_args_with_extra_dict({}, settings))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="llmapi-loop", daemon=True)
        self.thread.start()

    def execute(self, requests: list) -> list | None:
        futures = [asyncio.run_coroutine_threadsafe(self._serve(request), self.loop) for request in requests]
        if self.decoupled:
            return None
        return [self._wait(future) for future in futures]

    def _wait(self, future: Any) -> Any:
        """The response of a non-decoupled request, or a timeout error after ``request_timeout_s``."""
        try:
            return future.result(timeout=self.timeout)
        except TimeoutError:
            future.cancel()
            return _error(TimeoutError(f"no answer within request_timeout_s={self.timeout:g}"))

    def finalize(self) -> None:
        self.llm.shutdown()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=LOOP_STOP_S)

    async def _serve(self, request: Any) -> Any:
        """Answer ``request``: through its response sender when decoupled, else return the response."""
        sender = request.get_response_sender() if self.decoupled else None
        tokens = pb_utils.get_input_tensor_by_name(request, "input_ids") is not None
        try:
            prompt, sampling, streaming = self._parse_tokens(request) if tokens else self._parse(request)
            if streaming and sender is None:
                raise BadRequest("streaming needs a repository generated with streaming (decoupled) enabled")
            result = self.llm.generate_async(prompt, sampling, streaming=streaming)
            if streaming:  # one response per step, the last one flagged final (it may carry no new token)
                final = False
                async for output in result:
                    if request.is_cancelled():
                        result.abort()
                        break
                    step, final = output.outputs[0], output.finished
                    response = (self._token_response(step, len(step.token_ids) - len(step.token_ids_diff)) if tokens
                                else self._response(request, step, step.text_diff))
                    sender.send(response, flags=FINAL if final else 0)
                if not final:  # cancelled
                    sender.send(flags=FINAL)
                return None
            output = (await result.aresult()).outputs[0]
            response = self._token_response(output, 0) if tokens else self._response(request, output, output.text)
        except Exception as exc:  # every failure becomes that request's error response
            response = _error(exc)
        if sender is not None:
            sender.send(response, flags=FINAL)
            return None
        return response

    @staticmethod
    def _parse(request: Any) -> tuple[str, Any, bool]:
        from tensorrt_llm import SamplingParams

        prompts = _strings(request, "text_input")
        if len(prompts) != 1 or not prompts[0]:
            raise BadRequest("text_input must be one non-empty prompt")
        kwargs = {field: value for name, field in SAMPLING_INPUTS.items()
                  if (value := _scalar(request, name)) is not None}
        if kwargs.get("max_tokens", 1) <= 0:
            raise BadRequest(f"sampling_param_max_tokens must be positive, got {kwargs['max_tokens']}")
        stop = [s for s in _strings(request, "sampling_param_stop") if s]
        if stop:
            kwargs["stop"] = stop
        return prompts[0], SamplingParams(**kwargs), bool(_scalar(request, "streaming"))

    @staticmethod
    def _parse_tokens(request: Any) -> tuple[list[int], Any, bool]:
        """The token interface: TensorRT-LLM's request tensors -> (prompt ids, SamplingParams, streaming)."""
        from tensorrt_llm.sampling_params import GuidedDecodingParams, SamplingParams

        ids = _array(request, "input_ids").reshape(-1)
        length = _scalar(request, "input_lengths")
        prompt = [int(t) for t in (ids if length is None else ids[:length])]
        if not prompt:
            raise BadRequest("input_ids is empty")
        wanted = _scalar(request, "request_output_len")
        if wanted is None or wanted <= 0:
            raise BadRequest(f"request_output_len must be positive, got {wanted}")
        kwargs = {field: value for name, field in TOKEN_INPUTS.items() if (value := _scalar(request, name)) is not None}
        words = _words(_array(request, "stop_words_list"))
        if any(len(word) != 1 for word in words):
            raise BadRequest("stop_words_list: only single-token stop words are supported by the LLM API")
        if words:  # kept in the output, as the C++ backend keeps a stop word
            kwargs |= {"stop_token_ids": [word[0] for word in words], "include_stop_str_in_output": True}
        if _scalar(request, "return_log_probs"):
            kwargs["logprobs"] = 1
        kind = _scalar(request, "guided_decoding_guide_type")
        if kind not in (None, "", "none"):
            guide = _scalar(request, "guided_decoding_guide") or ""
            if kind == "json":
                kwargs["guided_decoding"] = GuidedDecodingParams(json_object=True)
            elif kind in GUIDES:
                kwargs["guided_decoding"] = GuidedDecodingParams(**{GUIDES[kind]: guide})
            else:
                raise BadRequest(f"guided_decoding_guide_type must be json, json_schema, regex or ebnf_grammar, "
                                 f"got {kind!r}")
        sampling = SamplingParams(max_tokens=wanted, detokenize=False, **kwargs)
        return prompt, sampling, bool(_scalar(request, "streaming"))

    @staticmethod
    def _token_response(output: Any, first: int) -> Any:
        """``output``'s tokens from index ``first`` on (with their log probabilities when they were asked for)."""
        ids = list(output.token_ids[first:])
        tensors = [pb_utils.Tensor("output_ids", np.array(ids, dtype=np.int32).reshape(1, 1, -1)),
                   pb_utils.Tensor("sequence_length", np.array([[len(ids)]], dtype=np.int32))]
        if output.logprobs:
            values = [_log_prob(entry, token) for entry, token in zip(output.logprobs[first:], ids, strict=True)]
            tensors.append(pb_utils.Tensor("output_log_probs", np.array(values, dtype=np.float32).reshape(1, 1, -1)))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    @staticmethod
    def _response(request: Any, output: Any, text: str) -> Any:
        tensors = [_strings_tensor("text_output", text)]
        if _scalar(request, "return_finish_reason"):
            tensors.append(_strings_tensor("finish_reason", str(output.finish_reason or "")))
        if _scalar(request, "return_stop_reason"):
            reason = "" if output.stop_reason is None else str(output.stop_reason)
            tensors.append(_strings_tensor("stop_reason", reason))
        if _scalar(request, "return_cumulative_logprob"):
            logprob = float(output.cumulative_logprob or 0.0)
            tensors.append(pb_utils.Tensor("cumulative_logprob", np.array([[logprob]], dtype=np.float32)))
        return pb_utils.InferenceResponse(output_tensors=tensors)
