"""`serve --with trtllm-serve|triton` and `triton-repo` as a user runs them (fake servers stand in for the GPU
images' binaries: they record their command line and answer health checks)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request

import yaml
from click.testing import CliRunner

from hunyuan_trtllm.cli import cli

FAKE = textwrap.dedent("""\
    #!{python}
    import http.server, json, os, sys
    argv = sys.argv[1:]
    record = {{"argv": argv}}
    for i, arg in enumerate(argv):
        if arg == "--extra_llm_api_options":
            record["yaml"] = open(argv[i + 1]).read()
        if arg.startswith("--model-repository="):
            record["repo"] = sorted(os.listdir(arg.split("=", 1)[1]))
    open(os.environ["FAKE_RECORD"], "w").write(json.dumps(record))
    port = int(argv[argv.index("--port") + 1]) if "--port" in argv else int(
        next(a for a in argv if a.startswith("--http-port=")).split("=")[1])
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
        def log_message(self, *args):
            pass
    http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_binary(bin_dir, name: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(FAKE.format(python=sys.executable))
    path.chmod(0o755)


def run_until_ready_then_interrupt(args: list[str], env: dict[str, str], ready_url: str) -> str:
    process = subprocess.Popen([sys.executable, "-m", "hunyuan_trtllm", *args], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(ready_url, timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        time.sleep(3.0)  # let the launcher notice readiness and print its banner
        os.killpg(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    leftovers = subprocess.run(["pgrep", "-g", str(process.pid)], capture_output=True, text=True).stdout.split()
    assert not leftovers, output
    return output


def test_serve_with_trtllm_serve(tiny_models, tmp_path):
    fake_binary(tmp_path / "bin", "trtllm-serve")
    port = free_port()
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "FAKE_RECORD": str(tmp_path / "r")}
    output = run_until_ready_then_interrupt(
        ["serve", str(tiny_models["a13b"]), "--with", "trtllm-serve", "--port", str(port), "--tp", "2", "--ep", "2",
         "--kv-cache-dtype", "fp8"], env, f"http://127.0.0.1:{port}/health")
    record = json.loads((tmp_path / "r").read_text())
    assert record["argv"][:3] == [str(tiny_models["a13b"]), "--backend", "pytorch"]
    extra = yaml.safe_load(record["yaml"])
    assert extra["kv_cache_config"]["dtype"] == "fp8" and extra["moe_config"] == {"backend": "CUTLASS"}
    assert f"http://127.0.0.1:{port}/v1" in output


def test_serve_with_triton_on_engines(tmp_path):
    engines = tmp_path / "engines"
    engines.mkdir()
    build = {"max_batch_size": 16, "max_input_len": 512, "max_seq_len": 1024, "max_beam_width": 1,
             "plugin_config": {"use_paged_context_fmha": True}}
    pretrained = {"architecture": "HunYuanMoEV1ForCausalLM", "dtype": "bfloat16", "logits_dtype": "float32",
                  "mapping": {"tp_size": 2, "pp_size": 1, "world_size": 2}}
    (engines / "config.json").write_text(json.dumps({"build_config": build, "pretrained_config": pretrained}))
    for rank in range(2):
        (engines / f"rank{rank}.engine").write_bytes(b"")
    tokenizer = tmp_path / "tok"
    from hunyuan_trtllm.synth.checkpoint import synth_checkpoint

    synth_checkpoint(tokenizer, "a13b")
    fake_binary(tmp_path / "bin", "tritonserver")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "FAKE_RECORD": str(tmp_path / "r")}
    port, api = free_port(), free_port()
    output = run_until_ready_then_interrupt(["serve", str(engines), "--with", "triton", "--tokenizer", str(tokenizer),
                                             "--triton-port", str(port), "--port", str(api)], env,
                                            f"http://127.0.0.1:{api}/v1/models")
    record = json.loads((tmp_path / "r").read_text())
    assert record["repo"] == ["ensemble", "postprocessing", "preprocessing", "repo.json", "tensorrt_llm",
                              "tensorrt_llm_bls"]
    assert f"--http-port={port}" in record["argv"] and f"--metrics-port={port + 2}" in record["argv"]
    assert {f"--{kind}-address=127.0.0.1" for kind in ("http", "grpc", "metrics")} <= set(record["argv"])
    # the OpenAI endpoint runs in front of Triton (its gRPC port), on --port
    flat = " ".join(output.split())  # the console wraps long lines
    assert f"OpenAI endpoint: http://127.0.0.1:{api}/v1" in flat and f"gRPC 127.0.0.1:{port + 1}" in flat


def test_serve_with_triton_on_an_hf_checkpoint(tiny_models, tmp_path):
    """An HF checkpoint gets the llmapi repository, with the OpenAI endpoint in front of it as for engines."""
    fake_binary(tmp_path / "bin", "tritonserver")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "FAKE_RECORD": str(tmp_path / "r")}
    port, api = free_port(), free_port()
    output = run_until_ready_then_interrupt(["serve", str(tiny_models["a13b"]), "--with", "triton", "--tp", "2",
                                             "--triton-port", str(port), "--port", str(api)], env,
                                            f"http://127.0.0.1:{api}/v1/models")
    record = json.loads((tmp_path / "r").read_text())
    assert record["repo"] == ["repo.json", "tensorrt_llm"] and f"--http-port={port}" in record["argv"]
    flat = " ".join(output.split())
    assert f"OpenAI endpoint: http://127.0.0.1:{api}/v1" in flat and f"gRPC 127.0.0.1:{port + 1}" in flat
    assert "without the OpenAI endpoint" not in flat


def test_missing_binaries_and_unservable_inputs(tiny_models, tmp_path):
    runner = CliRunner()
    env = {"PATH": str(tmp_path)}  # nothing on PATH
    result = runner.invoke(cli, ["serve", str(tiny_models["a13b"])], env=env)
    assert result.exit_code == 2 and "trtllm-serve not found" in result.stderr
    result = runner.invoke(cli, ["serve", str(tiny_models["large"]), "--kv-cache-dtype", "fp8"])
    assert result.exit_code == 2 and "not supported for Hunyuan-Large" in result.stderr
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"architecture": "HunYuanMoEV1ForCausalLM", "mapping": {}}))
    for flags in (["--with", "triton", "--trtllm-url", "http://127.0.0.1:8001"],
                  ["--triton-grpc", "127.0.0.1:8002"], ["--dry-run", "--trtllm-url", "http://x"]):
        result = runner.invoke(cli, ["serve", str(tiny_models["a13b"]), *flags])
        assert result.exit_code == 2 and "use it with --with" in result.stderr, flags
    result = runner.invoke(cli, ["serve", str(ckpt), "--with", "triton"])
    assert result.exit_code == 2 and "--dry-run" in result.stderr


def test_triton_repo_command(tiny_models, tmp_path):
    from hunyuan_trtllm.checkpoints.convert import convert
    from hunyuan_trtllm.checkpoints.mapping import Mapping

    ckpt = tmp_path / "ckpt"
    convert(tiny_models["dense"], ckpt, Mapping(tp=2))
    runner = CliRunner()
    result = runner.invoke(cli, ["triton-repo", str(ckpt), "-o", str(tmp_path / "repo"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["flavor"] == "reference" and data["world_size"] == 2 and "tensorrt_llm_bls" in data["models"]
    again = runner.invoke(cli, ["triton-repo", str(ckpt), "-o", str(tmp_path / "repo")])
    assert again.exit_code == 2 and "already exists" in again.stderr
    llmapi = runner.invoke(cli, ["triton-repo", str(tiny_models["a13b"]), "-o", str(tmp_path / "llm"), "--tp", "2",
                                 "--ep", "2", "--json"])
    assert json.loads(llmapi.output)["models"] == ["tensorrt_llm"]
    settings = yaml.safe_load((tmp_path / "llm" / "tensorrt_llm" / "1" / "model.yaml").read_text())
    assert settings["moe_expert_parallel_size"] == 2 and settings["tensor_parallel_size"] == 2
    assert settings["trust_remote_code"] is False  # never run the checkpoint's code unless asked


def test_bad_listen_address_is_one_error_line_before_anything_starts(tiny, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        for args, message in ((["--port", "99999"], "error: port 99999 is not a TCP port"),
                              (["--port", str(taken)], f"error: cannot listen on 127.0.0.1:{taken}"),
                              (["--host", "no.such.host.invalid"], "error: cannot listen on no.such.host.invalid")):
            done = subprocess.run([sys.executable, "-m", "hunyuan_trtllm", "serve", str(tiny["ckpt"]), "--dry-run",
                                   *args], capture_output=True, text=True, timeout=120, env={**os.environ,
                                                                                          "TMPDIR": str(tmp_path)})
            assert done.returncode == 2 and done.stdout == "", done
            assert done.stderr.splitlines() == [done.stderr.strip()] and done.stderr.startswith(message), done.stderr
    assert not list(tmp_path.iterdir())  # nothing was started or written
