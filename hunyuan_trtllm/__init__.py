"""hunyuan-trtllm: Tencent Hunyuan checkpoints to TensorRT-LLM engines and Triton Inference Server."""

__version__ = "0.1.0"
