"""Guided decoding (structured output) on CPU with xgrammar, as TensorRT-LLM's executor does it on the GPU.

TensorRT-LLM 1.2.x takes a guide per request through the ``tensorrt_llm`` model's ``guided_decoding_guide_type``
(``json``, ``json_schema``, ``regex``, ``ebnf_grammar``) and ``guided_decoding_guide`` inputs and constrains
sampling with xgrammar (``guided_decoding_backend: xgrammar``). The ``reference`` model does the same here: a
grammar matcher per request masks the logits before sampling (disallowed tokens get -inf) and accepts each
sampled token; a terminated grammar ends the sequence.

The vocabulary is the model's own tokenizer (``hy.tiktoken`` or ``tokenizer.json``) in the form TensorRT-LLM's C++
backend reads from ``xgrammar_tokenizer_info_path`` (:func:`xgrammar_tokenizer_info`, written into engine
repositories): every token's bytes spelled in the GPT-2 byte-level alphabet (JSON can only carry valid UTF-8, and
``hy.tiktoken`` tokens are raw bytes) with a ``tokenizer_str`` whose ``ByteLevel`` decoder makes xgrammar decode
them back to bytes; special tokens are empty strings, which xgrammar never allows inside a grammar. The reference
model builds its grammars from the very same data. JSON schemas compile
without free whitespace between tokens (``any_whitespace=False``), so a model cannot pad its answer with
whitespace forever.

OpenAI's ``response_format`` and ``tool_choice`` map to guides in :func:`response_format_guide` and
:func:`tool_choice_guide` (the endpoint sends those; any backend with guided decoding honours them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

GUIDE_TYPES = ("json", "json_schema", "regex", "ebnf_grammar")


@dataclass(frozen=True)
class Guide:
    """One request's guide, as TensorRT-LLM's ``GuidedDecodingParams``: a type and its text."""

    kind: str  # one of GUIDE_TYPES
    text: str = ""


def response_format_guide(response_format: dict[str, Any] | None) -> Guide | None:
    """The guide for OpenAI's ``response_format`` (None for ``text``); ``ValueError`` for a malformed one."""
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return Guide("json_schema", json.dumps({"type": "object"}))
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise ValueError("response_format.json_schema.schema must be a JSON schema object")
        return Guide("json_schema", json.dumps(schema, ensure_ascii=False))
    raise ValueError(f"response_format.type must be text, json_object or json_schema (got {kind!r})")


def _call_schema(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool.get("function") or {}
    parameters = function.get("parameters") or {"type": "object"}
    return {"type": "object", "properties": {"name": {"const": function.get("name")}, "arguments": parameters},
            "required": ["name", "arguments"], "additionalProperties": False}


def tool_choice_guide(tool_choice: str | dict[str, Any] | None, tools: list[dict[str, Any]] | None) -> Guide | None:
    """The guide forcing tool calls (``required``: any offered tool; a named function: that one), as the JSON
    list Hunyuan writes inside ``<tool_calls>``; None for ``auto`` / ``none`` / absent. ``ValueError`` otherwise."""
    if tool_choice in (None, "auto", "none"):
        return None
    tools = tools or []
    if tool_choice == "required":
        if not tools:
            raise ValueError("tool_choice 'required' needs tools")
        items: dict[str, Any] = {"anyOf": [_call_schema(t) for t in tools]}
        return Guide("json_schema", json.dumps({"type": "array", "minItems": 1, "items": items}, ensure_ascii=False))
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        name = (tool_choice.get("function") or {}).get("name")
        chosen = [t for t in tools if (t.get("function") or {}).get("name") == name]
        if not chosen:
            raise ValueError(f"tool_choice names function {name!r}, which is not among the tools")
        schema = {"type": "array", "minItems": 1, "maxItems": 1, "items": _call_schema(chosen[0])}
        return Guide("json_schema", json.dumps(schema, ensure_ascii=False))
    raise ValueError("tool_choice must be 'none', 'auto', 'required' or {'type': 'function', 'function': {'name'}}")


BYTE_LEVEL_TOKENIZER_STR = json.dumps({"decoder": {"type": "ByteLevel"}})


def xgrammar_tokenizer_info(tokenizer: Any) -> dict[str, Any]:
    """The ``xgrammar_tokenizer_info.json`` content TensorRT-LLM's C++ backend reads (``encoded_vocab``,
    ``tokenizer_str``, ``stop_token_ids``) for a :class:`~hunyuan_trtllm.checkpoints.tokenizer.HunyuanTokenizer`."""
    from hunyuan_trtllm.checkpoints.tokenizer import byte_level_alphabet

    spell = {byte: char for char, byte in byte_level_alphabet().items()}
    special = tokenizer.special_ids
    vocab = ["" if i in special else "".join(spell[b] for b in tokenizer.decode_bytes([i]))
             for i in range(tokenizer.vocab_size)]
    return {"encoded_vocab": vocab, "tokenizer_str": BYTE_LEVEL_TOKENIZER_STR,
            "stop_token_ids": list(tokenizer.stop_token_ids)}


class GrammarFactory:
    """Compiles guides for one vocabulary and hands out a matcher per request (``xgrammar`` is imported lazily)."""

    def __init__(self, tokenizer_dir: Path, vocab_size: int) -> None:
        """``vocab_size``: the model's logits width (it may exceed the tokenizer's, padded rows are never allowed)."""
        import xgrammar as xgr

        from hunyuan_trtllm.checkpoints.tokenizer import HunyuanTokenizer

        data = xgrammar_tokenizer_info(HunyuanTokenizer.from_model_dir(tokenizer_dir))
        # what xgrammar's TokenizerInfo.from_huggingface detects from tokenizer_str: a byte-level vocabulary
        info = xgr.TokenizerInfo(data["encoded_vocab"], vocab_type=xgr.VocabType.BYTE_LEVEL, vocab_size=vocab_size,
                                 stop_token_ids=data["stop_token_ids"])
        self._xgr = xgr
        self._compiler = xgr.GrammarCompiler(info, max_threads=1)
        self.vocab_size = vocab_size
        self._compiled = lru_cache(maxsize=64)(self._compile)

    def _compile(self, guide: Guide) -> Any:
        if guide.kind == "json":
            return self._compiler.compile_builtin_json_grammar()
        if guide.kind == "json_schema":
            return self._compiler.compile_json_schema(guide.text, any_whitespace=False)
        if guide.kind == "regex":
            return self._compiler.compile_regex(guide.text)
        if guide.kind == "ebnf_grammar":
            return self._compiler.compile_grammar(guide.text)
        raise ValueError(f"guided_decoding_guide_type must be one of {', '.join(GUIDE_TYPES)} (got {guide.kind!r})")

    def matcher(self, guide: Guide) -> GuidedMatcher:
        """A fresh matcher for ``guide``; ``ValueError`` when the guide does not compile."""
        try:
            compiled = self._compiled(guide)
        except ValueError:
            raise
        except Exception as exc:  # xgrammar raises RuntimeError and its own types for bad schemas / grammars
            raise ValueError(f"guided decoding: the {guide.kind} guide does not compile ({exc})") from None
        return GuidedMatcher(self._xgr, compiled, self.vocab_size)


class GuidedMatcher:
    """One request's grammar state: mask logits, accept tokens, tell when the grammar is complete."""

    def __init__(self, xgr: Any, compiled: Any, vocab_size: int) -> None:
        self._xgr = xgr
        self._matcher = xgr.GrammarMatcher(compiled)
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """A copy of ``logits`` ``[V]`` with every token the grammar forbids at -inf."""
        logits = logits.float().clone()
        self._matcher.fill_next_token_bitmask(self._bitmask)
        self._xgr.apply_token_bitmask_inplace(logits, self._bitmask)
        return logits

    def accept(self, token: int) -> None:
        if not self._matcher.accept_token(token):
            raise RuntimeError(f"guided decoding: token {token} was sampled but the grammar rejects it")

    @property
    def terminated(self) -> bool:
        return self._matcher.is_terminated()
