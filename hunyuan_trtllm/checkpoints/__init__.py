"""Hugging Face Hunyuan checkpoints: the spec parser, the weight plan, the streaming converter, synthetic models."""
