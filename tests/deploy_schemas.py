"""Validation of deployment files against the real schemas, shared by test_deploy.py and test_docker.py.

- Compose: the compose-spec JSON schema (tests/fixtures/compose-spec/), after Compose's own interpolation step.
- Kubernetes core objects: kubernetes-validate's bundled OpenAPI schemas for K8S_VERSION, strict (unknown fields
  are errors, as kubectl's default server-side field validation makes them).
- LeaderWorkerSet: the CRD's openAPIV3Schema from ../shared (skipped without it), made strict the same way; its
  pod templates are also validated as core ``PodTemplate`` objects.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

FIXTURES = Path(__file__).parent / "fixtures"
COMPOSE_SCHEMA = FIXTURES / "compose-spec" / "compose-spec.json"
LWS_CRD = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "schemas" / \
    "leaderworkerset.x-k8s.io_leaderworkersets.yaml"
K8S_VERSION = "1.34.0"  # a recent release kubernetes-validate ships schemas for
_VARIABLE = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|(?P<bad>.?))")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation: ``${VAR}``, ``${VAR:-default}``, ``$$``; any other ``$`` is an error."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group("name") is None:
            raise AssertionError(f"unescaped '$' in {value!r}: Compose would interpolate it")
        name, default = match.group("name"), match.group("default")
        if name in env and (env[name] or default is None):
            return env[name]
        assert default is not None, f"${{{name}}} has no default and no .env value"
        return default

    return _VARIABLE.sub(replace, value)


def validate_compose(document: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Interpolate like Compose, validate against the compose-spec schema; returns the interpolated document."""
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    resolved = interpolate(document, env or {})
    jsonschema.validators.validator_for(schema)(schema).validate(resolved)
    return resolved


def read_env_file(text: str) -> dict[str, str]:
    """A ``.env`` file's KEY=VALUE lines."""
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def _strict(schema: Any) -> Any:
    """Forbid unknown fields wherever the schema lists properties and does not keep unknown fields."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out and \
            not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def lws_validator() -> jsonschema.protocols.Validator:
    """The LeaderWorkerSet v1 schema (strict), or skip when ../shared is absent."""
    if not LWS_CRD.is_file():
        pytest.skip("the LeaderWorkerSet CRD is in ../shared, which is absent")
    crd = yaml.safe_load(LWS_CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return jsonschema.Draft7Validator(_strict(version["schema"]["openAPIV3Schema"]))


def validate_k8s(obj: dict[str, Any]) -> None:
    """One manifest against the real schema for its kind."""
    import kubernetes_validate

    if obj["kind"] != "LeaderWorkerSet":
        kubernetes_validate.validate(copy.deepcopy(obj), K8S_VERSION, strict=True)
        return
    assert obj["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
    lws_validator().validate(obj)
    template = obj["spec"]["leaderWorkerTemplate"]
    for key in ("leaderTemplate", "workerTemplate"):
        pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": key.lower()},
                        "template": template[key]}
        kubernetes_validate.validate(pod_template, K8S_VERSION, strict=True)
