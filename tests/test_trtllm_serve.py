"""trtllm-serve: the LLM-API YAML and command line per backend, and a clean process lifecycle."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

import hunyuan_trtllm
from hunyuan_trtllm.errors import UserError
from hunyuan_trtllm.serve.process import start_process_group, stop_process_group, wait_ready
from hunyuan_trtllm.serve.trtllm_serve import (
    ServeOptions,
    detect_target,
    llm_api_options,
    trtllm_serve_command,
    write_llm_api_options,
)


def test_hf_moe_checkpoint_uses_pytorch_backend(tiny_models, tmp_path):
    target = detect_target(tiny_models["a13b"])
    assert target.backend == "pytorch"
    options = ServeOptions(tp=4, ep=4, kv_cache_dtype="fp8", max_batch_size=32)
    extra = yaml.safe_load(write_llm_api_options(target, options, tmp_path / "extra.yaml").read_text())
    assert extra["kv_cache_config"] == {"free_gpu_memory_fraction": 0.9, "enable_block_reuse": True, "dtype": "fp8"}
    assert extra["cuda_graph_config"] == {"enable_padding": True, "max_batch_size": 32}
    assert extra["moe_config"] == {"backend": "CUTLASS"}
    assert extra["enable_attention_dp"] is True  # tp 4 > 2 KV heads: attention TP would duplicate KV heads
    command = trtllm_serve_command(target, options, tmp_path / "extra.yaml")
    assert command[:4] == ["trtllm-serve", str(tiny_models["a13b"]), "--backend", "pytorch"]
    flags = dict(zip(command[4::2], command[5::2], strict=False))
    assert flags["--tp_size"] == "4" and flags["--ep_size"] == "4" and flags["--host"] == "127.0.0.1"


def test_attention_dp_rule(tiny_models):
    target = detect_target(tiny_models["a13b"])  # 2 KV heads
    assert llm_api_options(target, ServeOptions(tp=2, max_batch_size=8))["enable_attention_dp"] is False
    assert llm_api_options(target, ServeOptions(tp=2, max_batch_size=256))["enable_attention_dp"] is True
    assert llm_api_options(target, ServeOptions(tp=4, attention_dp="off"))["enable_attention_dp"] is False
    dense = llm_api_options(detect_target(tiny_models["dense"]), ServeOptions(tp=2))
    assert "enable_attention_dp" not in dense and "moe_config" not in dense


def test_engine_dir_uses_tensorrt_backend(tmp_path):
    engines = tmp_path / "engines"
    engines.mkdir()
    (engines / "config.json").write_text(json.dumps({"build_config": {"max_batch_size": 8},
                                                     "pretrained_config": {"architecture": "HunYuanMoEV1ForCausalLM"}}))
    (engines / "rank0.engine").write_bytes(b"")
    target = detect_target(engines)
    assert target.backend == "tensorrt"
    assert llm_api_options(target, ServeOptions()) == {
        "kv_cache_config": {"free_gpu_memory_fraction": 0.9, "enable_block_reuse": True},
        "guided_decoding_backend": "xgrammar"}  # response_format / forced tool calls through TensorRT-LLM
    assert "guided_decoding_backend" not in llm_api_options(target, ServeOptions(guided_decoding=False))
    command = trtllm_serve_command(target, ServeOptions(), tmp_path / "x.yaml")
    assert "--tp_size" not in command and command[command.index("--tokenizer") + 1] == str(engines)


def test_large_runs_our_pytorch_model(tiny_models, tmp_path):
    target = detect_target(tiny_models["large"])
    command = trtllm_serve_command(target, ServeOptions(tp=2), tmp_path / "x.yaml")
    plugin = Path(command[command.index("--custom_module_dirs") + 1])  # trtllm-serve imports it as a package
    assert plugin == Path(hunyuan_trtllm.__file__).parent / "plugins" / "pytorch" / "custom_module" / \
        "hunyuan_large_trtllm" and (plugin / "__init__.py").is_file()
    assert command[:4] == ["trtllm-serve", str(tiny_models["large"]), "--backend", "pytorch"]
    native = trtllm_serve_command(detect_target(tiny_models["a13b"]), ServeOptions(), tmp_path / "x.yaml")
    assert "--custom_module_dirs" not in native
    assert llm_api_options(target, ServeOptions())["moe_config"] == {"backend": "CUTLASS"}  # runs our routing
    with pytest.raises(UserError, match="FP8 KV cache is not supported for Hunyuan-Large"):
        llm_api_options(target, ServeOptions(kv_cache_dtype="fp8"))


def test_refusals(tiny_models, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"architecture": "HunYuanMoEV1ForCausalLM", "mapping": {}}))
    with pytest.raises(UserError, match="build engines first"):
        detect_target(ckpt)


FAKE_SERVER = textwrap.dedent("""
    import http.server, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # a worker, like MPI ranks
    print(child.pid, flush=True)
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if time.monotonic() > READY_AT else 503)
            self.end_headers()
        def log_message(self, *args):
            pass
    READY_AT = time.monotonic() + 0.5
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
""")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_server_lifecycle_leaves_no_orphans(tmp_path):
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    port = free_port()
    log = (tmp_path / "out.txt").open("w")
    process = subprocess.Popen([sys.executable, str(script), str(port)], stdout=log, start_new_session=True)
    wait_ready(process, f"http://127.0.0.1:{port}/health", timeout=20)
    child = int((tmp_path / "out.txt").read_text().split()[0])
    stop_process_group(process, grace=2)
    assert process.poll() is not None
    time.sleep(0.2)
    assert not alive(child)  # the worker went with its group


def test_wait_ready_reports_an_early_exit():
    process = start_process_group([sys.executable, "-c", "import sys; sys.exit(3)"])
    with pytest.raises(UserError, match="exited with code 3"):
        wait_ready(process, "http://127.0.0.1:9/health", timeout=10)
    with pytest.raises(UserError, match="not found on PATH"):
        start_process_group(["definitely-not-a-real-binary-xyz"])
