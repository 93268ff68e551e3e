"""Triton ``config.pbtxt`` as plain Python data: build with small helpers, render as protobuf text, parse back.

A config is a ``dict`` whose keys are ``inference.ModelConfig`` field names. Values render as:
``str`` -> quoted string, ``bool`` -> ``true``/``false``, ``int``/``float`` -> number, :class:`Enum` -> bare
identifier (``TYPE_INT32``, ``KIND_CPU``), ``dict`` -> nested message, a list of dicts -> one block per item
(repeated messages and map entries), a list of scalars -> ``[ a, b ]``. Rendering never leaves a placeholder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hunyuan_trtllm.errors import UserError

INDENT = "  "


@dataclass(frozen=True)
class Enum:
    """A protobuf enum value, rendered without quotes."""

    name: str


def tensor(
    name: str,
    dtype: str,
    dims: list[int],
    *,
    optional: bool = False,
    scalar: bool = False,
    ragged: bool = False,
) -> dict[str, Any]:
    """One ``input``/``output`` entry; ``dtype`` without the ``TYPE_`` prefix (``INT32``, ``STRING``, ``BOOL``).

    ``scalar`` adds ``reshape { shape: [] }`` (a ``[1]`` tensor seen as a scalar per batch item), ``ragged``
    ``allow_ragged_batch``; both only make sense for inputs.
    """
    entry: dict[str, Any] = {"name": name, "data_type": Enum(f"TYPE_{dtype}"), "dims": list(dims)}
    if scalar:
        entry["reshape"] = {"shape": []}
    if ragged:
        entry["allow_ragged_batch"] = True
    if optional:
        entry["optional"] = True
    return entry


def parameters(values: dict[str, str]) -> list[dict[str, Any]]:
    """The ``parameters`` map: every value is a ``string_value``, as Triton's backends read them."""
    return [{"key": key, "value": {"string_value": str(value)}} for key, value in values.items()]


def instance_group(count: int) -> list[dict[str, Any]]:
    """``count`` CPU instances (the Python and TensorRT-LLM backends place their own GPU work)."""
    return [{"count": count, "kind": Enum("KIND_CPU")}]


def flag(value: bool) -> str:
    """A boolean parameter value as the TensorRT-LLM backend parses it."""
    return "true" if value else "false"


def render(config: dict[str, Any]) -> str:
    """Protobuf text format for ``config``."""
    return "".join(_field(key, value, 0) for key, value in config.items())


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    raise TypeError(f"cannot render {value!r} in a model config")


def _field(key: str, value: Any, depth: int) -> str:
    pad = INDENT * depth
    if isinstance(value, dict):
        body = "".join(_field(k, v, depth + 1) for k, v in value.items())
        return f"{pad}{key} {{\n{body}{pad}}}\n"
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return "".join(_field(key, item, depth) for item in value)
    if isinstance(value, list):
        items = ", ".join(_scalar(item) for item in value)
        return f"{pad}{key}: [ {items} ]\n" if items else f"{pad}{key}: [ ]\n"
    return f"{pad}{key}: {_scalar(value)}\n"


def parse(text: str, where: str = "config.pbtxt") -> Any:
    """Parse into ``tritonclient.grpc.model_config_pb2.ModelConfig``; :class:`UserError` on bad text."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise UserError(
            "validating Triton model configs needs tritonclient (pip install nvidia-pytriton==0.7.0)"
        ) from None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise UserError(f"{where}: not a valid Triton model config: {exc}") from None
