"""`hunyuan-trtllm deploy compose|k8s|fetch`: generated files validated against the real schemas (compose-spec,
Kubernetes' OpenAPI, the LeaderWorkerSet CRD), and the shell scripts in them run with stand-in binaries."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from hunyuan_trtllm.cli import cli
from hunyuan_trtllm.serve.trtllm_serve import engine_plugin_dir
from tests.deploy_schemas import read_env_file, validate_compose, validate_k8s

PLANS = Path(__file__).parent / "fixtures" / "deploy"
A13B_FP8 = PLANS / "a13b-fp8-h100x8.plan.json"  # 8 x H100, recommended tp8 ep8 pp1, 222 sequences
LARGE_BF16_2N = PLANS / "large-bf16-h100x8x2.plan.json"  # 2 x 8 x H100, recommended tp8 pp2
LARGE_NO_FIT = PLANS / "large-bf16-h100x8-nofit.plan.json"  # 1 x 8 x H100: recommended null


def run(*args: str) -> Any:
    result = CliRunner().invoke(cli, list(args))
    return result


def deploy(tmp_path: Path, kind: str, *args: str) -> Path:
    out = tmp_path / f"out-{kind}"
    result = run("deploy", kind, *args, "-o", str(out))
    assert result.exit_code == 0, result.output
    return out


def manifests(out: Path) -> dict[str, dict[str, Any]]:
    """kind -> object, every manifest validated against its schema on the way."""
    objects = {}
    for path in sorted(out.glob("*.yaml")):
        for obj in yaml.safe_load_all(path.read_text()):
            validate_k8s(obj)
            objects[obj["kind"]] = obj
    return objects


def pod_of(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def fake_bin(tmp_path: Path, record: Path, *names: str) -> dict[str, str]:
    """Executables that append their name and argv (JSON) to ``record``; the environment to run them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in names:
        script = bin_dir / name
        script.write_text(textwrap.dedent(f"""\
            #!{sys.executable}
            import json, sys
            with open({str(record)!r}, "a") as f:
                f.write(json.dumps([{name!r}] + sys.argv[1:]) + "\\n")
            """))
        script.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def run_script(command: list[str], env: dict[str, str], record: Path, status: int = 0) -> list[list[str]]:
    """Run a container command (``/bin/sh -c SCRIPT``) with the stand-ins, expecting exit ``status``; every command
    they have seen."""
    assert command[:2] == ["/bin/sh", "-c"]
    assert subprocess.run(command, env=env, timeout=60).returncode == status
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


# --- single node: Deployment --------------------------------------------------------------------------------------

def test_single_node_a13b_fp8_deployment(tmp_path):
    out = deploy(tmp_path, "k8s", str(A13B_FP8))
    assert sorted(p.name for p in out.iterdir()) == ["00-pvc.yaml", "20-deployment.yaml", "30-service.yaml"]
    objs = manifests(out)
    deployment, service, claim = objs["Deployment"], objs["Service"], objs["PersistentVolumeClaim"]
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = pod_of(deployment)
    [serve] = pod["containers"]
    assert serve["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert env_of(serve)["TRTLLM_ORCHESTRATOR"] == "1"  # one tritonserver spawns the 8 executor workers
    engine = "/engines/hunyuan-a13b-instruct-fp8/fp8-kvfp8-tp8-ep8-pp1/engine-seq32768-batch222-tok8192"
    # the Hunyuan-aware OpenAI endpoint on 8000 (all interfaces of the pod), Triton behind it on 8001-8003
    assert serve["command"] == ["hunyuan-trtllm", "serve", engine, "--with", "triton", "--tokenizer",
                                f"{engine}/tokenizer", "--host", "0.0.0.0", "--port", "8000", "--triton-port", "8001",
                                "--ready-timeout", "3600"]
    assert [(p["name"], p["containerPort"]) for p in serve["ports"]] == [
        ("http", 8000), ("triton-http", 8001), ("grpc", 8002), ("metrics", 8003)]
    assert serve["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert serve["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}  # 200 once the model is ready
    startup = serve["startupProbe"]
    assert startup["httpGet"] == {"path": "/health", "port": "http"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 3600
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "shm", "mountPath": "/dev/shm"} in serve["volumeMounts"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": "8000",
                           "prometheus.io/path": "/metrics"}  # the endpoint's request metrics
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]][0] == ("http", 8000, "http")
    assert [p["port"] for p in service["spec"]["ports"]] == [8000, 8001, 8002, 8003]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert {"claimName": claim["metadata"]["name"]} in [v.get("persistentVolumeClaim") for v in pod["volumes"]]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000


def test_single_node_prepare_steps_are_this_projects_commands(tmp_path):
    pod = pod_of(manifests(deploy(tmp_path, "k8s", str(A13B_FP8)))["Deployment"])
    fetch, convert, build = pod["initContainers"]
    assert fetch["command"] == ["hunyuan-trtllm", "deploy", "fetch", "tencent/Hunyuan-A13B-Instruct-FP8", "--link",
                                "/cache/models/hunyuan-a13b-instruct-fp8"]
    assert "resources" not in convert  # Tencent's FP8 release carries its scales: no calibration, no GPU
    assert build["resources"]["limits"]["nvidia.com/gpu"] == 8
    record = tmp_path / "calls.jsonl"
    env = fake_bin(tmp_path, record, "hunyuan-trtllm")
    run_script(convert["command"], env, record)
    calls = run_script(build["command"], env, record)
    layout = "/engines/hunyuan-a13b-instruct-fp8/fp8-kvfp8-tp8-ep8-pp1"
    assert calls[0] == ["hunyuan-trtllm", "convert", "/cache/models/hunyuan-a13b-instruct-fp8", "-o",
                        f"{layout}/ckpt", "--tp", "8", "--ep", "8", "--pp", "1", "--workers", "8", "--quiet",
                        "--dtype", "fp8", "--kv-cache-dtype", "fp8"]
    assert calls[1][:4] == ["hunyuan-trtllm", "build", f"{layout}/ckpt", "-o"]
    assert calls[1][5:11] == ["--max-seq-len", "32768", "--max-batch-size", "222", "--max-num-tokens", "8192"]


def test_finished_steps_are_skipped(tmp_path):
    """Each step runs unless its output's config.json exists (the init containers rerun on every pod start)."""
    from hunyuan_trtllm.deploy.spec import unless_done

    done = tmp_path / "done"
    record = tmp_path / "calls.jsonl"
    env = fake_bin(tmp_path, record, "hunyuan-trtllm")
    assert run_script(unless_done(str(done), ["hunyuan-trtllm", "build"]), env, record) == [["hunyuan-trtllm", "build"]]
    done.mkdir()
    (done / "config.json").write_text("{}")
    record.unlink()
    assert run_script(unless_done(str(done), ["hunyuan-trtllm", "build"]), env, record) == []


def test_trtllm_serve_backend_runs_our_endpoint_in_front(tmp_path):
    deployment = manifests(deploy(tmp_path, "k8s", str(A13B_FP8), "--backend", "trtllm-serve"))["Deployment"]
    [serve] = pod_of(deployment)["containers"]
    command = serve["command"]
    assert command[:5] == ["hunyuan-trtllm", "serve", command[2], "--with", "trtllm-serve"]
    # the endpoint listens on the pod network; trtllm-serve behind it on the pod's loopback, port 8001
    assert command[command.index("--host") + 1] == "0.0.0.0" and command[command.index("--port") + 1] == "8000"
    assert command[command.index("--trtllm-port") + 1] == "8001"
    assert {serve[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe", "startupProbe")} == {"/health"}
    assert [p["containerPort"] for p in serve["ports"]] == [8000]
    assert "TRTLLM_ORCHESTRATOR" not in env_of(serve)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]  # our /metrics, scraped
    assert annotations["prometheus.io/port"] == "8000" and annotations["prometheus.io/path"] == "/metrics"


def test_bf16_model_needs_calibration_for_fp8(tmp_path):
    """FP8 from a BF16 model: convert calibrates on the built-in set, on one GPU."""
    pod = pod_of(manifests(deploy(tmp_path, "k8s", str(A13B_FP8), "--model", "tencent/Hunyuan-A13B-Instruct"))
                 ["Deployment"])
    convert = pod["initContainers"][1]
    assert convert["command"][-1].endswith("--calib-builtin --calib-device cuda")
    assert convert["resources"]["limits"]["nvidia.com/gpu"] == 1


# --- two nodes: LeaderWorkerSet -----------------------------------------------------------------------------------

def test_two_node_large_bf16_leader_worker_set(tmp_path):
    out = deploy(tmp_path, "k8s", str(LARGE_BF16_2N), "--model", "/cache/models/Hunyuan-A52B-Instruct")
    objs = manifests(out)
    lws, service = objs["LeaderWorkerSet"], objs["Service"]
    template = lws["spec"]["leaderWorkerTemplate"]
    assert template["size"] == 2 and template["restartPolicy"] == "RecreateGroupOnPodRestart"
    leader, worker = template["leaderTemplate"]["spec"], template["workerTemplate"]["spec"]
    assert [c["name"] for c in leader["initContainers"]] == ["convert", "build"]  # a path on the volume: no fetch
    for pod in (leader, worker):
        [container] = pod["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
        assert {"name": "shm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert service["spec"]["selector"] == {"leaderworkerset.sigs.k8s.io/name": lws["metadata"]["name"],
                                           "leaderworkerset.sigs.k8s.io/worker-index": "0"}
    assert template["leaderTemplate"]["metadata"]["annotations"]["prometheus.io/port"] == "8000"
    assert objs["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    size = objs["PersistentVolumeClaim"]["spec"]["resources"]["requests"]["storage"]
    assert int(size.removesuffix("Gi")) * 2**30 >= 3 * 388_701_405_440 * 2  # source + checkpoint + engines


def test_leader_launches_one_mpi_world_and_workers_join(tmp_path):
    lws = manifests(deploy(tmp_path, "k8s", str(LARGE_BF16_2N), "--model", "/cache/models/Large"))["LeaderWorkerSet"]
    template = lws["spec"]["leaderWorkerTemplate"]
    leader = template["leaderTemplate"]["spec"]
    record = tmp_path / "calls.jsonl"
    env = fake_bin(tmp_path, record, "kubectl", "hunyuan-trtllm", "mpirun") | {"POD_NAME": "hy-0"}
    # the stand-ins return at once: the leader sees its servers stop and exits non-zero (the group restarts)
    calls = run_script(leader["containers"][0]["command"], env, record, status=1)
    assert calls[0] == ["kubectl", "wait", "--for=condition=Ready", "pod/hy-0-1", "--timeout=600s"]
    engine = "/engines/large/bf16-tp8-ep1-pp2/engine-seq32768-batch145-tok8192"
    assert calls[1] == ["hunyuan-trtllm", "triton-repo", engine, "-o", f"{engine}-triton-repo", "--flavor", "engine",
                        "--tokenizer", f"{engine}/tokenizer", "--overwrite"]
    mpirun = next(c for c in calls[2:] if c[0] == "mpirun")
    assert mpirun[mpirun.index("--host") + 1] == "hy-0:8,hy-0-1:8"
    # the OpenAI endpoint in front of rank 0's gRPC, on every interface of the leader pod
    endpoint = next(c for c in calls[2:] if c[:2] == ["hunyuan-trtllm", "serve"])
    assert endpoint[endpoint.index("--triton-grpc") + 1] == "127.0.0.1:8002"
    assert endpoint[endpoint.index("--host") + 1:endpoint.index("--host") + 5] == ["0.0.0.0", "--port", "8000",
                                                                                     "--ready-timeout"]
    assert mpirun[mpirun.index("plm_rsh_agent") + 1] == "kubessh"
    programs = " ".join(mpirun).split(" : ")
    counts = [int(p.split("-n ", 1)[1].split()[0]) for p in programs]
    assert counts == [1, 15] and sum(counts) == 8 * 2  # world = tp x pp
    assert "--http-port=8001" in programs[0] and f"--model-repository={engine}-triton-repo" in programs[0]
    assert "--load-model=tensorrt_llm" in programs[1] and "--allow-http=false" in programs[1]
    # the worker keeps running until the leader's mpirun has joined it, and stops on SIGTERM
    worker = subprocess.Popen(template["workerTemplate"]["spec"]["containers"][0]["command"])
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            worker.wait(timeout=0.5)
        worker.terminate()
        assert worker.wait(timeout=10) == 0
    finally:
        worker.kill()


def test_leader_may_exec_into_workers(tmp_path):
    objs = manifests(deploy(tmp_path, "k8s", str(LARGE_BF16_2N), "--model", "/cache/models/Large"))
    leader = objs["LeaderWorkerSet"]["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]
    assert leader["serviceAccountName"] == objs["ServiceAccount"]["metadata"]["name"]
    assert objs["RoleBinding"]["subjects"] == [{"kind": "ServiceAccount", "name": leader["serviceAccountName"]}]
    assert {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "get"]} in objs["Role"]["rules"]


def test_two_node_trtllm_serve_uses_trtllm_llmapi_launch(tmp_path):
    lws = manifests(deploy(tmp_path, "k8s", str(LARGE_BF16_2N), "--model", "/cache/models/Large",
                           "--backend", "trtllm-serve"))["LeaderWorkerSet"]
    leader = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]
    record = tmp_path / "calls.jsonl"
    env = fake_bin(tmp_path, record, "kubectl", "hunyuan-trtllm", "mpirun") | {"POD_NAME": "hy-0"}
    volume = tmp_path / "volume"  # the engines volume, relocated: the script writes the LLM-API YAML onto it
    command = [word.replace("/engines/", f"{volume}/") for word in leader["spec"]["containers"][0]["command"]]
    engine = Path(command[-1].split("ENGINE=", 1)[1].split()[0].strip("'"))
    engine.parent.mkdir(parents=True)
    calls = run_script(command, env, record, status=1)
    mpirun = next(call for call in calls if call[0] == "mpirun")
    options = Path(mpirun[mpirun.index("--extra_llm_api_options") + 1])  # on the volume, every rank sees it
    assert options == Path(f"{engine}-llm-api.yaml")
    assert yaml.safe_load(options.read_text()) == {"guided_decoding_backend": "xgrammar"}
    # our OpenAI endpoint on the pod network in front of rank 0's trtllm-serve on the leader's loopback
    endpoint = next(c for c in calls if c[:2] == ["hunyuan-trtllm", "serve"])
    assert endpoint[endpoint.index("--with") + 1] == "trtllm-serve"
    assert endpoint[endpoint.index("--trtllm-url") + 1] == "http://127.0.0.1:8001"
    assert endpoint[endpoint.index("--host") + 1:endpoint.index("--host") + 4] == ["0.0.0.0", "--port", "8000"]
    start = mpirun.index("-n")
    assert mpirun[start:start + 4] == ["-n", "16", "trtllm-llmapi-launch", "trtllm-serve"]
    assert mpirun[mpirun.index("--custom_module_dirs") + 1] == str(engine_plugin_dir())  # registers Hunyuan
    serve = mpirun[mpirun.index("trtllm-serve"):]
    assert serve[serve.index("--host") + 1:serve.index("--host") + 4] == ["127.0.0.1", "--port", "8001"]
    assert leader["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/health"


# --- compose ------------------------------------------------------------------------------------------------------

def test_compose_for_a13b_validates_and_runs_in_order(tmp_path):
    out = deploy(tmp_path, "compose", str(A13B_FP8))
    env = read_env_file((out / ".env").read_text())
    document = validate_compose(yaml.safe_load((out / "compose.yaml").read_text()), env)
    services = document["services"]
    assert list(services) == ["fetch", "convert", "build", "serve"]
    for before, after in (("fetch", "convert"), ("convert", "build"), ("build", "serve")):
        assert services[after]["depends_on"] == {before: {"condition": "service_completed_successfully"}}
    serve = services["serve"]
    [gpus] = serve["deploy"]["resources"]["reservations"]["devices"]
    assert gpus == {"driver": "nvidia", "count": 8, "capabilities": ["gpu"]}
    # published on 127.0.0.1 by default (a workstation); HUNYUAN_BIND opens them
    assert serve["ports"] == ["127.0.0.1:8000:8000", "127.0.0.1:8001:8001", "127.0.0.1:8002:8002",
                              "127.0.0.1:8003:8003"]
    assert "http://127.0.0.1:8000/health'" in serve["healthcheck"]["test"][-1]
    assert serve["command"][serve["command"].index("--port") - 2:serve["command"].index("--port") + 2] == [
        "--host", "0.0.0.0", "--port", "8000"]
    assert serve["shm_size"] and serve["image"] == "hunyuan-trtllm-serve:0.1.0"
    assert set(document["volumes"]) == {"hf-cache", "engines"}
    assert "hf-cache:/cache" in services["fetch"]["volumes"] and "engines:/engines" in serve["volumes"]
    opened = env | {"HUNYUAN_HTTP_PORT": "9000", "HUNYUAN_BIND": "0.0.0.0"}
    assert validate_compose(yaml.safe_load((out / "compose.yaml").read_text()), opened
                            )["services"]["serve"]["ports"][0] == "0.0.0.0:9000:8000"


def test_compose_with_a_host_model_dir_mounts_it(tmp_path):
    model = tmp_path / "Hunyuan-A13B-Instruct-FP8"
    model.mkdir()
    out = deploy(tmp_path, "compose", str(A13B_FP8), "--model", str(model), "--backend", "trtllm-serve")
    services = validate_compose(yaml.safe_load((out / "compose.yaml").read_text()))["services"]
    assert "fetch" not in services and "depends_on" not in services["convert"]
    assert f"{model}:/models/hunyuan-a13b-instruct-fp8:ro" in services["convert"]["volumes"]
    assert services["serve"]["ports"] == ["127.0.0.1:8000:8000"]
    assert "/health'" in services["serve"]["healthcheck"]["test"][-1]


def test_compose_refuses_a_multi_node_plan(tmp_path):
    result = run("deploy", "compose", str(LARGE_BF16_2N), "--model", "tencent/x", "-o", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "spans 2 nodes" in result.output and "deploy k8s" in result.output
    assert not (tmp_path / "o").exists()


# --- plan input and errors ----------------------------------------------------------------------------------------

def one_error(result: Any, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("text, fragment", [
    ("{not json", "not a plan JSON file"),
    ("[1, 2]", "not a plan JSON file"),
    ('{"recommended": {"tp": 8}}', "missing key 'dtype'"),
])
def test_bad_plan_file_is_one_clear_error(tmp_path, text, fragment):
    plan = tmp_path / "plan.json"
    plan.write_text(text)
    one_error(run("deploy", "k8s", str(plan), "-o", str(tmp_path / "o")), str(plan), fragment)
    assert not (tmp_path / "o").exists()


def test_plan_missing_a_nested_key_names_it(tmp_path):
    plan = json.loads(A13B_FP8.read_text())
    del plan["recommended"]["moe_ep"]
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    one_error(run("deploy", "compose", str(path), "-o", str(tmp_path / "o")), "missing key 'recommended.moe_ep'")


def test_plan_that_does_not_fit(tmp_path):
    one_error(run("deploy", "k8s", str(LARGE_NO_FIT), "-o", str(tmp_path / "o")),
              "the plan does not fit: weights:", "exceed the 80 GB")


def test_plan_file_with_plan_flags_is_refused(tmp_path):
    one_error(run("deploy", "k8s", str(A13B_FP8), "--gpus", "4", "-o", str(tmp_path / "o")), "--gpus")


def test_preset_without_a_single_checkpoint_needs_model(tmp_path):
    one_error(run("deploy", "k8s", str(LARGE_BF16_2N), "-o", str(tmp_path / "o")), "hunyuan-large", "--model")


def test_k8s_model_must_be_fetchable_or_on_the_volume(tmp_path):
    one_error(run("deploy", "k8s", str(A13B_FP8), "--model", "./local", "-o", str(tmp_path / "o")), "--model ./local")


def test_flags_path_plans_with_the_planner(tmp_path):
    pytest.importorskip("hunyuan_trtllm.builder.planner")
    from hunyuan_trtllm.builder.planner import make_plan

    out = deploy(tmp_path, "k8s", "--preset", "hunyuan-a13b", "--gpu", "h100", "--gpus", "8", "--dtype", "fp8")
    recommended = make_plan(None, "hunyuan-a13b", "h100", 8, 1, "fp8", None, None)["recommended"]
    deployment = manifests(out)["Deployment"]
    [serve] = pod_of(deployment)["containers"]
    assert serve["resources"]["limits"]["nvidia.com/gpu"] == recommended["tp"] * recommended["pp"]
    assert f"-tp{recommended['tp']}-ep{recommended['moe_ep']}-pp{recommended['pp']}/" in serve["command"][2]
    one_error(run("deploy", "k8s", "--preset", "hunyuan-a13b", "-o", str(tmp_path / "o")), "--gpu")


# --- output directory and fetch -----------------------------------------------------------------------------------

def test_output_directory_is_replaced_only_with_overwrite(tmp_path):
    out = deploy(tmp_path, "k8s", str(A13B_FP8))
    one_error(run("deploy", "k8s", str(A13B_FP8), "-o", str(out)), f"-o {out}", "--overwrite")
    assert run("deploy", "k8s", str(A13B_FP8), "--backend", "trtllm-serve", "-o", str(out), "--overwrite"
               ).exit_code == 0
    assert "trtllm-serve" in (out / "20-deployment.yaml").read_text()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp or old dirs left


def test_fetch_links_a_local_model(tmp_path):
    model, link = tmp_path / "model", tmp_path / "cache" / "models" / "m"
    model.mkdir()
    result = run("deploy", "fetch", str(model), "--link", str(link))
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and link.resolve() == model.resolve()
    other = tmp_path / "other"
    other.mkdir()
    assert run("deploy", "fetch", str(other), "--link", str(link)).exit_code == 0
    assert link.resolve() == other.resolve()
    one_error(run("deploy", "fetch", str(model), "--link", str(other)), "not a symlink")


def test_storage_flag_is_checked_and_used(tmp_path):
    claim = manifests(deploy(tmp_path, "k8s", str(A13B_FP8), "--storage", "2Ti", "--storage-class", "fast"))
    assert claim["PersistentVolumeClaim"]["spec"]["resources"]["requests"]["storage"] == "2Ti"
    assert claim["PersistentVolumeClaim"]["spec"]["storageClassName"] == "fast"
    one_error(run("deploy", "k8s", str(A13B_FP8), "--storage", "lots", "-o", str(tmp_path / "o")), "--storage lots")


def test_default_storage_covers_source_checkpoint_and_engines(tmp_path):
    claim = manifests(deploy(tmp_path, "k8s", str(A13B_FP8)))["PersistentVolumeClaim"]
    total = json.loads(A13B_FP8.read_text())["model"]["total_params"]
    assert int(claim["spec"]["resources"]["requests"]["storage"].removesuffix("Gi")) >= math.ceil(3 * total / 2**30)


@pytest.mark.parametrize("command", [["deploy"], ["deploy", "compose"], ["deploy", "k8s"], ["deploy", "fetch"]])
def test_help_has_examples(command):
    result = run(*command, "--help")
    assert result.exit_code == 0 and "Example" in result.output
