"""``tensorrt_llm.sampling_params`` of TensorRT-LLM 1.x: :class:`SamplingParams` and :class:`GuidedDecodingParams`.

Both are ``@dataclass(slots=True, kw_only=True)`` with TensorRT-LLM's field names and defaults (an unknown field is a
``TypeError``, as there). ``__post_init__`` does what the real one does: ``pad_id`` defaults to ``end_id``,
``best_of`` to ``n``, at most one guide, ``logprobs=True`` becomes ``1`` (top-1). The stand-in LLM
(:mod:`tensorrt_llm.llmapi`) honours the fields listed in :data:`HONOURED` and refuses any other field set away from
its default.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(slots=True, kw_only=True)
class GuidedDecodingParams:
    """One guide per request: ``json`` (a schema: str or dict), ``regex``, ``grammar`` (EBNF), ``json_object``
    (any JSON object) or ``structural_tag``."""

    json: str | dict | None = None
    regex: str | None = None
    grammar: str | None = None
    json_object: bool = False
    structural_tag: str | None = None

    def _validate(self) -> None:
        count = sum(bool(getattr(self, f.name)) for f in fields(self))
        if count > 1:
            raise ValueError(f"Only one guide can be used for a request, but got {count}.")


@dataclass(slots=True, kw_only=True)
class SamplingParams:
    """Sampling parameters of one request (TensorRT-LLM 1.x's public fields)."""

    end_id: int | None = None
    pad_id: int | None = None
    max_tokens: int = 32
    bad: str | list[str] | None = None
    bad_token_ids: list[int] | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    embedding_bias: Any = None
    logits_processor: Any = None
    apply_batched_logits_processor: bool = False
    n: int = 1
    best_of: int | None = None
    use_beam_search: bool = False
    top_k: int | None = None
    top_p: float | None = None
    top_p_min: float | None = None
    top_p_reset_ids: int | None = None
    top_p_decay: float | None = None
    seed: int | None = None
    temperature: float | None = None
    min_tokens: int | None = None
    beam_search_diversity_rate: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    length_penalty: float | None = None
    early_stopping: int | None = None
    no_repeat_ngram_size: int | None = None
    min_p: float | None = None
    beam_width_array: list[int] | None = None
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    return_context_logits: bool = False
    return_generation_logits: bool = False
    exclude_input_from_output: bool = True
    return_encoder_output: bool = False
    return_perf_metrics: bool = False
    additional_model_outputs: list | None = None
    lookahead_config: Any = None
    guided_decoding: GuidedDecodingParams | None = None
    ignore_eos: bool = False
    detokenize: bool = True
    add_special_tokens: bool = True
    truncate_prompt_tokens: int | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True

    def __post_init__(self) -> None:
        if self.pad_id is None:
            self.pad_id = self.end_id
        self.best_of = self.best_of or self.n
        if self.best_of < self.n:
            raise ValueError(f"best_of ({self.best_of}) cannot be less than n ({self.n})")
        if self.truncate_prompt_tokens is not None and self.truncate_prompt_tokens < 1:
            raise ValueError(f"truncate_prompt_tokens must be >= 1, got {self.truncate_prompt_tokens}")
        if self.guided_decoding is not None:
            self.guided_decoding._validate()
        self.logprobs = self.logprobs and int(self.logprobs)  # logprobs=True: the top-1 log probability
        self.prompt_logprobs = self.prompt_logprobs and int(self.prompt_logprobs)


# Fields the stand-in LLM honours; any other field away from its default is refused there.
HONOURED = frozenset({
    "end_id", "pad_id", "max_tokens", "bad", "bad_token_ids", "stop", "stop_token_ids", "include_stop_str_in_output",
    "n", "best_of", "top_k", "top_p", "seed", "temperature", "min_tokens", "repetition_penalty", "presence_penalty",
    "frequency_penalty", "logprobs", "guided_decoding", "ignore_eos", "detokenize", "add_special_tokens",
    "skip_special_tokens", "spaces_between_special_tokens",
})
