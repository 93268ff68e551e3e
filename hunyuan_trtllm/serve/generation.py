"""From token ids to OpenAI text: the backend protocol, stop handling and incremental detokenization.

A backend turns prompt token ids into a stream of new token ids (Triton's ``tensorrt_llm`` model: TensorRT-LLM's
C++ backend or our reference model). Everything text-shaped happens here, once, for every backend: stop tokens
and stop strings, ``max_tokens``, UTF-8-safe incremental decoding (special tokens left out unless
``skip_special_tokens`` is false), usage counts, and the per-token log probabilities a backend returns.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from hunyuan_trtllm.checkpoints.tokenizer import HunyuanTokenizer, IncrementalDetokenizer
from hunyuan_trtllm.serve.guided import Guide


class BackendRejected(Exception):
    """The server behind the endpoint refused a request (its 4xx): answered with a 400 carrying its message."""


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut; 1: greedy
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool = False  # return each token's log probability
    top_logprobs: int = 0  # and this many best alternatives
    guide: Guide | None = None  # guided decoding (structured output)
    skip_special_tokens: bool = True


@dataclass
class TokenStep:
    """What a backend returns per step: new token ids and, when asked for, their log probabilities."""

    ids: list[int]
    log_probs: list[float] | None = None
    top: list[list[tuple[int, float]]] | None = None  # per token: (id, log probability), best first


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token with its log probability and the best alternatives (when requested)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


class TokenBackend(Protocol):
    """Something that generates token ids, e.g. :class:`hunyuan_trtllm.serve.triton_backend.TritonTokenBackend`."""

    max_input_len: int
    max_seq_len: int

    def stream(self, prompt_ids: list[int], params: GenerationParams) -> AsyncIterator[list[int] | TokenStep]:
        """Yield the new token ids of each step (the prompt excluded), as a list or a :class:`TokenStep`."""
        ...

    async def ready(self) -> bool: ...


@dataclass
class TextEvent:
    """A piece of generated text; the last event of a generation carries ``finish_reason``."""

    text: str
    finish_reason: str | None = None
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)  # the tokens behind this text (when requested)


@dataclass
class _StopMatcher:
    """Holds back just enough text never to emit the start of a stop string that is still being generated."""

    stops: list[str]
    pending: str = ""
    hold: int = field(init=False)

    def __post_init__(self) -> None:
        self.hold = max((len(s) for s in self.stops), default=1) - 1

    def push(self, text: str) -> tuple[str, bool]:
        """(text safe to emit, whether a stop string was hit)."""
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            cut, self.pending = self.pending[: min(hits)], ""
            return cut, True
        if self.hold == 0:
            out, self.pending = self.pending, ""
            return out, False
        out, self.pending = self.pending[: -self.hold], self.pending[-self.hold :]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


async def generate_text(
    backend: TokenBackend,
    tokenizer: HunyuanTokenizer,
    prompt_ids: list[int],
    params: GenerationParams,
    stop_strings: list[str],
) -> AsyncIterator[TextEvent]:
    """Stream text for one request; the final event has ``finish_reason`` ("stop" or "length")."""
    detokenizer = IncrementalDetokenizer(tokenizer, params.skip_special_tokens)
    stops = _StopMatcher(stop_strings)
    stop_ids = set(params.stop_token_ids)
    generated = 0
    pending: list[TokenLogprob] = []
    stopped_by_token = stopped_by_string = False
    stream = backend.stream(prompt_ids, params)
    try:
        async for item in stream:
            step = item if isinstance(item, TokenStep) else TokenStep(list(item))
            ids = step.ids
            cut = next((i for i, t in enumerate(ids) if t in stop_ids), None)
            if cut is not None:
                ids, stopped_by_token = ids[:cut], True
            generated += len(ids) + stopped_by_token  # a generated stop token counts as a completion token
            if params.logprobs:
                pending += _token_logprobs(step, len(ids))
            text, stopped_by_string = stops.push(detokenizer.push(ids))
            if text:
                yield TextEvent(text, completion_tokens=generated, logprobs=pending)
                pending = []
            if stopped_by_token or stopped_by_string or generated >= params.max_tokens:
                break
    finally:
        await stream.aclose()
    tail = ""
    if not stopped_by_string:
        text, stopped_by_string = stops.push(detokenizer.flush())
        tail = text if stopped_by_string else text + stops.flush()
    # A backend that ends its stream before max_tokens met its end_id (TensorRT-LLM leaves it out of the output).
    finish = "length" if generated >= params.max_tokens and not (stopped_by_token or stopped_by_string) else "stop"
    yield TextEvent(tail, finish_reason=finish, completion_tokens=generated, logprobs=pending)


def _token_logprobs(step: TokenStep, count: int) -> list[TokenLogprob]:
    """The first ``count`` tokens of ``step`` with their log probabilities; a backend that returned none is an
    error (the endpoint only asks backends that can)."""
    if step.log_probs is None or len(step.log_probs) < count:
        raise RuntimeError("the backend returned no log probabilities")
    top = step.top or [[] for _ in range(count)]
    return [TokenLogprob(t, step.log_probs[i], tuple(top[i])) for i, t in enumerate(step.ids[:count])]
