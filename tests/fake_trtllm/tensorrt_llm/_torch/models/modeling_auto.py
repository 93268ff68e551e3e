"""tensorrt_llm/_torch/models/modeling_auto.py: ``MODEL_CLASS_MAPPING``, the PyTorch backend's architecture ->
model class registry (filled by ``@register_auto_model``). TensorRT-LLM 1.2's executor proxy passes it to every MPI
worker it spawns (``_torch_model_class_mapping``), whichever backend runs; the worker updates its own copy."""

MODEL_CLASS_MAPPING: dict = {}
