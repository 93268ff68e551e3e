"""``python -m hunyuan_trtllm.cli`` is the ``hunyuan-trtllm`` command."""

from hunyuan_trtllm.cli import main

main()
