"""Helpers for our Triton Python-backend models; importable only inside the backend's stub process.

``triton_python_backend_utils`` exists only there, so only the generated ``model.py`` files import this module.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils


class RequestError(ValueError):
    """A request the model refuses; answered with ``INVALID_ARG`` (HTTP 400)."""


class ForwardedError(Exception):
    """An error response of a model we called (BLS), passed on to our caller with its code."""

    def __init__(self, error: Any) -> None:
        super().__init__(error.message())
        self.error = error


def model_parameters(args: dict[str, Any]) -> dict[str, str]:
    """The ``parameters`` map of the model's config as plain strings."""
    config = json.loads(args["model_config"])
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def is_decoupled(args: dict[str, Any]) -> bool:
    """Whether the model's config sets ``model_transaction_policy { decoupled: true }``."""
    return pb_utils.using_decoupled_model_transaction_policy(json.loads(args["model_config"]))


def optional_array(request: Any, name: str) -> np.ndarray | None:
    """The input ``name`` as a numpy array, or None when the request does not carry it."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def required_array(request: Any, name: str) -> np.ndarray:
    """The input ``name``; :class:`RequestError` when missing."""
    array = optional_array(request, name)
    if array is None:
        raise RequestError(f"input '{name}' is required")
    return array


def scalar(request: Any, name: str, default: Any) -> Any:
    """The first element of input ``name`` as a Python value, or ``default`` when absent or empty."""
    array = optional_array(request, name)
    if array is None or array.size == 0:
        return default
    value = array.reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else value.item()


def texts(array: np.ndarray) -> list[str]:
    """Decode a STRING tensor's elements (bytes) row by row into text."""
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.reshape(-1)]


def batch_size(array: np.ndarray) -> int:
    """The batch dimension of an input (1 for a batch-less tensor)."""
    return int(array.shape[0]) if array.ndim else 1


def tensor(name: str, value: Any, dtype: Any) -> Any:
    """An output tensor from a (nested) list or array."""
    return pb_utils.Tensor(name, np.asarray(value, dtype=dtype))


def string_tensor(name: str, rows: list[list[str]]) -> Any:
    """A STRING output ``[batch, n]`` of UTF-8 encoded text."""
    return pb_utils.Tensor(name, np.array([[s.encode("utf-8") for s in row] for row in rows], dtype=np.object_))


def error_response(exc: BaseException) -> Any:
    """A response carrying ``exc``: ``INVALID_ARG`` for :class:`RequestError`, a forwarded error's own code, else
    ``INTERNAL``."""
    if isinstance(exc, ForwardedError):
        error = exc.error
    elif isinstance(exc, RequestError):
        error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
    else:
        error = pb_utils.TritonError(f"{type(exc).__name__}: {exc}", pb_utils.TritonError.INTERNAL)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


def raise_for_error(response: Any) -> Any:
    """Return ``response``, or raise :class:`ForwardedError` (keeping the code) when it carries an error."""
    if response.has_error():
        raise ForwardedError(response.error())
    return response


def output_array(response: Any, name: str) -> np.ndarray | None:
    """An output of a BLS response as numpy, or None when the model did not produce it."""
    tensor_ = pb_utils.get_output_tensor_by_name(response, name)
    return None if tensor_ is None else tensor_.as_numpy()


def respond_each(requests: list, respond: Callable[[Any], Any]) -> list:
    """One response per request (non-decoupled models); a failure becomes that request's error response."""
    responses = []
    for request in requests:
        try:
            responses.append(respond(request))
        except Exception as exc:  # the request fails, the others are still answered
            responses.append(error_response(exc))
    return responses
