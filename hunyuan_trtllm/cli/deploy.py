"""The ``deploy`` subcommands: a Docker Compose project or Kubernetes manifests for a plan, and ``deploy fetch``
(the model download step those deployments run)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from hunyuan_trtllm.cli.app import cli, print_json, print_table
from hunyuan_trtllm.errors import UserError

PLAN_FLAGS = ("--preset", "--gpu", "--gpus", "--nodes", "--dtype", "--kv-cache-dtype", "--max-seq-len")


@cli.group()
def deploy() -> None:
    """Deploy a plan: Docker Compose on one node, Kubernetes on one or several.

    \b
    Examples (from a plan file, or from the same flags as `plan`):
      hunyuan-trtllm plan --preset hunyuan-a13b --gpu h100 --gpus 8 --dtype fp8 --json > plan.json
      hunyuan-trtllm deploy compose plan.json -o deploy-a13b
      hunyuan-trtllm deploy k8s --preset hunyuan-large --gpu h100 --gpus 8 --nodes 2 \\
          --model /cache/models/Hunyuan-A52B-Instruct -o k8s-large
    """


def _options(function: Callable[..., Any]) -> Callable[..., Any]:
    """The plan input and the deployment options shared by ``compose`` and ``k8s``."""
    options = [
        click.argument("plan_or_model", required=False),
        click.option("--preset", default=None, help="Plan flags: a built-in model config (instead of MODEL)."),
        click.option("--gpu", default=None, help="Plan flags: GPU kind, e.g. h100, h200, h20."),
        click.option("--gpus", type=int, default=None, help="Plan flags: GPUs per node [default: 8]."),
        click.option("--nodes", type=int, default=None, help="Plan flags: nodes [default: 1]."),
        click.option("--dtype", type=click.Choice(["bf16", "fp8"]), default=None,
                     help="Plan flags: weight dtype [default: fp8 for an FP8 release, else bf16]."),
        click.option("--kv-cache-dtype", type=click.Choice(["bf16", "fp8"]), default=None,
                     help="Plan flags: KV-cache dtype [default: the weights']."),
        click.option("--max-seq-len", type=int, default=None, help="Plan flags: prompt + output tokens."),
        click.option("--model", default=None, help="Weights to deploy: a Hugging Face repo id (fetched in the "
                     "cluster) or a directory [default: the plan's MODEL, or the preset's Tencent release]."),
        click.option("--name", default=None, help="Name of the deployment [default: from the model]."),
        click.option("--backend", type=click.Choice(["triton", "trtllm-serve"]), default="triton",
                     show_default=True, help="The server in front of the engines."),
        click.option("--build-image", default=None, help="Convert/build image [default: hunyuan-trtllm-build:VER]."),
        click.option("--serve-image", default=None, help="Serving image [default: hunyuan-trtllm-serve:VER]."),
        click.option("--max-batch-size", type=int, default=None,
                     help="Engine batch [default: the plan's concurrent sequences, at most 256]."),
        click.option("--max-num-tokens", type=int, default=8192, show_default=True, help="Engine tokens per step."),
        click.option("--fp8-scales", type=click.Choice(["auto", "source", "calibrate"]), default="auto",
                     show_default=True, help="FP8: the FP8 source's scales, or calibrate (auto: by the model name)."),
        click.option("--startup-timeout", type=int, default=3600, show_default=True,
                     help="Seconds the server may take to load the engines."),
        click.option("--workers", type=int, default=None, help="Convert/build processes [default: GPUs per node]."),
        click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
                     help="Directory to write (new or empty)."),
        click.option("--overwrite", is_flag=True, help="Replace the output directory."),
        click.option("--json", "as_json", is_flag=True, help="Print JSON for programs."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _plan(plan_or_model: str | None, flags: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(the plan, where it came from): a plan JSON file, or ``make_plan`` on the plan flags."""
    from hunyuan_trtllm.deploy.spec import load_plan

    given = [flag for flag in PLAN_FLAGS if flags[flag] is not None]
    if plan_or_model and Path(plan_or_model).is_file():
        if given:
            raise UserError(f"{given[0]} goes with MODEL or --preset, not with the plan file {plan_or_model}")
        return load_plan(Path(plan_or_model)), plan_or_model
    if plan_or_model is None and flags["--preset"] is None:
        raise UserError("give a plan file (hunyuan-trtllm plan ... --json > plan.json), a MODEL or --preset")
    if flags["--gpu"] is None:
        raise UserError("--gpu is required when planning here (with MODEL or --preset), e.g. --gpu h100")
    from hunyuan_trtllm.builder.planner import make_plan

    plan = make_plan(plan_or_model, flags["--preset"], flags["--gpu"], flags["--gpus"] or 8, flags["--nodes"] or 1,
                     flags["--dtype"], flags["--kv-cache-dtype"], flags["--max-seq-len"])
    return plan, "the plan from the flags"


def _spec(params: dict[str, Any]):
    """The validated DeploySpec from the command's parameters."""
    from hunyuan_trtllm.deploy.spec import DeployOptions, deploy_spec

    flags = {flag: params[flag.removeprefix("--").replace("-", "_")] for flag in PLAN_FLAGS}
    plan, where = _plan(params["plan_or_model"], flags)
    defaults = DeployOptions()
    options = DeployOptions(
        model=params["model"], name=params["name"], backend=params["backend"],
        build_image=params["build_image"] or defaults.build_image,
        serve_image=params["serve_image"] or defaults.serve_image, max_batch_size=params["max_batch_size"],
        max_num_tokens=params["max_num_tokens"], fp8_scales=params["fp8_scales"],
        startup_timeout_s=params["startup_timeout"], workers=params["workers"])
    if params["workers"] is not None and params["workers"] < 1:
        raise UserError("--workers must be at least 1")
    if params["startup_timeout"] < 60:
        raise UserError("--startup-timeout must be at least 60 seconds (engines take minutes to load)")
    return deploy_spec(plan, where, options)


def _report(kind: str, spec, out: Path, files: list[str], next_step: str, as_json: bool) -> None:
    if as_json:
        print_json({"kind": kind, "output": str(out), "files": files, "name": spec.name, "model": spec.model,
                    "backend": spec.options.backend, "tp": spec.tp, "ep": spec.ep, "pp": spec.pp,
                    "nodes": spec.nodes, "gpus_per_node": spec.gpus_per_node, "engine_dir": spec.engine_dir})
        return
    print_table(f"deploy {kind}: {out}", [
        ("files", ", ".join(files)), ("model", spec.model),
        ("layout", f"{spec.dtype} tp {spec.tp} (ep {spec.ep}) x pp {spec.pp} on {spec.nodes} x "
                   f"{spec.gpus_per_node} {spec.gpu_name}"),
        ("server", spec.options.backend), ("engines", spec.engine_dir), ("next", next_step)])


@deploy.command()
@_options
@click.option("--build-context", default=None,
              help="This repository, relative to the output directory: adds build: sections for the images.")
def compose(**params: Any) -> None:
    """Write a Docker Compose project (compose.yaml + .env) for a single-node plan.

    Services fetch -> convert -> build -> serve run in order (service_completed_successfully); the Hugging Face
    cache and the engines live on named volumes; the server answers on 8000 (Triton: gRPC 8001, metrics 8002).

    \b
    Examples:
      hunyuan-trtllm deploy compose plan.json -o deploy-a13b && cd deploy-a13b && docker compose up -d
      hunyuan-trtllm deploy compose --preset hunyuan-a13b --gpu h100 --gpus 8 --dtype fp8 -o deploy-a13b
      hunyuan-trtllm deploy compose ./Hunyuan-A13B-Instruct --gpu h200 --gpus 4 --backend trtllm-serve -o d
    """
    from hunyuan_trtllm.deploy.compose import compose_files
    from hunyuan_trtllm.deploy.spec import write_output_dir

    spec = _spec(params)
    files = compose_files(spec, params["build_context"])
    out = write_output_dir(params["out"], files, params["overwrite"])
    _report("compose", spec, out, sorted(files), f"cd {out} && docker compose up -d", params["as_json"])


@deploy.command()
@_options
@click.option("--storage", default=None, help="Size of the data volume, e.g. 500Gi [default: from the plan].")
@click.option("--storage-class", default=None, help="StorageClass of the data volume (ReadWriteMany for nodes > 1).")
def k8s(**params: Any) -> None:
    """Write Kubernetes manifests: a Deployment on one node, a LeaderWorkerSet on several.

    Init containers fetch, convert and build onto a PersistentVolumeClaim; the Service selects the server (the
    LeaderWorkerSet's leader). Several nodes need the LeaderWorkerSet controller and ReadWriteMany storage.

    \b
    Examples:
      hunyuan-trtllm deploy k8s plan.json -o k8s-a13b && kubectl apply -f k8s-a13b
      hunyuan-trtllm deploy k8s --preset hunyuan-large --gpu h100 --gpus 8 --nodes 2 \\
          --model /cache/models/Hunyuan-A52B-Instruct --storage-class nfs -o k8s-large
    """
    from hunyuan_trtllm.deploy.kubernetes import k8s_files
    from hunyuan_trtllm.deploy.spec import write_output_dir

    spec = _spec(params)
    files = k8s_files(spec, params["storage"], params["storage_class"])
    out = write_output_dir(params["out"], files, params["overwrite"])
    _report("k8s", spec, out, sorted(files), f"kubectl apply -f {out}", params["as_json"])


@deploy.command()
@click.argument("model")
@click.option("--link", required=True, type=click.Path(path_type=Path),
              help="Symlink to point at the model directory.")
def fetch(model: str, link: Path) -> None:
    """Fetch MODEL (a Hugging Face repo id into the HF cache; a directory as is) and link it at --link.

    The first step of the generated deployments; honours HF_HOME, HF_TOKEN and HF_HUB_OFFLINE.

    \b
    Example:
      HF_HOME=/cache/huggingface hunyuan-trtllm deploy fetch tencent/Hunyuan-A13B-Instruct \\
          --link /cache/models/hunyuan-a13b-instruct
    """
    from hunyuan_trtllm.deploy.spec import link_model

    click.echo(f"{link} -> {link_model(model, link)}")
