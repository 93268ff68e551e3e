"""A Docker Compose project for a single-node plan: fetch -> convert -> build -> serve.

Each preparation step is a service that runs to completion; the next one starts on
``depends_on: {condition: service_completed_successfully}``. The Hugging Face cache (``hf-cache``, at /cache) and
the engines (``engines``, at /engines) are named volumes, so a second ``docker compose up`` skips the finished
steps. A host model directory is bind-mounted read-only instead of fetched. GPUs are reserved with
``deploy.resources.reservations.devices`` (driver nvidia). What changes per machine (images, host ports, the
Hugging Face token) is read from ``.env`` with defaults in the file, so the compose file also runs without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hunyuan_trtllm import __version__
from hunyuan_trtllm.deploy import spec as d
from hunyuan_trtllm.errors import UserError

SHM_SIZE = "32gb"
# NVIDIA's docker run conventions for TensorRT-LLM (triton.md section 5): unlimited locked memory, 64 MiB stack.
ULIMITS = {"memlock": -1, "stack": 67108864}
BIND = "127.0.0.1"  # host address the ports are published on (a workstation); HUNYUAN_BIND=0.0.0.0 opens them
DOCKERFILES = {"HUNYUAN_BUILD_IMAGE": "docker/Dockerfile.build", "HUNYUAN_SERVE_IMAGE": "docker/Dockerfile.serve"}


def env_values(spec: d.DeploySpec) -> dict[str, str]:
    """The ``.env`` settings and their defaults (the same defaults appear in the compose file)."""
    values = {"HUNYUAN_BUILD_IMAGE": spec.options.build_image, "HUNYUAN_SERVE_IMAGE": spec.options.serve_image,
              "HUNYUAN_BIND": BIND, "HUNYUAN_HTTP_PORT": str(d.HTTP_PORT)}
    if spec.options.backend == "triton":
        values |= {"HUNYUAN_TRITON_HTTP_PORT": str(d.TRITON_HTTP_PORT), "HUNYUAN_GRPC_PORT": str(d.GRPC_PORT),
                   "HUNYUAN_METRICS_PORT": str(d.METRICS_PORT)}
    return values | {"HF_TOKEN": ""}


def _var(spec: d.DeploySpec, name: str) -> str:
    """``${NAME:-default}``: the .env value, else the default."""
    return f"${{{name}:-{env_values(spec)[name]}}}"


def _host_model(spec: d.DeploySpec) -> Path | None:
    """The host directory holding the model (None: a repo id, fetched into the cache)."""
    if d.is_repo_id(spec.model):
        return None
    path = Path(spec.model).expanduser().resolve()
    if not path.is_dir():
        raise UserError(f"--model {spec.model}: neither a Hugging Face repo id nor a directory on this host")
    return path


def _volumes(spec: d.DeploySpec, engines: bool = True) -> list[str]:
    """The cache volume, the engines volume and, for a host model directory, its read-only bind mount."""
    host = _host_model(spec)
    mounts = [f"hf-cache:{d.CACHE_DIR}"] + ([f"engines:{d.ENGINES_DIR}"] if engines else [])
    return mounts + ([f"{host}:{spec.model_dir}:ro"] if host else [])


def _gpus(count: int) -> dict[str, Any]:
    """GPU reservation, NCCL-friendly shared memory and ulimits."""
    devices = [{"driver": "nvidia", "count": count, "capabilities": ["gpu"]}]
    return {"deploy": {"resources": {"reservations": {"devices": devices}}}, "shm_size": SHM_SIZE,
            "ulimits": dict(ULIMITS)}


def _service(spec: d.DeploySpec, image_var: str, command: list[str], volumes: list[str], after: str | None,
             gpus: int = 0, env: dict[str, str] | None = None) -> dict[str, Any]:
    service: dict[str, Any] = {"image": _var(spec, image_var), "command": command,
                               "environment": {"HF_HOME": d.HF_HOME, **(env or {})}, "volumes": volumes}
    if after:
        service["depends_on"] = {after: {"condition": "service_completed_successfully"}}
    return service | (_gpus(gpus) if gpus else {})


def _healthcheck(spec: d.DeploySpec) -> dict[str, Any]:
    """The OpenAI endpoint's /health (ready once the model is), with a start period for the engine load."""
    url = f"http://127.0.0.1:{d.HTTP_PORT}{d.health_path(spec)}"
    probe = f"import urllib.request; urllib.request.urlopen('{url}', timeout=5)"
    return {"test": ["CMD", "python3", "-c", probe], "interval": "30s", "timeout": "10s", "retries": 3,
            "start_period": f"{spec.options.startup_timeout_s}s", "start_interval": "10s"}


def _serve(spec: d.DeploySpec, after: str) -> dict[str, Any]:
    bind = _var(spec, "HUNYUAN_BIND")
    ports = [f"{bind}:{_var(spec, 'HUNYUAN_HTTP_PORT')}:{d.HTTP_PORT}"]
    if spec.options.backend == "triton":
        ports += [f"{bind}:{_var(spec, 'HUNYUAN_TRITON_HTTP_PORT')}:{d.TRITON_HTTP_PORT}",
                  f"{bind}:{_var(spec, 'HUNYUAN_GRPC_PORT')}:{d.GRPC_PORT}",
                  f"{bind}:{_var(spec, 'HUNYUAN_METRICS_PORT')}:{d.METRICS_PORT}"]
    # The engines carry their tokenizer (build copies it), so serving needs only that volume.
    service = _service(spec, "HUNYUAN_SERVE_IMAGE", d.serve_command(spec), [f"engines:{d.ENGINES_DIR}"], after,
                       gpus=spec.gpus_per_node, env=d.serve_environment(spec))
    return service | {"ports": ports, "healthcheck": _healthcheck(spec), "restart": "unless-stopped",
                      "stop_grace_period": "60s"}


def compose_document(spec: d.DeploySpec, build_context: str | None = None) -> dict[str, Any]:
    """The compose file as data; ``build_context`` (this repository, relative to the compose file) adds
    ``build:`` sections so ``docker compose build`` makes the images."""
    if spec.nodes > 1:
        raise UserError(f"the plan spans {spec.nodes} nodes; compose runs on one: use `hunyuan-trtllm deploy k8s`")
    services: dict[str, Any] = {}
    if d.is_repo_id(spec.model):
        services["fetch"] = _service(spec, "HUNYUAN_BUILD_IMAGE", d.fetch_command(spec),
                                     _volumes(spec, engines=False), None, env={"HF_TOKEN": "${HF_TOKEN:-}"})
    services["convert"] = _service(spec, "HUNYUAN_BUILD_IMAGE", d.unless_done(spec.ckpt_dir, d.convert_command(spec)),
                                   _volumes(spec), next(iter(services), None), gpus=1 if spec.calibrate else 0)
    services["build"] = _service(spec, "HUNYUAN_BUILD_IMAGE", d.unless_done(spec.engine_dir, d.build_command(spec)),
                                 _volumes(spec), "convert", gpus=spec.gpus_per_node)
    services["serve"] = _serve(spec, "build")
    if build_context is not None:
        _add_build_sections(services, build_context)
    return {"name": spec.name, "services": services, "volumes": {"hf-cache": {}, "engines": {}}}


def _add_build_sections(services: dict[str, Any], context: str) -> None:
    """``build:`` on the first service of each image (one build per image)."""
    seen: set[str] = set()
    for service in services.values():
        var = service["image"].removeprefix("${").split(":-")[0]
        if var not in seen:
            seen.add(var)
            service["build"] = {"context": context, "dockerfile": DOCKERFILES[var]}


def compose_files(spec: d.DeploySpec, build_context: str | None = None) -> dict[str, str]:
    """``compose.yaml`` and ``.env`` for the plan."""
    document = compose_document(spec, build_context)
    header = (f"# Generated by hunyuan-trtllm {__version__} (deploy compose): {spec.model}, {spec.dtype}, "
              f"tp{spec.tp} ep{spec.ep} pp{spec.pp} on {spec.gpus_per_node} x {spec.gpu_name}.\n"
              "# Run: docker compose up -d   (images: docker/README.md; settings: .env)\n")
    env = "".join(f"{key}={value}\n" for key, value in env_values(spec).items())
    return {"compose.yaml": header + d.dump_yaml([document]),
            ".env": "# Read by compose.yaml (defaults are in the file)\n" + env}
