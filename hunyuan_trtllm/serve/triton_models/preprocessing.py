"""Triton model ``preprocessing``: prompt text -> token ids, word lists and end/pad ids for ``tensorrt_llm``.

Parameters: ``tokenizer_dir`` (a Hunyuan model directory), ``max_input_len`` (longer prompts are refused here,
with a message, before they reach the engine), ``allow_special_tokens`` (special-token strings such as
``<|eos|>`` in the text become their ids; chat prompts rely on it). ``END_ID`` defaults to the tokenizer's
end-of-turn id; the tokenizer's other stop ids (A13B: ``<|extra_5|>``) are added as one-token stop words.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from hunyuan_trtllm.checkpoints.tokenizer import HunyuanTokenizer
from hunyuan_trtllm.serve.reference_decoding import encode_word_list
from hunyuan_trtllm.serve.triton_pb import (
    RequestError,
    batch_size,
    model_parameters,
    optional_array,
    required_array,
    respond_each,
    scalar,
    tensor,
    texts,
)


def _stack_word_lists(lists: list[np.ndarray]) -> np.ndarray:
    """``[batch, 2, L]``: each ``[2, l]`` list padded with id 0 / offset -1 to the longest."""
    width = max(item.shape[1] for item in lists)
    out = np.zeros((len(lists), 2, width), dtype=np.int32)
    out[:, 1, :] = -1
    for row, item in enumerate(lists):
        out[row, :, : item.shape[1]] = item
    return out


class TritonPythonModel:
    """Tokenize each request's ``QUERY``."""

    def initialize(self, args: dict) -> None:
        params = model_parameters(args)
        self.tokenizer = HunyuanTokenizer.from_model_dir(Path(params["tokenizer_dir"]))
        self.max_input_len = int(params["max_input_len"])
        self.allow_special = params.get("allow_special_tokens", "true").lower() == "true"

    def execute(self, requests: list) -> list:
        return respond_each(requests, self._respond)

    def _respond(self, request: object) -> object:
        queries = required_array(request, "QUERY")
        prompts = texts(queries)
        output_len = required_array(request, "REQUEST_OUTPUT_LEN").reshape(-1)
        if len(output_len) != len(prompts):
            raise RequestError("REQUEST_OUTPUT_LEN must have one value per prompt")
        if (output_len <= 0).any():
            raise RequestError(f"max_tokens must be positive, got {int(output_len.min())}")
        ids = [self._encode(text) for text in prompts]
        end_id = int(scalar(request, "END_ID", self.tokenizer.eos_token_id))
        pad_default = self.tokenizer.pad_token_id
        pad_id = int(scalar(request, "PAD_ID", end_id if pad_default is None else pad_default))
        batch = batch_size(queries)
        input_ids = np.full((batch, max(len(x) for x in ids)), pad_id, dtype=np.int32)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = seq
        extra_stops = [[t] for t in self.tokenizer.stop_token_ids if t != end_id]
        stop_lists = [encode_word_list(extra_stops + words) for words in self._words(request, "STOP_WORDS_DICT",
                                                                                     batch)]
        bad_lists = [encode_word_list(words) for words in self._words(request, "BAD_WORDS_DICT", batch)]
        return pb_utils.InferenceResponse(output_tensors=[
            tensor("INPUT_ID", input_ids, np.int32),
            tensor("REQUEST_INPUT_LEN", [[len(seq)] for seq in ids], np.int32),
            tensor("REQUEST_OUTPUT_LEN", output_len.reshape(batch, -1), np.int32),
            tensor("STOP_WORDS_IDS", _stack_word_lists(stop_lists), np.int32),
            tensor("BAD_WORDS_IDS", _stack_word_lists(bad_lists), np.int32),
            tensor("OUT_END_ID", [[end_id]] * batch, np.int32),
            tensor("OUT_PAD_ID", [[pad_id]] * batch, np.int32),
        ])

    def _encode(self, text: str) -> list[int]:
        if not text:
            raise RequestError("text_input is empty")
        ids = self.tokenizer.encode(text, allow_special=self.allow_special)
        if not ids:
            raise RequestError("text_input encodes to no tokens")
        if len(ids) > self.max_input_len:
            raise RequestError(f"the prompt has {len(ids)} tokens; this model accepts at most {self.max_input_len}")
        return ids

    def _words(self, request: object, name: str, batch: int) -> list[list[list[int]]]:
        """Per batch item, the token ids of each non-empty word of a STRING word list input."""
        array = optional_array(request, name)
        if array is None:
            return [[] for _ in range(batch)]
        rows = array.reshape(batch, -1)
        return [[self.tokenizer.encode(w, allow_special=self.allow_special) for w in texts(row) if w]
                for row in rows]
