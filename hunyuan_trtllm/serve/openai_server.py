"""An OpenAI-compatible endpoint (FastAPI) in front of a token backend (Triton's ``tensorrt_llm`` model).

``/v1/chat/completions`` (and SSE streaming), ``/v1/completions``, ``/v1/models``, ``/health``, ``/metrics``
(Prometheus). Hunyuan's ``<think>…</think><answer>…</answer>`` becomes ``reasoning_content`` / ``content`` and
``<tool_calls>[…]</tool_calls>`` becomes ``tool_calls``; tools in the request reach the chat template;
``chat_template_kwargs.enable_thinking`` (or ``/no_think``) turns thinking off.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from hunyuan_trtllm.checkpoints.tokenizer import HunyuanTokenizer
from hunyuan_trtllm.errors import UserError
from hunyuan_trtllm.serve.generation import GenerationParams, TokenBackend, generate_text
from hunyuan_trtllm.serve.hy3_output import hy3_chat
from hunyuan_trtllm.serve.openai_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    chat_chunk,
    chat_response,
    completion_response,
    error_body,
    new_id,
    usage,
)
from hunyuan_trtllm.serve.output import StreamingOutputParser, parse_output

DEFAULT_MAX_TOKENS = 512


class RequestError(Exception):
    """A bad request: answered with ``status`` and an OpenAI error body; the server keeps serving."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("hunyuan_requests", "Requests by endpoint and status", ["endpoint", "status"],
                                registry=self.registry)
        self.prompt_tokens = Counter("hunyuan_prompt_tokens", "Prompt tokens processed", registry=self.registry)
        self.completion_tokens = Counter("hunyuan_completion_tokens", "Tokens generated", registry=self.registry)
        self.latency = Histogram("hunyuan_request_seconds", "Time to the last token", ["endpoint"],
                                 registry=self.registry)


def create_app(backend: TokenBackend, tokenizer: HunyuanTokenizer, model_name: str) -> FastAPI:
    """The FastAPI application serving ``model_name`` through ``backend``."""
    app = FastAPI(title="hunyuan-trtllm OpenAI endpoint")
    metrics = _Metrics()

    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(error_body(str(exc), param=exc.param, code=exc.code), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else "malformed JSON body"
        return JSONResponse(error_body(message, param=where or None), status_code=400)

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200 if await backend.ready() else 503)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "hunyuan-trtllm"}]}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def check(request: ChatCompletionRequest | CompletionRequest, prompt_ids: list[int]) -> GenerationParams:
        if request.model != model_name:
            raise RequestError(f"model '{request.model}' does not exist; this server serves '{model_name}'", 404,
                               "model", "model_not_found")
        if request.n != 1:
            raise RequestError("only n=1 is supported", param="n")
        if not prompt_ids:
            raise RequestError("the prompt is empty", param="prompt")
        if len(prompt_ids) > backend.max_input_len:
            raise RequestError(f"the prompt has {len(prompt_ids)} tokens; this engine accepts at most "
                               f"{backend.max_input_len}", param="messages", code="context_length_exceeded")
        limit = request.token_limit
        if limit is not None and limit <= 0:
            raise RequestError("max_tokens must be at least 1", param="max_tokens")
        room = backend.max_seq_len - len(prompt_ids)
        if request.temperature is not None and request.temperature < 0:
            raise RequestError("temperature must be >= 0", param="temperature")
        if request.top_p is not None and not 0 < request.top_p <= 1:
            raise RequestError("top_p must be in (0, 1]", param="top_p")
        greedy = request.temperature == 0
        return GenerationParams(
            max_tokens=max(1, min(limit or DEFAULT_MAX_TOKENS, room)),
            temperature=1.0 if greedy or request.temperature is None else request.temperature,
            top_p=request.top_p or 1.0,
            top_k=1 if greedy else (request.top_k or 0),
            seed=request.seed,
            stop_token_ids=tokenizer.stop_token_ids,
        )

    async def run(endpoint: str, request, prompt_ids: list[int], params: GenerationParams, stream_body):
        metrics.prompt_tokens.inc(len(prompt_ids))
        started = time.monotonic()
        events = generate_text(backend, tokenizer, prompt_ids, params, request.stop_strings())
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)

            async def sse() -> AsyncIterator[str]:
                tokens = 0
                async for chunk, completion in stream_body(events, include_usage):
                    tokens = completion
                    yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
                metrics.completion_tokens.inc(tokens)
                metrics.latency.labels(endpoint).observe(time.monotonic() - started)
                yield "data: [DONE]\n\n"

            metrics.requests.labels(endpoint, "200").inc()
            return StreamingResponse(sse(), media_type="text/event-stream")
        text, finish, completion = "", "stop", 0
        async for event in events:
            text += event.text
            finish, completion = event.finish_reason or finish, event.completion_tokens
        metrics.completion_tokens.inc(completion)
        metrics.latency.labels(endpoint).observe(time.monotonic() - started)
        metrics.requests.labels(endpoint, "200").inc()
        return text, finish, usage(len(prompt_ids), completion)

    @app.post("/v1/chat/completions")
    async def chat(request: ChatCompletionRequest) -> Any:
        messages = [m.model_dump(exclude_none=True) | {"content": m.text()} for m in request.messages]
        thinking = (request.chat_template_kwargs or {}).get("enable_thinking", True)
        try:
            hy3 = hy3_chat(tokenizer, messages, request.tools, request.chat_template_kwargs, request.reasoning_effort)
            prompt = hy3.prompt if hy3 else tokenizer.render_chat(messages, tools=request.tools,
                                                                  enable_thinking=bool(thinking))
        except (UserError, ValueError) as exc:
            raise RequestError(str(exc), param="messages") from None
        prompt_ids = tokenizer.encode(prompt)
        params = check(request, prompt_ids)
        request_id = new_id("chatcmpl")

        async def stream_body(events, include_usage: bool):
            parser, completion, called = hy3.parser() if hy3 else StreamingOutputParser(), 0, 0
            yield chat_chunk(request_id, request.model, {"role": "assistant", "content": ""}), 0
            async for event in events:
                completion = event.completion_tokens
                deltas = parser.push(event.text) + (parser.finish() if event.finish_reason else [])
                for delta in deltas:
                    if delta.tool_call is not None:
                        call = {"index": called, **delta.tool_call}
                        called += 1
                        yield chat_chunk(request_id, request.model, {"tool_calls": [call]}), completion
                    else:
                        piece = {k: v for k, v in (("reasoning_content", delta.reasoning_content),
                                                   ("content", delta.content)) if v}
                        if piece:
                            yield chat_chunk(request_id, request.model, piece), completion
                if event.finish_reason:
                    finish = "tool_calls" if called else event.finish_reason
                    yield chat_chunk(request_id, request.model, {}, finish), completion
            if include_usage:
                yield chat_chunk(request_id, request.model, {}, token_usage=usage(len(prompt_ids), completion)), \
                    completion

        result = await run("chat", request, prompt_ids, params, stream_body)
        if isinstance(result, StreamingResponse):
            return result
        text, finish, token_usage = result
        parsed = hy3.parse(text) if hy3 else parse_output(text)
        message: dict[str, Any] = {"role": "assistant", "content": parsed.content,
                                   "reasoning_content": parsed.reasoning_content}
        if parsed.tool_calls:
            message["tool_calls"] = parsed.tool_calls
            finish = "tool_calls"
        return chat_response(request_id, request.model, message, finish, token_usage)

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest) -> Any:
        prompt_ids = list(request.prompt) if isinstance(request.prompt, list) else tokenizer.encode(request.prompt)
        if any(not 0 <= t < tokenizer.vocab_size for t in prompt_ids):
            raise RequestError("prompt token ids must be within the vocabulary", param="prompt")
        params = check(request, prompt_ids)
        request_id = new_id("cmpl")

        async def stream_body(events, include_usage: bool):
            completion = 0
            async for event in events:
                completion = event.completion_tokens
                if event.text or event.finish_reason:
                    yield completion_response(request_id, request.model, event.text, event.finish_reason, None,
                                              chunk=True), completion
            if include_usage:
                yield completion_response(request_id, request.model, "", None, usage(len(prompt_ids), completion),
                                          chunk=True), completion

        result = await run("completions", request, prompt_ids, params, stream_body)
        if isinstance(result, StreamingResponse):
            return result
        text, finish, token_usage = result
        if request.echo and isinstance(request.prompt, str):
            text = request.prompt + text
        return completion_response(request_id, request.model, text, finish, token_usage)

    return app
