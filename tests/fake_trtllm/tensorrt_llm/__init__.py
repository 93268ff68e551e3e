"""An executing stand-in for TensorRT-LLM 1.2.1 (TensorRT-engine backend): no TensorRT, no GPU, no CUDA kernels.

It implements the constructors, config classes, passes and *functional ops* the Hunyuan model definition
(``hunyuan_trtllm/plugins``) relies on. Layers declare the parameters (names, per-rank shapes, dtypes) TensorRT-LLM's
real classes declare, and their ``forward`` computes the result with torch right away instead of adding TensorRT
layers: a network is built and executed in one pass, per engine step (see tests/trtllm_runtime.py). The plugins the
real network calls (GPT attention, MoE, NCCL) are emulated in ``_kernels`` and ``_nccl``. Each module says which
TensorRT-LLM source file its facts come from (see ``hunyuan_trtllm/plugins/trtllm_1_2_1_symbols.json`` for the
revisions read); the contracts those files enforce (input dtypes, unique input names, shape and dtype agreement,
every declared parameter loaded) are enforced here.

Dtypes are TensorRT-LLM's strings (``"bfloat16"``, ``"float32"``, ``"fp8"``, ...) or ``tensorrt.DataType`` values
(the stand-in ``tensorrt`` module next to this package).
"""

__version__ = "1.2.1"

_LAZY = {"LLM": "tensorrt_llm.llmapi", "SamplingParams": "tensorrt_llm.sampling_params",
         "GuidedDecodingParams": "tensorrt_llm.sampling_params"}


def __getattr__(name: str):
    """``from tensorrt_llm import LLM, SamplingParams``: the LLM API stand-in, imported on first use (as the real
    package exports them; importing this package stays free of torch)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'tensorrt_llm' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
