"""Random-weight models for tests, the demo and benchmarks: Tencent's exact on-disk formats (BF16/FP32 and FP8).

Above :mod:`hunyuan_trtllm.reference` (tiny MoE models are drawn until the reference forward's router decisions
have a margin), below everything that serves or builds.
"""
