"""Load and forget the TensorRT-LLM stand-in (tests/fake_trtllm) and the plugin modules built on it; hand it to a
Triton Python model."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

FAKE_TRTLLM = Path(__file__).parent / "fake_trtllm"
TRT_MODULES = ("hunyuan_trtllm.plugins.config", "hunyuan_trtllm.plugins.attention", "hunyuan_trtllm.plugins.hy3",
               "hunyuan_trtllm.plugins.model")
STANDIN_PACKAGES = ("tensorrt_llm", "tensorrt")


def forget() -> None:
    """Drop the stand-in and every plugin module built on it (from sys.modules and the plugins package)."""
    for name in list(sys.modules):
        if name.split(".")[0] in STANDIN_PACKAGES or name in TRT_MODULES:
            del sys.modules[name]
    plugins = sys.modules.get("hunyuan_trtllm.plugins")
    for name in TRT_MODULES:
        if plugins is not None and hasattr(plugins, name.rsplit(".", 1)[-1]):
            delattr(plugins, name.rsplit(".", 1)[-1])
    while str(FAKE_TRTLLM) in sys.path:
        sys.path.remove(str(FAKE_TRTLLM))


def load() -> ModuleType:
    """``hunyuan_trtllm.plugins``, registered on a freshly imported stand-in."""
    forget()
    sys.path.insert(0, str(FAKE_TRTLLM))
    plugins = importlib.import_module("hunyuan_trtllm.plugins")
    plugins.register()
    return plugins


def link_into_model(model_version_dir: Path) -> None:
    """Make ``tensorrt_llm`` the stand-in for a Triton Python model: a link in its version directory, which is on the
    stub's ``sys.path`` (the stub's interpreter runs isolated, so ``PYTHONPATH`` would not reach it)."""
    (model_version_dir / "tensorrt_llm").symlink_to(FAKE_TRTLLM / "tensorrt_llm", target_is_directory=True)
