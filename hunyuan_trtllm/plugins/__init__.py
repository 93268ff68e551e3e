"""TensorRT-LLM (1.2.x, TensorRT-engine backend) model definitions for Hunyuan; they declare the tensors that
:mod:`hunyuan_trtllm.checkpoints.weight_plan` writes.

Importing this package does not import TensorRT-LLM (it is not installed here): :func:`register` does, and only it
imports the modules that define TensorRT-LLM classes (:mod:`.config`, :mod:`.attention`, :mod:`.model`).
"""

from __future__ import annotations

from hunyuan_trtllm.checkpoints.spec import ENGINE_ARCHITECTURES
from hunyuan_trtllm.errors import UserError

TRTLLM_VERSION = "1.2.1"
TRTLLM_IMAGE = "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3"
NEEDS_TRTLLM = (f"TensorRT-LLM {TRTLLM_VERSION} is needed for the TensorRT-engine Hunyuan model; run inside "
                f"{TRTLLM_IMAGE} or the TensorRT-LLM {TRTLLM_VERSION} release container")


def register() -> None:
    """Register the Hunyuan model class in ``tensorrt_llm.models.MODEL_MAP`` under every Hunyuan architecture name.

    Idempotent. Raises :class:`UserError` (one line) when TensorRT-LLM 1.2.x cannot be imported.
    """
    try:
        import tensorrt_llm
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] != "tensorrt_llm":
            raise UserError(f"{NEEDS_TRTLLM} (importing it failed: {exc})") from None
        raise UserError(f"{NEEDS_TRTLLM} (it is not installed)") from None
    except (ImportError, OSError) as exc:
        raise UserError(f"{NEEDS_TRTLLM} (importing it failed: {exc})") from None
    version = str(getattr(tensorrt_llm, "__version__", "unknown"))
    if not version.startswith("1.2."):
        raise UserError(f"{NEEDS_TRTLLM} (found TensorRT-LLM {version}; the TensorRT-engine backend is 1.2.x only)")
    from tensorrt_llm.models import MODEL_MAP

    from hunyuan_trtllm.plugins.model import HunyuanForCausalLM

    for architecture in ENGINE_ARCHITECTURES:
        MODEL_MAP[architecture] = HunyuanForCausalLM


WORKER_HANDOVER_KEY = "_HunyuanTensorRTEngineRegistration"  # a MODEL_CLASS_MAPPING key no architecture uses


def register_for_serving() -> None:
    """:func:`register`, and the same registration in TensorRT-LLM's MPI workers (see :mod:`.worker_registration`:
    the workers unpickle ``MODEL_CLASS_MAPPING``, which then names a class whose module registers)."""
    register()
    from tensorrt_llm._torch.models.modeling_auto import MODEL_CLASS_MAPPING

    from hunyuan_trtllm.plugins.worker_registration import HunyuanEngineRegistration

    MODEL_CLASS_MAPPING[WORKER_HANDOVER_KEY] = HunyuanEngineRegistration


def model_class(architecture: str) -> type:
    """The registered TensorRT-LLM model class for a Hunyuan architecture name (registers first)."""
    if architecture not in ENGINE_ARCHITECTURES:
        raise UserError(f"architecture '{architecture}' is not a Hunyuan architecture "
                        f"({', '.join(ENGINE_ARCHITECTURES)})")
    register()
    from tensorrt_llm.models import MODEL_MAP

    return MODEL_MAP[architecture]
