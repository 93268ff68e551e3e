"""Serving: trtllm-serve options, Triton model repositories and the OpenAI-compatible endpoint."""
