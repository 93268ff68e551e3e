"""An executing stand-in for ``trtllm-serve`` (TensorRT-LLM 1.2.x ``tensorrt_llm/commands/serve.py`` and
``tensorrt_llm/serve/openai_server.py``), on the executing LLM-API stand-in (:mod:`tensorrt_llm.llmapi`).

What it keeps from the real server, because our endpoint depends on it:
- the command line (click; an option trtllm-serve does not have is a usage error, exit 2), the
  ``--extra_llm_api_options`` YAML merged into the LLM's arguments (unknown keys are refused by the LLM), the
  ``--custom_module_dirs`` imports;
- the server listens only once the LLM is built; ``GET /health`` (200), ``GET /v1/models`` (the MODEL argument);
- ``POST /v1/completions`` with 1.2.x's ``CompletionRequest`` fields (unknown fields: 400, the protocol's
  ``extra="forbid"``), a prompt of text or token ids, ``stream`` (SSE ``data:`` lines ending with ``[DONE]``),
  ``detokenize`` (false: each chunk's ``text`` is empty and ``token_ids`` holds the step's new ids, PR #5382),
  ``response_format`` (``json`` + ``schema``, ``json_object``, ``regex``, ``ebnf``) through
  ``GuidedDecodingParams``, and 400s for ``logprobs`` and ``suffix`` (not supported by the versions read) and for
  ``stream_options`` without ``stream``; errors are ``{"object": "error", "message", "type", "param", "code"}``.
It runs Hugging Face checkpoints (the PyTorch backend); TensorRT engines cannot run here.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import click
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Forbid(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResponseFormat(_Forbid):
    type: Literal["text", "json", "json_object", "regex", "ebnf", "structural_tag"]
    schema_: dict | None = Field(default=None, alias="schema")
    regex: str | None = None
    ebnf: str | None = None


class StreamOptions(_Forbid):
    include_usage: bool | None = True
    continuous_usage_stats: bool | None = True


class CompletionRequest(_Forbid):
    """1.2.x's fields (``tensorrt_llm/serve/openai_protocol.py``)."""

    model: str
    prompt: list[int] | list[list[int]] | str | list[str]
    best_of: int | None = None
    echo: bool | None = False
    frequency_penalty: float | None = 0.0
    logit_bias: dict[str, float] | None = None
    logprobs: int | None = None
    max_tokens: int | None = None
    n: int = 1
    presence_penalty: float | None = 0.0
    seed: int | None = None
    stop: str | list[str] | None = Field(default_factory=list)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    suffix: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    user: str | None = None
    use_beam_search: bool = False
    top_k: int = 0
    top_p_min: float = 0.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    early_stopping: bool = False
    stop_token_ids: list[int] | None = Field(default_factory=list)
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    min_tokens: int = 0
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    truncate_prompt_tokens: int | None = None
    return_context_logits: bool = False
    detokenize: bool = True
    add_special_tokens: bool = True
    response_format: ResponseFormat | None = None

    @model_validator(mode="before")
    @classmethod
    def _refused(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if data.get("logprobs"):
                raise ValueError("logprobs is not supported")
            if data.get("stream_options") and not data.get("stream"):
                raise ValueError("Stream options can only be defined when stream is true.")
            if data.get("suffix"):
                raise ValueError("suffix is not supported")
        return data


def _error(message: str, status: int = 400) -> Any:
    body = {"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": status}
    return JSONResponse(body, status_code=status)


def _guided(fmt: ResponseFormat | None) -> Any:
    from tensorrt_llm.llmapi import GuidedDecodingParams

    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json":
        if fmt.schema_ is None:
            raise ValueError("The 'schema' field is required when response_format.type is 'json'.")
        return GuidedDecodingParams(json=fmt.schema_)
    if fmt.type == "json_object":
        return GuidedDecodingParams(json_object=True)
    if fmt.type == "regex":
        return GuidedDecodingParams(regex=fmt.regex)
    if fmt.type == "ebnf":
        return GuidedDecodingParams(grammar=fmt.ebnf)
    raise ValueError(f"response_format {fmt.type} is not supported by this stand-in")


def _sampling(request: CompletionRequest) -> Any:
    """``CompletionRequest.to_sampling_params`` (the fields the stand-in LLM implements)."""
    from tensorrt_llm import SamplingParams

    stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    return SamplingParams(
        max_tokens=request.max_tokens or 16, temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p, top_k=request.top_k, seed=request.seed,
        stop=stop, stop_token_ids=request.stop_token_ids or [], repetition_penalty=request.repetition_penalty,
        presence_penalty=request.presence_penalty or 0.0, frequency_penalty=request.frequency_penalty or 0.0,
        min_tokens=request.min_tokens, ignore_eos=request.ignore_eos, detokenize=request.detokenize,
        skip_special_tokens=request.skip_special_tokens, guided_decoding=_guided(request.response_format))


def create_app(llm: Any, model: str) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> Any:
        return JSONResponse({}, status_code=200)

    @app.get("/v1/models")
    async def models() -> Any:
        return {"object": "list", "data": [{"id": model, "object": "model", "created": int(time.time()),
                                            "owned_by": "tensorrt_llm"}]}

    @app.post("/v1/completions")
    async def completions(raw: Request) -> Any:
        try:
            request = CompletionRequest.model_validate(await raw.json())
            if not isinstance(request.prompt, str) and request.prompt and not isinstance(request.prompt[0], int):
                raise ValueError("this stand-in serves one prompt per request")
            sampling = _sampling(request)
        except (ValidationError, ValueError, TypeError) as exc:
            return _error(str(exc))
        result = llm.generate_async(request.prompt, sampling, streaming=bool(request.stream))
        cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def choice(output: Any, text: str, ids: list[int], finish: str | None) -> dict[str, Any]:
            return {"index": 0, "text": text if request.detokenize else "",
                    "token_ids": None if request.detokenize else ids, "logprobs": None,
                    "finish_reason": finish, "stop_reason": output.stop_reason if finish else None}

        if not request.stream:
            output = (await result.aresult()).outputs[0]
            body = {"id": cid, "object": "text_completion", "created": created, "model": request.model,
                    "choices": [choice(output, output.text, list(output.token_ids), output.finish_reason)],
                    "usage": {"prompt_tokens": len(result.prompt_token_ids),
                              "completion_tokens": len(output.token_ids),
                              "total_tokens": len(result.prompt_token_ids) + len(output.token_ids)}}
            return JSONResponse(body)

        async def events():
            try:
                async for step in result:
                    output = step.outputs[0]
                    chunk = {"id": cid, "object": "text_completion", "created": created, "model": request.model,
                             "choices": [choice(output, output.text_diff, list(output.token_ids_diff),
                                                output.finish_reason)]}
                    yield f"data: {json.dumps(chunk)}\n\n"
                yield "data: [DONE]\n\n"
            except asyncio.CancelledError:  # the client went away
                result.abort()
                raise

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@click.command(context_settings={"show_default": True})
@click.argument("model")
@click.option("--tokenizer", default=None)
@click.option("--host", default="localhost")
@click.option("--port", default=8000, type=int)
@click.option("--log_level", default="info")
@click.option("--backend", type=click.Choice(["pytorch", "tensorrt", "trt", "_autodeploy"]), default="pytorch")
@click.option("--max_beam_width", type=int, default=1)
@click.option("--max_batch_size", type=int, default=2048)
@click.option("--max_num_tokens", type=int, default=8192)
@click.option("--max_seq_len", type=int, default=None)
@click.option("--tensor_parallel_size", "--tp_size", "tp_size", type=int, default=1)
@click.option("--pipeline_parallel_size", "--pp_size", "pp_size", type=int, default=1)
@click.option("--moe_expert_parallel_size", "--ep_size", "ep_size", type=int, default=None)
@click.option("--kv_cache_free_gpu_memory_fraction", "--free_gpu_memory_fraction", type=float, default=0.9)
@click.option("--trust_remote_code", is_flag=True)
@click.option("--extra_llm_api_options", "--config", "extra", default=None)
@click.option("--custom_module_dirs", multiple=True, default=())
@click.option("--reasoning_parser", default=None)
@click.option("--tool_parser", default=None)
def main(model: str, tokenizer: str | None, host: str, port: int, log_level: str, backend: str,
         max_beam_width: int, max_batch_size: int, max_num_tokens: int, max_seq_len: int | None, tp_size: int,
         pp_size: int, ep_size: int | None, kv_cache_free_gpu_memory_fraction: float, trust_remote_code: bool,
         extra: str | None, custom_module_dirs: tuple[str, ...], reasoning_parser: str | None,
         tool_parser: str | None) -> None:
    """trtllm-serve MODEL [options]: build the LLM, then serve it over HTTP."""
    import uvicorn

    from tensorrt_llm import LLM

    for directory in custom_module_dirs:  # imported as a package, its parent on sys.path
        sys.path.insert(0, str(Path(directory).parent))
        importlib.import_module(Path(directory).name)
    if backend != "pytorch":
        raise click.UsageError("the trtllm-serve stand-in runs Hugging Face checkpoints (PyTorch backend) only")
    args: dict[str, Any] = {"model": model, "tokenizer": tokenizer, "backend": backend,
                            "tensor_parallel_size": tp_size, "pipeline_parallel_size": pp_size,
                            "moe_expert_parallel_size": ep_size, "max_batch_size": max_batch_size,
                            "max_num_tokens": max_num_tokens, "max_seq_len": max_seq_len,
                            "max_beam_width": max_beam_width, "trust_remote_code": trust_remote_code}
    if extra:
        args |= yaml.safe_load(Path(extra).read_text()) or {}
    llm = LLM(**args)
    uvicorn.run(create_app(llm, model), host=host, port=port, log_level="warning")


if __name__ == "__main__":
    main()
