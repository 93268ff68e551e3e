"""Hy3 output: ``…</think>`` into ``reasoning_content``, ``<tool_calls>…</tool_calls>`` into OpenAI tool calls.

Format (shared/reference/hy3.md §d.3; tags carry the tokenizer's suffix, :class:`Hy3Tokens`):

* ``reasoning_effort`` ``low``/``high``: the prompt ends ``<think>``, so the output is reasoning up to ``</think>``
  (a repeated leading ``<think>`` is dropped); stopping before ``</think>`` leaves everything as reasoning and
  ``content`` None. ``no_think``: the prompt already closed the block; the whole output is content.
* In the content, ``<tool_calls>`` opens a block of ``<tool_call>NAME<tool_sep>`` + ``<arg_key>K</arg_key>``
  ``<arg_value>V</arg_value>`` pairs + ``</tool_call>`` entries (newlines between them ignored). Each finished
  ``</tool_call>`` is one tool call, in order (parallel calls). Values are typed by the request's JSON schema for
  that tool: ``string`` verbatim, ``integer``/``number``/``boolean`` parsed, ``array``/``object`` as JSON; without
  a schema JSON, then a Python literal, then the raw string. Text before the block is content (None when empty
  and calls were made); a call that does not parse, or a block never closed, comes back verbatim as content.
* Streaming holds back any tail that may still grow into a tag, so no tag fragment reaches the client; the same
  state machine does whole-text parsing, so streamed and whole results agree for every chunking.
"""

from __future__ import annotations

import ast
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from hunyuan_trtllm.checkpoints.hy3_template import Hy3Tokens, resolve_effort
from hunyuan_trtllm.serve.output import Delta, TagStreamParser


@dataclass
class Hy3Parsed:
    """A whole Hy3 response in OpenAI's shape."""

    reasoning_content: str | None
    content: str | None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


def _schemas(tools: list[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """Tool name -> its parameters' ``properties`` (OpenAI ``tools`` entries)."""
    out = {}
    for tool in tools or []:
        function = tool.get("function", tool) if isinstance(tool, dict) else {}
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            params = function.get("parameters") or {}
            out[function["name"]] = params.get("properties") or {} if isinstance(params, dict) else {}
    return out


def _untyped(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def typed_value(text: str, schema: dict[str, Any] | None) -> Any:
    """``text`` as the schema's type says (see the module docstring); unparseable values stay strings."""
    kinds = (schema or {}).get("type")
    kinds = [kinds] if isinstance(kinds, str) else [k for k in kinds or [] if k != "null"]
    if not kinds:
        return _untyped(text)
    stripped = text.strip()
    for kind in kinds:
        if kind == "string":
            return text
        try:
            if kind == "integer":
                return int(stripped)
            if kind == "number":
                number = float(stripped)
                return int(number) if re.fullmatch(r"-?\d+", stripped) else number
            if kind == "boolean" and stripped.lower() in ("true", "false"):
                return stripped.lower() == "true"
            if kind in ("array", "object"):
                value = json.loads(stripped)
                if isinstance(value, list if kind == "array" else dict):
                    return value
        except ValueError:
            continue
    return text


class Hy3StreamingParser(TagStreamParser):
    """Incremental Hy3 parsing: feed text to :meth:`push`, then call :meth:`finish` once (both give deltas)."""

    def __init__(self, tokens: Hy3Tokens, reasoning_effort: str, tools: list[dict[str, Any]] | None = None):
        super().__init__()
        self._think_open, self._think_close = tokens.tag("think"), tokens.tag("think", close=True)
        self._calls_open, self._calls_close = tokens.tag("tool_calls"), tokens.tag("tool_calls", close=True)
        self._call_open, self._call_close = tokens.tag("tool_call"), tokens.tag("tool_call", close=True)
        self._call = re.compile(
            r"\s*(?P<name>[^<]*?)\s*" + re.escape(tokens.tag("tool_sep")) + r"(?P<args>.*)", re.S)
        key, value = (re.escape(tokens.tag(n)) for n in ("arg_key", "arg_value"))
        key_end, value_end = (re.escape(tokens.tag(n, close=True)) for n in ("arg_key", "arg_value"))
        self._pair = re.compile(rf"\s*{key}(?P<key>.*?){key_end}\s*{value}(?P<value>.*?){value_end}", re.S)
        self._schemas = _schemas(tools)
        self._state = "think_start" if reasoning_effort != "no_think" else "content"

    def _step(self, final: bool) -> bool:
        if self._state == "think_start":
            stripped = self._buffer.lstrip()
            if not final and self._think_open.startswith(stripped):
                return False
            if stripped.startswith(self._think_open):
                self._buffer = stripped[len(self._think_open):]
            self._state = "think"
            return True
        if self._state == "think":
            return self._text("reasoning_content", self._think_close, "content", final)
        if self._state == "content":
            return self._text("content", self._calls_open, "calls", final)
        return self._calls(final)

    def _text(self, kind: str, marker: str, then: str, final: bool) -> bool:
        """Emit ``kind`` text up to ``marker`` (then switch to ``then``), or as far as no marker can be forming."""
        index = self._buffer.find(marker)
        if index < 0:
            keep = 0 if final else _held(self._buffer, marker)
            self._emit(kind, self._buffer[: len(self._buffer) - keep])
            self._buffer = self._buffer[len(self._buffer) - keep:]
            return False
        self._emit(kind, self._buffer[:index])
        self._buffer = self._buffer[index + len(marker):]
        self._state = then
        return True

    def _calls(self, final: bool) -> bool:
        """Inside ``<tool_calls>``: emit each finished call; ``</tool_calls>`` returns to content."""
        body = self._buffer.lstrip()
        if body.startswith(self._calls_close):
            self._buffer = body[len(self._calls_close):]
            self._state = "content"
            return True
        if body.startswith(self._call_open):
            end = body.find(self._call_close)
            if end >= 0:
                call = self._parse_call(body[len(self._call_open):end])
                if call is None:
                    self._emit("content", body[:end + len(self._call_close)])
                else:
                    self._out.append(Delta(tool_call=call))
                self._buffer = body[end + len(self._call_close):]
                return True
        elif not (self._call_open.startswith(body) or self._calls_close.startswith(body)):
            self._bail()  # not the grammar: what is left of the block is content
            return True
        if final:
            self._bail()
        return False

    def _bail(self) -> None:
        self._emit("content", self._buffer)
        self._buffer = ""
        self._state = "content"

    def _parse_call(self, text: str) -> dict[str, Any] | None:
        """One ``NAME<tool_sep>pairs`` body as an OpenAI tool call, or None when it does not follow the grammar."""
        match = self._call.fullmatch(text)
        if match is None or not match["name"]:
            return None
        args, rest, schema = {}, match["args"], self._schemas.get(match["name"], {})
        position = 0
        for pair in self._pair.finditer(rest):
            if rest[position:pair.start()].strip():
                return None
            args[pair["key"]] = typed_value(pair["value"], schema.get(pair["key"]))
            position = pair.end()
        if rest[position:].strip():
            return None
        return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                "function": {"name": match["name"], "arguments": json.dumps(args, ensure_ascii=False)}}


def _held(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that is a proper start of ``marker``."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


def collect(deltas: list[Delta]) -> Hy3Parsed:
    """Join streamed deltas into the whole-response shape."""
    reasoning = "".join(d.reasoning_content for d in deltas if d.reasoning_content is not None)
    content = "".join(d.content for d in deltas if d.content is not None)
    calls = [d.tool_call for d in deltas if d.tool_call is not None]
    return Hy3Parsed(reasoning or None, content if content and not (calls and not content.strip()) else None,
                     calls)


def parse_hy3_output(text: str, tokens: Hy3Tokens, reasoning_effort: str,
                     tools: list[dict[str, Any]] | None = None) -> Hy3Parsed:
    """Parse a whole response (equal to :func:`collect` over any chunking of :class:`Hy3StreamingParser`)."""
    parser = Hy3StreamingParser(tokens, reasoning_effort, tools)
    return collect(parser.push(text) + parser.finish())


@dataclass(frozen=True)
class Hy3Chat:
    """One chat request's Hy3 prompt and parsers (what the OpenAI endpoint needs from the Hy3 format)."""

    prompt: str
    tokens: Hy3Tokens
    reasoning_effort: str
    tools: list[dict[str, Any]] | None

    def parser(self) -> Hy3StreamingParser:
        return Hy3StreamingParser(self.tokens, self.reasoning_effort, self.tools)

    def parse(self, text: str) -> Hy3Parsed:
        return parse_hy3_output(text, self.tokens, self.reasoning_effort, self.tools)


def hy3_chat(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
             template_kwargs: dict[str, Any] | None, reasoning_effort: str | None) -> Hy3Chat | None:
    """The Hy3 prompt and parsers for a request, or None when ``tokenizer`` is not a Hy3 one.

    ``ValueError`` for a ``reasoning_effort`` outside no_think/low/high or messages the template rejects.
    """
    template = getattr(tokenizer, "hy3", None)
    if template is None:
        return None
    kwargs = {k: v for k, v in (template_kwargs or {}).items() if k not in ("reasoning_effort", "enable_thinking")}
    effort = resolve_effort(template_kwargs, reasoning_effort)
    prompt = template.render(messages, tools, reasoning_effort=effort, **kwargs)
    return Hy3Chat(prompt, template.tokens, effort, list(tools) if tools else None)
