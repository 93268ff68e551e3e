"""Hunyuan's hy.tiktoken format: the real vocabulary's ids and tokenisations, and the toy BPE trainer."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from hunyuan_trtllm.checkpoints.hy_tokenizer import (
    SPECIAL_TOKENS,
    filled_ranks,
    load_hy_tiktoken,
    make_encoding,
    pretokenize,
    read_hy_ranks,
    special_token_id,
    tiny_corpus,
    train_tiny_bpe,
    write_hy_tiktoken,
)
from hunyuan_trtllm.errors import UserError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL_TIKTOKEN = SHARED / "fixtures" / "hunyuan-files" / "hy.tiktoken"

# hunyuan.md section 5.1 (verified against Tencent's tokenizer).
MARKERS = {
    "<think>\n": [14023, 771, 397],
    "<think>\n\n</think>\n": [14023, 771, 1363, 524, 27963, 397],
    "\n</think>\n<answer>\n": [198, 524, 27963, 397, 27, 9399, 397],
    "\n</answer>": [198, 524, 9399, 29],
    "<tool_calls>": [27, 14506, 46736, 29],
    "</tool_calls>": [524, 14506, 46736, 29],
    "用户：": [20600, 5232],
    "助手：": [104855, 5232],
}
MIXED_TEXT = "Hello, 世界! 模型转换测试 def f(x):\n    return x * 2  # 42 ✓\n\n谢谢。"


@pytest.fixture(scope="module")
def real_encoding():
    if not REAL_TIKTOKEN.is_file():
        pytest.skip("../shared is absent: no real hy.tiktoken")
    return load_hy_tiktoken(REAL_TIKTOKEN)


@pytest.fixture(scope="module")
def tiny_ranks() -> dict[bytes, int]:
    return train_tiny_bpe(tiny_corpus(), 793)


def test_special_token_names_in_id_order() -> None:
    assert len(SPECIAL_TOKENS) == 210
    assert SPECIAL_TOKENS[:6] == ("<|endoftext|>", "<|startoftext|>", "<|bos|>", "<|eos|>", "<|pad|>", "<|extra_0|>")
    assert SPECIAL_TOKENS[-1] == "<|extra_204|>"
    assert special_token_id("<|extra_5|>", 127957) == 127967


def test_real_vocabulary_sizes_and_special_ids(real_encoding) -> None:
    assert len(read_hy_ranks(REAL_TIKTOKEN)) == 127957
    assert real_encoding.n_vocab == 127957 + 210 == 128167
    expected = {"<|endoftext|>": 127957, "<|startoftext|>": 127958, "<|eos|>": 127960, "<|pad|>": 127961,
                "<|extra_0|>": 127962, "<|extra_4|>": 127966, "<|extra_5|>": 127967, "<|extra_204|>": 128166}
    for token, token_id in expected.items():
        assert real_encoding.encode(token, allowed_special="all") == [token_id], token


@pytest.mark.parametrize("text", list(MARKERS))
def test_real_marker_tokenisations(real_encoding, text: str) -> None:
    assert real_encoding.encode(text) == MARKERS[text]
    assert real_encoding.decode(MARKERS[text]) == text


def test_pattern_splits_single_digits_and_letter_runs() -> None:
    assert pretokenize("abc 123") == ["abc", " ", "1", "2", "3"]
    assert pretokenize("你好，世界") == ["你好", "，世界"]  # one leading non-letter joins a word
    assert pretokenize("I'll go") == ["I", "'ll", " go"]


def test_tiny_bpe_has_byte_tokens_then_merges(tiny_ranks) -> None:
    assert len(tiny_ranks) == 793
    assert sorted(tiny_ranks.values()) == list(range(793))
    assert all(tiny_ranks[bytes([b])] == b for b in range(256))
    assert all(len(token) > 1 for token, rank in tiny_ranks.items() if rank >= 256)
    assert train_tiny_bpe(tiny_corpus(), 793) == tiny_ranks  # deterministic


def test_tiny_bpe_round_trips_and_compresses(tiny_ranks) -> None:
    enc = make_encoding(tiny_ranks)
    assert enc.n_vocab == 1003
    for text in (MIXED_TEXT, tiny_corpus()):
        assert enc.decode(enc.encode(text)) == text
    corpus = tiny_corpus()
    assert len(enc.encode(corpus)) < len(corpus.encode()) / 2
    assert enc.encode("<|eos|>", allowed_special="all") == [793 + 3]


def test_every_learned_token_is_reachable(tiny_ranks) -> None:
    """Each learned token that is one pre-tokenizer piece encodes to exactly itself."""
    enc = make_encoding(tiny_ranks)
    checked = 0
    for token, rank in tiny_ranks.items():
        try:
            text = token.decode("utf-8")
        except UnicodeDecodeError:
            continue  # a partial UTF-8 sequence (e.g. two bytes of a Chinese character)
        if pretokenize(text) == [text]:
            assert enc.encode_ordinary(text) == [rank], text
            checked += 1
    assert checked > 400


def test_train_rejects_impossible_sizes() -> None:
    with pytest.raises(ValueError, match="text too small"):
        train_tiny_bpe("ab ab", 300)
    with pytest.raises(ValueError):
        train_tiny_bpe("anything", 100)


def test_write_then_load_round_trip(tmp_path: Path, tiny_ranks) -> None:
    path = tmp_path / "hy.tiktoken"
    write_hy_tiktoken(path, tiny_ranks)
    lines = path.read_text().splitlines()
    assert len(lines) == 793 and lines[65] == f"{base64.b64encode(b'A').decode()} 65"
    assert read_hy_ranks(path) == tiny_ranks
    enc = load_hy_tiktoken(path)
    assert enc.decode(enc.encode(MIXED_TEXT)) == MIXED_TEXT
    assert [p.name for p in tmp_path.iterdir()] == ["hy.tiktoken"]  # no temp file left


def test_load_rejects_malformed_files(tmp_path: Path) -> None:
    bad = tmp_path / "hy.tiktoken"
    bad.write_text("IQ== 0\nnot-a-line\n")
    with pytest.raises(UserError, match="expected 'base64 rank'"):
        load_hy_tiktoken(bad)
    bad.write_text("IQ== 0\nIg== 2\n")
    with pytest.raises(UserError, match="contiguous"):
        load_hy_tiktoken(bad)
    with pytest.raises(UserError, match="cannot read"):
        load_hy_tiktoken(tmp_path / "missing.tiktoken")


def test_filled_ranks_reach_the_full_size(tiny_ranks) -> None:
    ranks = filled_ranks(tiny_ranks, 127957)
    assert len(ranks) == 127957 and sorted(ranks.values()) == list(range(127957))
    assert all(ranks[token] == rank for token, rank in tiny_ranks.items())
    enc = make_encoding(ranks)
    assert enc.n_vocab == 128167
    assert enc.decode(enc.encode(MIXED_TEXT)) == MIXED_TEXT
