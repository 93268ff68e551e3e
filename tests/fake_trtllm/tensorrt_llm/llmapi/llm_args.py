"""``tensorrt_llm.llmapi.llm_args.update_llm_args_with_extra_dict``: merge a YAML's keys into LLM arguments.

The real one also turns nested dicts (``kv_cache_config``, ...) into their config classes; the stand-in LLM takes
them as dicts, so this is a plain merge (the extra dict wins).
"""

from __future__ import annotations

from typing import Any


def update_llm_args_with_extra_dict(llm_args: dict[str, Any], llm_args_dict: dict[str, Any],
                                    extra_llm_api_options: str | None = None) -> dict[str, Any]:
    return {**llm_args, **llm_args_dict}
