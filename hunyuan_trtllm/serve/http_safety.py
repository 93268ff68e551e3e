"""What keeps the OpenAI endpoint answering: limits, OpenAI error bodies for every error, client disconnects.

* :class:`ServerLimits`: the request body size, the chat template's time, output and memory budget.
* :class:`BodySizeLimit`: an ASGI middleware answering 413 (OpenAI error body) for a body over the limit, from
  ``Content-Length`` or while a chunked body arrives, before any of it is parsed.
* :func:`install_error_handlers`: 404, 405, FastAPI's validation errors and unexpected exceptions answered with
  ``{"error": {"message", "type", "param", "code"}}`` instead of FastAPI's ``{"detail": ...}`` or plain text.
* :func:`until_disconnected`: runs a request's work and cancels it when the client goes away.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from hunyuan_trtllm.serve.openai_protocol import error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
T = TypeVar("T")

MIB = 2**20


@dataclass(frozen=True)
class ServerLimits:
    """Bounds on what one request may make the server do."""

    max_body_bytes: int = 32 * MIB  # a 10 MB prompt fits
    template_timeout_s: float = 5.0  # chat template rendering, in a worker process that is killed after this
    template_max_chars: int = 64 * MIB  # the rendered prompt
    template_memory_bytes: int = 1024 * MIB  # the rendering process's address space beyond its start


class ClientDisconnected(Exception):
    """The client closed the connection before the answer was ready."""


class BodySizeLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets a 413 and is never handed to the application."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large(send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await self._too_large(send)
                return
            if not message.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:  # after the body: whatever comes next (http.disconnect when the client goes away)
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        payload = json.dumps(error_body(f"the request body is larger than the server's limit of {self.limit} bytes",
                                        code="request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})


def install_error_handlers(app: FastAPI) -> None:
    """Every error the framework produces gets an OpenAI error body and the right status."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        message = {404: "no such endpoint", 405: "method not allowed for this endpoint"}.get(exc.status_code,
                                                                                          str(exc.detail))
        return JSONResponse(error_body(message, kind, code=str(exc.status_code)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = str(first.get("msg", "invalid request"))
        if first.get("type") == "json_invalid":
            where, message = "", "malformed JSON body"
        return JSONResponse(error_body(f"{where}: {message}" if where else message, param=where or None),
                            status_code=400)

    @app.exception_handler(ClientDisconnected)
    async def gone(_: Request, exc: ClientDisconnected) -> Response:
        return Response(status_code=499)  # nobody reads it; nginx's "client closed request"

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500)


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """``work``'s result, or :class:`ClientDisconnected` (``work`` cancelled) once the client has gone away."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this request was cancelled itself
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientDisconnected
    return task.result()
