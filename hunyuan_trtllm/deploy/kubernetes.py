"""Kubernetes manifests for a plan: a Deployment on one node, a LeaderWorkerSet across nodes.

One node: a **Deployment** (replicas 1, strategy Recreate). The server keeps no state of its own: the engines on
the volume are a cache the init containers rebuild from the model, so a StatefulSet's stable identity and
per-replica claims buy nothing, while a second replica would need its own GPUs and its own copy of hundreds of GB
of engines. Recreate, because the GPUs and the ReadWriteOnce volume cannot be held by an old and a new pod at once.

Several nodes: a **LeaderWorkerSet** (leaderworkerset.x-k8s.io/v1, size = nodes) whose leader converts and builds
in init containers and then starts the MPI world (:mod:`hunyuan_trtllm.deploy.mpi_launch`); the volume is
ReadWriteMany so every pod reads the same engines. ``restartPolicy: RecreateGroupOnPodRestart``: one lost rank
restarts the whole world.

Files (apply in order with ``kubectl apply -f DIR``): ``00-pvc.yaml``, ``10-rbac.yaml`` (several nodes: the
leader's ``kubectl exec``), ``20-deployment.yaml`` or ``20-leaderworkerset.yaml``, ``30-service.yaml`` (the
leader only). The OpenAI API is port ``http`` (8000): our endpoint, in front of Triton (whose own HTTP/gRPC/metrics
are 8001-8003) or of trtllm-serve (on the pod's loopback); its ``/health`` is ready once the model is, and the
probes use it. The Prometheus scrape annotations point at the endpoint's ``/metrics`` (requests by status, latency
and time-to-first-token histograms, tokens); Triton's metrics stay on port ``metrics``.
"""

from __future__ import annotations

import math
import re
from typing import Any

from hunyuan_trtllm import __version__
from hunyuan_trtllm.deploy import spec as d
from hunyuan_trtllm.deploy.mpi_launch import leader_script, worker_script
from hunyuan_trtllm.errors import UserError

LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
LWS_WORKER_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"  # "0" on leaders (lws api/.../types.go)
UID = 1000  # the images' user (Triton's triton-server; docker/Dockerfile.build creates the same uid)
SHM_LIMIT = "32Gi"
GIB = 2**30
Manifest = dict[str, Any]


def _labels(spec: d.DeploySpec) -> dict[str, str]:
    return {"app.kubernetes.io/name": spec.name, "app.kubernetes.io/part-of": "hunyuan-trtllm",
            "app.kubernetes.io/version": __version__}


def _annotations(spec: d.DeploySpec) -> dict[str, str]:
    """What the objects were generated from (people read it with kubectl describe)."""
    return {"hunyuan-trtllm/plan": f"{spec.architecture} {spec.dtype} tp{spec.tp} ep{spec.ep} pp{spec.pp} on "
                                   f"{spec.nodes} x {spec.gpus_per_node} {spec.gpu_name}",
            "hunyuan-trtllm/model": spec.model}


def _scrape_annotations(spec: d.DeploySpec) -> dict[str, str]:
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(d.HTTP_PORT),
            "prometheus.io/path": "/metrics"}


def _mounts() -> list[dict[str, Any]]:
    return [{"name": "data", "mountPath": d.CACHE_DIR, "subPath": "cache"},
            {"name": "data", "mountPath": d.ENGINES_DIR, "subPath": "engines"},
            {"name": "shm", "mountPath": "/dev/shm"}]


def _env(spec: d.DeploySpec, extra: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """HF_HOME and the extras; HF_TOKEN from the optional Secret ``hf-token``; POD_NAME (the leader's MPI hosts)."""
    env = [{"name": k, "value": v} for k, v in {"HF_HOME": d.HF_HOME, **(extra or {})}.items()]
    token = {"secretKeyRef": {"name": "hf-token", "key": "token", "optional": True}}
    return env + [{"name": "HF_TOKEN", "valueFrom": token},
                  {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]


def _container(name: str, image: str, command: list[str], spec: d.DeploySpec, gpus: int = 0,
               env: dict[str, str] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": image, "command": command, "env": _env(spec, env),
                                 "volumeMounts": _mounts(),
                                 "securityContext": {"allowPrivilegeEscalation": False}}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": gpus}}
    return container


def _prepare_containers(spec: d.DeploySpec) -> list[dict[str, Any]]:
    """fetch (repo ids) -> convert -> build, each skipped when its output is complete."""
    image = spec.options.build_image
    steps = [_container("fetch", image, d.fetch_command(spec), spec)] if d.is_repo_id(spec.model) else []
    return steps + [
        _container("convert", image, d.unless_done(spec.ckpt_dir, d.convert_command(spec)), spec,
                   gpus=1 if spec.calibrate else 0),
        _container("build", image, d.unless_done(spec.engine_dir, d.build_command(spec)), spec,
                   gpus=spec.gpus_per_node),
    ]


def _probes(spec: d.DeploySpec) -> dict[str, Any]:
    """Liveness, readiness and a startup probe long enough for the engine load."""
    live = ready = d.health_path(spec)  # the OpenAI endpoint's /health on both backends
    period = 10

    def get(path: str) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": "http"}}

    return {"startupProbe": {**get(ready), "periodSeconds": period,
                             "failureThreshold": math.ceil(spec.options.startup_timeout_s / period)},
            "livenessProbe": {**get(live), "periodSeconds": period, "timeoutSeconds": 5, "failureThreshold": 6},
            "readinessProbe": {**get(ready), "periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": 3}}


def _ports(spec: d.DeploySpec) -> list[dict[str, Any]]:
    ports = [("http", d.HTTP_PORT)]
    if spec.options.backend == "triton":
        ports += [("triton-http", d.TRITON_HTTP_PORT), ("grpc", d.GRPC_PORT), ("metrics", d.METRICS_PORT)]
    return [{"name": name, "containerPort": port, "protocol": "TCP"} for name, port in ports]


def _pod_spec(spec: d.DeploySpec, containers: list[dict[str, Any]], init: list[dict[str, Any]],
              service_account: str | None = None) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "securityContext": {"runAsUser": UID, "runAsGroup": UID, "fsGroup": UID, "runAsNonRoot": True,
                            "fsGroupChangePolicy": "OnRootMismatch"},
        "terminationGracePeriodSeconds": 60,
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "containers": containers,
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": f"{spec.name}-data"}},
                    {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_LIMIT}}],
    }
    if init:
        pod["initContainers"] = init
    if service_account:
        pod["serviceAccountName"] = service_account
    return pod


def _server(spec: d.DeploySpec, command: list[str], env: dict[str, str]) -> dict[str, Any]:
    """The serving container (the single-node server, or the multi-node leader)."""
    server = _container("serve", spec.options.serve_image, command, spec, gpus=spec.gpus_per_node, env=env)
    return {**server, "ports": _ports(spec), **_probes(spec)}


def pvc(spec: d.DeploySpec, storage: str | None, storage_class: str | None) -> Manifest:
    """The volume for the HF cache and the engines (ReadWriteMany across nodes)."""
    size = storage or f"{math.ceil(d.storage_bytes(spec) / GIB / 10) * 10}Gi"
    claim: dict[str, Any] = {"accessModes": ["ReadWriteMany" if spec.nodes > 1 else "ReadWriteOnce"],
                             "resources": {"requests": {"storage": size}}}
    if storage_class:
        claim["storageClassName"] = storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": f"{spec.name}-data", "labels": _labels(spec)}, "spec": claim}


def deployment(spec: d.DeploySpec) -> Manifest:
    """Single node: prepare in init containers, then ``hunyuan-trtllm serve``."""
    labels = _labels(spec)
    template = {"metadata": {"labels": labels, "annotations": _scrape_annotations(spec)},
                "spec": _pod_spec(spec, [_server(spec, d.serve_command(spec), d.serve_environment(spec))],
                                  _prepare_containers(spec))}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": spec.name, "labels": labels, "annotations": _annotations(spec)},
            "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                     "selector": {"matchLabels": {"app.kubernetes.io/name": spec.name}}, "template": template}}


def launcher_account(spec: d.DeploySpec) -> str:
    return f"{spec.name}-launcher"


def rbac(spec: d.DeploySpec) -> list[Manifest]:
    """The leader's service account may find the group's pods and exec into them (kubessh)."""
    name, labels = launcher_account(spec), _labels(spec)
    rules = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
             {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "get"]}]
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "labels": labels}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": name, "labels": labels}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": name, "labels": labels},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name}]},
    ]


def leader_worker_set(spec: d.DeploySpec) -> Manifest:
    """Several nodes: the leader prepares and launches MPI, the workers join."""
    labels = _labels(spec)
    leader = _server(spec, ["/bin/sh", "-c", leader_script(spec)], {"HF_HOME": d.HF_HOME})
    worker = _container("serve", spec.options.serve_image, ["/bin/sh", "-c", worker_script()], spec,
                        gpus=spec.gpus_per_node)
    template = {
        "size": spec.nodes,
        "restartPolicy": "RecreateGroupOnPodRestart",
        "leaderTemplate": {"metadata": {"labels": labels, "annotations": _scrape_annotations(spec)},
                           "spec": _pod_spec(spec, [leader], _prepare_containers(spec), launcher_account(spec))},
        "workerTemplate": {"metadata": {"labels": labels}, "spec": _pod_spec(spec, [worker], [])},
    }
    return {"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet",
            "metadata": {"name": spec.name, "labels": labels, "annotations": _annotations(spec)},
            "spec": {"replicas": 1, "startupPolicy": "LeaderCreated", "leaderWorkerTemplate": template}}


def service(spec: d.DeploySpec) -> Manifest:
    """The endpoint: the Deployment's pod, or only the LeaderWorkerSet's leaders (worker-index 0)."""
    if spec.nodes > 1:
        selector = {LWS_NAME_LABEL: spec.name, LWS_WORKER_INDEX_LABEL: "0"}
    else:
        selector = {"app.kubernetes.io/name": spec.name}
    ports = [{"name": p["name"], "port": p["containerPort"], "targetPort": p["name"], "protocol": "TCP"}
             for p in _ports(spec)]
    # Not named after the LeaderWorkerSet: LWS creates its own headless Service under that name.
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"{spec.name}-api", "labels": _labels(spec)},
            "spec": {"type": "ClusterIP", "selector": selector, "ports": ports}}


def _check_storage(storage: str | None) -> None:
    if storage is not None and not re.fullmatch(r"[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?", storage):
        raise UserError(f"--storage {storage}: not a Kubernetes quantity (e.g. 500Gi, 2Ti)")


def _check_model(spec: d.DeploySpec) -> None:
    if not d.is_repo_id(spec.model) and not spec.model.startswith(f"{d.CACHE_DIR}/"):
        raise UserError(f"--model {spec.model}: in Kubernetes the model is a Hugging Face repo id or a path on the "
                        f"data volume under {d.CACHE_DIR}/ (copy it there first)")


def k8s_manifests(spec: d.DeploySpec, storage: str | None = None,
                  storage_class: str | None = None) -> dict[str, list[Manifest]]:
    """File name -> the objects it holds."""
    _check_model(spec)
    _check_storage(storage)
    files = {"00-pvc.yaml": [pvc(spec, storage, storage_class)]}
    if spec.nodes > 1:
        files["10-rbac.yaml"] = rbac(spec)
        files["20-leaderworkerset.yaml"] = [leader_worker_set(spec)]
    else:
        files["20-deployment.yaml"] = [deployment(spec)]
    files["30-service.yaml"] = [service(spec)]
    return files


def k8s_files(spec: d.DeploySpec, storage: str | None = None, storage_class: str | None = None) -> dict[str, str]:
    """File name -> YAML text, with a header saying where it came from."""
    header = f"# Generated by hunyuan-trtllm {__version__} (deploy k8s) for {spec.model}: kubectl apply -f DIR\n"
    return {name: header + d.dump_yaml(objs) for name, objs in k8s_manifests(spec, storage, storage_class).items()}
