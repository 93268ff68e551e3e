"""Hunyuan tokenization without ``trust_remote_code``: encode, decode, stop ids, chat prompts, streaming decode.

Two vocabularies exist (/work/shared/reference/hunyuan.md sections 4 and 5.1):

* ``hy.tiktoken`` (A13B, Large, 7B dense, our synthetic models): tiktoken BPE with Hunyuan's split regex and the
  210 special tokens after the BPE ranks. Text is NFC-normalised before encoding, as Tencent's ``HYTokenizer``
  does. :meth:`HunyuanTokenizer.encode` turns special-token strings into their ids (a raw completion prompt is
  the user's to write); a chat prompt goes through :meth:`HunyuanTokenizer.encode_chat`, where only the
  template's own special tokens become control tokens and the request's text stays text
  (:mod:`hunyuan_trtllm.checkpoints.prompt_guard`).
* ``tokenizer.json`` (0.5B / 1.8B / 4B dense): a byte-level BPE read with the ``tokenizers`` package; used only
  when the model directory has no ``hy.tiktoken``.

Stop ids (:attr:`HunyuanTokenizer.stop_token_ids`) are exactly what Hugging Face ``generate`` and vLLM stop on,
read from the files: ``generation_config.json`` ``eos_token_id`` (A13B and Large: ``<|eos|>`` and ``<|extra_5|>``),
plus the ``tokenizer_config.json`` ``eos_token`` (newer dense models: ``<｜hy_place▁holder▁no▁2｜>``) and, in
``hy.tiktoken`` vocabularies (A13B, Large, 7B dense), ``<|eos|>`` (the end of every assistant turn in the template)
in case a generation config lacks it. Turn separators the assistant never
writes (``<|extra_0|>``, ``<|startoftext|>``, ``<|endoftext|>``) are deliberately not stop ids: adding them would
make our server stop where the reference implementations keep going (random-weight test models emit them).
"""

from __future__ import annotations

import codecs
import json
import threading
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import tiktoken

from hunyuan_trtllm.checkpoints.chat_template import TURN_END, ChatTemplate, Message
from hunyuan_trtllm.checkpoints.hy3_template import Hy3ChatTemplate, detect_hy3_tokens, template_variables
from hunyuan_trtllm.checkpoints.hy_tokenizer import load_hy_tiktoken
from hunyuan_trtllm.checkpoints.prompt_guard import ProtectedChat, protect_chat, special_pattern
from hunyuan_trtllm.errors import UserError

PAD = "<|pad|>"


class _Backend(Protocol):
    """What :class:`HunyuanTokenizer` needs from a vocabulary."""

    vocab_size: int
    special_ids: frozenset[int]
    specials: dict[str, int]  # special-token string -> id

    def normalize(self, text: str) -> str: ...

    def encode(self, text: str, allow_special: bool) -> list[int]: ...

    def decode_bytes(self, ids: Sequence[int]) -> bytes: ...

    def token_id(self, name: str) -> int | None: ...


class _TiktokenBackend:
    """``hy.tiktoken`` through tiktoken, NFC-normalising text first."""

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self._encoding = encoding
        self.vocab_size = encoding.n_vocab
        self.specials = {name: encoding.encode_single_token(name) for name in encoding.special_tokens_set}
        self.special_ids = frozenset(self.specials.values())

    def normalize(self, text: str) -> str:
        return unicodedata.normalize("NFC", text)

    def encode(self, text: str, allow_special: bool) -> list[int]:
        text = unicodedata.normalize("NFC", text)
        if allow_special:
            return self._encoding.encode(text, allowed_special="all")
        return self._encoding.encode_ordinary(text)

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return self._encoding.decode_bytes(ids)

    def token_id(self, name: str) -> int | None:
        try:
            return self._encoding.encode_single_token(name)
        except KeyError:
            return None


def byte_level_alphabet() -> dict[str, int]:
    """The byte-level BPE alphabet: printable Latin-1 bytes stand for themselves, the rest for 256, 257, ..."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    alphabet = {chr(b): b for b in printable}
    others = (b for b in range(256) if b not in alphabet.values())
    alphabet.update({chr(256 + n): b for n, b in enumerate(others)})
    return alphabet


class _HFBackend:
    """A byte-level BPE ``tokenizer.json`` through the ``tokenizers`` package."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        try:
            decoder = (json.loads(path.read_text(encoding="utf-8")).get("decoder") or {}).get("type")
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception
            raise UserError(f"{path}: cannot load tokenizer ({exc})") from None
        if decoder != "ByteLevel":
            raise UserError(f"{path}: decoder {decoder!r} is not supported (only byte-level BPE)")
        self._mode = threading.Lock()  # encode_special_tokens is shared state; the endpoint encodes in threads
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        added = self._tokenizer.get_added_tokens_decoder()
        self.specials = {token.content: i for i, token in added.items() if token.special}
        self.special_ids = frozenset(self.specials.values())
        alphabet = byte_level_alphabet()
        pieces = [self._tokenizer.id_to_token(i) or "" for i in range(self.vocab_size)]
        try:
            self._bytes = [p.encode() if i in added else bytes(alphabet[c] for c in p) for i, p in enumerate(pieces)]
        except KeyError as exc:
            raise UserError(f"{path}: token character {exc} is not in the byte-level alphabet") from None

    def normalize(self, text: str) -> str:
        return text  # the tokenizer's own normalizer runs inside encode

    def encode(self, text: str, allow_special: bool) -> list[int]:
        with self._mode:
            self._tokenizer.encode_special_tokens = not allow_special
            return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return b"".join(self._bytes[i] for i in ids)

    def token_id(self, name: str) -> int | None:
        return self._tokenizer.token_to_id(name)


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object file, or ``{}`` when it does not exist."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def _token_text(value: Any) -> str | None:
    """A special token as written in tokenizer_config.json: a string or an AddedToken dict with ``content``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _int_list(value: Any) -> list[int]:
    """``eos_token_id`` as written in generation_config.json: an int, a list of ints, or absent."""
    if isinstance(value, int):
        return [value]
    return [v for v in value if isinstance(v, int)] if isinstance(value, list) else []


class HunyuanTokenizer:
    """A Hunyuan model directory's tokenizer, special ids and chat template (no remote code)."""

    def __init__(self, backend: _Backend, tokenizer_config: dict[str, Any], generation_config: dict[str, Any],
                 template: ChatTemplate | None, hy3: Hy3ChatTemplate | None = None) -> None:
        """Prefer :meth:`from_model_dir`; ids named in the configs must exist in the vocabulary.

        ``hy3``: the Hy3 prompt format (Hy3 vocabularies only; :attr:`hy3`).
        """
        self._backend = backend
        self._template = template
        self._special_pattern = special_pattern(backend.specials)
        self.generation_config: dict[str, Any] = dict(generation_config)  # sampling defaults (temperature, ...)
        self.hy3 = hy3
        # skip_special_tokens leaves out control tokens, but never the tags the output parsers read (Hy3's think and
        # tool-call tags are special tokens of its vocabulary; vLLM's Hy3 parsers keep them too)
        parsed = [] if hy3 is None else [hy3.tokens.tag("tool_sep"), *(
            hy3.tokens.tag(name, close) for name in ("think", "tool_calls", "tool_call", "arg_key", "arg_value")
            for close in (False, True))]
        self._skipped_specials = backend.special_ids - {backend.token_id(tag) for tag in parsed}
        names = [_token_text(tokenizer_config.get("eos_token")), TURN_END]
        named = [i for i in (self._optional_id(n) for n in names) if i is not None]
        generation = _int_list(generation_config.get("eos_token_id"))
        self._stop_ids = tuple(dict.fromkeys([*generation, *named]))
        if not self._stop_ids:
            raise UserError("no stop token: generation_config.json has no eos_token_id and no eos token is known")
        self._eos_id = named[0] if named else generation[0]
        pad = self._optional_id(_token_text(tokenizer_config.get("pad_token")) or PAD)
        generation_pad = generation_config.get("pad_token_id")
        self._pad_id = pad if pad is not None else generation_pad if isinstance(generation_pad, int) else None
        bad = [i for i in (*self._stop_ids, self._pad_id) if i is not None and not 0 <= i < backend.vocab_size]
        if bad:
            raise UserError(f"special token ids {bad} are outside the vocabulary of {backend.vocab_size} tokens")

    @classmethod
    def from_model_dir(cls, path: Path) -> HunyuanTokenizer:
        """Load ``hy.tiktoken`` (else ``tokenizer.json``), ``tokenizer_config.json`` and ``generation_config.json``.

        The chat template is ``tokenizer_config.json``'s ``chat_template`` (else a ``chat_template.jinja`` file);
        ``hy.tiktoken`` models without one get the built-in A13B template
        (see :mod:`hunyuan_trtllm.checkpoints.chat_template`).
        """
        path = Path(path)
        if (path / "hy.tiktoken").is_file():
            backend: _Backend = _TiktokenBackend(load_hy_tiktoken(path / "hy.tiktoken"))
        elif (path / "tokenizer.json").is_file():
            backend = _HFBackend(path / "tokenizer.json")
        else:
            raise UserError(f"{path}: no tokenizer (expected hy.tiktoken or tokenizer.json)")
        tokenizer_config = _read_json(path / "tokenizer_config.json")
        template = ChatTemplate.from_tokenizer_files(
            tokenizer_config, path / "chat_template.jinja", builtin_allowed=isinstance(backend, _TiktokenBackend))
        hy3_tokens = detect_hy3_tokens(tokenizer_config, backend.token_id)
        hy3 = None if hy3_tokens is None else Hy3ChatTemplate(
            hy3_tokens, template.source if template else None, template_variables(tokenizer_config))
        return cls(backend, tokenizer_config, _read_json(path / "generation_config.json"), template, hy3)

    def _optional_id(self, name: str | None) -> int | None:
        return None if name is None else self._backend.token_id(name)

    @property
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included (128167 for ``hy.tiktoken``)."""
        return self._backend.vocab_size

    @property
    def eos_token_id(self) -> int:
        """The end-of-turn id: ``tokenizer_config.json``'s ``eos_token``, else ``<|eos|>``, else the first stop id."""
        return self._eos_id

    @property
    def pad_token_id(self) -> int | None:
        """``tokenizer_config.json``'s ``pad_token`` (else ``<|pad|>``, else generation_config's ``pad_token_id``)."""
        return self._pad_id

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """Ids that end generation, in file order, without repeats (see the module docstring)."""
        return self._stop_ids

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids of the special (control) tokens, which ``skip_special_tokens`` leaves out of decoded text."""
        return self._backend.special_ids

    def token_id(self, name: str) -> int:
        """The id of a token written as one piece (e.g. ``"<|extra_0|>"``); ``KeyError`` when there is none."""
        token = self._backend.token_id(name)
        if token is None:
            raise KeyError(f"{name!r} is not a single token")
        return token

    def encode(self, text: str, allow_special: bool = True) -> list[int]:
        """Token ids of ``text``; special-token strings become their ids unless ``allow_special`` is false."""
        return self._backend.encode(text, allow_special)

    def decode_bytes(self, ids: Iterable[int], skip_special_tokens: bool = False) -> bytes:
        """The bytes of ``ids``; ids outside the vocabulary (an engine's padding rows) contribute nothing.

        ``skip_special_tokens`` drops control tokens except the tags the output parsers read (Hy3's)."""
        special = self._skipped_specials if skip_special_tokens else frozenset()
        size = self._backend.vocab_size
        return self._backend.decode_bytes([i for i in ids if 0 <= i < size and i not in special])

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; invalid UTF-8 becomes U+FFFD, as in Tencent's tokenizer."""
        return self.decode_bytes(ids, skip_special_tokens).decode("utf-8", errors="replace")

    @property
    def chat_template(self) -> ChatTemplate:
        """The model's chat template; :class:`UserError` when it has none."""
        if self._template is None:
            raise UserError("this model has no chat template (tokenizer_config.json has no chat_template)")
        return self._template

    def render_chat(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None = None,
                    enable_thinking: bool | None = None, add_generation_prompt: bool = True) -> str:
        """The prompt text for ``messages`` (OpenAI-style dicts); see :meth:`ChatTemplate.render`."""
        if self.hy3 is not None:  # Hy3: reasoning_effort, not enable_thinking (see hy3_template)
            return self.hy3.render(messages, tools, add_generation_prompt=add_generation_prompt)
        return self.chat_template.render(messages, tools, enable_thinking, add_generation_prompt)

    def protect_chat(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None = None
                     ) -> ProtectedChat:
        """``messages`` and ``tools`` with their special-token strings kept from becoming control tokens."""
        source = self.hy3.source if self.hy3 is not None else self.chat_template.source
        return protect_chat(list(messages), None if tools is None else list(tools), self._special_pattern,
                            source or "")

    def encode_prompt(self, prompt: str, sentinel: str | None) -> list[int]:
        """Ids of a rendered chat prompt: intact special-token strings are control tokens, the rest plain text.

        ``sentinel`` (from :meth:`protect_chat`) is removed from the plain text; without special-token strings
        typed by the user this equals :meth:`encode` of ``prompt``.
        """
        text, ids, start = self._backend.normalize(prompt), [], 0
        for match in self._special_pattern.finditer(text):
            ids += self._plain(text[start : match.start()], sentinel)
            ids.append(self._backend.specials[match.group()])
            start = match.end()
        return ids + self._plain(text[start:], sentinel)

    def _plain(self, text: str, sentinel: str | None) -> list[int]:
        if sentinel is not None:
            text = text.replace(sentinel, "")
        return self._backend.encode(text, allow_special=False) if text else []

    def encode_chat(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None = None,
                    enable_thinking: bool | None = None, add_generation_prompt: bool = True) -> list[int]:
        """The prompt ids for ``messages``: the template's structure as control tokens, the request's text as text."""
        chat = self.protect_chat(messages, tools)
        prompt = self.render_chat(chat.messages, chat.tools, enable_thinking, add_generation_prompt)
        return self.encode_prompt(prompt, chat.sentinel)


class IncrementalDetokenizer:
    """Streaming decode: each :meth:`push` returns the newly completed text, never half a UTF-8 character.

    Work per push is proportional to the new tokens: their bytes go through an incremental UTF-8 decoder that
    holds back an incomplete trailing character (CJK characters and emoji often span several tokens). The
    concatenation of all pushes and :meth:`flush` equals ``tokenizer.decode(all_ids)``.
    """

    def __init__(self, tokenizer: HunyuanTokenizer, skip_special_tokens: bool = False) -> None:
        """Decode with ``tokenizer``; ``skip_special_tokens`` drops special ids as :meth:`HunyuanTokenizer.decode`."""
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_ids: Iterable[int]) -> str:
        """Text completed by ``token_ids`` (possibly ``""`` while a character is still incomplete)."""
        return self._utf8.decode(self._tokenizer.decode_bytes(token_ids, self._skip_special))

    def flush(self) -> str:
        """Whatever is left at the end of the stream (an incomplete character becomes U+FFFD)."""
        return self._utf8.decode(b"", final=True)
