"""An OpenAI-compatible endpoint (FastAPI) in front of a token backend (Triton's ``tensorrt_llm`` model).

``/v1/chat/completions`` (and SSE streaming), ``/v1/completions``, ``/v1/models``, ``/health``, ``/metrics``
(Prometheus). Hunyuan's ``<think>…</think><answer>…</answer>`` becomes ``reasoning_content`` / ``content`` and
``<tool_calls>[…]</tool_calls>`` becomes ``tool_calls``; tools in the request reach the chat template;
``chat_template_kwargs.enable_thinking`` (or ``/no_think``) turns thinking off. The other OpenAI fields
(log probabilities, structured output, forced tool calls, ``generation_config.json`` defaults) are handled in
:mod:`hunyuan_trtllm.serve.openai_fields`; every field is honoured or refused with a 400, none is ignored.
Prometheus metrics: requests by endpoint and status code (4xx/5xx included), request latency and time to the
first token (histograms), prompt and completion tokens.

Limits and errors (:mod:`hunyuan_trtllm.serve.http_safety`): bodies over ``max_body_bytes`` get a 413; the chat
template renders in a bounded worker process and prompts are tokenized in threads, never on the event loop; a
non-streaming request whose client disconnects is cancelled (so is its Triton request); every error is an OpenAI
error body (``{"error": {"message", "type", "param", "code"}}``) with its 4xx/5xx status.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from hunyuan_trtllm.checkpoints.tokenizer import HunyuanTokenizer
from hunyuan_trtllm.errors import UserError
from hunyuan_trtllm.serve import openai_fields as fields
from hunyuan_trtllm.serve.chat_prompts import ChatPrompts, PromptError
from hunyuan_trtllm.serve.generation import BackendRejected, GenerationParams, TokenBackend, generate_text
from hunyuan_trtllm.serve.http_safety import BodySizeLimit, ServerLimits, install_error_handlers, until_disconnected
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
from hunyuan_trtllm.serve.output import (
    ASSISTANT_PREFIX,
    PrefixStripper,
    StreamingOutputParser,
    parse_output,
    parse_tool_calls,
)

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
        self.first_token = Histogram("hunyuan_time_to_first_token_seconds", "Time to the first generated text",
                                     ["endpoint"], registry=self.registry)


ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/models": "models",
             "/health": "health", "/metrics": "metrics"}


class _Call:
    """A forced tool call as a parser delta."""

    def __init__(self, call: dict[str, Any]) -> None:
        self.tool_call, self.content, self.reasoning_content = call, None, None


class _Content:
    """Forced-call output that is not a call list (max_tokens cut it): plain content."""

    def __init__(self, text: str) -> None:
        self.tool_call, self.content, self.reasoning_content = None, text, None


async def _timed(events: AsyncIterator, histogram: Histogram, started: float) -> AsyncIterator:
    """``events`` unchanged; the time to the first one with text goes to ``histogram``."""
    seen = False
    async for event in events:
        if not seen and (event.text or event.finish_reason):
            seen = True
            histogram.observe(time.monotonic() - started)
        yield event


def create_app(backend: TokenBackend, tokenizer: HunyuanTokenizer, model_name: str,
               limits: ServerLimits | None = None) -> FastAPI:
    """The FastAPI application serving ``model_name`` through ``backend`` within ``limits``."""
    limits = limits or ServerLimits()
    app = FastAPI(title="hunyuan-trtllm OpenAI endpoint")
    app.add_middleware(BodySizeLimit, limit=limits.max_body_bytes)
    install_error_handlers(app)
    metrics = _Metrics()
    prompts = app.state.prompts = ChatPrompts(tokenizer, limits)  # launch.openai_endpoint closes it
    defaults = fields.sampling_defaults(getattr(tokenizer, "generation_config", {}))

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        endpoint = ENDPOINTS.get(request.url.path, "other")
        try:
            response = await call_next(request)
        except Exception:
            metrics.requests.labels(endpoint, "500").inc()
            raise
        if endpoint not in ("metrics", "health"):
            metrics.requests.labels(endpoint, str(response.status_code)).inc()
        return response

    @app.exception_handler(fields.FieldError)
    async def field_error(_: Request, exc: fields.FieldError) -> JSONResponse:
        return JSONResponse(error_body(str(exc), param=exc.param), status_code=400)

    @app.exception_handler(BackendRejected)
    async def backend_rejected(_: Request, exc: BackendRejected) -> JSONResponse:
        return JSONResponse(error_body(str(exc)), status_code=400)

    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> JSONResponse:
        kind = "invalid_request_error" if exc.status < 500 else "server_error"
        return JSONResponse(error_body(str(exc), kind, param=exc.param, code=exc.code), status_code=exc.status)

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
        fields.check_length(limit, len(prompt_ids), backend.max_seq_len)
        fields.check_stream_options(request)
        logprobs, top_logprobs = fields.top_logprobs(request, backend)
        guide = fields.guide(request, backend)
        room = backend.max_seq_len - len(prompt_ids)
        if request.temperature is not None and request.temperature < 0:
            raise RequestError("temperature must be >= 0", param="temperature")
        if request.top_p is not None and not 0 < request.top_p <= 1:
            raise RequestError("top_p must be in (0, 1]", param="top_p")
        if request.top_k is not None and request.top_k < -1:
            raise RequestError("top_k must be -1 or 0 (no top-k cut) or at least 1", param="top_k")
        sampling = {key: value for key in fields.DEFAULT_FIELDS
                    if (value := getattr(request, key, None)) is not None} or {}
        sampling = defaults | sampling  # generation_config.json for what the request leaves out
        temperature = sampling.get("temperature")
        greedy = temperature == 0
        return GenerationParams(
            max_tokens=max(1, min(limit or DEFAULT_MAX_TOKENS, room)),
            temperature=1.0 if greedy or temperature is None else temperature,
            top_p=sampling.get("top_p") or 1.0,
            # -1 (vLLM) and 0 (TensorRT-LLM): no cut; more than the vocabulary is no cut either (and fits int32)
            top_k=1 if greedy else min(max(int(sampling.get("top_k") or 0), 0), tokenizer.vocab_size),
            seed=None if request.seed is None else request.seed % 2**64,  # TensorRT-LLM's seed is unsigned
            stop_token_ids=tokenizer.stop_token_ids,
            repetition_penalty=sampling.get("repetition_penalty", 1.0),
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            guide=guide,
            skip_special_tokens=request.skip_special_tokens,
        )

    async def run(endpoint: str, request, raw: Request, prompt_ids: list[int], params: GenerationParams,
                  stream_body):
        metrics.prompt_tokens.inc(len(prompt_ids))
        started = time.monotonic()
        events = _timed(generate_text(backend, tokenizer, prompt_ids, params, request.stop_strings()),
                        metrics.first_token.labels(endpoint), started)
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

            return StreamingResponse(sse(), media_type="text/event-stream")

        async def collect() -> tuple[str, str, int, list]:
            text, finish, completion, token_logprobs = "", "stop", 0, []
            async for event in events:
                text += event.text
                finish, completion = event.finish_reason or finish, event.completion_tokens
                token_logprobs += event.logprobs
            return text, finish, completion, token_logprobs

        text, finish, completion, token_logprobs = await until_disconnected(raw, collect())  # client gone: stop
        metrics.completion_tokens.inc(completion)
        metrics.latency.labels(endpoint).observe(time.monotonic() - started)
        return text, finish, usage(len(prompt_ids), completion), token_logprobs

    @app.post("/v1/chat/completions")
    async def chat(request: ChatCompletionRequest, raw: Request) -> Any:
        messages = [m.model_dump(exclude_none=True) | {"content": m.text()} for m in request.messages]
        thinking = (request.chat_template_kwargs or {}).get("enable_thinking")  # None: left to the template
        try:
            if getattr(tokenizer, "hy3", None) is None:
                hy3 = None
                prompt_ids = await prompts.ids(messages, request.tools, None if thinking is None else bool(thinking))
            else:  # Hy3: reasoning_effort; user text protected the same way, rendered and encoded off the loop
                chat_input = await asyncio.to_thread(tokenizer.protect_chat, messages, request.tools)
                hy3 = await asyncio.to_thread(hy3_chat, tokenizer, chat_input.messages, chat_input.tools,
                                              request.chat_template_kwargs, request.reasoning_effort)
                prompt_ids = await asyncio.to_thread(tokenizer.encode_prompt, hy3.prompt, chat_input.sentinel)
        except PromptError as exc:
            raise RequestError(str(exc), exc.status, "messages", exc.code) from None
        except (UserError, ValueError) as exc:
            raise RequestError(str(exc), param="messages") from None
        params = check(request, prompt_ids)
        request_id = new_id("chatcmpl")
        forced_calls = request.tool_choice not in (None, "auto", "none")  # the output is the JSON call list
        prefix = ASSISTANT_PREFIX if request.tools and hy3 is None else ""  # A13B's tool template asks for it

        def logprobs_of(items) -> dict[str, Any] | None:
            return fields.chat_logprobs(tokenizer, items, params.top_logprobs) if params.logprobs else None

        async def stream_body(events, include_usage: bool):
            parser = hy3.parser() if hy3 else StreamingOutputParser()
            stripper, completion, called = PrefixStripper(prefix), 0, 0
            pending, raw = [], ""
            yield chat_chunk(request_id, request.model, {"role": "assistant", "content": ""}), 0
            async for event in events:
                completion = event.completion_tokens
                pending += event.logprobs
                if forced_calls:
                    raw += event.text
                    deltas = []
                else:
                    deltas = parser.push(event.text) + (parser.finish() if event.finish_reason else [])
                if forced_calls and event.finish_reason:
                    calls = parse_tool_calls(raw)
                    deltas = [_Call(call) for call in calls] if calls else [_Content(raw)]
                for delta in deltas:
                    if delta.tool_call is not None:
                        call = {"index": called, **delta.tool_call}
                        called += 1
                        yield chat_chunk(request_id, request.model, {"tool_calls": [call]},
                                         logprobs=logprobs_of(pending)), completion
                        pending = []
                        continue
                    content = delta.content
                    if content is not None:
                        content = stripper.push(content)
                    piece = {k: v for k, v in (("reasoning_content", delta.reasoning_content),
                                               ("content", content)) if v}
                    if piece:
                        yield chat_chunk(request_id, request.model, piece, logprobs=logprobs_of(pending)), completion
                        pending = []
                if event.finish_reason:
                    rest = stripper.push("", final=True)
                    if rest:
                        yield chat_chunk(request_id, request.model, {"content": rest}), completion
                    finish = "tool_calls" if called else event.finish_reason
                    yield chat_chunk(request_id, request.model, {}, finish, logprobs=logprobs_of(pending)), completion
                    pending = []
            if include_usage:
                yield chat_chunk(request_id, request.model, {}, token_usage=usage(len(prompt_ids), completion)), \
                    completion

        result = await run("chat", request, raw, prompt_ids, params, stream_body)
        if isinstance(result, StreamingResponse):
            return result
        text, finish, token_usage, token_logprobs = result
        message: dict[str, Any] = {"role": "assistant", "content": text, "reasoning_content": None}
        calls = parse_tool_calls(text) if forced_calls else None
        if not forced_calls:
            parsed = hy3.parse(text) if hy3 else parse_output(text)
            stripper = PrefixStripper(prefix)
            content = stripper.push(parsed.content, final=True) if parsed.content else parsed.content
            message = {"role": "assistant", "content": content, "reasoning_content": parsed.reasoning_content}
            calls = parsed.tool_calls
        if calls:
            message["tool_calls"] = calls
            finish = "tool_calls"
            message["content"] = message["content"] if not forced_calls else None
        return chat_response(request_id, request.model, message, finish, token_usage, logprobs_of(token_logprobs))

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest, raw: Request) -> Any:
        prompt_ids = list(request.prompt) if isinstance(request.prompt, list) else await asyncio.to_thread(
            tokenizer.encode, request.prompt)
        if any(not 0 <= t < tokenizer.vocab_size for t in prompt_ids):
            raise RequestError("prompt token ids must be within the vocabulary", param="prompt")
        params = check(request, prompt_ids)
        request_id = new_id("cmpl")
        # echo: the prompt as text (a token-id prompt decoded), before the completion
        echoed = "" if not request.echo else request.prompt if isinstance(request.prompt, str) else tokenizer.decode(
            prompt_ids, skip_special_tokens=request.skip_special_tokens)

        def logprobs_of(items, offset: int) -> dict[str, Any] | None:
            return fields.completion_logprobs(tokenizer, items, params.top_logprobs, offset) if params.logprobs \
                else None

        async def stream_body(events, include_usage: bool):
            completion, offset = 0, 0
            if echoed:
                yield completion_response(request_id, request.model, echoed, None, None, chunk=True), 0
            async for event in events:
                completion = event.completion_tokens
                if event.text or event.finish_reason:
                    yield completion_response(request_id, request.model, event.text, event.finish_reason, None,
                                              chunk=True, logprobs=logprobs_of(event.logprobs, offset)), completion
                    offset += len(event.text)
            if include_usage:
                yield completion_response(request_id, request.model, "", None, usage(len(prompt_ids), completion),
                                          chunk=True), completion

        result = await run("completions", request, raw, prompt_ids, params, stream_body)
        if isinstance(result, StreamingResponse):
            return result
        text, finish, token_usage, token_logprobs = result
        return completion_response(request_id, request.model, echoed + text, finish, token_usage,
                                   logprobs=logprobs_of(token_logprobs, len(echoed)))

    return app
