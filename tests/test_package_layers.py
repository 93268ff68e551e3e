"""The package's layers: no module imports (at the top or inside a function) from a layer above its own.

errors < checkpoints < reference, plugins < synth < builder < serve < deploy < cli. A newcomer looking for a
command opens ``cli/``; a deployment generator, ``deploy/``; nothing below reaches up into them.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hunyuan_trtllm"
LAYERS = {"errors": 0, "checkpoints": 1, "reference": 2, "plugins": 2, "synth": 3, "builder": 4, "serve": 5,
          "deploy": 6, "cli": 7, "__main__": 8}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "hunyuan_trtllm" or len(parts) < 2:
        return None
    return LAYERS.get(parts[1])


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return names


def test_every_top_level_module_has_a_layer():
    top = {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if p.is_dir()}
    assert top - {"__init__", "__pycache__", "data"} <= set(LAYERS), "new top-level module: give it a layer here"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_from_a_layer_above(path):
    own = _layer("hunyuan_trtllm." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
    if own is None:
        return
    upward = [name for name in _imports(path) if (_layer(name) or 0) > own]
    assert not upward, f"{path.relative_to(PACKAGE)} (layer {own}) imports from above: {upward}"


def test_importing_the_cli_loads_no_torch_or_transformers():
    code = ("import sys, hunyuan_trtllm.cli; "
            "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'tiktoken') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip() == "[]"
