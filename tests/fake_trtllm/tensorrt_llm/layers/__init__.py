"""tensorrt_llm/layers: the layers the Hunyuan model definition builds (declarations and forward)."""
