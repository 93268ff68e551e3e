"""A Hy3-style ``tokenizer.json`` for synthetic Hy3 checkpoints (the real one is not redistributable here).

Byte-level BPE trained with the ``tokenizers`` package on the package's tiny corpus, then added special tokens
laid out like tencent/Hy3's (shared/reference/hy3.md §a.1, §d.1): the ids from ``bos_token_id`` up to the end of
the vocabulary hold bos (+0), pad ``<｜hy_▁pad▁｜>`` (+2), eos (+``eos - bos``), eod and sep at the config's ids,
and placeholders elsewhere; the structural tokens (``<｜hy_User…｜>``, ``<think…>``, ``<tool_calls…>`` …, with the
release's ``token_suffix``) sit just below bos; BPE ranks and placeholders fill the ids below them.
``tokenizer_config.json`` names bos/eos/pad and ``token_suffix`` and carries no ``chat_template`` (serving then
uses the built-in Hy3 template, :mod:`hunyuan_trtllm.checkpoints.hy3_template`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hunyuan_trtllm.checkpoints.hy3_template import Hy3Tokens
from hunyuan_trtllm.checkpoints.hy_tokenizer import tiny_corpus
from hunyuan_trtllm.checkpoints.safetensors_io import write_atomic

DEFAULT_SUFFIX = ":opensource"
MAX_BPE = 700  # ranks learned from the tiny corpus (the rest of a large vocabulary is placeholders)


def _placeholder(i: int) -> str:
    return f"<｜hy_place▁holder▁no▁{i}｜>"


def special_tokens(config: dict[str, Any], tokens: Hy3Tokens, first: int) -> list[str]:
    """The added tokens for ids ``first`` .. ``vocab_size - 1`` (see the module docstring)."""
    vocab, bos = int(config["vocab_size"]), int(config["bos_token_id"])
    named = {bos: tokens.bos, int(config["pad_token_id"]): "<｜hy_▁pad▁｜>", int(config["eos_token_id"]): tokens.eos,
             int(config["eod_token_id"]): "<｜hy_eod｜>", int(config["sep_token_id"]): "<｜hy_sep｜>"}
    structural = tokens.structural()
    below = bos - len(structural)
    if below < first:
        raise ValueError(f"vocabulary of {vocab} is too small for Hy3's special tokens")
    out = [_placeholder(i) for i in range(first, below)] + structural
    out += [named.get(i, _placeholder(i)) for i in range(bos, vocab)]
    return out


def build_hy3_tokenizer(config: dict[str, Any], suffix: str = DEFAULT_SUFFIX):
    """A ``tokenizers.Tokenizer`` with ``config``'s vocabulary size and Hy3's special tokens at its ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokens = Hy3Tokens(suffix)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    room = int(config["bos_token_id"]) - len(tokens.structural())
    trainer = trainers.BpeTrainer(vocab_size=min(MAX_BPE, room), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([tiny_corpus()], trainer=trainer)
    tokenizer.add_special_tokens(special_tokens(config, tokens, tokenizer.get_vocab_size()))
    if tokenizer.get_vocab_size() != int(config["vocab_size"]):
        raise ValueError(f"built {tokenizer.get_vocab_size()} tokens, config says {config['vocab_size']}")
    return tokenizer


def write_hy3_tokenizer_files(out_dir: Path, config: dict[str, Any], suffix: str = DEFAULT_SUFFIX,
                              chat_template: str | None = None) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` (``chat_template`` only when given) into ``out_dir``."""
    tokens = Hy3Tokens(suffix)
    write_atomic(Path(out_dir) / "tokenizer.json", build_hy3_tokenizer(config, suffix).to_str())
    tokenizer_config: dict[str, Any] = {
        "backend": "tokenizers", "tokenizer_class": "TokenizersBackend", "bos_token": tokens.bos,
        "eos_token": tokens.eos, "pad_token": "<｜hy_▁pad▁｜>", "token_suffix": suffix,
        "model_max_length": int(config.get("max_position_embeddings", 4096)), "clean_up_tokenization_spaces": False,
    }
    if chat_template is not None:
        tokenizer_config["chat_template"] = chat_template
    write_atomic(Path(out_dir) / "tokenizer_config.json", json.dumps(tokenizer_config, indent=2, ensure_ascii=False)
                 + "\n")
