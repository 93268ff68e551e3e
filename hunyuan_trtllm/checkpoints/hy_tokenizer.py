"""Hunyuan's tiktoken tokenizer format (``hy.tiktoken``), and a toy BPE trainer for synthetic checkpoints.

``hy.tiktoken`` holds one ``base64(token bytes) rank`` line per BPE token, ranks 0..N-1 (N = 127957 in the
A13B / Large / 7B releases). The 210 special tokens are not in the file: they take the ids N, N+1, ... in the
order of :data:`SPECIAL_TOKENS` (see /work/shared/reference/hunyuan.md section 5.1). Tencent's ``HYTokenizer``
also NFC-normalises text before encoding; :func:`load_hy_tiktoken` returns the plain tiktoken encoding.
"""

from __future__ import annotations

import base64
import itertools
from collections import Counter
from importlib import resources
from pathlib import Path

import regex
import tiktoken

from hunyuan_trtllm.checkpoints.safetensors_io import write_atomic
from hunyuan_trtllm.errors import UserError

# The pre-tokenizer regex of Tencent's tokenization_hy.py (single digits, cl100k-like otherwise).
HY_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|startoftext|>",
    "<|bos|>",
    "<|eos|>",
    "<|pad|>",
    *(f"<|extra_{i}|>" for i in range(205)),
)
NUM_BYTE_TOKENS = 256


def special_token_id(name: str, num_ranks: int) -> int:
    """The id of special token ``name`` in a vocabulary whose BPE part has ``num_ranks`` ranks."""
    return num_ranks + SPECIAL_TOKENS.index(name)


def make_encoding(ranks: dict[bytes, int], name: str = "hy") -> tiktoken.Encoding:
    """A tiktoken encoding with Hunyuan's regex and the 210 special tokens appended after the BPE ranks."""
    num_ranks = len(ranks)
    specials = {token: num_ranks + i for i, token in enumerate(SPECIAL_TOKENS)}
    return tiktoken.Encoding(name=name, pat_str=HY_PATTERN, mergeable_ranks=ranks, special_tokens=specials)


def read_hy_ranks(path: Path) -> dict[bytes, int]:
    """Parse the ``base64 rank`` lines of a ``hy.tiktoken`` file; ranks must be exactly 0..N-1."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise UserError(f"{path}: cannot read tokenizer file ({exc.strerror})") from None
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            token_b64, rank = line.split()
            ranks[base64.b64decode(token_b64, validate=True)] = int(rank)
        except ValueError:
            raise UserError(f"{path}:{number}: expected 'base64 rank', got {line[:60]!r}") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise UserError(f"{path}: ranks are not unique and contiguous from 0 ({len(ranks)} tokens)")
    return ranks


def load_hy_tiktoken(path: Path) -> tiktoken.Encoding:
    """Load a ``hy.tiktoken`` file as a tiktoken encoding (BPE ranks, then the 210 special tokens)."""
    return make_encoding(read_hy_ranks(path))


def write_hy_tiktoken(path: Path, ranks: dict[bytes, int]) -> None:
    """Write ranks in the ``hy.tiktoken`` format (one ``base64 rank`` line per token, by rank), atomically."""
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError("ranks must be unique and contiguous from 0")
    by_rank = sorted(ranks, key=ranks.__getitem__)
    write_atomic(path, "".join(f"{base64.b64encode(token).decode()} {ranks[token]}\n" for token in by_rank))


def pretokenize(text: str) -> list[str]:
    """Split text into the pieces Hunyuan's regex produces (BPE never merges across them)."""
    return regex.findall(HY_PATTERN, text)


def train_tiny_bpe(text: str, num_ranks: int) -> dict[bytes, int]:
    """Byte-level BPE: the 256 byte tokens (rank = byte value), then greedy most-frequent-pair merges.

    Merges never cross the pieces of :func:`pretokenize`. Ties go to the smallest pair (as bytes), so training
    is deterministic. Training applies merges in rank order, as tiktoken does when encoding, so every learned
    token is what tiktoken produces for its own bytes. Raises ``ValueError`` if the text runs out of pairs.
    """
    if num_ranks < NUM_BYTE_TOKENS:
        raise ValueError(f"num_ranks must be at least {NUM_BYTE_TOKENS}, got {num_ranks}")
    ranks = {bytes([b]): b for b in range(NUM_BYTE_TOKENS)}
    words: Counter[tuple[bytes, ...]] = Counter(
        tuple(bytes([b]) for b in piece.encode("utf-8")) for piece in pretokenize(text)
    )
    while len(ranks) < num_ranks:
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            raise ValueError(f"text too small: only {len(ranks)} of {num_ranks} ranks could be learned")
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        ranks.setdefault(best[0] + best[1], len(ranks))
        words = Counter({_merge(word, best): count for word, count in words.items()})
    return ranks


def _merge(word: tuple[bytes, ...], pair: tuple[bytes, bytes]) -> tuple[bytes, ...]:
    """Replace every occurrence of ``pair`` in ``word``, left to right."""
    out: list[bytes] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def tiny_corpus() -> str:
    """The package's built-in mixed Chinese / English / code training text (about 4 KB)."""
    return resources.files("hunyuan_trtllm").joinpath("data/tiny_corpus.txt").read_text(encoding="utf-8")


def filled_ranks(base: dict[bytes, int], num_ranks: int) -> dict[bytes, int]:
    """Extend ``base`` to exactly ``num_ranks`` ranks with filler tokens, for full-size vocabularies.

    Training a real 128k-token BPE is too slow for a synthetic checkpoint, so the fillers are every two-byte
    string, then three-byte strings, in byte order (skipping those already present). They give the file and the
    id space the size of the real ones; some three-byte fillers are unreachable by BPE merging, which is harmless
    for random-weight models.
    """
    ranks = dict(base)
    fillers = itertools.chain(
        (bytes([a, b]) for a in range(256) for b in range(256)),
        (bytes([a, b, c]) for a in range(256) for b in range(256) for c in range(256)),
    )
    for token in fillers:
        if len(ranks) >= num_ranks:
            return ranks
        ranks.setdefault(token, len(ranks))
    raise ValueError(f"cannot fill {num_ranks} ranks")
