"""Reference forward passes used to check converted models numerically.

- :mod:`hunyuan_trtllm.reference.hf_forward`: a plain float32 forward pass written from the
  :class:`~hunyuan_trtllm.checkpoints.spec.ModelSpec`, reading Tencent's Hugging Face tensor names (A13B, Large with
  CLA and top-1 routing, dense).
- :mod:`hunyuan_trtllm.reference.transformers_ref`: logits from transformers' own ``hunyuan_v1_moe`` /
  ``hunyuan_v1_dense`` classes, an independent second reference (needs the ``test`` extra).
"""
