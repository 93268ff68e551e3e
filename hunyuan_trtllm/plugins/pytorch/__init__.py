"""Hunyuan-Large (``HunYuanForCausalLM``) and Hy3 (``HYV3ForCausalLM``) on TensorRT-LLM's PyTorch backend.

``trtllm-serve MODEL --custom_module_dirs <custom_module/hunyuan_large_trtllm>`` (Hy3: ``custom_module_hy3/hy3_trtllm``;
TensorRT-LLM >= 1.2) puts that
directory's parent on ``sys.path`` and imports it by name; it calls :func:`register`. An LLM-API script imports
this package after ``tensorrt_llm``: imported in a process that has loaded TensorRT-LLM, it registers the model.
The model module is imported under its installed name, ``hunyuan_trtllm.plugins.pytorch.modeling_large``,
because TensorRT-LLM hands the registered classes to its worker processes by reference and they import that name
(so ``hunyuan_trtllm`` must be installed where TensorRT-LLM runs).

Without TensorRT-LLM only the pure pieces are used (tested on CPU): :mod:`.cla` (which layer reads which KV cache),
:mod:`.routing` (top-k routing), :mod:`.weights` (checkpoint tensors -> the names TensorRT-LLM loads),
:mod:`.hf_config` (``model_type: "hunyuan"`` for transformers).
"""

from __future__ import annotations

import importlib
import sys

from hunyuan_trtllm.errors import UserError

MODEL_MODULES = ("hunyuan_trtllm.plugins.pytorch.modeling_large", "hunyuan_trtllm.plugins.pytorch.modeling_hy3")
MIN_TENSORRT_LLM = (1, 2)


def register() -> None:
    """Register ``HunYuanForCausalLM`` and ``HYV3ForCausalLM`` with TensorRT-LLM's PyTorch backend and
    ``model_type`` "hunyuan" (and "hy_v3" where missing) with transformers (idempotent).
    One-line :class:`UserError` without a suitable TensorRT-LLM."""
    try:
        import tensorrt_llm
    except (ImportError, OSError) as exc:  # not installed, or its CUDA libraries are missing
        raise UserError(f"the Hunyuan PyTorch-backend models need TensorRT-LLM >= 1.2 ({exc})") from None
    from packaging.version import Version  # a TensorRT-LLM dependency

    found = Version(tensorrt_llm.__version__)
    if found.release[:2] < MIN_TENSORRT_LLM:
        raise UserError(f"the Hunyuan PyTorch-backend models need TensorRT-LLM >= 1.2, found {found}")
    for module in MODEL_MODULES:
        importlib.import_module(module)


if "tensorrt_llm" in sys.modules:
    register()
