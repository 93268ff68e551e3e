"""tensorrt_llm/_torch: only the PyTorch backend's model-class registry (models/modeling_auto.py)."""
