"""TensorRT-LLM (1.2.x, TensorRT backend) model definitions for Hunyuan; they declare the tensors that
:mod:`hunyuan_trtllm.checkpoints.weight_plan` writes. Imported lazily: TensorRT-LLM is not installed here."""
