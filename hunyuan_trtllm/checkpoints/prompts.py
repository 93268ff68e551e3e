"""Built-in test prompts (token ids) shared by synthetic checkpoints, numeric checks and demos.

``prompt_0`` and ``prompt_1`` are the two prompts of every golden fixture (``input_ids.json``). ``prompt_2`` is a
longer (24-token) prompt that continues ``prompt_1``, so it also exercises a shared prefix. Every id is below
1000 and fits every tiny vocabulary (the tiny presets have 1003 ids, the golden fixtures 1024).
"""

from __future__ import annotations

_PROMPT_1 = [1, 43, 808, 319, 5, 991, 126, 440, 702, 18, 857, 233, 64]

DEFAULT_PROMPTS: dict[str, list[int]] = {
    "prompt_0": [1, 523, 77, 912, 34, 268, 650],
    "prompt_1": _PROMPT_1,
    "prompt_2": [*_PROMPT_1, 415, 92, 377, 610, 28, 154, 731, 266, 503, 87, 349],
}
