"""A token backend over trtllm-serve: our Hunyuan-aware OpenAI endpoint in front of TensorRT-LLM's own server.

trtllm-serve (TensorRT-LLM 1.2.x) has no Hunyuan reasoning or tool-call parser, so the endpoint renders the chat
template, parses the output and applies every OpenAI rule itself, and uses trtllm-serve only to generate tokens:
each request is one streaming ``POST /v1/completions`` whose ``prompt`` is the token-id list and whose
``detokenize`` is false, so every SSE chunk carries the new ``token_ids`` of that step (``text`` stays empty;
trtllm-serve's ``CompletionRequest.detokenize``, TensorRT-LLM PR #5382, in 1.0 and later).

Only fields of 1.2.x's ``CompletionRequest`` are sent (it forbids unknown ones): ``max_tokens``, ``temperature``,
``top_p``, ``top_k``, ``seed`` (a random one when the request has none, as for Triton), ``stop_token_ids``, the
three penalties, ``response_format`` for guided decoding (``json`` with ``schema``, ``json_object``, ``regex``,
``ebnf``; the server runs with ``guided_decoding_backend: xgrammar``). Log probabilities are not offered on this
path: 1.2.x's completions endpoint refuses ``logprobs`` on the versions read, so the endpoint answers them with a
400 (serve with ``--with triton`` for them). A 4xx from trtllm-serve is a 400 to the client, with its message.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx

from hunyuan_trtllm.serve.generation import BackendRejected, GenerationParams, TokenStep
from hunyuan_trtllm.serve.guided import Guide

CONNECT_TIMEOUT_S = 10.0


def response_format(guide: Guide) -> dict[str, Any]:
    """trtllm-serve's ``response_format`` for one of our guides (TensorRT-LLM's ``GuidedDecodingParams`` kinds)."""
    if guide.kind == "json":
        return {"type": "json_object"}
    if guide.kind == "json_schema":
        return {"type": "json", "schema": json.loads(guide.text)}
    if guide.kind == "regex":
        return {"type": "regex", "regex": guide.text}
    if guide.kind == "ebnf_grammar":
        return {"type": "ebnf", "ebnf": guide.text}
    raise ValueError(f"no trtllm-serve response_format for guide type {guide.kind!r}")


def completion_body(model: str, prompt_ids: list[int], params: GenerationParams) -> dict[str, Any]:
    """The ``/v1/completions`` request for one generation: token ids in, token ids out, streamed."""
    body: dict[str, Any] = {
        "model": model, "prompt": prompt_ids, "max_tokens": params.max_tokens, "stream": True,
        "detokenize": False, "temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k,
        "stop_token_ids": list(params.stop_token_ids),
        "repetition_penalty": params.repetition_penalty, "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
    }
    # TensorRT-LLM seeds each request with 0 when it has none: the same prompt would always draw the same sample
    body["seed"] = params.seed if params.seed is not None else secrets.randbits(63)
    if params.guide is not None:
        body["response_format"] = response_format(params.guide)
    return body


class TrtllmServeTokenBackend:
    """Generate token ids with the trtllm-serve at ``base_url`` (e.g. ``http://127.0.0.1:8001``)."""

    max_top_logprobs = 0  # no alternatives per token
    log_probs = False  # and no log probabilities (see the module docstring)

    def __init__(self, base_url: str, max_input_len: int, max_seq_len: int, guided_decoding: bool = True,
                 request_timeout_s: float | None = None):
        self.base_url = base_url.rstrip("/")
        self.max_input_len, self.max_seq_len = max_input_len, max_seq_len
        self.guided_decoding = guided_decoding
        self._timeout = httpx.Timeout(request_timeout_s, connect=CONNECT_TIMEOUT_S)
        self._model: str | None = None

    async def ready(self) -> bool:
        try:
            async with httpx.AsyncClient(timeout=CONNECT_TIMEOUT_S) as client:
                return (await client.get(f"{self.base_url}/health")).status_code == 200
        except httpx.HTTPError:  # not listening yet, or gone: not ready
            return False

    async def _served_model(self, client: httpx.AsyncClient) -> str:
        """The model id trtllm-serve serves (its ``/v1/models``), asked once."""
        if self._model is None:
            response = await client.get(f"{self.base_url}/v1/models")
            response.raise_for_status()
            self._model = response.json()["data"][0]["id"]
        return self._model

    async def stream(self, prompt_ids: list[int], params: GenerationParams) -> AsyncIterator[TokenStep]:
        async with httpx.AsyncClient(timeout=self._timeout) as client:
            body = completion_body(await self._served_model(client), prompt_ids, params)
            async with client.stream("POST", f"{self.base_url}/v1/completions", json=body) as response:
                if response.status_code != 200:
                    detail = _message((await response.aread()).decode("utf-8", errors="replace"))
                    if 400 <= response.status_code < 500:
                        raise BackendRejected(f"trtllm-serve refused the request: {detail}")
                    raise RuntimeError(f"trtllm-serve answered {response.status_code}: {detail}")
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[len("data:"):].strip()
                    if data == "[DONE]":
                        return
                    chunk = json.loads(data)
                    if "choices" not in chunk:  # an error event in the stream
                        raise RuntimeError(f"trtllm-serve: {_message(data)}")
                    for choice in chunk["choices"]:
                        if choice.get("token_ids"):
                            yield TokenStep([int(t) for t in choice["token_ids"]])


def _message(text: str) -> str:
    """The ``message`` of an OpenAI-style error body, else the text itself (shortened)."""
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        return text[:500]
    error = body.get("error", body) if isinstance(body, dict) else body
    return str(error.get("message", error) if isinstance(error, dict) else error)[:500]
