"""Hy3's prompt format: structural tokens with the release's suffix, ``reasoning_effort``, a built-in template.

Hy3 (``HYV3ForCausalLM``) writes its structural tokens with a release-specific suffix (``token_suffix`` in
``tokenizer_config.json``: ``:opensource`` in tencent/Hy3, none in Hy3-preview, others elsewhere), so the suffix is
always read from the tokenizer and checked against its vocabulary, never assumed (shared/reference/hy3.md §d.1).

A model's own ``chat_template`` is rendered in the same sandbox as every other template
(``chat_template._environment``), which is configured like transformers'
``apply_chat_template``; models without one (our synthetic checkpoints) get :func:`builtin_template_source`, our
own Jinja rendition of the documented layout (§d.2), with the suffix baked in the way Tencent's template bakes it.
The real tencent/Hy3 template text was not available when this was written: the built-in copy follows hy3.md
§d.2 and its tool instruction is our own wording.

``reasoning_effort`` is ``no_think`` (default: the prompt ends ``<think></think>`` and the model answers
directly), ``low`` or ``high`` (the prompt ends ``<think>`` and the model reasons first); it comes from
``chat_template_kwargs.reasoning_effort``, else the request's own ``reasoning_effort`` field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2

from hunyuan_trtllm.checkpoints.chat_template import Message, normalize_messages
from hunyuan_trtllm.checkpoints.chat_template import _environment as environment
from hunyuan_trtllm.errors import UserError

EFFORTS = ("no_think", "low", "high")
DEFAULT_EFFORT = "no_think"
_SUFFIX = re.compile(r"[A-Za-z0-9:_.\-]*")


@dataclass(frozen=True)
class Hy3Tokens:
    """Hy3's structural token strings for one suffix (``""`` for the bare Hy3-preview set)."""

    suffix: str

    def _angle(self, name: str) -> str:
        return f"<{name}{self.suffix}>"

    def _bar(self, name: str) -> str:
        return f"<｜{name}{self.suffix}｜>"

    @property
    def bos(self) -> str:
        return self._bar("hy_begin▁of▁sentence")

    @property
    def user(self) -> str:
        return self._bar("hy_User")

    @property
    def assistant(self) -> str:
        return self._bar("hy_Assistant")

    @property
    def eos(self) -> str:
        return self._bar("hy_eos")

    @property
    def reasoning_mode(self) -> str:
        return self._bar("reasoning_mode")

    def tag(self, name: str, close: bool = False) -> str:
        """``<name{suffix}>`` or ``</name{suffix}>`` for think, tool_calls, tool_call, tool_sep, arg_key, ..."""
        return self._angle(("/" if close else "") + name)

    def structural(self) -> list[str]:
        """Every structural token except bos and eos (the ones a Hy3 vocabulary must contain)."""
        pairs = ("think", "tool_calls", "tool_call", "arg_key", "arg_value", "tool_responses", "tool_response")
        return [self.user, self.assistant, self.reasoning_mode, self.tag("tool_sep"),
                *(self.tag(n, close) for n in pairs for close in (False, True))]


def detect_hy3_tokens(tokenizer_config: dict[str, Any], token_id: Callable[[str], int | None]) -> Hy3Tokens | None:
    """Hy3's tokens when the vocabulary has Hy3's assistant token with ``tokenizer_config``'s ``token_suffix``.

    ``None`` for other vocabularies; a ``token_suffix`` whose tokens are missing is a ``UserError``.
    """
    suffix = tokenizer_config.get("token_suffix")
    if suffix is not None and (not isinstance(suffix, str) or not _SUFFIX.fullmatch(suffix)):
        raise UserError(f"tokenizer_config.json: token_suffix {suffix!r} is not a plain suffix like ':opensource'")
    tokens = Hy3Tokens(suffix or "")
    if token_id(tokens.assistant) is None:
        if suffix:
            raise UserError(f"tokenizer_config.json: token_suffix {suffix!r} given, but {tokens.assistant} is not a "
                            "token of tokenizer.json")
        return None
    missing = [t for t in tokens.structural() if token_id(t) is None]
    if missing:
        raise UserError(f"tokenizer.json: Hy3 structural tokens missing: {', '.join(missing[:4])}")
    return tokens


def resolve_effort(template_kwargs: dict[str, Any] | None, request_effort: str | None) -> str:
    """``reasoning_effort`` from ``chat_template_kwargs`` (first) or the request; ``ValueError`` if not allowed."""
    effort = (template_kwargs or {}).get("reasoning_effort", request_effort)
    effort = DEFAULT_EFFORT if effort is None else effort
    if effort not in EFFORTS:
        raise ValueError(f"reasoning_effort {effort!r} is not one of {', '.join(EFFORTS)}")
    return effort


# Our own Jinja rendition of hy3.md §d.2. HYTK (the suffix) is set by builtin_template_source.
_TEMPLATE_BODY = r"""
{%- set bos = '<｜hy_begin▁of▁sentence' ~ HYTK ~ '｜>' -%}
{%- set user_tok = '<｜hy_User' ~ HYTK ~ '｜>' -%}
{%- set assistant_tok = '<｜hy_Assistant' ~ HYTK ~ '｜>' -%}
{%- set eos = '<｜hy_eos' ~ HYTK ~ '｜>' -%}
{%- set mode_tok = '<｜reasoning_mode' ~ HYTK ~ '｜>' -%}
{%- set think = '<think' ~ HYTK ~ '>' -%}{%- set think_end = '</think' ~ HYTK ~ '>' -%}
{%- set calls = '<tool_calls' ~ HYTK ~ '>' -%}{%- set calls_end = '</tool_calls' ~ HYTK ~ '>' -%}
{%- set call = '<tool_call' ~ HYTK ~ '>' -%}{%- set call_end = '</tool_call' ~ HYTK ~ '>' -%}
{%- set sep = '<tool_sep' ~ HYTK ~ '>' -%}
{%- set key = '<arg_key' ~ HYTK ~ '>' -%}{%- set key_end = '</arg_key' ~ HYTK ~ '>' -%}
{%- set val = '<arg_value' ~ HYTK ~ '>' -%}{%- set val_end = '</arg_value' ~ HYTK ~ '>' -%}
{%- set results = '<tool_responses' ~ HYTK ~ '>' -%}{%- set results_end = '</tool_responses' ~ HYTK ~ '>' -%}
{%- set result = '<tool_response' ~ HYTK ~ '>' -%}{%- set result_end = '</tool_response' ~ HYTK ~ '>' -%}
{%- set effort = reasoning_effort if reasoning_effort is defined and reasoning_effort else 'no_think' -%}
{%- if effort not in ['no_think', 'low', 'high'] -%}
{{- raise_exception('reasoning_effort must be one of no_think, low, high') -}}
{%- endif -%}
{%- set has_tools = tools is defined and tools -%}
{%- set keep_reasoning = preserved_thinking if preserved_thinking is defined else has_tools -%}
{%- set ns = namespace(last_user=-1, system='', open_results=false) -%}
{%- for m in messages -%}
{%- if m.role == 'user' -%}{%- set ns.last_user = loop.index0 -%}
{%- elif m.role == 'system' -%}{%- set ns.system = ns.system ~ m.content -%}{%- endif -%}
{%- endfor -%}
{{- bos ~ ns.system -}}
{%- if has_tools -%}
{%- if ns.system -%}{{- '\n\n' -}}{%- endif -%}
{{- '# Tools\n\nThese functions are available; their JSON signatures are listed inside <tools></tools>:\n<tools>' -}}
{%- for tool in tools -%}{{- '\n' ~ (tool | tojson) -}}{%- endfor -%}
{{- '\n</tools>\n\nTo call functions, answer with one block holding one entry per call, in this form:\n' -}}
{{- calls ~ '\n' ~ call ~ 'function_name' ~ sep ~ '\n' ~ key ~ 'parameter_name' ~ key_end ~ '\n' -}}
{{- val ~ 'parameter_value' ~ val_end ~ '\n' ~ call_end ~ '\n' ~ calls_end -}}
{%- endif -%}
{{- mode_tok ~ 'reasoning_effort:' ~ effort -}}
{%- for m in messages -%}
{%- if m.role != 'tool' and ns.open_results -%}{{- results_end -}}{%- set ns.open_results = false -%}{%- endif -%}
{%- if m.role == 'user' -%}
{{- user_tok ~ m.content -}}
{%- elif m.role == 'assistant' -%}
{%- set recent = keep_reasoning or loop.index0 > ns.last_user -%}
{%- set kept = m.reasoning_content is defined and m.reasoning_content and recent -%}
{{- assistant_tok ~ think ~ (m.reasoning_content if kept else '') ~ think_end ~ m.content -}}
{%- if m.tool_calls is defined and m.tool_calls -%}
{{- calls -}}
{%- for c in m.tool_calls -%}
{%- set f = c.function if c.function is defined else c -%}
{{- '\n' ~ call ~ f.name ~ sep -}}
{%- for k, v in f.arguments.items() -%}
{{- '\n' ~ key ~ k ~ key_end ~ '\n' ~ val ~ (v if v is string else v | tojson) ~ val_end -}}
{%- endfor -%}
{{- '\n' ~ call_end -}}
{%- endfor -%}
{{- '\n' ~ calls_end -}}
{%- endif -%}
{{- eos -}}
{%- elif m.role == 'tool' -%}
{%- if not ns.open_results -%}{{- results ~ '\n' -}}{%- set ns.open_results = true -%}{%- endif -%}
{{- result ~ '\n' ~ m.content ~ '\n' ~ result_end ~ '\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if ns.open_results -%}{{- results_end -}}{%- endif -%}
{%- if add_generation_prompt -%}
{{- assistant_tok ~ think -}}{%- if effort == 'no_think' -%}{{- think_end -}}{%- endif -%}
{%- endif -%}
"""


def builtin_template_source(suffix: str) -> str:
    """The built-in Hy3 chat template (Jinja) for structural tokens ending in ``suffix``."""
    if not _SUFFIX.fullmatch(suffix):
        raise ValueError(f"token suffix {suffix!r} is not a plain suffix")
    return "{%- set HYTK = " + json.dumps(suffix) + " -%}" + _TEMPLATE_BODY


def normalize_hy3_messages(messages: Sequence[Message]) -> list[Message]:
    """:func:`normalize_messages`, plus tool-call ``arguments`` given as a JSON string turned into an object."""
    out = []
    for message in normalize_messages(messages):
        calls = message.get("tool_calls")
        if calls:
            message = {**message, "tool_calls": [_parsed_arguments(c) for c in calls]}
        out.append(message)
    return out


def _parsed_arguments(call: dict[str, Any]) -> dict[str, Any]:
    function = dict(call.get("function", call))
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            raise ValueError(f"tool call {function.get('name')!r}: arguments are not a JSON object") from None
    if not isinstance(arguments, dict):
        raise ValueError(f"tool call {function.get('name')!r}: arguments must be a JSON object")
    function["arguments"] = arguments
    return {**call, "function": function} if "function" in call else function


def template_variables(tokenizer_config: dict[str, Any]) -> dict[str, str]:
    """``bos_token`` etc. from ``tokenizer_config.json`` (strings or AddedToken dicts), as transformers passes them."""
    out = {}
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = tokenizer_config.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            out[key] = value
    return out


class Hy3ChatTemplate:
    """A Hy3 model's chat template (its own, else the built-in one), rendered in the sandbox."""

    def __init__(self, tokens: Hy3Tokens, source: str | None, variables: dict[str, str] | None = None) -> None:
        """Compile ``source`` (``None``: :func:`builtin_template_source` for ``tokens.suffix``)."""
        self.tokens = tokens
        self.is_builtin = source is None
        self.source = builtin_template_source(tokens.suffix) if source is None else source
        self._variables = dict(variables or {})
        try:
            self._compiled = environment().from_string(self.source)
        except jinja2.TemplateError as exc:
            raise UserError(f"chat_template does not compile: {exc}") from None

    def render(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None = None,
               reasoning_effort: str = DEFAULT_EFFORT, add_generation_prompt: bool = True,
               **template_kwargs: Any) -> str:
        """The prompt for ``messages``; ``ValueError`` for messages or an effort the template rejects."""
        if reasoning_effort not in EFFORTS:
            raise ValueError(f"reasoning_effort {reasoning_effort!r} is not one of {', '.join(EFFORTS)}")
        normalized = normalize_hy3_messages(messages)
        try:
            return self._compiled.render(
                **{**self._variables, **template_kwargs}, messages=normalized, tools=list(tools) if tools else None,
                reasoning_effort=reasoning_effort, add_generation_prompt=add_generation_prompt)
        except (jinja2.TemplateError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"chat template cannot render these messages: {exc}") from None
