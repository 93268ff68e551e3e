"""The multi-node launch inside a LeaderWorkerSet: the leader pod starts one MPI world of tp x pp ranks.

TensorRT-LLM 1.2.1 engines run as one MPI world spanning the nodes (trtllm.md section 7). Kubernetes has no MPI
launcher, so the leader does what the LeaderWorkerSet TensorRT-LLM example (kubernetes-sigs/lws
``docs/examples/tensorrt-llm``) and Triton's multi-node tutorial do: Open MPI's ``mpirun`` with
``plm_rsh_agent kubessh`` (``kubectl exec`` into the worker pods, ``docker/kubessh`` in the serve image; needs the
Role in ``10-rbac.yaml``). The workers only keep their container alive until the leader's ``mpirun`` joins them
into the world. Pod names are LeaderWorkerSet's: leader ``NAME-G``, workers ``NAME-G-1`` ... (the leader reads its
own from ``$POD_NAME``, set from the pod's metadata.name).

- ``triton``: Triton's leader mode, one ``tritonserver`` per rank (MPMD, as ``launch_triton_server.py`` does):
  rank 0 serves HTTP/gRPC/metrics (8001-8003) and the whole repository, the other ranks load only
  ``tensorrt_llm``; the leader runs ``mpirun`` in the background and our OpenAI endpoint on 8000 in front of rank
  0's gRPC (``serve --with triton --triton-grpc``), exiting (non-zero, so the group restarts) when either stops.
- ``trtllm-serve``: ``trtllm-llmapi-launch trtllm-serve`` on every rank, with an ``--extra_llm_api_options`` YAML
  (xgrammar guided decoding) the leader writes next to the engines; rank 0 runs the server, on the leader's loopback
  (8001), and the leader runs our OpenAI endpoint on 8000 in front of it (``serve --with trtllm-serve
  --trtllm-url``), exiting likewise when either stops.
"""

from __future__ import annotations

import shlex

from hunyuan_trtllm.deploy.spec import (
    GRPC_PORT,
    HTTP_PORT,
    METRICS_PORT,
    TRITON_HTTP_PORT,
    TRTLLM_SERVE_PORT,
    DeploySpec,
)

WAIT_SECONDS = 600  # per `kubectl wait` attempt; the leader's startupProbe bounds the whole start


def worker_pods(spec: DeploySpec) -> list[str]:
    """Shell words naming the worker pods of the leader's group."""
    return [f'"$POD_NAME-{i}"' for i in range(1, spec.nodes)]


def mpi_hosts(spec: DeploySpec) -> str:
    """Open MPI ``--host`` value (double-quoted for the shell): every pod with one slot per GPU."""
    pods = ["$POD_NAME"] + [f"$POD_NAME-{i}" for i in range(1, spec.nodes)]
    return '"' + ",".join(f"{pod}:{spec.gpus_per_node}" for pod in pods) + '"'


def triton_repo_dir(spec: DeploySpec) -> str:
    """The engine flavor repository, on the shared volume so every rank reads the same files."""
    return f"{spec.engine_dir}-triton-repo"


def llm_api_options_file(spec: DeploySpec) -> str:
    """trtllm-serve's ``--extra_llm_api_options`` YAML (xgrammar guided decoding), on the shared volume."""
    return f"{spec.engine_dir}-llm-api.yaml"


def tritonserver_rank(rank: int) -> list[str]:
    """A rank's ``tritonserver`` (leader mode): rank 0 is the server, the others only run the engine. Ranks > 0
    load no Python model, so they can share one Python-backend shared-memory prefix."""
    command = ["tritonserver", "--model-repository=$REPO", "--disable-auto-complete-config",
               f"--backend-config=python,shm-region-prefix-name=rank{min(rank, 1)}_"]
    if rank == 0:
        return command + [f"--http-port={TRITON_HTTP_PORT}", f"--grpc-port={GRPC_PORT}",
                          f"--metrics-port={METRICS_PORT}"]
    return command + ["--model-control-mode=explicit", "--load-model=tensorrt_llm", "--allow-http=false",
                      "--allow-grpc=false", "--allow-metrics=false"]


# the registration package's directory in the image, resolved by the leader's shell before mpirun starts the ranks
ENGINE_PLUGIN_DIR = ("$(python3 -c 'from hunyuan_trtllm.serve.trtllm_serve import engine_plugin_dir; "
                     "print(engine_plugin_dir())')")


def _words(command: list[str]) -> str:
    """Shell words; ``$ENGINE``/``$REPO`` are expanded (inside double quotes), everything else is quoted."""
    return " ".join(f'"{w}"' if "$" in w else shlex.quote(w) for w in command)


def rank_programs(spec: DeploySpec) -> str:
    """The part of the ``mpirun`` command after the options: what the ranks run."""
    if spec.options.backend == "triton":
        server = f"-n 1 {_words(tritonserver_rank(0))}"
        if spec.world_size == 1:
            return server
        return f"{server} : -n {spec.world_size - 1} {_words(tritonserver_rank(1))}"
    serve = ["trtllm-llmapi-launch", "trtllm-serve", "$ENGINE", "--backend", "tensorrt", "--tokenizer",
             "$ENGINE/tokenizer", "--host", "127.0.0.1", "--port", str(TRTLLM_SERVE_PORT),
             "--extra_llm_api_options", "$LLM_API",
             "--custom_module_dirs", ENGINE_PLUGIN_DIR]  # registers the Hunyuan architectures (trtllm_serve.py)
    return f"-n {spec.world_size} {_words(serve)}"


def leader_script(spec: DeploySpec) -> str:
    """The leader container's shell script: wait for the workers, write the repository (Triton), start MPI."""
    triton = spec.options.backend == "triton"
    lines = ["set -e", f"ENGINE={shlex.quote(spec.engine_dir)}"]
    lines += [f"REPO={shlex.quote(triton_repo_dir(spec))}" if triton else
              f"LLM_API={shlex.quote(llm_api_options_file(spec))}"]
    lines += [f"for pod in {' '.join(worker_pods(spec))}; do",
              f'  until kubectl wait --for=condition=Ready "pod/$pod" --timeout={WAIT_SECONDS}s; do sleep 10; done',
              "done"]
    if not triton:  # as `serve --with trtllm-serve` writes it for one node: guided decoding through xgrammar
        lines.append("printf 'guided_decoding_backend: xgrammar\\n' > \"$LLM_API\"")
    if triton:
        lines.append(_words(["hunyuan-trtllm", "triton-repo", "$ENGINE", "-o", "$REPO", "--flavor", "engine",
                             "--tokenizer", "$ENGINE/tokenizer", "--overwrite"]))
    mpirun = (f"mpirun --allow-run-as-root --bind-to none --mca plm_rsh_agent kubessh "
              f"--host {mpi_hosts(spec)} {rank_programs(spec)}")
    behind = (["--with", "triton", "--triton-grpc", f"127.0.0.1:{GRPC_PORT}"] if triton else
              ["--with", "trtllm-serve", "--trtllm-url", f"http://127.0.0.1:{TRTLLM_SERVE_PORT}"])
    endpoint = ["hunyuan-trtllm", "serve", "$ENGINE", *behind, "--tokenizer", "$ENGINE/tokenizer",
                "--host", "0.0.0.0", "--port", str(HTTP_PORT), "--ready-timeout", str(spec.options.startup_timeout_s)]
    lines += [f"{mpirun} &", "MPI=$!", f"{_words(endpoint)} &", "API=$!",
              "trap 'kill $MPI $API 2>/dev/null' TERM INT",
              "while kill -0 $MPI 2>/dev/null && kill -0 $API 2>/dev/null; do sleep 5; done",
              "kill $MPI $API 2>/dev/null; wait; exit 1"]
    return "\n".join(lines) + "\n"


def worker_script() -> str:
    """A worker container: stay up (the leader's mpirun runs the ranks in it) and stop on SIGTERM."""
    return "trap 'exit 0' TERM INT\nwhile :; do sleep 3600 & wait $!; done\n"
