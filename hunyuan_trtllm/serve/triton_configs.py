"""The config.pbtxt of every model in a Triton repository, as :mod:`pbtxt` data (no templates, no placeholders).

Layout of the ``inflight_batcher_llm`` repository (Triton 26.04-26.07, TensorRT-LLM 1.2.1) restricted to what a
text-only decoder uses (no encoder, draft-model, multimodal, prompt-tuning or KV-retention tensors):
``preprocessing`` (text -> ids), ``tensorrt_llm`` (ids -> ids; the C++ ``tensorrtllm`` backend on engines or our
Python reference model), ``postprocessing`` (ids -> text), ``ensemble`` chaining the three, and
``tensorrt_llm_bls`` doing the same in Python with streaming text that never splits a UTF-8 character.
The ``llmapi`` flavor is one Python model, ``tensorrt_llm``, driving ``tensorrt_llm.LLM`` (text or token ids in).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hunyuan_trtllm.serve.pbtxt import flag, instance_group, parameters, tensor

# tensorrt_llm's per-request scalars: dims [1] seen as [] per batch item, all optional.
_LLM_SCALARS: tuple[tuple[str, str], ...] = (
    ("num_return_sequences", "INT32"), ("end_id", "INT32"), ("pad_id", "INT32"), ("beam_width", "INT32"),
    ("temperature", "FP32"), ("runtime_top_k", "INT32"), ("runtime_top_p", "FP32"), ("runtime_top_p_min", "FP32"),
    ("runtime_top_p_decay", "FP32"), ("runtime_top_p_reset_ids", "INT32"), ("len_penalty", "FP32"),
    ("early_stopping", "BOOL"), ("repetition_penalty", "FP32"), ("min_tokens", "INT32"),
    ("beam_search_diversity_rate", "FP32"), ("presence_penalty", "FP32"), ("frequency_penalty", "FP32"),
    ("seed", "UINT64"), ("return_log_probs", "BOOL"), ("return_context_logits", "BOOL"),
    ("return_generation_logits", "BOOL"), ("return_perf_metrics", "BOOL"), ("return_num_input_tokens", "BOOL"),
    ("return_num_output_tokens", "BOOL"), ("exclude_input_in_output", "BOOL"), ("stop", "BOOL"),
    ("streaming", "BOOL"), ("lora_task_id", "UINT64"),
)
# tensorrt_llm's variable-size optional inputs (ragged batching allowed).
_LLM_RAGGED: tuple[tuple[str, str, tuple[int, ...]], ...] = (
    ("stop_words_list", "INT32", (2, -1)), ("bad_words_list", "INT32", (2, -1)), ("embedding_bias", "FP32", (-1,)),
    ("lora_weights", "FP16", (-1, -1)), ("lora_config", "INT32", (-1, 3)),
    ("guided_decoding_guide_type", "STRING", (1,)), ("guided_decoding_guide", "STRING", (1,)),
)
# tensorrt_llm's outputs besides output_ids / sequence_length; "LOGITS" stands for the engine's logits dtype.
_LLM_EXTRA_OUTPUTS: tuple[tuple[str, str, tuple[int, ...]], ...] = (
    ("cum_log_probs", "FP32", (-1,)), ("output_log_probs", "FP32", (-1, -1)),
    ("context_logits", "LOGITS", (-1, -1)), ("generation_logits", "LOGITS", (-1, -1, -1)),
    ("batch_index", "INT32", (1,)), ("sequence_index", "INT32", (1,)),
    ("kv_cache_alloc_new_blocks", "INT32", (1,)), ("kv_cache_reused_blocks", "INT32", (1,)),
    ("kv_cache_alloc_total_blocks", "INT32", (1,)), ("arrival_time_ns", "INT64", (1,)),
    ("first_scheduled_time_ns", "INT64", (1,)), ("first_token_time_ns", "INT64", (1,)),
    ("last_token_time_ns", "INT64", (1,)), ("num_input_tokens", "INT32", (1,)), ("num_output_tokens", "INT32", (1,)),
)
# The tensorrt_llm scalars the llmapi model also takes (what TritonTokenBackend sends; no top-k alternatives).
LLMAPI_TOKEN_SCALARS: tuple[str, ...] = (
    "end_id", "pad_id", "temperature", "runtime_top_k", "runtime_top_p", "seed", "repetition_penalty",
    "presence_penalty", "frequency_penalty", "return_log_probs",
)
# Client-facing optional inputs of ensemble / BLS -> the tensorrt_llm input they feed (dtype from tensorrt_llm).
CLIENT_TO_LLM: dict[str, str] = {
    "end_id": "end_id", "pad_id": "pad_id", "top_k": "runtime_top_k", "top_p": "runtime_top_p",
    "temperature": "temperature", "length_penalty": "len_penalty", "repetition_penalty": "repetition_penalty",
    "min_tokens": "min_tokens", "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
    "seed": "seed", "return_log_probs": "return_log_probs", "return_context_logits": "return_context_logits",
    "return_generation_logits": "return_generation_logits", "return_perf_metrics": "return_perf_metrics",
    "return_num_input_tokens": "return_num_input_tokens", "return_num_output_tokens": "return_num_output_tokens",
    "beam_width": "beam_width", "num_return_sequences": "num_return_sequences", "stream": "streaming",
    "exclude_input_in_output": "exclude_input_in_output",
}
# tensorrt_llm outputs handed through to the client unchanged by ensemble and BLS.
PASSTHROUGH_OUTPUTS: tuple[str, ...] = tuple(name for name, _, _ in _LLM_EXTRA_OUTPUTS)
# The C++ runtime (executor) hands out logits as float32 or float16 only; a bfloat16 engine output is refused there.
LOGITS_DTYPES = {"float32": "FP32", "float16": "FP16"}


@dataclass(frozen=True)
class PipelineSpec:
    """Everything the five models of the inflight_batcher_llm layout are generated from."""

    max_batch_size: int
    max_input_len: int
    max_seq_len: int
    tokenizer_dir: Path
    streaming: bool  # BLS decoupled, streaming requests accepted
    llm_decoupled: bool  # the tensorrt_llm model answers through a response sender
    logits_dtype: str = "FP32"
    exclude_input_in_output: bool = True
    preprocessing_instances: int = 1
    postprocessing_instances: int = 1
    bls_instances: int = 1
    max_queue_delay_microseconds: int = 0


def llm_scalar_dtype(name: str) -> str:
    """The data type of a tensorrt_llm scalar input."""
    return dict(_LLM_SCALARS)[name]


def llm_inputs() -> list[dict[str, Any]]:
    """tensorrt_llm's inputs (the names and types the C++ backend reads)."""
    inputs = [
        tensor("input_ids", "INT32", [-1], ragged=True),
        tensor("input_lengths", "INT32", [1], scalar=True),
        tensor("request_output_len", "INT32", [1], scalar=True),
    ]
    inputs += [tensor(name, dtype, [1], optional=True, scalar=True) for name, dtype in _LLM_SCALARS]
    inputs += [tensor(name, dtype, list(dims), optional=True, ragged=True) for name, dtype, dims in _LLM_RAGGED]
    return inputs


def llm_outputs(logits_dtype: str) -> list[dict[str, Any]]:
    """tensorrt_llm's outputs: ``output_ids`` ``[beam, tokens]``, ``sequence_length`` ``[beam]`` and the extras."""
    outputs = [tensor("output_ids", "INT32", [-1, -1]), tensor("sequence_length", "INT32", [-1])]
    return outputs + _extra_outputs(logits_dtype)


def _extra_outputs(logits_dtype: str) -> list[dict[str, Any]]:
    return [tensor(name, logits_dtype if dtype == "LOGITS" else dtype, list(dims)) for name, dtype, dims in
            _LLM_EXTRA_OUTPUTS]


def reference_llm_extras() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(inputs, outputs) the ``reference`` model adds to TensorRT-LLM's: top-k log probabilities per token, which
    the 1.2.x template has no tensor for (``num_top_log_probs`` -> ``top_log_probs`` / ``top_log_prob_ids``)."""
    inputs = [tensor("num_top_log_probs", "INT32", [1], optional=True, scalar=True)]
    outputs = [tensor("top_log_probs", "FP32", [-1, -1, -1]), tensor("top_log_prob_ids", "INT32", [-1, -1, -1])]
    return inputs, outputs


def _batching(spec: PipelineSpec) -> dict[str, Any]:
    return {"max_queue_delay_microseconds": spec.max_queue_delay_microseconds}


def tensorrt_llm_config(spec: PipelineSpec, backend: str, params: dict[str, str]) -> dict[str, Any]:
    """The ``tensorrt_llm`` model: ``backend`` is ``tensorrtllm`` (engines) or ``python`` (reference)."""
    return {
        "name": "tensorrt_llm",
        "backend": backend,
        "max_batch_size": spec.max_batch_size,
        "model_transaction_policy": {"decoupled": spec.llm_decoupled},
        "dynamic_batching": {
            "preferred_batch_size": [spec.max_batch_size],
            **_batching(spec),
            "default_queue_policy": {"max_queue_size": 0},
        },
        "input": llm_inputs(),
        "output": llm_outputs(spec.logits_dtype),
        "instance_group": instance_group(1),
        "parameters": parameters(params),
    }


def preprocessing_config(spec: PipelineSpec) -> dict[str, Any]:
    """Text -> ``INPUT_ID`` and the word lists; ``END_ID`` defaults to the tokenizer's end-of-turn id."""
    return {
        "name": "preprocessing",
        "backend": "python",
        "max_batch_size": spec.max_batch_size,
        "dynamic_batching": _batching(spec),
        "input": [
            tensor("QUERY", "STRING", [1]),
            tensor("REQUEST_OUTPUT_LEN", "INT32", [1]),
            tensor("BAD_WORDS_DICT", "STRING", [-1], optional=True),
            tensor("STOP_WORDS_DICT", "STRING", [-1], optional=True),
            tensor("END_ID", "INT32", [1], optional=True),
            tensor("PAD_ID", "INT32", [1], optional=True),
        ],
        "output": [
            tensor("INPUT_ID", "INT32", [-1]),
            tensor("REQUEST_INPUT_LEN", "INT32", [1]),
            tensor("BAD_WORDS_IDS", "INT32", [2, -1]),
            tensor("STOP_WORDS_IDS", "INT32", [2, -1]),
            tensor("REQUEST_OUTPUT_LEN", "INT32", [-1]),
            tensor("OUT_END_ID", "INT32", [1]),
            tensor("OUT_PAD_ID", "INT32", [1]),
        ],
        "instance_group": instance_group(spec.preprocessing_instances),
        "parameters": parameters({
            "tokenizer_dir": str(spec.tokenizer_dir),
            "max_input_len": str(spec.max_input_len),
            "allow_special_tokens": "true",
        }),
    }


def postprocessing_config(spec: PipelineSpec) -> dict[str, Any]:
    """``TOKENS_BATCH`` ``[beam, tokens]`` + ``SEQUENCE_LENGTH`` -> ``OUTPUT`` text (special tokens dropped)."""
    return {
        "name": "postprocessing",
        "backend": "python",
        "max_batch_size": spec.max_batch_size,
        "dynamic_batching": _batching(spec),
        "input": [tensor("TOKENS_BATCH", "INT32", [-1, -1]), tensor("SEQUENCE_LENGTH", "INT32", [-1])],
        "output": [tensor("OUTPUT", "STRING", [-1])],
        "instance_group": instance_group(spec.postprocessing_instances),
        "parameters": parameters({"tokenizer_dir": str(spec.tokenizer_dir), "skip_special_tokens": "true"}),
    }


def _client_inputs() -> list[dict[str, Any]]:
    """The request tensors of ensemble and BLS."""
    inputs = [
        tensor("text_input", "STRING", [1]),
        tensor("max_tokens", "INT32", [1]),
        tensor("bad_words", "STRING", [-1], optional=True),
        tensor("stop_words", "STRING", [-1], optional=True),
    ]
    return inputs + [tensor(name, llm_scalar_dtype(llm), [1], optional=True) for name, llm in CLIENT_TO_LLM.items()]


def _client_outputs(logits_dtype: str) -> list[dict[str, Any]]:
    return [tensor("text_output", "STRING", [-1]), *_extra_outputs(logits_dtype)]


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> dict[str, Any]:
    return {
        "model_name": model,
        "model_version": -1,
        "input_map": [{"key": k, "value": v} for k, v in inputs.items()],
        "output_map": [{"key": k, "value": v} for k, v in outputs.items()],
    }


def ensemble_config(spec: PipelineSpec) -> dict[str, Any]:
    """preprocessing -> tensorrt_llm -> postprocessing; streaming text decodes each chunk on its own."""
    pre = _step(
        "preprocessing",
        {"QUERY": "text_input", "REQUEST_OUTPUT_LEN": "max_tokens", "BAD_WORDS_DICT": "bad_words",
         "STOP_WORDS_DICT": "stop_words", "END_ID": "end_id", "PAD_ID": "pad_id"},
        {"INPUT_ID": "_INPUT_ID", "REQUEST_INPUT_LEN": "_REQUEST_INPUT_LEN", "BAD_WORDS_IDS": "_BAD_WORDS_IDS",
         "STOP_WORDS_IDS": "_STOP_WORDS_IDS", "REQUEST_OUTPUT_LEN": "_REQUEST_OUTPUT_LEN",
         "OUT_END_ID": "_PREPROCESSOR_END_ID", "OUT_PAD_ID": "_PREPROCESSOR_PAD_ID"},
    )
    llm_inputs_map = {
        "input_ids": "_INPUT_ID", "input_lengths": "_REQUEST_INPUT_LEN", "request_output_len": "_REQUEST_OUTPUT_LEN",
        "bad_words_list": "_BAD_WORDS_IDS", "stop_words_list": "_STOP_WORDS_IDS",
        "end_id": "_PREPROCESSOR_END_ID", "pad_id": "_PREPROCESSOR_PAD_ID",
    }
    llm_inputs_map |= {llm: client for client, llm in CLIENT_TO_LLM.items() if llm not in ("end_id", "pad_id")}
    llm = _step("tensorrt_llm", llm_inputs_map,
                {"output_ids": "_TOKENS_BATCH", "sequence_length": "_SEQUENCE_LENGTH",
                 **{name: name for name in PASSTHROUGH_OUTPUTS}})
    post = _step("postprocessing", {"TOKENS_BATCH": "_TOKENS_BATCH", "SEQUENCE_LENGTH": "_SEQUENCE_LENGTH"},
                 {"OUTPUT": "text_output"})
    return {
        "name": "ensemble",
        "platform": "ensemble",
        "max_batch_size": spec.max_batch_size,
        "input": _client_inputs(),
        "output": _client_outputs(spec.logits_dtype),
        "ensemble_scheduling": {"step": [pre, llm, post]},
    }


def bls_config(spec: PipelineSpec) -> dict[str, Any]:
    """The Python pipeline: calls preprocessing and tensorrt_llm, detokenizes incrementally itself."""
    return {
        "name": "tensorrt_llm_bls",
        "backend": "python",
        "max_batch_size": spec.max_batch_size,
        "model_transaction_policy": {"decoupled": spec.streaming},
        "input": _client_inputs(),
        "output": _client_outputs(spec.logits_dtype),
        "instance_group": instance_group(spec.bls_instances),
        "parameters": parameters({
            "tokenizer_dir": str(spec.tokenizer_dir),
            "skip_special_tokens": "true",
            "preprocessing_model_name": "preprocessing",
            "tensorrt_llm_model_name": "tensorrt_llm",
            "tensorrt_llm_decoupled": flag(spec.llm_decoupled),
        }),
    }


def llmapi_config(streaming: bool) -> dict[str, Any]:
    """The LLM-API ``tensorrt_llm`` model: text in / text out (``text_input``, ``sampling_param_*``) or TensorRT-LLM's
    token tensors (``input_ids`` ..., as the C++ backend's model takes them) in / ``output_ids`` out. Batch size 1 and
    no Triton batching: one prompt per request, the LLM schedules requests itself."""
    scalars = {
        "streaming": "BOOL", "sampling_param_best_of": "INT32", "sampling_param_temperature": "FP32",
        "sampling_param_top_k": "INT32", "sampling_param_top_p": "FP32",
        "sampling_param_frequency_penalty": "FP32", "sampling_param_presence_penalty": "FP32",
        "sampling_param_max_tokens": "INT32", "sampling_param_seed": "UINT64",
        "sampling_param_exclude_input_from_output": "BOOL", "sampling_param_return_perf_metrics": "BOOL",
        "return_finish_reason": "BOOL", "return_stop_reason": "BOOL", "return_cumulative_logprob": "BOOL",
    }
    scalars |= {name: llm_scalar_dtype(name) for name in LLMAPI_TOKEN_SCALARS}
    inputs = [tensor("text_input", "STRING", [-1], optional=True),
              tensor("sampling_param_stop", "STRING", [-1], optional=True),
              tensor("input_ids", "INT32", [-1], optional=True), tensor("input_lengths", "INT32", [1], optional=True),
              tensor("request_output_len", "INT32", [1], optional=True),
              tensor("stop_words_list", "INT32", [2, -1], optional=True),
              tensor("guided_decoding_guide_type", "STRING", [1], optional=True),
              tensor("guided_decoding_guide", "STRING", [1], optional=True)]
    inputs += [tensor(name, dtype, [1], optional=True) for name, dtype in scalars.items()]
    return {
        "name": "tensorrt_llm",
        "backend": "python",
        "max_batch_size": 1,
        "model_transaction_policy": {"decoupled": streaming},
        "input": inputs,
        "output": [
            tensor("text_output", "STRING", [-1]),
            tensor("finish_reason", "STRING", [-1]),
            tensor("stop_reason", "STRING", [-1]),
            tensor("cumulative_logprob", "FP32", [-1]),
            tensor("output_ids", "INT32", [-1, -1]),
            tensor("sequence_length", "INT32", [-1]),
            tensor("output_log_probs", "FP32", [-1, -1]),
        ],
        "instance_group": instance_group(1),
    }
