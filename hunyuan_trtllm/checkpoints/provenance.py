"""What a converted checkpoint records about where it came from (its ``manifest.json``)."""

from __future__ import annotations

import json
from pathlib import Path

from hunyuan_trtllm.errors import UserError


def default_tokenizer_dir(ckpt: Path) -> Path:
    """The Hugging Face directory a converted checkpoint came from (recorded in its manifest)."""
    manifest = ckpt / "manifest.json"
    if manifest.is_file():
        source = Path(json.loads(manifest.read_text())["source"]["path"])
        if (source / "config.json").is_file():
            return source
    raise UserError(f"{ckpt}: cannot tell where the tokenizer is; pass --tokenizer (the Hugging Face model dir)")
