"""Print the project's runtime dependencies without the ones the NVIDIA base images already carry.

The images install hunyuan-trtllm with ``pip install --no-deps .`` after ``pip install -r`` of this list, so the
base image's CUDA build of torch (and TensorRT-LLM's own pins) stay untouched: no CUDA wheels are downloaded.

    python3 docker/runtime_requirements.py [pyproject.toml] > requirements.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PROVIDED_BY_BASE = frozenset({"torch"})  # the TensorRT-LLM and Triton images ship NVIDIA's CUDA build


def requirement_name(requirement: str) -> str:
    """The distribution name of a PEP 508 requirement, normalized (``tritonclient[grpc]>=2`` -> ``tritonclient``)."""
    return re.split(r"[\s\[<>=!~;@(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def runtime_requirements(pyproject: Path) -> list[str]:
    """``project.dependencies`` minus :data:`PROVIDED_BY_BASE`."""
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return [dep for dep in dependencies if requirement_name(dep) not in PROVIDED_BY_BASE]


if __name__ == "__main__":
    print("\n".join(runtime_requirements(Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml"))))
