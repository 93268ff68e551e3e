"""Token generation over the reference executor, with TensorRT-LLM's request semantics.

- Sampling (TensorRT-LLM's ``SamplingConfig``): ``top_k == 0 and top_p == 0``, ``top_k == 1`` or a temperature
  of 0 is greedy (argmax); otherwise logits are divided by ``temperature``, cut to the ``top_k`` best and
  then to the smallest set whose probability reaches ``top_p``, and one token is drawn with a
  ``torch.Generator`` seeded by ``seed`` (0 when absent, as in TensorRT-LLM), so a seed reproduces a sample.
- Word lists use TensorRT-LLM's ``[2, L]`` layout: row 0 the concatenated token ids of every word, row 1 the
  end offset of each word, padded with -1 (``[[0], [-1]]`` is the empty list).
- Penalties (TensorRT-LLM's): every distinct token of the prompt and the output so far has its logit divided by
  ``repetition_penalty`` when positive (multiplied when negative), lowered by ``presence_penalty`` and by
  ``frequency_penalty`` times its count; then the guided-decoding mask (:mod:`hunyuan_trtllm.serve.guided`).
- Log probabilities (``return_log_probs``) are the log-softmax of the model's raw logits at the sampled token,
  before penalties, temperature and masks; ``top_log_probs`` keeps the best ``k`` of the same distribution.
- A sequence ends on ``end_id`` (not part of the output), on a stop word (part of the output, as in TensorRT-LLM)
  or after ``max_new_tokens``. The KV cache is kept across steps: the prompt is fed once, then one token per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from hunyuan_trtllm.reference.executor import KVCache, ReferenceExecutor
from hunyuan_trtllm.serve.guided import GuidedMatcher


@dataclass(frozen=True)
class SamplingParams:
    """The sampling inputs of one request (TensorRT-LLM defaults)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.0
    seed: int = 0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    @property
    def greedy(self) -> bool:
        """True when the request decodes by argmax."""
        return self.top_k == 1 or (self.top_k == 0 and self.top_p == 0.0) or self.temperature == 0.0

    def check(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range value."""
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"runtime_top_k must be >= 0, got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"runtime_top_p must be in [0, 1], got {self.top_p}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must be an unsigned 64-bit integer, got {self.seed}")


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator for ``seed`` (folded into torch's signed 64-bit seed range)."""
    return torch.Generator().manual_seed(seed % 2**63)


def next_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """Pick the next token from ``logits`` ``[V]`` (float32)."""
    if params.greedy:
        return int(logits.argmax())
    scores = logits.float() / params.temperature
    if 0 < params.top_k < scores.numel():
        kth = scores.topk(params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if 0.0 < params.top_p < 1.0:
        order = scores.argsort(descending=True)
        probs = scores[order].softmax(-1)
        before = probs.cumsum(-1) - probs  # probability mass of the strictly better tokens
        scores[order[before >= params.top_p]] = float("-inf")
    return int(torch.multinomial(scores.softmax(-1), 1, generator=generator))


def encode_word_list(words: Sequence[Sequence[int]]) -> np.ndarray:
    """``[2, L]`` int32 in TensorRT-LLM's layout; empty words are dropped, no words gives ``[[0], [-1]]``."""
    words = [list(w) for w in words if len(w)]
    if not words:
        return np.array([[0], [-1]], dtype=np.int32)
    ids = [t for w in words for t in w]
    offsets = np.cumsum([len(w) for w in words]).tolist()
    row = np.full((2, len(ids)), -1, dtype=np.int32)
    row[0] = ids
    row[1, : len(offsets)] = offsets
    return row


def decode_word_list(array: np.ndarray) -> list[list[int]]:
    """The words of a ``[2, L]`` (or ``[1, 2, L]``) word list."""
    array = np.asarray(array).reshape(2, -1)
    words, start = [], 0
    for end in array[1]:
        if end < 0:
            break
        words.append([int(t) for t in array[0, start:end]])
        start = int(end)
    return words


@dataclass
class Generation:
    """One request being generated: feed the prompt once, then one token per :meth:`step`."""

    prompt: list[int]
    max_new_tokens: int
    end_id: int
    params: SamplingParams = field(default_factory=SamplingParams)
    stop_words: list[list[int]] = field(default_factory=list)
    bad_words: list[list[int]] = field(default_factory=list)
    min_tokens: int = 0
    log_probs: bool = False
    top_log_probs: int = 0
    guide: GuidedMatcher | None = None
    tokens: list[int] = field(default_factory=list)
    token_log_probs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    finished: bool = False
    cache: KVCache | None = None
    _logits: torch.Tensor | None = None
    _generator: torch.Generator | None = None

    def step(self, executor: ReferenceExecutor) -> int | None:
        """Generate one token; return it, or None when the sequence ended on ``end_id`` instead."""
        if self.finished:
            raise RuntimeError("step() after the sequence finished")
        if self.cache is None:
            self.cache = executor.new_cache()
            self._generator = make_generator(self.params.seed)
            self._logits = executor.forward(self.prompt, self.cache)[-1]
        raw = self._logits
        logits = self._penalized(self._masked(raw))
        if self.guide is not None:
            logits = self.guide.mask(logits)
        token = next_token(logits, self.params, self._generator)
        if token == self.end_id:
            self.finished = True
            return None
        if self.guide is not None:
            self.guide.accept(token)
        if self.log_probs or self.top_log_probs:
            self._record_log_probs(raw, token)
        self.tokens.append(token)
        self.finished = len(self.tokens) >= self.max_new_tokens or self._stopped() or (
            self.guide is not None and self.guide.terminated)
        if not self.finished:
            self._logits = executor.forward([token], self.cache)[-1]
        return token

    def _masked(self, logits: torch.Tensor) -> torch.Tensor:
        """Apply ``min_tokens`` (no ``end_id`` yet) and the bad words whose prefix the output ends with."""
        banned = [w[-1] for w in self.bad_words if self._ends_with(w[:-1])]
        if len(self.tokens) < self.min_tokens and 0 <= self.end_id < logits.numel():
            banned.append(self.end_id)
        if not banned:
            return logits
        logits = logits.clone()
        logits[[t for t in banned if 0 <= t < logits.numel()]] = float("-inf")
        return logits

    def _record_log_probs(self, raw: torch.Tensor, token: int) -> None:
        log_probs = raw.float().log_softmax(-1)
        self.token_log_probs.append(float(log_probs[token]))
        if self.top_log_probs:
            values, ids = log_probs.topk(min(self.top_log_probs, log_probs.numel()))
            self.top.append([(int(i), float(v)) for i, v in zip(ids, values, strict=True)])

    def _penalized(self, logits: torch.Tensor) -> torch.Tensor:
        """Repetition, presence and frequency penalties over the prompt and the output so far."""
        p = self.params
        if p.repetition_penalty == 1.0 and p.presence_penalty == 0.0 and p.frequency_penalty == 0.0:
            return logits
        seen = torch.tensor([t for t in (*self.prompt, *self.tokens) if 0 <= t < logits.numel()], dtype=torch.long)
        ids, counts = seen.unique(return_counts=True)
        logits = logits.float().clone()
        chosen = logits[ids]
        chosen = torch.where(chosen > 0, chosen / p.repetition_penalty, chosen * p.repetition_penalty)
        logits[ids] = chosen - p.presence_penalty - p.frequency_penalty * counts.float()
        return logits

    def _stopped(self) -> bool:
        return any(self._ends_with(word) for word in self.stop_words)

    def _ends_with(self, word: list[int]) -> bool:
        return not word or (len(self.tokens) >= len(word) and self.tokens[-len(word) :] == word)


