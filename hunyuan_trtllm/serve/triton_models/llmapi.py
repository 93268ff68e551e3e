"""Triton model ``tensorrt_llm`` of the ``llmapi`` flavor: ``tensorrt_llm.LLM`` (PyTorch backend) behind Triton.

Self-contained (it runs inside NVIDIA's Triton + TensorRT-LLM image, where this project need not be installed).
``1/model.yaml`` holds the LLM's arguments (every key but ``triton_config`` goes to ``LLM(...)``;
``triton_config.custom_module_dirs`` are imported first, like trtllm-serve's ``--custom_module_dirs``). The LLM's
asyncio API runs on one event loop in a background thread; each request is a coroutine there, so requests are
batched in flight by TensorRT-LLM. Decoupled configs answer ``streaming`` requests with the new text of each
step; otherwise one response carries the whole text, or an error after ``triton_config.request_timeout_s``.
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
        try:
            prompt, sampling, streaming = self._parse(request)
            if streaming and sender is None:
                raise BadRequest("streaming needs a repository generated with streaming (decoupled) enabled")
            result = self.llm.generate_async(prompt, sampling, streaming=streaming)
            if streaming:
                async for output in result:
                    if request.is_cancelled():
                        result.abort()
                        break
                    sender.send(self._response(request, output.outputs[0], output.outputs[0].text_diff))
                sender.send(flags=FINAL)
                return None
            output = (await result.aresult()).outputs[0]
            response = self._response(request, output, output.text)
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
    def _response(request: Any, output: Any, text: str) -> Any:
        tensors = [pb_utils.Tensor("text_output", np.array([text.encode("utf-8")], dtype=np.object_))]
        if _scalar(request, "return_finish_reason"):
            reason = str(output.finish_reason or "")
            tensors.append(pb_utils.Tensor("finish_reason", np.array([reason.encode()], dtype=np.object_)))
        if _scalar(request, "return_stop_reason"):
            reason = "" if output.stop_reason is None else str(output.stop_reason)
            tensors.append(pb_utils.Tensor("stop_reason", np.array([reason.encode()], dtype=np.object_)))
        if _scalar(request, "return_cumulative_logprob"):
            logprob = float(output.cumulative_logprob or 0.0)
            tensors.append(pb_utils.Tensor("cumulative_logprob", np.array([logprob], dtype=np.float32)))
        return pb_utils.InferenceResponse(output_tensors=tensors)
