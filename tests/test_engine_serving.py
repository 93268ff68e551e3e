"""Serving TensorRT engines and the Hunyuan-Large PyTorch module: what TensorRT-LLM 1.2 does in its own process and
in its MPI workers, reproduced in subprocesses that import only what those processes import.

- trtllm-serve's TensorRT backend reads the engine's config.json through ``MODEL_MAP`` in its process and in the
  rank-0 worker; our command imports a registration package (``--custom_module_dirs``) that also hands the
  registration to the workers through the ``MODEL_CLASS_MAPPING`` the proxy pickles into them;
- an engine's KV-cache dtype is fixed at build time (``kv_cache_config.dtype`` must stay auto);
- bfloat16 logits are refused (the C++ runtime returns float32/float16);
- Hunyuan-Large's CLA consumer without QK-norm (RoPE fused into the attention backend) does not touch the
  ``rotary_emb`` that TensorRT-LLM only creates when RoPE is not fused; and the PyTorch model class reaches the
  workers the same way (``MODEL_CLASS_MAPPING`` by reference).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from hunyuan_trtllm.checkpoints.mapping import Mapping
from hunyuan_trtllm.checkpoints.spec import parse_spec
from hunyuan_trtllm.checkpoints.trtllm_config import trtllm_config
from hunyuan_trtllm.errors import ConfigError, UserError
from hunyuan_trtllm.serve.repository import read_engine_facts
from hunyuan_trtllm.serve.trtllm_serve import ServeOptions, detect_target, llm_api_options, trtllm_serve_command
from hunyuan_trtllm.synth.checkpoint import synth_config

from .standin import FAKE_TRTLLM


def engine_dir(path: Path, kv_fp8: bool = False, logits_dtype: str = "float32") -> Path:
    """A TensorRT-LLM 1.2 engine directory of the tiny A13B (config.json, empty rank files)."""
    quantization = {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"} if kv_fp8 else None
    pretrained = trtllm_config(parse_spec(synth_config("a13b", "tiny", dtype="bfloat16")), Mapping(),
                               torch.bfloat16, quantization) | {"logits_dtype": logits_dtype}
    build = {"max_batch_size": 8, "max_input_len": 64, "max_seq_len": 128, "max_beam_width": 1,
             "plugin_config": {"paged_kv_cache": True, "use_paged_context_fmha": True}}
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"version": "1.2.1", "pretrained_config": pretrained,
                                                  "build_config": build}))
    (path / "rank0.engine").write_bytes(b"")
    return path


def run_python(code: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


# trtllm-serve's process: TensorRT-LLM first, then each --custom_module_dirs entry the way
# import_custom_module_from_dir imports it (its parent on sys.path, then the directory's name), then the engine's
# config.json through MODEL_MAP; the MODEL_CLASS_MAPPING the proxy would hand to the workers is pickled to argv[3].
SERVER = """
    import importlib, pickle, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    import tensorrt_llm
    from tensorrt_llm.builder import EngineConfig
    from tensorrt_llm._torch.models.modeling_auto import MODEL_CLASS_MAPPING
    for directory in sys.argv[4:]:
        sys.path.insert(0, str(Path(directory).parent))
        importlib.import_module(Path(directory).name)
    print(EngineConfig.from_json_file(sys.argv[2]).pretrained_config.architecture)
    Path(sys.argv[3]).write_bytes(pickle.dumps(dict(MODEL_CLASS_MAPPING)))
"""
# an MPI worker: TensorRT-LLM, the pickled mapping (worker_main's MODEL_CLASS_MAPPING.update), then what the rank-0
# worker does with the engine directory (EngineConfig.from_json_file).
WORKER = """
    import pickle, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    import tensorrt_llm
    from tensorrt_llm.builder import EngineConfig
    from tensorrt_llm._torch.models.modeling_auto import MODEL_CLASS_MAPPING
    MODEL_CLASS_MAPPING.update(**pickle.loads(Path(sys.argv[3]).read_bytes()))
    print(EngineConfig.from_json_file(sys.argv[2]).pretrained_config.architecture)
"""


def test_trtllm_serve_engine_command_registers_hunyuan_in_server_and_workers(tmp_path):
    engines = engine_dir(tmp_path / "engines")
    target = detect_target(engines)
    command = trtllm_serve_command(target, ServeOptions(), tmp_path / "extra.yaml")
    assert "--trust_remote_code" not in command  # only when the user asks
    assert "--trust_remote_code" in trtllm_serve_command(target, ServeOptions(trust_remote_code=True), tmp_path / "x")
    dirs = [command[i + 1] for i, arg in enumerate(command) if arg == "--custom_module_dirs"]
    assert dirs, "the engine command imports nothing that registers the Hunyuan architectures"
    handover = tmp_path / "mapping.pickle"
    architecture = target.engine_config["pretrained_config"]["architecture"]
    args = (str(FAKE_TRTLLM), str(engines / "config.json"), str(handover))
    assert run_python(SERVER, *args, *dirs).split() == [architecture]
    assert run_python(WORKER, *args).split() == [architecture]


def test_worker_without_the_handover_cannot_read_the_engine(tmp_path):
    """The failure the hand-over prevents: a worker whose MODEL_MAP lacks Hunyuan (KeyError in from_dict)."""
    engines = engine_dir(tmp_path / "engines")
    (tmp_path / "mapping.pickle").write_bytes(__import__("pickle").dumps({}))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(WORKER), str(FAKE_TRTLLM),
                           str(engines / "config.json"), str(tmp_path / "mapping.pickle")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "KeyError" in done.stderr


def test_engine_kv_cache_dtype_is_fixed_at_build_time(tmp_path):
    fp8_engine = detect_target(engine_dir(tmp_path / "fp8", kv_fp8=True))
    kv_cache = llm_api_options(fp8_engine, ServeOptions(kv_cache_dtype="fp8"))["kv_cache_config"]
    assert "dtype" not in kv_cache  # TrtLlmArgs requires kv_cache_config.dtype == "auto"
    bf16_engine = detect_target(engine_dir(tmp_path / "bf16"))
    with pytest.raises(UserError, match="built without an FP8 KV cache"):
        llm_api_options(bf16_engine, ServeOptions(kv_cache_dtype="fp8"))


def test_bfloat16_logits_are_refused(tmp_path):
    assert read_engine_facts(engine_dir(tmp_path / "fp32")).logits_dtype == "FP32"
    with pytest.raises(ConfigError, match="logits_dtype 'bfloat16'"):
        read_engine_facts(engine_dir(tmp_path / "bf16", logits_dtype="bfloat16"))


# A TensorRT-LLM stand-in for importing modeling_large: every tensorrt_llm module exists, every name in it is a
# plain class (subclassable, callable as a decorator), register_auto_model fills MODEL_CLASS_MAPPING.
AUTO_STUB = """
    import importlib.abc, importlib.machinery, sys, types
    class _Stub:
        def __init__(self, *args, **kwargs):
            pass
        def __call__(self, obj=None, *args, **kwargs):
            return obj
    class _Module(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            value = type(name, (_Stub,), {})
            setattr(self, name, value)
            return value
    class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path, target=None):
            if name == "tensorrt_llm" or name.startswith("tensorrt_llm."):
                return importlib.machinery.ModuleSpec(name, self, is_package=True)
        def create_module(self, spec):
            module = _Module(spec.name)
            module.__path__ = []
            return module
        def exec_module(self, module):
            if module.__name__ == "tensorrt_llm":
                module.__version__ = "1.2.1"
            if module.__name__ == "tensorrt_llm._torch.models.modeling_auto":
                module.MODEL_CLASS_MAPPING = {}
            if module.__name__ == "tensorrt_llm._torch.models.modeling_utils":
                def register_auto_model(name):
                    def register(cls):
                        sys.modules["tensorrt_llm._torch.models.modeling_auto"].MODEL_CLASS_MAPPING[name] = cls
                        return cls
                    return register
                module.register_auto_model = register_auto_model
    sys.meta_path.insert(0, _Finder())
    import tensorrt_llm
    from tensorrt_llm._torch.models.modeling_auto import MODEL_CLASS_MAPPING
"""


def test_large_consumer_without_qk_norm_leaves_rope_to_the_backend():
    """Without QK-norm TensorRT-LLM fuses RoPE into the attention op and creates no ``rotary_emb``: the consumer
    passes Q as it is with the producer's (likewise unrotated) K and V, and the backend rotates both."""
    code = AUTO_STUB + """
    import torch
    from hunyuan_trtllm.plugins.pytorch.cla import SharedKV
    from hunyuan_trtllm.plugins.pytorch.modeling_large import HunYuanLargeAttention
    attention = HunYuanLargeAttention.__new__(HunYuanLargeAttention)
    shared = SharedKV(producer=0)
    q, k, v = torch.randn(3, 32), torch.randn(3, 16), torch.randn(3, 16)
    shared.put(k, v)
    vars(attention).update(shared_kv=shared, releases_shared_kv=True, use_qk_norm=False, rope_fusion=True,
                           head_dim=8, q_size=32)  # no rotary_emb: TensorRT-LLM creates it only without fusion
    out = attention._consumer_qkv(q, torch.arange(3))
    print(all(torch.equal(a, b) for a, b in zip(out, (q, k, v))))
    """
    assert run_python(code).split() == ["True"]


def test_large_model_class_reaches_the_workers(tmp_path):
    """TensorRT-LLM's proxy pickles MODEL_CLASS_MAPPING into each worker: a worker importing nothing of ours gets
    HunYuanForCausalLM (and transformers' ``hunyuan`` config) by unpickling it."""
    plugin_dir = Path(__file__).resolve().parents[1] / "hunyuan_trtllm" / "plugins" / "pytorch" / "custom_module"
    server = AUTO_STUB + """
    import importlib, pickle
    sys.path.insert(0, sys.argv[1])
    importlib.import_module("hunyuan_large_trtllm")
    open(sys.argv[2], "wb").write(pickle.dumps(dict(MODEL_CLASS_MAPPING)))
    """
    worker = AUTO_STUB + """
    import pickle
    MODEL_CLASS_MAPPING.update(**pickle.loads(open(sys.argv[1], "rb").read()))
    cls = MODEL_CLASS_MAPPING["HunYuanForCausalLM"]
    from transformers import CONFIG_MAPPING
    print(cls.__module__, "hunyuan" in CONFIG_MAPPING)
    """
    run_python(server, str(plugin_dir), str(tmp_path / "mapping.pickle"))
    assert run_python(worker, str(tmp_path / "mapping.pickle")).split() == [
        "hunyuan_trtllm.plugins.pytorch.modeling_large", "True"]
