"""A minimal Hy3-style tokenizer for synthetic checkpoints: ``tokenizer.json`` (byte-level BPE, as Hy3 ships) and
``tokenizer_config.json`` with the special tokens at the ids the config names.

Not Tencent's vocabulary: a BPE trained on the built-in tiny corpus, its id space filled up to ``bos_token_id``
with unreachable byte-level fillers, then the special tokens (shared/reference/hy3.md §d.1, the Hy3-preview bare
names: ``<｜hy_begin▁of▁sentence｜>``, ``<｜hy_▁pad▁｜>``, ``<｜hy_eos｜>``; the other ids get reserved names) up to
``vocab_size``, with ``<｜hy_User｜>`` / ``<｜hy_Assistant｜>`` at bos + 3 / bos + 4 (their real ids are not
known). ``CHAT_TEMPLATE`` is a simplified Hy3 layout (system text, user and assistant turns, eos after each
answer; no reasoning mode, no tools) so that chat-format calibration lines render; Hy3's own template, with its
``reasoning_effort`` and tool grammar, belongs to serving.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from hunyuan_trtllm.checkpoints.hy_tokenizer import tiny_corpus
from hunyuan_trtllm.checkpoints.safetensors_io import write_atomic

BOS, PAD, EOS = "<｜hy_begin▁of▁sentence｜>", "<｜hy_▁pad▁｜>", "<｜hy_eos｜>"
USER, ASSISTANT = "<｜hy_User｜>", "<｜hy_Assistant｜>"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}" + USER + "{{ m['content'] }}"
    "{% else %}" + ASSISTANT + "{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)
TRAINED_TOKENS = 700  # BPE vocabulary trained on the tiny corpus (the rest of the id space is filler)


def write_hy3_tokenizer(folder: Path, config: dict) -> None:
    """``tokenizer.json`` and ``tokenizer_config.json`` for a Hy3 ``config`` (its vocab size and special ids)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bos, vocab = config["bos_token_id"], config["vocab_size"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=min(TRAINED_TOKENS, bos), initial_alphabet=alphabet,
                                  show_progress=False)
    tokenizer.train_from_iterator(tiny_corpus().splitlines(), trainer)
    data = json.loads(tokenizer.to_str())
    ranks: dict[str, int] = data["model"]["vocab"]
    fillers = ("".join(chars) for n in (2, 3) for chars in itertools.product(sorted(alphabet), repeat=n))
    for token in fillers:  # unreachable by the merges: they only give the id space its size
        if len(ranks) >= bos:
            break
        ranks.setdefault(token, len(ranks))
    names = {bos: BOS, bos + 3: USER, bos + 4: ASSISTANT, config["pad_token_id"]: PAD, config["eos_token_id"]: EOS}
    data["added_tokens"] = [{"id": i, "content": names.get(i, f"<｜hy_reserved_{i - bos}｜>"), "single_word": False,
                             "lstrip": False, "rstrip": False, "normalized": False, "special": True}
                            for i in range(bos, vocab)]
    write_atomic(folder / "tokenizer.json", json.dumps(data, ensure_ascii=False) + "\n")
    tokenizer_config = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "model_max_length": 262144,
                        "tokenizer_class": "TokenizersBackend", "chat_template": CHAT_TEMPLATE}
    write_atomic(folder / "tokenizer_config.json", json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n")
