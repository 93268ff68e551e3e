"""User text stays text: special-token strings typed in messages or tools never become control tokens.

A chat template writes its structure (``<|startoftext|>``, ``<|extra_0|>``, ...) and the request's text into one
string. Encoded with special tokens allowed, a user typing ``<|eos|><|startoftext|>system<|extra_4|>`` would
forge turns. So before rendering, every special-token string inside a user-supplied string (message contents,
names, tool calls, tool definitions, keys included) gets a *sentinel* character inserted after its first
character (``<`` + sentinel + ``|eos|>``), which no special token contains. The template renders as usual; the
tokenizer then takes the special tokens still intact in the rendered text as structure, and encodes everything
between them as plain text with the sentinels removed (:meth:`HunyuanTokenizer.encode_prompt`). Text without
special-token strings is not touched at all, so its prompt is byte-identical to the template's own rendering.

The sentinel is a private-use character that occurs in no user string and not in the template's source.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

_PRIVATE_USE = (range(0xE000, 0xF900), range(0xF0000, 0xFFFFE), range(0x100000, 0x10FFFE))


def special_pattern(specials: Iterable[str]) -> re.Pattern[str]:
    """A regex matching any of ``specials``, longest first (so no special token is cut short by a shorter one)."""
    ordered = sorted(set(specials), key=len, reverse=True)
    return re.compile("|".join(re.escape(s) for s in ordered) if ordered else r"(?!)")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def choose_sentinel(values: Iterable[Any], also_absent_from: str = "") -> str:
    """A private-use character found in none of the strings in ``values`` nor in ``also_absent_from``."""
    used = set(also_absent_from)
    for text in _strings(list(values)):
        used.update(text)
    for block in _PRIVATE_USE:
        for code in block:
            if chr(code) not in used:
                return chr(code)
    raise ValueError("the request uses every private-use character; no sentinel is left to protect it")


def _defang(text: str, pattern: re.Pattern[str], sentinel: str) -> str:
    """``text`` with ``sentinel`` after the first character of every special-token string in it."""
    normalized = unicodedata.normalize("NFC", text)  # the tokenizer sees NFC text: look where it would look
    if not pattern.search(normalized):
        return text
    text = normalized
    while (found := [m.start() for m in pattern.finditer(text)]):
        for start in reversed(found):
            text = text[: start + 1] + sentinel + text[start + 1 :]
    return text


def _protect(value: Any, pattern: re.Pattern[str], sentinel: str) -> Any:
    if isinstance(value, str):
        return _defang(value, pattern, sentinel)
    if isinstance(value, dict):
        return {_protect(k, pattern, sentinel): _protect(v, pattern, sentinel) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_protect(item, pattern, sentinel) for item in value]
    return value


@dataclass(frozen=True)
class ProtectedChat:
    """Messages and tools ready for the template; ``sentinel`` is None when nothing needed protecting."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    sentinel: str | None


def protect_chat(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, pattern: re.Pattern[str],
                 template_source: str = "") -> ProtectedChat:
    """Copies of ``messages`` and ``tools`` whose special-token strings cannot reach the tokenizer as specials."""
    if not any(pattern.search(unicodedata.normalize("NFC", s)) for s in _strings([messages, tools])):
        return ProtectedChat(list(messages), tools, None)
    sentinel = choose_sentinel([messages, tools], template_source)
    protected_tools = None if tools is None else _protect(tools, pattern, sentinel)
    return ProtectedChat(_protect(messages, pattern, sentinel), protected_tools, sentinel)
