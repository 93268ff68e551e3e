"""The directory ``trtllm-serve --custom_module_dirs`` (and the Triton ``llmapi`` flavor) imports for Hunyuan-Large.

TensorRT-LLM puts this directory's parent on ``sys.path`` and imports it by its name, so it lives alone there (the
parent exposes no other module) under a name no other package uses. Imported in a process that has loaded
TensorRT-LLM, it registers the model: :func:`hunyuan_trtllm.plugins.pytorch.register`.
"""

import sys

if "tensorrt_llm" in sys.modules:
    from hunyuan_trtllm.plugins.pytorch import register

    register()
