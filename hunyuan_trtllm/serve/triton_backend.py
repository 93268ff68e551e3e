"""A token backend over Triton's ``tensorrt_llm`` model (gRPC streaming): the C++ TensorRT-LLM backend, the
``reference`` flavor's Python model or the ``llmapi`` flavor's token interface, which share inputs and outputs.

Each request opens one bidirectional stream, sends TensorRT-LLM's request tensors (``input_ids``,
``request_output_len``, ``end_id``, ``stop_words_list``, ``streaming``, sampling parameters) and receives one
response per generated token until the one flagged ``triton_final_response``.

Log probabilities come from ``return_log_probs`` -> ``output_log_probs`` (both flavors); the best alternatives
per token (``num_top_log_probs`` -> ``top_log_probs`` / ``top_log_prob_ids``) and guided decoding
(``guided_decoding_guide_type`` / ``guided_decoding_guide``) only where the backend says it has them
(:attr:`TritonTokenBackend.max_top_logprobs`, :attr:`TritonTokenBackend.guided_decoding`); the endpoint refuses
them with a 400 elsewhere.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator

import numpy as np

from hunyuan_trtllm.serve.generation import GenerationParams, TokenStep
from hunyuan_trtllm.serve.reference_decoding import encode_word_list


class TritonTokenBackend:
    """Generate token ids with Triton's ``tensorrt_llm`` model at ``grpc_url`` (``host:port``)."""

    def __init__(self, grpc_url: str, max_input_len: int, max_seq_len: int, end_id: int, pad_id: int,
                 model: str = "tensorrt_llm", max_top_logprobs: int = 0, guided_decoding: bool = False):
        """``max_top_logprobs`` / ``guided_decoding``: what the model behind ``grpc_url`` offers (the ``reference``
        flavor: 20 and True; TensorRT-LLM's C++ backend and the ``llmapi`` model: 0 and True; see
        :func:`hunyuan_trtllm.serve.launch.token_backend`)."""
        self.url, self.model = grpc_url, model
        self.max_top_logprobs, self.guided_decoding = max_top_logprobs, guided_decoding
        self.max_input_len, self.max_seq_len = max_input_len, max_seq_len
        self.end_id, self.pad_id = end_id, pad_id

    def _client(self):
        import tritonclient.grpc.aio as grpcclient

        return grpcclient.InferenceServerClient(self.url)

    async def ready(self) -> bool:
        client = self._client()
        try:
            return bool(await client.is_model_ready(self.model))
        except Exception:  # an unreachable server is simply not ready
            return False
        finally:
            await client.close()

    def _inputs(self, prompt_ids: list[int], params: GenerationParams) -> list:
        import tritonclient.grpc.aio as grpcclient

        seed = params.seed if params.seed is not None else secrets.randbits(63)
        stop_words = [[t] for t in params.stop_token_ids if t != self.end_id]
        tensors = {
            "input_ids": np.array([prompt_ids], dtype=np.int32),
            "input_lengths": np.array([[len(prompt_ids)]], dtype=np.int32),
            "request_output_len": np.array([[params.max_tokens]], dtype=np.int32),
            "end_id": np.array([[self.end_id]], dtype=np.int32),
            "pad_id": np.array([[self.pad_id]], dtype=np.int32),
            "streaming": np.array([[True]], dtype=bool),
            "temperature": np.array([[params.temperature]], dtype=np.float32),
            "runtime_top_k": np.array([[params.top_k]], dtype=np.int32),
            "runtime_top_p": np.array([[params.top_p]], dtype=np.float32),
            "seed": np.array([[seed]], dtype=np.uint64),
            "stop_words_list": encode_word_list(stop_words)[None],
        }
        optional = {"repetition_penalty": (params.repetition_penalty, 1.0, np.float32),
                    "presence_penalty": (params.presence_penalty, 0.0, np.float32),
                    "frequency_penalty": (params.frequency_penalty, 0.0, np.float32),
                    "return_log_probs": (params.logprobs, False, bool),
                    "num_top_log_probs": (params.top_logprobs, 0, np.int32)}
        for name, (value, neutral, dtype) in optional.items():
            if value != neutral:
                tensors[name] = np.array([[value]], dtype=dtype)
        if params.guide is not None:
            tensors["guided_decoding_guide_type"] = np.array([[params.guide.kind.encode()]], dtype=np.object_)
            tensors["guided_decoding_guide"] = np.array([[params.guide.text.encode()]], dtype=np.object_)
        inputs = []
        for name, array in tensors.items():
            dtype = {np.int32: "INT32", np.float32: "FP32", np.uint64: "UINT64", np.bool_: "BOOL",
                     np.object_: "BYTES"}[array.dtype.type]
            tensor = grpcclient.InferInput(name, list(array.shape), dtype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return inputs

    @staticmethod
    def _outputs(params: GenerationParams) -> list:
        import tritonclient.grpc.aio as grpcclient

        names = ["output_ids"] + (["output_log_probs"] if params.logprobs else [])
        names += ["top_log_probs", "top_log_prob_ids"] if params.top_logprobs else []
        return [grpcclient.InferRequestedOutput(name) for name in names]

    @staticmethod
    def _step(result, params: GenerationParams) -> TokenStep | None:
        ids = result.as_numpy("output_ids")
        if ids is None or not ids.size:
            return None
        step = TokenStep([int(t) for t in ids.reshape(-1)])
        if params.logprobs:
            values = result.as_numpy("output_log_probs")
            step.log_probs = None if values is None else [float(v) for v in values.reshape(-1)[: len(step.ids)]]
        if params.top_logprobs:
            k = params.top_logprobs
            top_ids, top_values = result.as_numpy("top_log_prob_ids"), result.as_numpy("top_log_probs")
            if top_ids is not None and top_values is not None:
                pairs = zip(top_ids.reshape(-1, k).tolist(), top_values.reshape(-1, k).tolist(), strict=True)
                step.top = [list(zip(i, v, strict=True)) for i, v in pairs]
        return step

    async def stream(self, prompt_ids: list[int], params: GenerationParams) -> AsyncIterator[TokenStep]:

        client = self._client()
        done = asyncio.Event()

        async def requests():
            yield {"model_name": self.model, "inputs": self._inputs(prompt_ids, params),
                   "outputs": self._outputs(params),
                   "request_id": uuid.uuid4().hex, "enable_empty_final_response": True}
            await done.wait()  # keep the stream open until the final response has arrived

        try:
            async for result, error in client.stream_infer(inputs_iterator=requests()):
                if error is not None:
                    raise RuntimeError(f"Triton: {error}")
                step = self._step(result, params)
                if step is not None:
                    yield step
                final = result.get_response().parameters.get("triton_final_response")
                if final is not None and final.bool_param:
                    break
        finally:
            done.set()
            await client.close()
