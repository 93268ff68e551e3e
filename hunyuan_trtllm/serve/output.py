"""Split Hunyuan output text into reasoning, answer and tool calls, in OpenAI's shape; streaming or whole.

The models write ``<think>\\n{reasoning}\\n</think>\\n<answer>\\n{answer}\\n</answer>`` (fast mode: an empty think
block; with ``enable_thinking=False`` the prompt already holds it, so the output starts at ``<answer>``). Tool
calls appear inside the answer as ``<tool_calls>[{"name": ..., "arguments": {...}}, ...]</tool_calls>``
(/work/shared/reference/hunyuan.md sections 5.2-5.4).

Rules, applied by one state machine so that streaming and whole-text parsing agree for every chunking:

* Leading whitespace, then ``<think>`` or ``<answer>``, opens that block; otherwise the whole text is content.
* One newline right after ``<think>`` / ``<answer>`` and one right before ``</think>`` / ``</answer>`` belong to
  the format and are dropped; whitespace between ``</think>`` and ``<answer>`` too. After ``</think>``, text that
  does not start with ``<answer>`` is content. Text after ``</answer>`` is ignored.
* An empty think block gives ``reasoning_content=None``. An unterminated block keeps what was written.
* ``<tool_calls>...</tool_calls>`` in the answer (or in plain content) whose body is a non-empty JSON list of
  ``{"name": str, "arguments": object | str}`` becomes tool calls (arguments as a JSON string, ids
  ``call_<24 hex>``); any other body, or a block never closed, stays in the content verbatim. Tool calls are
  never looked for inside reasoning.
* Plain content ends at an unopened ``</answer>`` too (as vLLM's Hunyuan parser cuts at it); the tag is dropped.
* With tools offered, A13B's template asks for plain replies prefixed ``助手：``; :class:`PrefixStripper` removes
  that prefix from the start of the content (streaming or whole), as vLLM does.
* Streaming holds back text that may be the start of a tag (``<ans``) or a newline that may precede a closing
  tag, so no tag fragment ever reaches the client.
"""

from __future__ import annotations

import json
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TOOLS_OPEN, TOOLS_CLOSE = "<tool_calls>", "</tool_calls>"

# state -> tags that end or interrupt its text
_MARKERS: dict[str, tuple[str, ...]] = {
    "think": (THINK_CLOSE,),
    "answer": (ANSWER_CLOSE, TOOLS_OPEN),
    "plain": (TOOLS_OPEN, ANSWER_CLOSE),  # an unopened </answer> still ends the answer (never reaches the client)
}
_CLOSERS = (THINK_CLOSE, ANSWER_CLOSE)


@dataclass(frozen=True)
class Delta:
    """One streaming piece: reasoning text, content text, or one complete tool call (exactly one is set)."""

    reasoning_content: str | None = None
    content: str | None = None
    tool_call: dict[str, Any] | None = None


@dataclass
class ParsedOutput:
    """A whole response: ``reasoning_content`` (None when there was none), ``content`` and OpenAI tool calls."""

    reasoning_content: str | None
    content: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


def parse_tool_calls(body: str) -> list[dict[str, Any]] | None:
    """OpenAI tool calls from the JSON between ``<tool_calls>`` tags, or None when it is not a valid call list."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, list) or not data:
        return None
    calls = []
    for item in data:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        arguments = item.get("arguments", {})
        if not isinstance(arguments, dict | str):
            return None
        if isinstance(arguments, dict):
            arguments = json.dumps(arguments, ensure_ascii=False)
        calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": item["name"], "arguments": arguments}})
    return calls


def _held_suffix(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that may grow into a marker (or into a newline plus a closer)."""
    patterns = [*markers, *("\n" + m for m in markers if m in _CLOSERS)]
    for size in range(min(len(text), max(map(len, patterns)) - 1), 0, -1):
        tail = text[-size:]
        if any(p.startswith(tail) for p in patterns):
            return size
    return 0


class TagStreamParser(ABC):
    """A streaming parser over tag-delimited text: :meth:`push` text deltas, then :meth:`finish` once; subclasses
    define ``_step(final)``, which consumes ``_buffer`` as far as it is certain and emits deltas into ``_out``."""

    def __init__(self) -> None:
        self._buffer = ""
        self._out: list[Delta] = []

    def push(self, text: str) -> list[Delta]:
        """Deltas that ``text`` makes certain (possibly none while a tag may be forming)."""
        self._buffer += text
        return self._run(final=False)

    def finish(self) -> list[Delta]:
        """Deltas for whatever was held back; the end of the output decides the open questions."""
        return self._run(final=True)

    @abstractmethod
    def _step(self, final: bool) -> bool:
        """Consume what is certain of ``_buffer``; True to be called again."""

    def _run(self, final: bool) -> list[Delta]:
        while self._step(final):
            pass
        out, self._out = self._out, []
        return out

    def _emit(self, kind: str, text: str) -> None:
        """Add ``kind`` ("reasoning_content" or "content") text, merged into the previous delta of that kind."""
        if not text:
            return
        if self._out and getattr(self._out[-1], kind) is not None:
            self._out[-1] = Delta(**{kind: getattr(self._out[-1], kind) + text})
        else:
            self._out.append(Delta(**{kind: text}))


class StreamingOutputParser(TagStreamParser):
    """Incremental :func:`parse_output`: feed text deltas to :meth:`push`, then call :meth:`finish` once."""

    def __init__(self) -> None:
        """Start before any output."""
        super().__init__()
        self._state = "start"
        self._strip_newline = False
        self._after_tools = "answer"

    def _enter(self, state: str, strip_newline: bool = False) -> None:
        self._state = state
        self._strip_newline = strip_newline

    def _step(self, final: bool) -> bool:
        """Make one decision; False when nothing more can be decided now."""
        if self._state == "done":
            self._buffer = ""
            return False
        if self._state in ("start", "after_think"):
            return self._open_block(final)
        if self._state == "tools":
            return self._close_tools(final)
        if self._strip_newline:
            if not self._buffer:
                return False
            self._strip_newline = False
            self._buffer = self._buffer.removeprefix("\n")
        return self._body(final)

    def _open_block(self, final: bool) -> bool:
        """At the start (or after ``</think>``): find the opening tag, or fall back to plain content."""
        tags = (THINK_OPEN, ANSWER_OPEN) if self._state == "start" else (ANSWER_OPEN,)
        stripped = self._buffer.lstrip()
        for tag in tags:
            if stripped.startswith(tag):
                self._buffer = stripped[len(tag):]
                self._enter("think" if tag == THINK_OPEN else "answer", strip_newline=True)
                return True
        if not final and any(tag.startswith(stripped) for tag in tags):
            return False
        if self._state == "after_think":
            self._buffer = stripped
        self._enter("plain")
        return True

    def _body(self, final: bool) -> bool:
        """Emit reasoning or content text up to the next tag, or as far as no tag can be forming."""
        kind = "reasoning_content" if self._state == "think" else "content"
        markers = _MARKERS[self._state]
        found = [(i, m) for m in markers if (i := self._buffer.find(m)) >= 0]
        if not found:
            keep = 0 if final else _held_suffix(self._buffer, markers)
            self._emit(kind, self._buffer[: len(self._buffer) - keep])
            self._buffer = self._buffer[len(self._buffer) - keep:]
            return False
        index, marker = min(found)
        text, self._buffer = self._buffer[:index], self._buffer[index + len(marker):]
        self._emit(kind, text.removesuffix("\n") if marker in _CLOSERS else text)
        if marker == TOOLS_OPEN:
            self._after_tools = self._state
            self._enter("tools")
        else:
            self._enter("after_think" if marker == THINK_CLOSE else "done")
        return True

    def _close_tools(self, final: bool) -> bool:
        """Once ``</tool_calls>`` arrives, emit the calls (or the raw block when its JSON is not a call list)."""
        index = self._buffer.find(TOOLS_CLOSE)
        if index < 0:
            if final:
                self._emit("content", TOOLS_OPEN + self._buffer)
                self._buffer = ""
            return False
        body, self._buffer = self._buffer[:index], self._buffer[index + len(TOOLS_CLOSE):]
        calls = parse_tool_calls(body)
        if calls is None:
            self._emit("content", TOOLS_OPEN + body + TOOLS_CLOSE)
        for call in calls or []:
            self._out.append(Delta(tool_call=call))
        self._enter(self._after_tools)
        return True


ASSISTANT_PREFIX = "助手："


class PrefixStripper:
    """Removes ``prefix`` (after leading whitespace) from the start of a stream of content pieces."""

    def __init__(self, prefix: str) -> None:
        self._prefix, self._buffer, self._done = prefix, "", not prefix

    def push(self, text: str, final: bool = False) -> str:
        """The content to emit for ``text``; held back (``""``) while it may still grow into the prefix."""
        if self._done:
            return text
        self._buffer += text
        stripped = self._buffer.lstrip()
        if stripped.startswith(self._prefix):
            self._done = True
            return stripped[len(self._prefix):]
        if not final and self._prefix.startswith(stripped):
            return ""
        self._done = True
        return self._buffer


def parse_output(text: str) -> ParsedOutput:
    """Parse a whole response (the concatenation of :class:`StreamingOutputParser` deltas gives the same)."""
    parser = StreamingOutputParser()
    deltas = parser.push(text) + parser.finish()
    reasoning = "".join(d.reasoning_content for d in deltas if d.reasoning_content is not None)
    return ParsedOutput(
        reasoning_content=reasoning or None,
        content="".join(d.content for d in deltas if d.content is not None),
        tool_calls=[d.tool_call for d in deltas if d.tool_call is not None],
    )
