"""Hunyuan chat prompts: the model's own Jinja template (sandboxed) or a built-in A13B-format renderer.

The built-in renderer is used for ``hy.tiktoken`` models whose ``tokenizer_config.json`` has no
``chat_template`` (our synthetic checkpoints). Without tools it renders byte-for-byte what the A13B template
renders (/work/shared/reference/hunyuan.md section 5.2), including its quirks: the user message at index 1 after
a non-empty first message gets no ``<|startoftext|>``, and system messages after the first are emitted bare.
With tools it reproduces the A13B tool layout (``用户：`` / ``助手：`` prefixes, ``<tool_calls>[...]</tool_calls>``,
``<tool_response>...</tool_response>``) under a tool instruction of our own wording instead of Tencent's Chinese
one; real checkpoints ship their template, so only synthetic models see it.

Messages are normalised before either template sees them: ``content`` None becomes ``""``, a list of text parts
is joined with "\n" (as vLLM and TensorRT-LLM join text parts), an empty or None ``tool_calls`` is dropped, and
an empty leading system message is dropped (the A13B
template would fail on it in a sandbox, and it means "no system prompt").

Thinking: the template decides. ``enable_thinking`` reaches it only when the request sets it (A13B's template
appends ``<think>\\n\\n</think>\\n`` for an explicit ``False`` and nothing otherwise), exactly as transformers'
``apply_chat_template`` renders. A ``/no_think`` or ``/think`` prefix is the user's text: it stays in the prompt
untouched (the models were trained to read it there) and never overrides an explicit ``enable_thinking``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from hunyuan_trtllm.errors import UserError

Message = dict[str, Any]


class TemplateOutputTooLarge(ValueError):
    """The rendered prompt would be longer than the caller's limit."""

START = "<|startoftext|>"
SYSTEM_END = "<|extra_4|>"
USER_END = "<|extra_0|>"
TURN_END = "<|eos|>"
NO_THINK_SUFFIX = "<think>\n\n</think>\n"
USER_PREFIX = "用户："
ASSISTANT_PREFIX = "助手："


def _content_text(content: Any) -> str:
    """A message's content as text: None is empty, text parts are joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "\n".join(str(p.get("text", "")) for p in content)
    raise ValueError("message content must be a string or a list of text parts")


def normalize_messages(messages: Sequence[Message]) -> list[Message]:
    """Copies of ``messages`` in the shape both templates expect (see the module docstring)."""
    out: list[Message] = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ValueError("each message must be an object with a string 'role'")
        copy = {**message, "content": _content_text(message.get("content"))}
        if not copy.get("tool_calls"):
            copy.pop("tool_calls", None)
        out.append(copy)
    if out and out[0]["role"] == "system" and not out[0]["content"]:
        out.pop(0)
    return out


def _tool_calls_text(tool_calls: Sequence[dict[str, Any]]) -> str:
    """Assistant tool calls as the A13B template writes them: ``[{"name": "f", "arguments": {...}}, ...]``."""
    parts = []
    for call in tool_calls:
        function = call.get("function", call)
        arguments = function.get("arguments", {})
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        parts.append(f'{{"name": "{function["name"]}", "arguments": {arguments}}}')
    return "[" + ", ".join(parts) + "]"


def _tool_instruction(tools: Sequence[dict[str, Any]], system: str | None, now: datetime) -> str:
    """Our own wording of the tool-use system block (A13B puts Tencent's Chinese instruction here)."""
    text = (
        "You can call the functions listed below (JSON). To call functions, reply only with "
        '<tool_calls>[{"name": "func_name", "arguments": {"argument": "value"}}, ...]</tool_calls>. '
        f"Otherwise reply to the user in natural language, starting with {ASSISTANT_PREFIX}\n\n"
        + json.dumps(list(tools), ensure_ascii=False) + "\n"
    )
    if system is not None:
        text += f"\nAdditional requirements:\n{system}\n"
    return START + text + f"\nCurrent time: {now:%Y-%m-%d %H:%M:%S %A}" + SYSTEM_END


def _render_plain(messages: Sequence[Message]) -> str:
    """The A13B template's branch without tools."""
    has_head = bool(messages) and messages[0]["content"] != ""
    out = []
    for index, message in enumerate(messages):
        role, content = message["role"], message["content"]
        if index == 0 and content and role == "system":
            content = START + content + SYSTEM_END
        if role == "user":
            content = content + USER_END if index == 1 and has_head else START + content + USER_END
        elif role == "assistant":
            content += TURN_END
        elif role == "tool":
            content += USER_END
        out.append(content)
    return "".join(out)


def _render_tools(messages: Sequence[Message], tools: Sequence[dict[str, Any]], now: datetime) -> str:
    """The A13B template's tool branch (with our own instruction text)."""
    out = []
    for index, message in enumerate(messages):
        role, content = message["role"], message["content"]
        if index == 0 and role == "system":
            content = _tool_instruction(tools, content, now)
        elif index == 0 and role == "user":
            content = _tool_instruction(tools, None, now) + USER_PREFIX + content + USER_END
        elif index > 0 and role == "user":
            content = USER_PREFIX + content + USER_END
        elif index > 0 and role == "assistant":
            calls = message.get("tool_calls")
            content = content + f"<tool_calls>{_tool_calls_text(calls)}</tool_calls>" if calls else (
                ASSISTANT_PREFIX + content)
            content += TURN_END
        elif index > 0 and role == "tool":
            content = f"<tool_response>{content}</tool_response>{USER_END}"
        out.append(content)
    return "".join(out)


def render_builtin(messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None = None,
                   enable_thinking: bool | None = None, now: datetime | None = None) -> str:
    """Render normalised ``messages`` in the A13B format (``now`` is the time shown in the tool block)."""
    text = _render_tools(messages, tools, now or datetime.now()) if tools else _render_plain(messages)
    return text + NO_THINK_SUFFIX if enable_thinking is False else text


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    """JSON without HTML escaping or key sorting, as chat templates expect (Jinja's own filter does both)."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    """The current local time, formatted (templates show it in tool prompts)."""
    return datetime.now().strftime(format)


def _raise_exception(message: str) -> None:
    """Let a template reject its input."""
    raise jinja2.TemplateError(message)


def _environment() -> ImmutableSandboxedEnvironment:
    """A sandbox with the block handling and helpers chat templates are written for."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["strftime_now"] = _strftime_now
    env.globals["raise_exception"] = _raise_exception
    return env


class ChatTemplate:
    """A model's chat template: Jinja source rendered in a sandbox, or ``None`` source for the built-in one."""

    def __init__(self, source: str | None = None, variables: dict[str, str] | None = None) -> None:
        """Parse ``source`` (compiled at the first render); ``variables`` (e.g. ``bos_token``) are visible to it."""
        self.source = source
        self._variables = dict(variables or {})
        self._compiled: jinja2.Template | None = None
        try:  # parsed now, compiled at the first render: Jinja's compiler folds constants (`{{ 'x' * 10**10 }}`)
            if source is not None:
                _environment().parse(source)
        except jinja2.TemplateError as exc:
            raise UserError(f"chat_template does not compile: {exc}") from None

    @classmethod
    def from_tokenizer_files(cls, tokenizer_config: dict[str, Any], jinja_file: Path,
                             builtin_allowed: bool) -> ChatTemplate | None:
        """The template of ``tokenizer_config`` (else ``jinja_file``), else the built-in one if allowed."""
        source = tokenizer_config.get("chat_template")
        if isinstance(source, list):  # [{"name": "default", "template": ...}, ...]
            source = next((t.get("template") for t in source if t.get("name") == "default"), None)
        if source is None and jinja_file.is_file():
            source = jinja_file.read_text(encoding="utf-8")
        if source is None and not builtin_allowed:
            return None
        variables = {}
        for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
            value = tokenizer_config.get(key)
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str):
                variables[key] = value
        return cls(source if isinstance(source, str) else None, variables)

    @property
    def variables(self) -> dict[str, str]:
        """The special-token variables (``bos_token``, ...) the template sees."""
        return dict(self._variables)

    @property
    def is_builtin(self) -> bool:
        """Whether this is the built-in A13B renderer."""
        return self.source is None

    def render(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None = None,
               enable_thinking: bool | None = None, add_generation_prompt: bool = True,
               max_chars: int | None = None) -> str:
        """The prompt for ``messages``; ``ValueError`` for messages the template cannot render.

        ``enable_thinking`` None leaves the variable undefined in the template (as transformers does when the caller
        does not pass it). ``add_generation_prompt`` is passed to Jinja templates; the A13B format has no separate
        generation prompt (a prompt already ends with ``<|extra_0|>``), so the built-in renderer ignores it. A
        Jinja template stops with :class:`TemplateOutputTooLarge` once its output passes ``max_chars``.
        """
        normalized = normalize_messages(messages)
        thinking = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
        try:
            if self.source is None:
                return render_builtin(normalized, tools, enable_thinking)
            if self._compiled is None:
                self._compiled = _environment().from_string(self.source)
            pieces, size = [], 0
            for piece in self._compiled.generate(
                    messages=normalized, tools=list(tools) if tools else None,
                    add_generation_prompt=add_generation_prompt, **self._variables, **thinking):
                size += len(piece)
                if max_chars is not None and size > max_chars:
                    raise TemplateOutputTooLarge(f"the chat template's output passed {max_chars} characters")
                pieces.append(piece)
            return "".join(pieces)
        except (jinja2.TemplateError, TypeError, KeyError) as exc:
            raise ValueError(f"chat template cannot render these messages: {exc}") from None
