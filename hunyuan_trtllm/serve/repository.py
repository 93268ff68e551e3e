"""Generate a complete Triton model repository for a Hunyuan model: ``engine``, ``reference`` or ``llmapi`` flavor.

- ``engine``: the ``inflight_batcher_llm`` layout of the Triton 26.04-26.07 / TensorRT-LLM 1.2.1 images; the
  limits (max batch, input and sequence length, beam width, logits dtype) and the world size (tp x pp, for
  ``mpirun -n``) come from the engine directory's ``config.json``.
- ``reference``: the same layout, with ``tensorrt_llm`` a Python model that runs a converted checkpoint on CPU
  (:mod:`hunyuan_trtllm.serve.triton_models.reference_llm`); for testing the serving stack without a GPU.
- ``llmapi``: one Python model driving ``tensorrt_llm.LLM`` on a Hugging Face checkpoint (PyTorch backend), its
  LLM arguments in ``tensorrt_llm/1/model.yaml`` (the same LlmArgs as our ``trtllm-serve`` YAML); for Hunyuan-Large
  ``triton_config.custom_module_dirs`` names our model package, imported first (``hunyuan_trtllm`` must be installed
  in the Triton image then).

The repository is built in a temporary sibling directory, validated (:func:`validate_repo`) and renamed into
place, so ``out`` is either complete or untouched. ``repo.json`` at its root records the flavor and the facts a
launcher needs (world size, limits); Triton ignores files outside model directories.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from hunyuan_trtllm import __version__
from hunyuan_trtllm.checkpoints.output_dir import check_not_an_input, check_replaceable
from hunyuan_trtllm.checkpoints.spec import load_config
from hunyuan_trtllm.errors import ConfigError, UserError
from hunyuan_trtllm.serve import triton_configs as cfg
from hunyuan_trtllm.serve.pbtxt import flag, render
from hunyuan_trtllm.serve.triton_validate import validate_repo
from hunyuan_trtllm.serve.trtllm_serve import (
    NATIVE_PYTORCH_ARCHITECTURES,
    ServeOptions,
    detect_target,
    llm_api_options,
    pytorch_plugin_dir,
)

FLAVORS = ("engine", "reference", "llmapi")
SCHEDULER_POLICIES = ("guaranteed_no_evict", "max_utilization")
REFERENCE_MAX_BATCH = 8
EXECUTOR_WORKER = "/opt/tritonserver/backends/tensorrtllm/trtllmExecutorWorker"
RepoFiles = dict[str, dict[str, str]]  # model name -> {path inside the model directory: text}


@dataclass(frozen=True)
class RepoOptions:
    """Settings beyond what the source directory fixes; None means "derive it"."""

    tokenizer_dir: Path | None = None  # engine / reference: required; llmapi: the checkpoint itself
    max_input_len: int | None = None  # reference only (engines fix their own)
    max_seq_len: int | None = None  # reference, llmapi
    exclude_input_in_output: bool = True
    batch_scheduler_policy: str = "guaranteed_no_evict"
    kv_cache_free_gpu_mem_fraction: float = 0.9
    enable_kv_cache_reuse: bool | None = None  # None: on where supported (engines: paged context FMHA)
    enable_chunked_context: bool = False
    preprocessing_instances: int = 1
    postprocessing_instances: int = 1
    bls_instances: int = 1
    max_queue_delay_microseconds: int = 0
    tp: int = 1  # llmapi only: tensor_parallel_size
    pp: int = 1  # llmapi only: pipeline_parallel_size
    ep: int = 1  # llmapi only: moe_expert_parallel_size (moe_tensor_parallel_size = tp / ep)
    # llmapi only: let TensorRT-LLM run the checkpoint's own Python (Hunyuan's tokenizer class); only on request.
    trust_remote_code: bool = False
    xgrammar_info: Path | None = None  # engine: where the repository's xgrammar tokenizer info will be (set for you)


@dataclass(frozen=True)
class EngineFacts:
    """What a TensorRT-LLM 1.2 engine directory's config.json fixes."""

    max_batch_size: int
    max_input_len: int
    max_seq_len: int
    max_beam_width: int
    tp: int
    pp: int
    logits_dtype: str
    paged_context_fmha: bool

    @property
    def world_size(self) -> int:
        return self.tp * self.pp


def _positive(section: dict[str, Any], key: str, where: str, default: int | None = None) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: {key} must be a positive integer, got {value!r}")
    return value


def read_engine_facts(engine_dir: Path) -> EngineFacts:
    """Parse ``engine_dir/config.json``; :class:`ConfigError` when it is not a complete engine directory."""
    where = str(engine_dir / "config.json")
    config = load_config(engine_dir / "config.json")
    build, pretrained = config.get("build_config"), config.get("pretrained_config")
    if not isinstance(build, dict) or not isinstance(pretrained, dict):
        raise ConfigError(f"{where}: not a TensorRT-LLM engine config (no build_config / pretrained_config); "
                          "build engines first, or use the reference or llmapi flavor")
    mapping = pretrained.get("mapping") or {}
    facts = EngineFacts(
        max_batch_size=_positive(build, "max_batch_size", f"{where} build_config"),
        max_input_len=_positive(build, "max_input_len", f"{where} build_config"),
        max_seq_len=_positive(build, "max_seq_len", f"{where} build_config"),
        max_beam_width=_positive(build, "max_beam_width", f"{where} build_config", default=1),
        tp=_positive(mapping, "tp_size", f"{where} pretrained_config.mapping", default=1),
        pp=_positive(mapping, "pp_size", f"{where} pretrained_config.mapping", default=1),
        logits_dtype=cfg.LOGITS_DTYPES.get(pretrained.get("logits_dtype", "float32"), ""),
        paged_context_fmha=bool((build.get("plugin_config") or {}).get("use_paged_context_fmha", False)),
    )
    if not facts.logits_dtype:
        raise ConfigError(f"{where}: unsupported logits_dtype {pretrained.get('logits_dtype')!r} (TensorRT-LLM's "
                          "C++ runtime returns float32 or float16 logits)")
    if mapping.get("world_size", facts.world_size) != facts.world_size:
        raise ConfigError(f"{where}: mapping.world_size {mapping['world_size']} != tp_size x pp_size")
    if facts.max_input_len > facts.max_seq_len:
        raise ConfigError(f"{where}: max_input_len {facts.max_input_len} exceeds max_seq_len {facts.max_seq_len}")
    missing = [f"rank{r}.engine" for r in range(facts.world_size) if not (engine_dir / f"rank{r}.engine").is_file()]
    if missing:
        raise ConfigError(f"{engine_dir}: missing {', '.join(missing)} (world size {facts.world_size})")
    return facts


def engine_parameters(engine_dir: Path, facts: EngineFacts, options: RepoOptions) -> dict[str, str]:
    """The ``tensorrt_llm`` parameters of the engine flavor (every one has a value; backend defaults otherwise)."""
    reuse = facts.paged_context_fmha if options.enable_kv_cache_reuse is None else options.enable_kv_cache_reuse
    for wanted, name in ((reuse, "enable_kv_cache_reuse"), (options.enable_chunked_context, "chunked context")):
        if wanted and not facts.paged_context_fmha:
            raise UserError(f"{name} needs an engine built with --use_paged_context_fmha enable ({engine_dir})")
    if options.batch_scheduler_policy not in SCHEDULER_POLICIES:
        raise UserError(f"batch_scheduler_policy must be one of {', '.join(SCHEDULER_POLICIES)}")
    if not 0.0 < options.kv_cache_free_gpu_mem_fraction <= 1.0:
        raise UserError("kv_cache_free_gpu_mem_fraction must be in (0, 1]")
    return {
        "max_beam_width": str(facts.max_beam_width),
        "FORCE_CPU_ONLY_INPUT_TENSORS": "no",
        "gpt_model_type": "inflight_fused_batching",
        "gpt_model_path": str(engine_dir),
        "batch_scheduler_policy": options.batch_scheduler_policy,
        "kv_cache_free_gpu_mem_fraction": repr(options.kv_cache_free_gpu_mem_fraction),
        "enable_kv_cache_reuse": flag(reuse),
        "enable_chunked_context": flag(options.enable_chunked_context),
        "exclude_input_in_output": flag(options.exclude_input_in_output),
        "normalize_log_probs": "true",
        "decoding_mode": "top_k_top_p",
        "executor_worker_path": EXECUTOR_WORKER,
    } | guided_parameters(options)


XGRAMMAR_INFO = "xgrammar_tokenizer_info.json"


def guided_parameters(options: RepoOptions) -> dict[str, str]:
    """Guided decoding for the C++ backend: xgrammar with the tokenizer info written next to the config."""
    if options.xgrammar_info is None:
        return {}
    return {"guided_decoding_backend": "xgrammar", "xgrammar_tokenizer_info_path": str(options.xgrammar_info)}


def _model_source(name: str) -> str:
    """The text of one of our ``model.py`` files."""
    return resources.files("hunyuan_trtllm.serve.triton_models").joinpath(f"{name}.py").read_text(encoding="utf-8")


def _pipeline(spec: cfg.PipelineSpec, llm: dict[str, Any], llm_model_py: str | None) -> RepoFiles:
    """The five models of the inflight_batcher_llm layout around the given ``tensorrt_llm`` config."""
    llm_files = {"config.pbtxt": render(llm)} | ({"1/model.py": llm_model_py} if llm_model_py else {})
    return {
        "ensemble": {"config.pbtxt": render(cfg.ensemble_config(spec))},
        "preprocessing": {"config.pbtxt": render(cfg.preprocessing_config(spec)),
                          "1/model.py": _model_source("preprocessing")},
        "tensorrt_llm": llm_files,
        "postprocessing": {"config.pbtxt": render(cfg.postprocessing_config(spec)),
                           "1/model.py": _model_source("postprocessing")},
        "tensorrt_llm_bls": {"config.pbtxt": render(cfg.bls_config(spec)), "1/model.py": _model_source("bls")},
    }


def _tokenizer_dir(options: RepoOptions, flavor: str) -> Path:
    if options.tokenizer_dir is None:
        raise UserError(f"the {flavor} flavor needs tokenizer_dir (the Hugging Face model directory)")
    path = options.tokenizer_dir.resolve()
    if not path.is_dir():
        raise UserError(f"{path}: tokenizer directory does not exist")
    return path


def _spec(options: RepoOptions, **fields: Any) -> cfg.PipelineSpec:
    return cfg.PipelineSpec(
        exclude_input_in_output=options.exclude_input_in_output,
        preprocessing_instances=options.preprocessing_instances,
        postprocessing_instances=options.postprocessing_instances,
        bls_instances=options.bls_instances,
        max_queue_delay_microseconds=options.max_queue_delay_microseconds,
        **fields,
    )


def _engine_repo(source: Path, max_batch_size: int | None, streaming: bool,
                 options: RepoOptions) -> tuple[RepoFiles, dict[str, Any]]:
    facts = read_engine_facts(source)
    if max_batch_size is not None and not 1 <= max_batch_size <= facts.max_batch_size:
        raise UserError(f"max_batch_size {max_batch_size} must be in 1..{facts.max_batch_size} (the engine's)")
    spec = _spec(options, max_batch_size=max_batch_size or facts.max_batch_size, max_input_len=facts.max_input_len,
                 max_seq_len=facts.max_seq_len, tokenizer_dir=_tokenizer_dir(options, "engine"),
                 streaming=streaming, llm_decoupled=streaming, logits_dtype=facts.logits_dtype)
    llm = cfg.tensorrt_llm_config(spec, "tensorrtllm", engine_parameters(source, facts, options))
    files = _pipeline(spec, llm, None)
    if options.xgrammar_info is not None:
        from hunyuan_trtllm.checkpoints.tokenizer import HunyuanTokenizer
        from hunyuan_trtllm.serve.guided import xgrammar_tokenizer_info

        info = xgrammar_tokenizer_info(HunyuanTokenizer.from_model_dir(spec.tokenizer_dir))
        files["tensorrt_llm"][XGRAMMAR_INFO] = json.dumps(info, ensure_ascii=False)
    return files, {"world_size": facts.world_size, "tp": facts.tp, "pp": facts.pp}


def _reference_repo(source: Path, max_batch_size: int | None, streaming: bool,
                    options: RepoOptions) -> tuple[RepoFiles, dict[str, Any]]:
    where = source / "config.json"
    config = load_config(where)
    if "mapping" not in config or "max_position_embeddings" not in config:
        raise ConfigError(f"{where}: not a converted TensorRT-LLM checkpoint (hunyuan-trtllm convert writes one)")
    limit = int(config["max_position_embeddings"])
    max_seq_len = options.max_seq_len or limit
    max_input_len = options.max_input_len or max_seq_len - 1
    if not 1 <= max_input_len < max_seq_len <= limit:
        raise UserError(f"need 1 <= max_input_len ({max_input_len}) < max_seq_len ({max_seq_len}) <= {limit}")
    spec = _spec(options, max_batch_size=max_batch_size or REFERENCE_MAX_BATCH, max_input_len=max_input_len,
                 max_seq_len=max_seq_len, tokenizer_dir=_tokenizer_dir(options, "reference"), streaming=streaming,
                 llm_decoupled=True, logits_dtype=cfg.LOGITS_DTYPES.get(config.get("logits_dtype", ""), "FP32"))
    params = {"checkpoint_dir": str(source), "max_batch_size": str(spec.max_batch_size),
              "max_input_len": str(max_input_len), "max_seq_len": str(max_seq_len),
              "exclude_input_in_output": flag(options.exclude_input_in_output), "allow_streaming": flag(streaming),
              "tokenizer_dir": str(spec.tokenizer_dir), "guided_decoding_backend": "xgrammar"}
    llm = cfg.tensorrt_llm_config(spec, "python", params)
    extra_inputs, extra_outputs = cfg.reference_llm_extras()
    llm["input"] += extra_inputs
    llm["output"] += extra_outputs
    mapping = config["mapping"]
    return _pipeline(spec, llm, _model_source("reference_llm")), {
        "world_size": mapping["tp_size"] * mapping["pp_size"], "tp": mapping["tp_size"], "pp": mapping["pp_size"]}


def llmapi_settings(source: Path, max_batch_size: int | None, streaming: bool,
                    options: RepoOptions) -> dict[str, Any]:
    """``tensorrt_llm/1/model.yaml``: LLM(...) arguments plus ``triton_config``."""
    target = detect_target(source)
    if target.backend != "pytorch":
        raise UserError(f"{source}: an engine directory; the llmapi flavor serves a Hugging Face checkpoint "
                        "(use the engine flavor for engines)")
    serve = ServeOptions(tp=options.tp, ep=options.ep, pp=options.pp,
                         max_batch_size=max_batch_size or ServeOptions.max_batch_size, max_seq_len=options.max_seq_len,
                         kv_cache_free_gpu_memory_fraction=options.kv_cache_free_gpu_mem_fraction,
                         enable_block_reuse=options.enable_kv_cache_reuse is not False)
    if options.tp % options.ep:
        raise UserError(f"ep {options.ep} must divide tp {options.tp}")
    settings: dict[str, Any] = {
        "model": str(source),
        "backend": "pytorch",
        "tensor_parallel_size": options.tp,
        "pipeline_parallel_size": options.pp,
        "moe_expert_parallel_size": options.ep,
        "moe_tensor_parallel_size": options.tp // options.ep,
        "max_batch_size": serve.max_batch_size,
        "trust_remote_code": options.trust_remote_code,
    }
    if options.max_seq_len:
        settings["max_seq_len"] = options.max_seq_len
    settings |= llm_api_options(target, serve)
    settings["triton_config"] = {"max_batch_size": 1, "decoupled": streaming}
    if target.spec.architecture not in NATIVE_PYTORCH_ARCHITECTURES:  # Hunyuan-Large: model.py imports our model
        settings["triton_config"]["custom_module_dirs"] = [str(pytorch_plugin_dir(target.spec.architecture))]
    return settings


def _llmapi_repo(source: Path, max_batch_size: int | None, streaming: bool,
                 options: RepoOptions) -> tuple[RepoFiles, dict[str, Any]]:
    settings = llmapi_settings(source, max_batch_size, streaming, options)
    files = {"tensorrt_llm": {"config.pbtxt": render(cfg.llmapi_config(streaming)),
                              "1/model.py": _model_source("llmapi"),
                              "1/model.yaml": yaml.safe_dump(settings, sort_keys=False)}}
    return files, {"world_size": options.tp * options.pp, "tp": options.tp, "pp": options.pp}


_BUILDERS = {"engine": _engine_repo, "reference": _reference_repo, "llmapi": _llmapi_repo}


def write_triton_repo(source: Path, out: Path, flavor: str, max_batch_size: int | None = None,
                      streaming: bool = True, options: RepoOptions | None = None, overwrite: bool = False) -> Path:
    """Write the ``flavor`` repository for ``source`` (engine dir, converted checkpoint or HF checkpoint) to ``out``.

    Returns ``out``. Refuses an existing ``out`` unless ``overwrite``; never leaves a half-written repository.
    """
    if flavor not in FLAVORS:
        raise UserError(f"unknown flavor '{flavor}'; choose one of {', '.join(FLAVORS)}")
    if max_batch_size is not None and max_batch_size < 1:
        raise UserError(f"max_batch_size must be positive, got {max_batch_size}")
    source, out = Path(source).resolve(), Path(out).resolve()
    if not source.is_dir():
        raise UserError(f"{source}: not a directory")
    options = options or RepoOptions()
    check_not_an_input(out, [source, options.tokenizer_dir], overwrite)
    if out.exists() and not overwrite:
        raise UserError(f"{out}: already exists (pass --overwrite to replace it)")
    check_replaceable(out, _is_our_repo, "a Triton repository (repo.json)")
    if flavor == "engine":  # guided decoding: TensorRT-LLM's C++ backend reads the vocabulary from this file
        options = replace(options, xgrammar_info=out / "tensorrt_llm" / XGRAMMAR_INFO)
    files, launch = _BUILDERS[flavor](source, max_batch_size, streaming, options)
    meta = {"flavor": flavor, "source": str(source), "streaming": streaming, **launch,
            "generator": f"hunyuan-trtllm {__version__}"}
    _write_atomically(out, files, meta)
    return out


def _is_our_repo(path: Path) -> bool:
    try:
        meta = json.loads((path / "repo.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and str(meta.get("generator", "")).startswith("hunyuan-trtllm")


def _write_atomically(out: Path, files: RepoFiles, meta: dict[str, Any]) -> None:
    """Write into a sibling temp dir, validate, then swap it in place of ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))  # new: never someone else's
    old = tmp.with_name(tmp.name.replace(".partial-", ".old-", 1))
    try:
        for model, model_files in files.items():
            (tmp / model / "1").mkdir(parents=True, exist_ok=True)
            for rel, text in model_files.items():
                (tmp / model / rel).write_text(text, encoding="utf-8")
        (tmp / "repo.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        validate_repo(tmp)
        if out.exists():
            os.rename(out, old)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
