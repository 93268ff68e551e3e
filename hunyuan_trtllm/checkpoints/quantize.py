"""FP8 Hugging Face checkpoints for TensorRT-LLM's PyTorch backend (and Tencent's FP8 release format).

What TensorRT-LLM 1.2.x loads for ``HunYuanMoEV1ForCausalLM`` / ``HunYuanDenseV1ForCausalLM`` (NVIDIA/TensorRT-LLM,
read through the workplace's source index; several 2025-2026 versions of each file, none tagged, so the exact 1.2.x
commit is not pinned — the facts below hold in every version read):

- ``tensorrt_llm/_torch/model_config.py`` ``ModelConfig.from_pretrained``: a ``hf_quant_config.json`` (ModelOpt)
  wins; ``load_modelopt_quant_config`` reads ``quantization.quant_algo`` / ``kv_cache_quant_algo`` /
  ``exclude_modules``. Only without that file is config.json's ``quantization_config`` read, and
  ``load_hf_quant_config`` knows ``quant_method: fp8`` only *with* ``weight_block_size`` (FP8_BLOCK_SCALES):
  per-tensor static FP8 — Tencent's format — yields no quantization at all. (``llmapi/llm_utils.py``
  ``_update_from_hf_quant_config`` raised "Unsupported quantization_config" for it in the same era; a June 2026
  refactor, PR #15123, after 1.2, starts reading ``activation_scheme: static``.) So the backend needs
  ``hf_quant_config.json`` = ``{"producer": ..., "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo":
  "FP8" | null, "exclude_modules": [...]}}``; the producer name is not checked.
- ``_torch/models/modeling_hunyuan_moe.py`` / ``modeling_hunyuan_dense.py`` ``load_weights``: separate
  ``self_attn.{q,k,v}_proj`` and ``{gate,up}_proj`` are fused on load (``params_map``); every other key under a
  module prefix is passed along (``filter_weights``), so scales sit beside the weight: ``X.weight`` (e4m3),
  ``X.weight_scale``, ``X.input_scale``. Experts ``mlp.experts.{e}.{gate,up,down}_proj.*`` are renamed to
  ``{e}.w1/w3/w2.*``; the router is ``mlp.gate.wg``.
- ``_torch/modules/linear.py`` ``FP8QDQLinearMethod``: scales are read with ``.reshape([])`` (scalar ``[]`` or
  ``[1]`` both load; this writer stores ``[]``); fused q/k/v and gate/up take ``max`` of the parts' weight scales,
  dequantize each part with its own scale and requantize to the max; the input scale is the max of the parts'.
- ``_torch/modules/fused_moe/quantization.py`` ``FP8QDQFusedMoEMethod``: per-expert ``w1/w3/w2.weight_scale``
  (w1/w3 merged by max per expert, requantized); ``input_scale`` of *every* expert is read and one max per layer is
  used for fc31 and one for fc2.
- Never quantized, whatever the config: the router (``Linear`` built without a quant config), ``LMHead`` and the
  embedding (``_torch/models/modeling_utils.py``); ``exclude_modules`` still names them (matched with
  ``fnmatchcase``, newer versions also against ancestors) for other readers.
- FP8 KV cache: ``_torch/attention_backend/trtllm.py`` uses a fixed KV scale of 1.0; ``linear.py`` reads
  ``k_proj.k_scale`` / ``v_proj.v_scale`` (ModelOpt's names, also vLLM's) only for NVFP4 KV caches behind
  ``TRTLLM_LOAD_KV_SCALES=1``. They are written, when known, for those readers; ``kv_cache_quant_algo`` is what
  turns the FP8 cache on (``KvCacheConfig(dtype="fp8")`` can also do it at load time:
  ``_torch/pyexecutor/model_loader.py`` ``validate_and_set_kv_cache_quant``).

Hy3-FP8 (shared/reference/hy3.md §a.2) stores the same per-tensor static scales differently (``SCALE_LAYOUTS``):
``weight_scale`` a BF16 scalar ``[]`` (this writer rounds the scale *up* to a bfloat16 value before quantizing,
so the stored bytes times the stored scale are what was meant), ``input_scale`` F32 ``[1]``, and
``quantization_config`` adds ``ignored_layers: [lm_head, model.embed_tokens]`` (and ``kv_cache_scheme: static``
with KV scales); ``mlp.expert_bias`` stays F32, the router BF16. The MTP layer (whether Tencent quantizes it is
unverified) is written unquantized: calibration does not run it.

Tencent's FP8 release (shared/reference/hunyuan.md §7.1) has the same tensors (per-linear scalar
``weight_scale`` / ``input_scale``, per-expert input scales, router/norms/embeddings/lm_head unquantized) and
config.json ``quantization_config {"quant_method": "fp8", "activation_scheme": "static"}``, but no
``hf_quant_config.json`` (its KV-scale names are unconfirmed; the ModelOpt/vLLM ones above are used). Hence one
writer and two formats: ``"trtllm"`` writes both files (TensorRT-LLM reads hf_quant_config.json, readers of
Tencent's release read config.json), ``"tencent"`` only the config.json part.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from hunyuan_trtllm import __version__
from hunyuan_trtllm.checkpoints.fp8 import linear_weight_names
from hunyuan_trtllm.checkpoints.fp8_scales import Fp8Scales, check_scale, quantize_e4m3, scale_from_amax
from hunyuan_trtllm.checkpoints.mapping import Mapping
from hunyuan_trtllm.checkpoints.safetensors_io import (
    DTYPE_NAMES,
    OutputEntry,
    atomic_output_dir,
    check_new_output_dir,
    create_partial,
    finish_partial,
    plan_file,
    pwrite_tensor,
    write_atomic,
)
from hunyuan_trtllm.checkpoints.source import SourceCheckpoint
from hunyuan_trtllm.checkpoints.spec import ModelSpec
from hunyuan_trtllm.checkpoints.weight_plan import WeightPlan, stored_dtype, tensor_shapes
from hunyuan_trtllm.errors import UserError

FORMATS = ("trtllm", "tencent")
HF_QUANT_CONFIG = "hf_quant_config.json"
INDEX = "model.safetensors.index.json"
TENCENT_QUANTIZATION_CONFIG = {"quant_method": "fp8", "activation_scheme": "static"}
EXCLUDE_MODULES = ["lm_head", "model.embed_tokens", "model.layers.*.mlp.gate", "model.layers.*.mlp.gate.wg",
                   "model.layers.*.mlp.router.gate"]


@dataclass(frozen=True)
class ScaleLayout:
    """How a release stores each linear's per-tensor scales, and its ``quantization_config``."""

    weight_scale_dtype: torch.dtype
    input_scale_shape: tuple[int, ...]
    quantization_config: dict


# Keyed by ModelSpec.is_hy3: Hunyuan-A13B-FP8 (float32 scalars) and Hy3-FP8.
SCALE_LAYOUTS = {
    False: ScaleLayout(torch.float32, (), TENCENT_QUANTIZATION_CONFIG),
    True: ScaleLayout(torch.bfloat16, (1,), {**TENCENT_QUANTIZATION_CONFIG,
                                            "ignored_layers": ["lm_head", "model.embed_tokens"]}),
}


def stored_weight_scale(scale: float, dtype: torch.dtype) -> float:
    """The smallest value of ``dtype`` that is >= ``scale`` (a rounded-down scale would clip the tensor's amax)."""
    stored = torch.tensor(scale, dtype=torch.float32).to(dtype)
    if float(stored) < scale:
        stored = torch.nextafter(stored, torch.tensor(math.inf, dtype=dtype))
    return float(stored)
_LINEAR = re.compile(r"model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(shared_mlp\.|experts\.\d+\.)?"
                     r"(gate|up|down)_proj)\.weight")
_UNQUANTIZED_DTYPES = ("float32", "bfloat16", "float16")
Progress = Callable[[int, int], Callable[[int], None]]


def is_fp8_linear(name: str) -> bool:
    """Whether a Hugging Face weight becomes e4m3: attention q/k/v/o, shared expert, experts and dense MLP."""
    return _LINEAR.fullmatch(name) is not None


def fp8_linear_names(spec: ModelSpec) -> list[str]:
    """The weights of ``spec`` that an FP8 checkpoint stores in e4m3, sorted: the sources of the weight plan's
    linear tensors (the same set the engine checkpoint quantizes)."""
    return sorted(linear_weight_names(WeightPlan.build(spec, Mapping(), torch.bfloat16)))


def weight_scales(source: SourceCheckpoint, names: list[str]) -> dict[str, float]:
    """Per-tensor weight scales ``amax / 448``, reading one tensor at a time; NaN/Inf/all-zero raise UserError."""
    return {name: check_scale(name, scale_from_amax(float(source.get(name).float().abs().max()))) for name in names}


def hf_quant_config(kv_cache_fp8: bool) -> dict:
    """The ModelOpt-style ``hf_quant_config.json`` that turns on TensorRT-LLM's per-tensor FP8 path."""
    return {"producer": {"name": "hunyuan-trtllm", "version": __version__},
            "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8" if kv_cache_fp8 else None,
                             "exclude_modules": list(EXCLUDE_MODULES)}}


def kv_scale_names(layer: int) -> tuple[str, str]:
    """Where a layer's KV-cache scale is stored (ModelOpt and vLLM names; TensorRT-LLM reads them for NVFP4)."""
    prefix = f"model.layers.{layer}.self_attn."
    return prefix + "k_proj.k_scale", prefix + "v_proj.v_scale"


def quantize_checkpoint(
    source: SourceCheckpoint,
    out_dir: Path,
    scales: Fp8Scales,
    kv_cache_fp8: bool = False,
    progress: Progress | None = None,
    format: str = "trtllm",
) -> Path:
    """Write ``source`` as an FP8 Hugging Face checkpoint in ``out_dir`` (one decoder layer per shard).

    Linear weights become e4m3 with ``scales``' weight and input scales; everything else keeps the model dtype.
    Tensors are read, quantized and written one at a time; the folder is built beside ``out_dir`` and renamed
    into place when complete (``out_dir`` must not exist or be empty). ``progress(total_bytes, 0)`` may return
    a callback that receives bytes as they are written.
    """
    if format not in FORMATS:
        raise UserError(f"unknown FP8 checkpoint format '{format}'; choose one of {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    files = _layout(source.spec, kv_cache_fp8, scales)
    scale_layout = SCALE_LAYOUTS[source.spec.is_hy3]
    total = sum(entry.nbytes for entries in files.values() for entry in entries)
    check_new_output_dir(out_dir, total)
    with atomic_output_dir(out_dir, "quantize") as tmp:
        advance = progress(total, 0) if progress else None
        for file, entries in files.items():
            _write_shard(tmp / file, entries, source, scales, scale_layout, advance)
        index = {"metadata": {"total_size": total},
                 "weight_map": {e.name: file for file, entries in files.items() for e in entries}}
        write_atomic(tmp / INDEX, json.dumps(index, indent=2) + "\n")
        _write_configs(tmp, source, kv_cache_fp8, format)
    return out_dir


# ---- layout and writing ---------------------------------------------------------------------------------------


def _layout(spec: ModelSpec, kv_cache_fp8: bool, scales: Fp8Scales) -> dict[str, list[OutputEntry]]:
    """Every output tensor, grouped by shard: decoder layer i in shard i (embeddings first, norm/lm_head last)."""
    if spec.torch_dtype not in _UNQUANTIZED_DTYPES:
        raise UserError(f"config.json torch_dtype '{spec.torch_dtype}' is not one of {', '.join(_UNQUANTIZED_DTYPES)}")
    dtype = DTYPE_NAMES[spec.torch_dtype]
    scale_layout = SCALE_LAYOUTS[spec.is_hy3]
    n = spec.num_layers + spec.num_mtp_layers  # MTP layers in shards of their own
    shards: list[list[OutputEntry]] = [[] for _ in range(n)]
    for name, shape in tensor_shapes(spec).items():
        if name.startswith("model.layers."):
            shard = int(name.split(".")[2])
        else:
            shard = 0 if name == "model.embed_tokens.weight" else spec.num_layers - 1
        if is_fp8_linear(name) and shard < spec.num_layers:  # MTP layers stay unquantized (not calibrated)
            base = name.removesuffix(".weight")
            shards[shard] += [OutputEntry(name, torch.float8_e4m3fn, shape),
                              OutputEntry(base + ".weight_scale", scale_layout.weight_scale_dtype, ()),
                              OutputEntry(base + ".input_scale", torch.float32, scale_layout.input_scale_shape)]
        else:
            shards[shard].append(OutputEntry(name, stored_dtype(name, dtype), shape))
    for layer in range(spec.num_layers) if kv_cache_fp8 else []:
        if layer in scales.kv and spec.is_kv_producer(layer):
            shards[layer] += [OutputEntry(name, torch.float32, ()) for name in kv_scale_names(layer)]
    return {f"model-{i + 1:05d}-of-{n:05d}.safetensors": entries for i, entries in enumerate(shards)}


def _tensor(entry: OutputEntry, source: SourceCheckpoint, scales: Fp8Scales, layout: ScaleLayout) -> torch.Tensor:
    """One output tensor: a quantized weight, one of its scales, a KV-cache scale or an unquantized tensor."""
    name = entry.name

    def weight_scale(weight: str) -> float:
        return stored_weight_scale(check_scale(weight, scales.weight_scale(weight)), layout.weight_scale_dtype)

    if name.endswith((".k_scale", ".v_scale")):
        return torch.tensor(scales.kv[int(name.split(".")[2])], dtype=torch.float32)
    if name.endswith(".weight_scale"):
        return torch.tensor(weight_scale(name.removesuffix("_scale")), dtype=entry.dtype)
    if name.endswith(".input_scale"):
        weight = name.removesuffix(".input_scale") + ".weight"
        value = check_scale(name, scales.activation_scale(weight))
        return torch.tensor(value, dtype=torch.float32).reshape(entry.shape)
    tensor = source.get(name)
    if entry.dtype != torch.float8_e4m3fn:
        return tensor.to(entry.dtype)
    if not bool(torch.isfinite(tensor).all()):
        raise UserError(f"{name}: NaN or Inf values; cannot quantize to FP8")
    return quantize_e4m3(tensor, weight_scale(name))


def _write_shard(path: Path, entries: list[OutputEntry], source: SourceCheckpoint, scales: Fp8Scales,
                 scale_layout: ScaleLayout, advance: Callable[[int], None] | None) -> None:
    layout = plan_file(entries)
    fd = os.open(create_partial(path, layout), os.O_WRONLY)
    try:
        for entry in entries:
            written = pwrite_tensor(fd, layout.offset(entry.name), _tensor(entry, source, scales, scale_layout))
            if advance:
                advance(written)
    finally:
        os.close(fd)
    finish_partial(path)


def _write_configs(folder: Path, source: SourceCheckpoint, kv_cache_fp8: bool, format: str) -> None:
    """config.json with ``quantization_config``, hf_quant_config.json (trtllm format), and the source's other files
    (tokenizer, generation config, remote code, licence)."""
    skip = {"config.json", HF_QUANT_CONFIG, INDEX}
    for file in sorted(source.path.iterdir()):
        if file.is_file() and file.name not in skip and not file.name.startswith(".") and file.suffix != ".safetensors":
            shutil.copy2(file, folder / file.name)
    quantization = dict(SCALE_LAYOUTS[source.spec.is_hy3].quantization_config)
    if source.spec.is_hy3 and kv_cache_fp8:
        quantization["kv_cache_scheme"] = "static"
    config = {**source.config, "quantization_config": quantization}
    write_atomic(folder / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    if format == "trtllm":
        write_atomic(folder / HF_QUANT_CONFIG, json.dumps(hf_quant_config(kv_cache_fp8), indent=2) + "\n")
