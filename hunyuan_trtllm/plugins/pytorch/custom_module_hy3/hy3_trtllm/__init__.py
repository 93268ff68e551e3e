"""The directory ``trtllm-serve --custom_module_dirs`` (and the Triton ``llmapi`` flavor) imports for Hy3.

Alone in its own folder under a name no other package uses (TensorRT-LLM imports it by its name). Imported in a
process that has loaded TensorRT-LLM, it registers ``HYV3ForCausalLM``: :func:`hunyuan_trtllm.plugins.pytorch.register`.
"""

import sys

if "tensorrt_llm" in sys.modules:
    from hunyuan_trtllm.plugins.pytorch import register

    register()
