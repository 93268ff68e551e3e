"""Engine builds and the memory/parallelism planner, both reading :mod:`hunyuan_trtllm.checkpoints.weight_plan`."""
