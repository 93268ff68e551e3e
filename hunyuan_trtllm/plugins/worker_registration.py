"""Registers the TensorRT-engine Hunyuan classes in TensorRT-LLM's MPI worker processes.

TensorRT-LLM 1.2's executor proxy passes ``tensorrt_llm._torch.models.modeling_auto.MODEL_CLASS_MAPPING`` to every
worker it spawns (``worker_main(..., _torch_model_class_mapping=MODEL_CLASS_MAPPING)`` in executor/proxy.py; the
worker ``MODEL_CLASS_MAPPING.update(...)``s it), pickled: classes travel by module and name, so unpickling imports
their modules. :func:`hunyuan_trtllm.plugins.register_for_serving` puts :class:`HunyuanEngineRegistration` into that
mapping, so each worker imports this module, which registers the classes in its ``MODEL_MAP`` before the rank-0
worker reads the engine's config.json (executor/base_worker.py: ``EngineConfig.from_json_file``).
"""

from hunyuan_trtllm.plugins import register

register()


class HunyuanEngineRegistration:
    """A marker entry of ``MODEL_CLASS_MAPPING`` (never instantiated): importing its module is the point."""
