"""The OpenAI request fields beyond plain sampling: checked, defaulted and turned into backend parameters.

- Sampling defaults come from the model's ``generation_config.json`` (``temperature``, ``top_p``, ``top_k``,
  ``repetition_penalty``) for every field the request leaves out, as vLLM applies them.
- ``max_tokens`` beyond the room left by the prompt, ``stream_options`` without ``stream``, ``top_logprobs``
  without ``logprobs``, and anything the backend cannot do (alternatives per token, guided decoding) are refused
  with a 400, never ignored.
- ``response_format`` (``json_object`` / ``json_schema``) and ``tool_choice`` (``required`` / a named function)
  become guided-decoding guides (:mod:`hunyuan_trtllm.serve.guided`).
- Log probabilities are formatted in OpenAI's chat (``logprobs.content``) and completions (``tokens``,
  ``token_logprobs``, ``top_logprobs``, ``text_offset``) shapes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from hunyuan_trtllm.checkpoints.tokenizer import HunyuanTokenizer
from hunyuan_trtllm.serve.generation import TokenLogprob
from hunyuan_trtllm.serve.guided import Guide, response_format_guide, tool_choice_guide

MAX_TOP_LOGPROBS = 20
DEFAULT_FIELDS = ("temperature", "top_p", "top_k", "repetition_penalty")


class FieldError(ValueError):
    """A request field that cannot be honoured: answered with a 400 naming ``param``."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def sampling_defaults(generation_config: dict[str, Any]) -> dict[str, float]:
    """The sampling fields ``generation_config.json`` sets (numbers only)."""
    return {key: float(value) for key, value in generation_config.items()
            if key in DEFAULT_FIELDS and isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value)}


def check_length(requested: int | None, prompt_tokens: int, max_seq_len: int) -> None:
    """OpenAI and vLLM refuse a ``max_tokens`` the context cannot hold (no silent clamping)."""
    if requested is not None and prompt_tokens + requested > max_seq_len:
        raise FieldError(f"this model's maximum context length is {max_seq_len} tokens; you requested "
                         f"{prompt_tokens + requested} tokens ({prompt_tokens} in the prompt, {requested} for the "
                         "completion); reduce the prompt or max_tokens", "max_tokens")


def check_stream_options(request: Any) -> None:
    if request.stream_options is not None and not request.stream:
        raise FieldError("stream_options is only allowed when stream is true", "stream_options")


def top_logprobs(request: Any, backend: Any) -> tuple[bool, int]:
    """(log probabilities wanted, alternatives per token) of a chat or completions request."""
    if hasattr(request, "messages"):
        wanted, top = request.logprobs, request.top_logprobs
        if top is not None and not wanted:
            raise FieldError("top_logprobs needs logprobs: true", "top_logprobs")
        top, param = top or 0, "top_logprobs"
    else:
        wanted, top, param = request.logprobs is not None, request.logprobs or 0, "logprobs"
        if wanted and request.echo:
            raise FieldError("echo with logprobs is not supported (prompt log probabilities are not computed)",
                             "echo")
    if wanted and not getattr(backend, "log_probs", True):
        raise FieldError("logprobs: this backend (trtllm-serve) returns no log probabilities; serve with "
                         "--with triton for them", "logprobs")
    if not 0 <= top <= MAX_TOP_LOGPROBS:
        raise FieldError(f"{param} must be in 0..{MAX_TOP_LOGPROBS}", param)
    limit = getattr(backend, "max_top_logprobs", MAX_TOP_LOGPROBS)
    if top > limit:
        raise FieldError(f"{param}={top}: this backend returns at most {limit} alternatives per token "
                         "(TensorRT-LLM's tensorrt_llm model has no top-k log probabilities output)", param)
    return wanted, top


def guide(request: Any, backend: Any) -> Guide | None:
    """The guided-decoding guide of a chat request (``response_format`` or forced tool calls), or None."""
    if not hasattr(request, "messages"):
        return None
    try:
        forced = tool_choice_guide(request.tool_choice, request.tools)
        fmt = response_format_guide(request.response_format)
    except ValueError as exc:
        param = "tool_choice" if "tool_choice" in str(exc) else "response_format"
        raise FieldError(str(exc), param) from None
    if forced is not None and fmt is not None:
        raise FieldError("response_format cannot be combined with a forced tool_choice", "response_format")
    chosen = forced or fmt
    if chosen is not None and not getattr(backend, "guided_decoding", False):
        param = "tool_choice" if forced else "response_format"
        raise FieldError(f"{param} needs guided decoding, which this backend does not offer (see the README)", param)
    return chosen


def _entry(tokenizer: HunyuanTokenizer, token_id: int, logprob: float) -> dict[str, Any]:
    raw = tokenizer.decode_bytes([token_id])
    return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}


def chat_logprobs(tokenizer: HunyuanTokenizer, items: Sequence[TokenLogprob], top: int) -> dict[str, Any]:
    """OpenAI's chat ``logprobs``: ``{"content": [{token, logprob, bytes, top_logprobs}, ...]}``."""
    return {"content": [_entry(tokenizer, item.token_id, item.logprob) | {
        "top_logprobs": [_entry(tokenizer, i, v) for i, v in item.top[:top]]} for item in items]}


def completion_logprobs(tokenizer: HunyuanTokenizer, items: Sequence[TokenLogprob], top: int,
                        offset: int = 0) -> dict[str, Any]:
    """OpenAI's completions ``logprobs``; ``offset``: where the first token's text starts in the choice text."""
    tokens, offsets = [], []
    for item in items:
        offsets.append(offset)
        tokens.append(tokenizer.decode([item.token_id]))
        offset += len(tokens[-1])
    return {"tokens": tokens, "token_logprobs": [item.logprob for item in items],
            "top_logprobs": [{tokenizer.decode([i]): v for i, v in item.top[:top]} | {
                tokenizer.decode([item.token_id]): item.logprob} for item in items],
            "text_offset": offsets}
