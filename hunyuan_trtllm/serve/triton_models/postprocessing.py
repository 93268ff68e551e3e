"""Triton model ``postprocessing``: ``TOKENS_BATCH`` ``[batch, beam, tokens]`` -> ``OUTPUT`` text ``[batch, beam]``.

Each call decodes only the tokens it is given: in a streaming ensemble that is one chunk, so a character split
across chunks arrives as U+FFFD pieces (use ``tensorrt_llm_bls`` for streaming). Parameters: ``tokenizer_dir``,
``skip_special_tokens`` (drops stop words such as ``<|extra_5|>``, which TensorRT-LLM keeps in the output).
"""

from __future__ import annotations

from pathlib import Path

import triton_python_backend_utils as pb_utils

from hunyuan_trtllm.checkpoints.tokenizer import HunyuanTokenizer
from hunyuan_trtllm.serve.triton_pb import model_parameters, required_array, respond_each, string_tensor


class TritonPythonModel:
    """Detokenize each request's beams."""

    def initialize(self, args: dict) -> None:
        params = model_parameters(args)
        self.tokenizer = HunyuanTokenizer.from_model_dir(Path(params["tokenizer_dir"]))
        self.skip_special = params.get("skip_special_tokens", "true").lower() == "true"

    def execute(self, requests: list) -> list:
        return respond_each(requests, self._respond)

    def _respond(self, request: object) -> object:
        tokens = required_array(request, "TOKENS_BATCH")
        lengths = required_array(request, "SEQUENCE_LENGTH")
        if tokens.ndim == 2:  # [batch, tokens] from a client without the beam dimension
            tokens = tokens[:, None, :]
        lengths = lengths.reshape(tokens.shape[:2])
        rows = [[self.tokenizer.decode(beam[: int(n)].tolist(), skip_special_tokens=self.skip_special)
                 for beam, n in zip(item, item_lengths, strict=True)]
                for item, item_lengths in zip(tokens, lengths, strict=True)]
        return pb_utils.InferenceResponse(output_tensors=[string_tensor("OUTPUT", rows)])
