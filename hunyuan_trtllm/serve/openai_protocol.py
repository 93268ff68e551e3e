"""OpenAI request/response shapes (the subset the endpoint serves), as pydantic models and plain builders."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # a signed 64-bit integer, as OpenAI and vLLM accept


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _text_parts_hold_text(cls, content: Any) -> Any:
        """A ``{"type": "text"}`` part's ``text`` must be a string (else a 400, not a 500 later)."""
        if isinstance(content, list):
            for index, part in enumerate(content):
                if part.get("type") == "text" and not isinstance(part.get("text"), str):
                    raise ValueError(f"content part {index}: 'text' must be a string")
        return content

    def text(self) -> str:
        """The message text; OpenAI's list-of-parts form is joined with "\n" (text parts only), as vLLM does."""
        if isinstance(self.content, list):
            return "\n".join(part.get("text", "") for part in self.content if part.get("type") == "text")
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)  # NaN / Infinity are 400s

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    n: int = 1
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    repetition_penalty: float | None = None  # vLLM's extension
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    skip_special_tokens: bool = True  # vLLM's extension: special tokens never reach the text unless false

    def stop_strings(self) -> list[str]:
        """The stop strings; empty ones are ignored (they would end every generation at once)."""
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return [s for s in stops if s]


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    reasoning_effort: str | None = None  # Hy3: no_think (default), low, high

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(SamplingRequest):
    prompt: str | list[int]
    echo: bool = False
    logprobs: int | None = None  # how many alternatives per token (0: the sampled token's log probability only)

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_response(request_id: str, model: str, message: dict[str, Any], finish_reason: str,
                  token_usage: dict[str, int], logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": logprobs}],
            "usage": token_usage}


def chat_chunk(request_id: str, model: str, delta: dict[str, Any], finish_reason: str | None = None,
               token_usage: dict[str, int] | None = None, logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    choices = [] if token_usage else [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                                       "logprobs": logprobs}]
    chunk = {"id": request_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
             "choices": choices}
    if token_usage:
        chunk["usage"] = token_usage
    return chunk


def completion_response(request_id: str, model: str, text: str, finish_reason: str | None,
                        token_usage: dict[str, int] | None, chunk: bool = False,
                        logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    body = {"id": request_id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": logprobs}]}
    if token_usage:
        body["usage"] = token_usage
    if chunk and token_usage and not text and finish_reason is None:
        body["choices"] = []
    return body


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
