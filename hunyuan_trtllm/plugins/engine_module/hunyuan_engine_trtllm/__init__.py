"""The directory ``trtllm-serve ENGINE_DIR --backend tensorrt --custom_module_dirs`` imports for Hunyuan engines.

trtllm-serve reads the engine's config.json through ``tensorrt_llm.models.MODEL_MAP`` (``EngineConfig`` ->
``PretrainedConfig.from_dict``), in its own process and in the rank-0 MPI worker; imported in a process that has
loaded TensorRT-LLM, this registers the Hunyuan classes there and hands the registration to the workers
(:func:`hunyuan_trtllm.plugins.register_for_serving`). It lives alone in its directory, which TensorRT-LLM puts on
``sys.path`` before importing it by name.
"""

import sys

if "tensorrt_llm" in sys.modules:
    from hunyuan_trtllm.plugins import register_for_serving

    register_for_serving()
