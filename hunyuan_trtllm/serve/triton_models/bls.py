"""Triton model ``tensorrt_llm_bls``: the ensemble's pipeline in Python, with streaming text that stays whole.

It calls ``preprocessing`` and ``tensorrt_llm`` (BLS requests) and detokenizes itself: streamed tokens go through
an :class:`~hunyuan_trtllm.checkpoints.tokenizer.IncrementalDetokenizer`, so a Chinese character spread over several
tokens arrives in one piece and the chunks concatenate to exactly the non-streamed text. Decoupled when the repository
streams (each request then runs in its own thread); ``stream`` asks for chunks.

Parameters: ``tokenizer_dir``, ``skip_special_tokens``, ``preprocessing_model_name``, ``tensorrt_llm_model_name``,
``tensorrt_llm_decoupled`` (whether to read the tensorrt_llm model as a response stream).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from hunyuan_trtllm.checkpoints.tokenizer import HunyuanTokenizer, IncrementalDetokenizer
from hunyuan_trtllm.serve.triton_configs import CLIENT_TO_LLM, PASSTHROUGH_OUTPUTS
from hunyuan_trtllm.serve.triton_pb import (
    RequestError,
    error_response,
    is_decoupled,
    model_parameters,
    optional_array,
    output_array,
    raise_for_error,
    required_array,
    scalar,
    string_tensor,
)

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
PREPROCESSING = {"text_input": "QUERY", "max_tokens": "REQUEST_OUTPUT_LEN", "bad_words": "BAD_WORDS_DICT",
                 "stop_words": "STOP_WORDS_DICT", "end_id": "END_ID", "pad_id": "PAD_ID"}
PREPROCESSED = {"INPUT_ID": "input_ids", "REQUEST_INPUT_LEN": "input_lengths",
                "REQUEST_OUTPUT_LEN": "request_output_len", "BAD_WORDS_IDS": "bad_words_list",
                "STOP_WORDS_IDS": "stop_words_list", "OUT_END_ID": "end_id", "OUT_PAD_ID": "pad_id"}
THREAD_JOIN_S = 10.0


class TritonPythonModel:
    """preprocessing -> tensorrt_llm -> text, in one model."""

    def initialize(self, args: dict) -> None:
        params = model_parameters(args)
        self.tokenizer = HunyuanTokenizer.from_model_dir(Path(params["tokenizer_dir"]))
        self.skip_special = params.get("skip_special_tokens", "true").lower() == "true"
        self.preprocessing = params.get("preprocessing_model_name", "preprocessing")
        self.llm = params.get("tensorrt_llm_model_name", "tensorrt_llm")
        self.llm_decoupled = params.get("tensorrt_llm_decoupled", "false").lower() == "true"
        self.decoupled = is_decoupled(args)
        self.threads: set[threading.Thread] = set()
        self.lock = threading.Lock()

    def execute(self, requests: list) -> list | None:
        if not self.decoupled:
            return [self._complete(request) for request in requests]
        for request in requests:
            thread = threading.Thread(target=self._stream, args=(request,), daemon=True)
            with self.lock:
                self.threads.add(thread)
            thread.start()
        return None

    def finalize(self) -> None:
        with self.lock:
            threads = list(self.threads)
        for thread in threads:
            thread.join(timeout=THREAD_JOIN_S)

    # ---- answering -----------------------------------------------------------------------------------------
    def _complete(self, request: Any) -> Any:
        """The non-decoupled answer: one response with the whole text."""
        try:
            if scalar(request, "stream", False):
                raise RequestError("streaming needs a repository generated with streaming (decoupled) enabled")
            tokens: list[int] = []
            extras: dict[str, np.ndarray] = {}
            for chunk, chunk_extras in self._generate(request, streaming=False):
                tokens += chunk
                extras |= chunk_extras
            return self._response(self.tokenizer.decode(tokens, skip_special_tokens=self.skip_special), extras)
        except Exception as exc:  # every failure becomes that request's error response
            return error_response(exc)

    def _stream(self, request: Any) -> None:
        """The decoupled answer: text chunks as they complete (``stream``), or one response at the end."""
        sender = request.get_response_sender()
        try:
            streaming = bool(scalar(request, "stream", False))
            detokenizer = IncrementalDetokenizer(self.tokenizer, skip_special_tokens=self.skip_special)
            pieces: list[str] = []
            extras: dict[str, np.ndarray] = {}
            sent = 0
            for chunk, chunk_extras in self._generate(request, streaming):
                text = detokenizer.push(chunk)
                if streaming and (text or chunk_extras):
                    sender.send(self._response(text, chunk_extras))
                    sent += 1
                else:
                    pieces.append(text)
                    extras |= chunk_extras
            pieces.append(detokenizer.flush())
            text = "".join(pieces)
            if sent and not (text or extras):  # nothing left to say: end the stream without an empty chunk
                sender.send(flags=FINAL)
            else:
                sender.send(self._response(text, extras), flags=FINAL)
        except Exception as exc:  # every failure becomes that request's error response
            sender.send(error_response(exc), flags=FINAL)
        finally:
            with self.lock:
                self.threads.discard(threading.current_thread())

    @staticmethod
    def _response(text: str, extras: dict[str, np.ndarray]) -> Any:
        outputs = [string_tensor("text_output", [[text]])]
        outputs += [pb_utils.Tensor(name, array) for name, array in extras.items()]
        return pb_utils.InferenceResponse(output_tensors=outputs)

    # ---- calling the other models --------------------------------------------------------------------------
    def _generate(self, request: Any, streaming: bool) -> Iterator[tuple[list[int], dict[str, np.ndarray]]]:
        """Token ids of the output as tensorrt_llm returns them, chunk by chunk, with the passed-through outputs."""
        if required_array(request, "text_input").shape[0] != 1:
            raise RequestError("one prompt per request")
        inputs = self._preprocess(request)
        for client, llm in CLIENT_TO_LLM.items():
            array = optional_array(request, client)
            if array is not None and llm not in inputs:
                inputs[llm] = array
        inputs["streaming"] = np.array([[streaming]], dtype=np.bool_)
        call = pb_utils.InferenceRequest(
            model_name=self.llm,
            requested_output_names=["output_ids", "sequence_length", *PASSTHROUGH_OUTPUTS],
            inputs=[pb_utils.Tensor(name, array) for name, array in inputs.items()],
        )
        responses = call.exec(decoupled=True) if self.llm_decoupled else [call.exec()]
        for response in responses:
            raise_for_error(response)
            ids = output_array(response, "output_ids")
            if ids is None:  # the empty final response of a stream
                continue
            length = int(output_array(response, "sequence_length").reshape(-1)[0])
            extras = {n: a for n in PASSTHROUGH_OUTPUTS if (a := output_array(response, n)) is not None}
            yield ids.reshape(-1)[:length].tolist(), extras  # [1, beam 1, tokens]

    def _preprocess(self, request: Any) -> dict[str, np.ndarray]:
        """Run the preprocessing model; its outputs keyed by the tensorrt_llm inputs they feed."""
        inputs = [pb_utils.Tensor(pre, array) for client, pre in PREPROCESSING.items()
                  if (array := optional_array(request, client)) is not None]
        call = pb_utils.InferenceRequest(model_name=self.preprocessing, inputs=inputs,
                                         requested_output_names=list(PREPROCESSED))
        response = raise_for_error(call.exec())
        return {llm: output_array(response, pre) for pre, llm in PREPROCESSED.items()}
