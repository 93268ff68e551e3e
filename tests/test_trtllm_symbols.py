"""Every TensorRT-LLM name the TensorRT-engine plugins use exists in TensorRT-LLM 1.2.x with the parameters used.

Static and import-free: the plugin modules (``hunyuan_trtllm/plugins/*.py``; the PyTorch-backend subpackage has its
own checks) are parsed with ``ast``. Collected:

- every ``tensorrt_llm`` name they import, and every dotted attribute of it they read
  (``PositionEmbeddingType.rope_gpt_neox``, ``MoeConfig.from_dict``; ``getattr(module, "name")`` too);
- every call of such a name, with its keyword names and number of positional arguments;
- ``super().method(...)`` calls in classes derived from a TensorRT-LLM class (``super().__init__`` checks the base
  class's constructor).

``hunyuan_trtllm/plugins/trtllm_1_2_1_symbols.json`` lists each symbol with its TensorRT-LLM source file and, for
callables, the parameter names read from that source. Each used keyword must be a parameter, the positional count
must fit, and the list may hold nothing unused. Attributes of TensorRT-LLM *instances* (``config.mapping.tp_size``,
``tensor.ndim()``) cannot be resolved statically; the file lists them under ``instance_attributes`` and this test
only checks that each listed one is still read somewhere in the plugins.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PLUGINS = Path(__file__).resolve().parents[1] / "hunyuan_trtllm" / "plugins"
SYMBOLS_FILE = PLUGINS / "trtllm_1_2_1_symbols.json"


@dataclass
class Usage:
    """The tensorrt_llm symbols used by some modules, and how each called one is called."""

    symbols: set[str] = field(default_factory=set)
    calls: list[tuple[str, list[str], int, str]] = field(default_factory=list)  # symbol, keywords, positional, where
    attributes: set[str] = field(default_factory=set)  # every attribute name read anywhere


def _imports(tree: ast.Module) -> dict[str, str]:
    """Local name -> fully qualified tensorrt_llm symbol, for every import of tensorrt_llm in the module."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tensorrt_llm":
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name.split(".")[0] == "tensorrt_llm":
                    names[alias.asname] = alias.name  # import tensorrt_llm.x as y
                elif alias.name.split(".")[0] == "tensorrt_llm":
                    names["tensorrt_llm"] = "tensorrt_llm"  # import tensorrt_llm[.x] binds the package
    return names


def _qualified(node: ast.expr, names: dict[str, str]) -> str | None:
    """``Name`` / ``Name.attr.attr`` rooted at an imported tensorrt_llm name -> its dotted symbol."""
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _qualified(node.value, names)
        return f"{base}.{node.attr}" if base else None
    return None


def _super_bases(tree: ast.Module, names: dict[str, str]) -> dict[ast.AST, str]:
    """For every ``super()`` call node: the tensorrt_llm base class of the enclosing class, if it has one."""
    bases = {}
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        trt_bases = [q for q in (_qualified(b, names) for b in cls.bases) if q]
        if trt_bases:
            for node in ast.walk(cls):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super":
                    bases[node] = trt_bases[0]
    return bases


def collect(paths: list[Path]) -> Usage:
    usage = Usage()
    for path in paths:
        tree = ast.parse(path.read_text(), filename=str(path))
        names = _imports(tree)
        supers = _super_bases(tree, names)
        usage.symbols.update(names.values())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                usage.attributes.add(node.attr)
                symbol = _qualified(node, names)
                if symbol:
                    usage.symbols.add(symbol)
            if not isinstance(node, ast.Call):
                continue
            where = f"{path.name}:{node.lineno}"
            if isinstance(node.func, ast.Name) and node.func.id == "getattr" and len(node.args) >= 2:
                base, attr = _qualified(node.args[0], names), node.args[1]
                if base and isinstance(attr, ast.Constant):
                    usage.symbols.add(f"{base}.{attr.value}")
            symbol = _qualified(node.func, names)
            func = node.func
            if symbol is None and isinstance(func, ast.Attribute) and func.value in supers:
                base = supers[func.value]
                symbol = base if func.attr == "__init__" else f"{base}.{func.attr}"
                usage.symbols.add(symbol)
            if symbol is not None:
                keywords = [k.arg for k in node.keywords if k.arg is not None]
                positional = sum(not isinstance(a, ast.Starred) for a in node.args)
                usage.calls.append((symbol, keywords, positional, where))
    return usage


def plugin_modules() -> list[Path]:
    return sorted(p for p in PLUGINS.glob("*.py"))


@pytest.fixture(scope="module")
def listed() -> dict:
    return json.loads(SYMBOLS_FILE.read_text())


@pytest.fixture(scope="module")
def used() -> Usage:
    return collect(plugin_modules())


def test_symbols_file_names_the_sources_read(listed):
    source = listed["tensorrt_llm_source"]
    assert source["repository"] == "NVIDIA/TensorRT-LLM" and source["target_version"] == "1.2.1"
    assert all(len(f["commit"]) == 40 or f["commit"].startswith("index:") for f in source["files"].values())
    for name, entry in listed["symbols"].items():
        assert entry["source"] in source["files"], f"{name}: its source file is not among the files read"


def test_every_used_symbol_is_listed(listed, used):
    missing = sorted(used.symbols - set(listed["symbols"]))
    assert not missing, f"tensorrt_llm symbols used by the plugins but not in {SYMBOLS_FILE.name}: {missing}"


def test_the_list_has_no_unused_entries(listed, used):
    unused = sorted(set(listed["symbols"]) - used.symbols)
    assert not unused, f"{SYMBOLS_FILE.name} lists symbols the plugins do not use: {unused}"
    listed_attributes = {a for entry in listed["instance_attributes"].values() for a in entry["attributes"]}
    stale = sorted(listed_attributes - used.attributes)
    assert not stale, f"{SYMBOLS_FILE.name} lists instance attributes the plugins no longer read: {stale}"


def test_calls_use_the_listed_parameters(listed, used):
    problems = []
    for symbol, keywords, positional, where in used.calls:
        signature = listed["symbols"].get(symbol, {}).get("signature")
        if signature is None:
            problems.append(f"{where}: {symbol} is called but the list gives no signature")
            continue
        known = set(signature["positional"]) | set(signature.get("keyword_only", []))
        unknown = [k for k in keywords if k not in known]
        if unknown and not signature.get("var_keyword"):
            problems.append(f"{where}: {symbol} has no parameter(s) {unknown}")
        if positional > len(signature["positional"]) and not signature.get("var_positional"):
            problems.append(f"{where}: {symbol} takes {len(signature['positional'])} positional, given {positional}")
    assert not problems, "\n".join(problems)


def test_the_checker_sees_a_bad_keyword(tmp_path, listed):
    """The check can fail: a call with a keyword TensorRT-LLM does not have is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from tensorrt_llm.layers.linear import ColumnLinear\nColumnLinear(1, 2, gather=False)\n")
    usage = collect([bad])
    assert usage.calls == [("tensorrt_llm.layers.linear.ColumnLinear", ["gather"], 2, "bad.py:2")]
    assert "gather" not in listed["symbols"]["tensorrt_llm.layers.linear.ColumnLinear"]["signature"]["positional"]


def test_super_calls_resolve_to_the_tensorrt_llm_base(tmp_path):
    module = tmp_path / "derived.py"
    module.write_text("from tensorrt_llm.layers.attention import Attention as A\n"
                      "class X(A):\n    def __init__(self):\n        super().__init__(local_layer_idx=0)\n"
                      "    def f(self):\n        return super().forward(1)\n")
    calls = {(s, tuple(k), n) for s, k, n, _ in collect([module]).calls}
    assert calls == {("tensorrt_llm.layers.attention.Attention", ("local_layer_idx",), 0),
                     ("tensorrt_llm.layers.attention.Attention.forward", (), 1)}
