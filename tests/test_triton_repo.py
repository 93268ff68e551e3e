"""Triton model repositories: generation, protobuf validation, engine parameters, atomic writes, the reference
decoding logic. The real-server tests are in test_triton_server.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from hunyuan_trtllm.errors import ConfigError, UserError
from hunyuan_trtllm.reference.executor import ReferenceExecutor
from hunyuan_trtllm.serve import pbtxt
from hunyuan_trtllm.serve.reference_decoding import (
    Generation,
    SamplingParams,
    decode_word_list,
    encode_word_list,
    make_generator,
    next_token,
)
from hunyuan_trtllm.serve.repository import EXECUTOR_WORKER, RepoOptions, write_triton_repo
from hunyuan_trtllm.serve.triton_validate import validate_repo

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient is not installed")

PIPELINE = ["ensemble", "postprocessing", "preprocessing", "tensorrt_llm", "tensorrt_llm_bls"]
ENGINE_BUILD = {"max_batch_size": 16, "max_input_len": 1024, "max_seq_len": 2048, "max_beam_width": 1,
                "max_num_tokens": 8192, "plugin_config": {"use_paged_context_fmha": True, "paged_kv_cache": True}}


def fake_engine(path: Path, tp: int = 2, pp: int = 2, **build: object) -> Path:
    """A TensorRT-LLM 1.2 engine directory: config.json and empty rank files."""
    path.mkdir(parents=True)
    mapping = {"world_size": tp * pp, "tp_size": tp, "pp_size": pp, "moe_ep_size": tp, "moe_tp_size": 1}
    config = {"version": "1.2.1", "build_config": {**ENGINE_BUILD, **build},
              "pretrained_config": {"architecture": "HunYuanMoEV1ForCausalLM", "dtype": "bfloat16",
                                    "logits_dtype": "float32", "mapping": mapping}}
    (path / "config.json").write_text(json.dumps(config))
    for rank in range(tp * pp):
        (path / f"rank{rank}.engine").write_bytes(b"")
    return path


def load(repo: Path, model: str):
    return pbtxt.parse((repo / model / "config.pbtxt").read_text())


def params(config) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}


@pytest.fixture(scope="module")
def repos(tiny, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("repos")
    engine = fake_engine(base / "engine-dir")
    options = RepoOptions(tokenizer_dir=tiny["src"], max_input_len=32, max_seq_len=96)
    return {
        "engine": write_triton_repo(engine, base / "engine", "engine", None, True, options),
        "reference": write_triton_repo(tiny["ckpt"], base / "reference", "reference", 4, True, options),
        "llmapi": write_triton_repo(tiny["src"], base / "llmapi", "llmapi", 8, True,
                                    RepoOptions(tp=2, ep=2, kv_cache_free_gpu_mem_fraction=0.5)),
    }


# ---- every flavor ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flavor", ["engine", "reference", "llmapi"])
def test_every_config_parses_as_a_triton_model_config(repos, flavor) -> None:
    repo = repos[flavor]
    expected = ["tensorrt_llm"] if flavor == "llmapi" else PIPELINE
    assert validate_repo(repo) == expected
    for model in expected:
        config = load(repo, model)
        assert config.name == model and (repo / model / "1").is_dir()
        if config.backend == "python":
            assert (repo / model / "1" / "model.py").is_file()
    assert json.loads((repo / "repo.json").read_text())["flavor"] == flavor


@pytest.mark.parametrize("flavor", ["engine", "reference", "llmapi"])
def test_no_placeholder_anywhere(repos, flavor) -> None:
    files = [p for p in repos[flavor].rglob("*") if p.is_file()]
    assert files and not [p for p in files if "${" in p.read_text()]


def test_model_files_are_ours_and_match_the_backend(repos) -> None:
    engine, reference = repos["engine"], repos["reference"]
    assert load(engine, "tensorrt_llm").backend == "tensorrtllm"
    assert not any((engine / "tensorrt_llm" / "1").iterdir())  # the C++ backend needs no model.py
    assert load(reference, "tensorrt_llm").backend == "python"
    assert "ReferenceExecutor" in (reference / "tensorrt_llm" / "1" / "model.py").read_text()
    for repo in (engine, reference):
        assert "IncrementalDetokenizer" in (repo / "tensorrt_llm_bls" / "1" / "model.py").read_text()
        assert "HunyuanTokenizer" in (repo / "preprocessing" / "1" / "model.py").read_text()


def test_reference_llm_has_the_tensorrt_llm_interface(repos, tiny) -> None:
    engine, reference = load(repos["engine"], "tensorrt_llm"), load(repos["reference"], "tensorrt_llm")
    extra = {"num_top_log_probs", "top_log_probs", "top_log_prob_ids"}  # ours: top-k log probabilities
    for field in ("input", "output"):
        assert list(getattr(engine, field)) == [t for t in getattr(reference, field) if t.name not in extra]
    assert extra <= {t.name for t in [*reference.input, *reference.output]}
    names = {t.name for t in reference.input}
    assert {"input_ids", "input_lengths", "request_output_len", "end_id", "pad_id", "stop_words_list", "streaming",
            "temperature", "runtime_top_k", "runtime_top_p", "seed"} <= names
    assert {t.name for t in reference.input if not t.optional} == {"input_ids", "input_lengths", "request_output_len"}
    assert {"output_ids", "sequence_length", "num_input_tokens"} <= {t.name for t in reference.output}
    assert reference.model_transaction_policy.decoupled
    assert params(reference) == {"checkpoint_dir": str(tiny["ckpt"].resolve()), "max_batch_size": "4",
                                 "max_input_len": "32", "max_seq_len": "96", "exclude_input_in_output": "true",
                                 "allow_streaming": "true", "tokenizer_dir": str(tiny["src"].resolve()),
                                 "guided_decoding_backend": "xgrammar"}


# ---- engine: everything from the engine's config.json --------------------------------------------------------
def test_engine_parameters_golden(tmp_path, tiny) -> None:
    engine = fake_engine(tmp_path / "engines", tp=4, pp=2, max_batch_size=32, max_input_len=4096, max_seq_len=8192)
    repo = write_triton_repo(engine, tmp_path / "repo", "engine", None, True, RepoOptions(tokenizer_dir=tiny["src"]))
    llm = load(repo, "tensorrt_llm")
    assert params(llm) == {
        "max_beam_width": "1",
        "FORCE_CPU_ONLY_INPUT_TENSORS": "no",
        "gpt_model_type": "inflight_fused_batching",
        "gpt_model_path": str(engine.resolve()),
        "batch_scheduler_policy": "guaranteed_no_evict",
        "kv_cache_free_gpu_mem_fraction": "0.9",
        "enable_kv_cache_reuse": "true",  # the engine has paged context FMHA
        "enable_chunked_context": "false",
        "exclude_input_in_output": "true",
        "normalize_log_probs": "true",
        "decoding_mode": "top_k_top_p",
        "executor_worker_path": EXECUTOR_WORKER,
        # guided decoding (response_format, forced tool calls): xgrammar with the vocabulary written next to it
        "guided_decoding_backend": "xgrammar",
        "xgrammar_tokenizer_info_path": str(repo / "tensorrt_llm" / "xgrammar_tokenizer_info.json"),
    }
    info = json.loads((repo / "tensorrt_llm" / "xgrammar_tokenizer_info.json").read_text(encoding="utf-8"))
    assert set(info) == {"encoded_vocab", "tokenizer_str", "stop_token_ids"}  # what the C++ backend reads
    assert len(info["encoded_vocab"]) == 1003 and json.loads(info["tokenizer_str"])["decoder"]["type"] == "ByteLevel"
    assert llm.max_batch_size == 32 and list(llm.dynamic_batching.preferred_batch_size) == [32]
    assert llm.model_transaction_policy.decoupled
    assert {load(repo, m).max_batch_size for m in PIPELINE} == {32}
    assert params(load(repo, "preprocessing"))["max_input_len"] == "4096"
    assert params(load(repo, "preprocessing"))["tokenizer_dir"] == str(tiny["src"].resolve())
    assert params(load(repo, "tensorrt_llm_bls"))["tensorrt_llm_decoupled"] == "true"
    meta = json.loads((repo / "repo.json").read_text())
    assert (meta["world_size"], meta["tp"], meta["pp"]) == (8, 4, 2)


def test_engine_options_and_limits(tmp_path, tiny) -> None:
    engine = fake_engine(tmp_path / "engines", plugin_config={"use_paged_context_fmha": False})
    options = RepoOptions(tokenizer_dir=tiny["src"], batch_scheduler_policy="max_utilization",
                          kv_cache_free_gpu_mem_fraction=0.5, exclude_input_in_output=False)
    repo = write_triton_repo(engine, tmp_path / "repo", "engine", 4, False, options)
    llm = load(repo, "tensorrt_llm")
    assert llm.max_batch_size == 4 and not llm.model_transaction_policy.decoupled
    got = params(llm)
    assert (got["batch_scheduler_policy"], got["kv_cache_free_gpu_mem_fraction"]) == ("max_utilization", "0.5")
    assert (got["enable_kv_cache_reuse"], got["exclude_input_in_output"]) == ("false", "false")
    assert not load(repo, "tensorrt_llm_bls").model_transaction_policy.decoupled
    with pytest.raises(UserError, match="must be in 1..16"):
        write_triton_repo(engine, tmp_path / "r2", "engine", 17, False, options)
    with pytest.raises(UserError, match="paged_context_fmha"):
        write_triton_repo(engine, tmp_path / "r3", "engine", None, False,
                          RepoOptions(tokenizer_dir=tiny["src"], enable_kv_cache_reuse=True))


def test_engine_directory_errors(tmp_path, tiny) -> None:
    options = RepoOptions(tokenizer_dir=tiny["src"])
    engine = fake_engine(tmp_path / "e1")
    (engine / "rank3.engine").unlink()
    with pytest.raises(ConfigError, match="missing rank3.engine"):
        write_triton_repo(engine, tmp_path / "r1", "engine", None, True, options)
    with pytest.raises(ConfigError, match="not a TensorRT-LLM engine config"):
        write_triton_repo(tiny["ckpt"], tmp_path / "r2", "engine", None, True, options)
    with pytest.raises(UserError, match="needs tokenizer_dir"):
        write_triton_repo(fake_engine(tmp_path / "e2"), tmp_path / "r3", "engine", None, True)
    with pytest.raises(UserError, match="unknown flavor"):
        write_triton_repo(tiny["ckpt"], tmp_path / "r4", "vllm", None, True, options)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial repository left


# ---- streaming switches ----------------------------------------------------------------------------------------
def test_reference_without_streaming(tmp_path, tiny) -> None:
    options = RepoOptions(tokenizer_dir=tiny["src"])
    repo = write_triton_repo(tiny["ckpt"], tmp_path / "repo", "reference", None, False, options)
    llm = load(repo, "tensorrt_llm")
    assert llm.model_transaction_policy.decoupled  # the reference answers from its worker thread
    assert params(llm)["allow_streaming"] == "false" and params(llm)["max_input_len"] == str(32768 - 1)
    assert not load(repo, "tensorrt_llm_bls").model_transaction_policy.decoupled


# ---- llmapi ----------------------------------------------------------------------------------------------------
def test_llmapi_model_yaml(repos, tiny) -> None:
    repo = repos["llmapi"]
    config = load(repo, "tensorrt_llm")
    assert config.max_batch_size == 1 and config.model_transaction_policy.decoupled and config.backend == "python"
    inputs = {t.name: t for t in config.input}
    assert {"text_input", "streaming", "sampling_param_max_tokens", "sampling_param_seed"} <= set(inputs)
    # the token interface: every input TritonTokenBackend sends except the top-k alternatives, all optional
    sent = {"input_ids", "input_lengths", "request_output_len", "end_id", "pad_id", "streaming", "temperature",
            "runtime_top_k", "runtime_top_p", "seed", "stop_words_list", "repetition_penalty", "presence_penalty",
            "frequency_penalty", "return_log_probs", "guided_decoding_guide_type", "guided_decoding_guide"}
    assert sent <= set(inputs) and "num_top_log_probs" not in inputs
    assert all(t.optional for t in config.input)
    assert {"output_ids", "output_log_probs", "text_output"} <= {t.name for t in config.output}
    settings = yaml.safe_load((repo / "tensorrt_llm" / "1" / "model.yaml").read_text())
    assert settings["model"] == str(tiny["src"].resolve()) and settings["backend"] == "pytorch"
    assert (settings["tensor_parallel_size"], settings["moe_expert_parallel_size"],
            settings["moe_tensor_parallel_size"], settings["pipeline_parallel_size"]) == (2, 2, 1, 1)
    assert settings["max_batch_size"] == 8
    assert settings["kv_cache_config"] == {"free_gpu_memory_fraction": 0.5, "enable_block_reuse": True}
    assert settings["cuda_graph_config"]["max_batch_size"] == 8
    assert settings["triton_config"] == {"max_batch_size": 1, "decoupled": True}
    assert settings["guided_decoding_backend"] == "xgrammar"
    assert "from tensorrt_llm import LLM" in (repo / "tensorrt_llm" / "1" / "model.py").read_text()


def test_llmapi_refuses_engines_and_bad_layouts(tmp_path, tiny) -> None:
    with pytest.raises(UserError, match="llmapi flavor serves a Hugging Face checkpoint"):
        write_triton_repo(fake_engine(tmp_path / "e"), tmp_path / "r1", "llmapi", None, True)
    with pytest.raises(UserError, match="ep 3 must divide tp 2"):
        write_triton_repo(tiny["src"], tmp_path / "r2", "llmapi", None, True, RepoOptions(tp=2, ep=3))


# ---- atomic writes and validation -------------------------------------------------------------------------------
def test_existing_output_is_kept_unless_overwrite(tmp_path, tiny) -> None:
    options = RepoOptions(tokenizer_dir=tiny["src"])
    out = write_triton_repo(tiny["ckpt"], tmp_path / "repo", "reference", 2, True, options)
    (out / "marker").write_text("old")
    with pytest.raises(UserError, match="already exists"):
        write_triton_repo(tiny["ckpt"], out, "reference", 3, True, options)
    assert (out / "marker").is_file()
    write_triton_repo(tiny["ckpt"], out, "reference", 3, True, options, overwrite=True)
    assert not (out / "marker").exists() and load(out, "tensorrt_llm").max_batch_size == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_validate_repo_lists_every_problem(tmp_path, repos) -> None:
    repo = Path(shutil.copytree(repos["reference"], tmp_path / "broken"))
    (repo / "postprocessing" / "1" / "model.py").unlink()
    text = (repo / "preprocessing" / "config.pbtxt").read_text()
    (repo / "preprocessing" / "config.pbtxt").write_text(text.replace('"allow_special_tokens"', '"${x}"'))
    ensemble = (repo / "ensemble" / "config.pbtxt").read_text()
    (repo / "ensemble" / "config.pbtxt").write_text(ensemble.replace('value: "_TOKENS_BATCH"', 'value: "_NOPE"', 1))
    (repo / "tensorrt_llm_bls" / "config.pbtxt").write_text("max_batch_size: ${triton_max_batch_size}\n")
    with pytest.raises(UserError) as info:
        validate_repo(repo)
    message = str(info.value)
    assert "invalid Triton model repository" in message
    for expected in ("unfilled placeholder", "postprocessing: python backend without 1/model.py",
                     "tensorrt_llm_bls/config.pbtxt: not a valid Triton model config",
                     "'_TOKENS_BATCH' is not an ensemble input or an earlier step's output"):
        assert expected in message


def test_pbtxt_render_round_trip() -> None:
    config = {"name": "m", "backend": "python", "max_batch_size": 2,
              "input": [pbtxt.tensor("x", "INT32", [1], optional=True, scalar=True)],
              "output": [pbtxt.tensor("y", "STRING", [-1])],
              "parameters": pbtxt.parameters({"path": 'a "quoted"\\path', "zh": "你好"}),
              "dynamic_batching": {}, "instance_group": pbtxt.instance_group(2)}
    parsed = pbtxt.parse(pbtxt.render(config))
    assert parsed.input[0].optional and list(parsed.input[0].reshape.shape) == []
    assert parsed.parameters["path"].string_value == 'a "quoted"\\path'
    assert parsed.parameters["zh"].string_value == "你好"
    assert parsed.instance_group[0].count == 2 and parsed.HasField("dynamic_batching")
    with pytest.raises(UserError, match="not a valid Triton model config"):
        pbtxt.parse("max_batch_size: ${n}")


# ---- the reference decoding logic --------------------------------------------------------------------------------
def test_word_lists_use_the_tensorrt_llm_layout() -> None:
    words = [[5, 6], [7], [8, 9, 10]]
    array = encode_word_list(words + [[]])
    assert array.tolist() == [[5, 6, 7, 8, 9, 10], [2, 3, 6, -1, -1, -1]]
    assert decode_word_list(array) == words
    assert encode_word_list([]).tolist() == [[0], [-1]] and decode_word_list(encode_word_list([])) == []


def test_sampling_rules() -> None:
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0, 0.5])
    assert next_token(logits, SamplingParams(), make_generator(0)) == 1  # no top_k / top_p: greedy
    assert next_token(logits, SamplingParams(top_k=1, temperature=5.0), make_generator(0)) == 1
    assert next_token(logits, SamplingParams(top_p=1e-6, temperature=5.0), make_generator(0)) == 1
    draws = [next_token(logits, SamplingParams(top_k=2, temperature=2.0, seed=s), make_generator(s))
             for s in range(40)]
    assert set(draws) == {1, 2}
    again = [next_token(logits, SamplingParams(top_k=2, temperature=2.0, seed=s), make_generator(s))
             for s in range(40)]
    assert draws == again
    with pytest.raises(ValueError, match="runtime_top_p"):
        SamplingParams(top_p=1.5).check()


def test_generation_is_stepwise_argmax(tiny) -> None:
    executor = ReferenceExecutor(tiny["ckpt"])
    prompt = [5, 17, 99, 250]
    run = Generation(prompt=prompt, max_new_tokens=6, end_id=-1)
    produced = [run.step(executor) for _ in range(6)]
    cache, expected = executor.new_cache(), []
    logits = executor.forward(prompt, cache)[-1]
    for _ in range(6):
        expected.append(int(logits.argmax()))
        logits = executor.forward([expected[-1]], cache)[-1]
    assert produced == expected == run.tokens and run.finished
    word = expected[1:3]
    stop = Generation(prompt=prompt, max_new_tokens=6, end_id=-1, stop_words=[word])
    while not stop.finished:
        stop.step(executor)
    first = next(i for i in range(2, 6) if expected[i - 1 : i + 1] == word)
    assert stop.tokens == expected[: first + 1]  # the stop word is part of the output
    ended = Generation(prompt=prompt, max_new_tokens=6, end_id=expected[2])
    while not ended.finished:
        ended.step(executor)
    assert ended.tokens == expected[: expected.index(expected[2])]  # end_id is not
    banned = Generation(prompt=prompt, max_new_tokens=1, end_id=-1, bad_words=[[expected[0]]])
    assert banned.step(executor) != expected[0]


def test_multi_gpu_engines_start_in_orchestrator_mode(repos, tmp_path, tiny, monkeypatch) -> None:
    """One tritonserver serves a multi-rank engine only in the backend's orchestrator mode (it spawns the ranks
    through executor_worker_path); single-rank engines and the llmapi flavor need no such switch."""
    from hunyuan_trtllm.serve.launch import triton_environment

    monkeypatch.delenv("TRTLLM_ORCHESTRATOR", raising=False)
    assert triton_environment(repos["engine"])["TRTLLM_ORCHESTRATOR"] == "1"  # tp 2 x pp 2
    assert params(load(repos["engine"], "tensorrt_llm"))["executor_worker_path"] == EXECUTOR_WORKER
    single = write_triton_repo(fake_engine(tmp_path / "one", tp=1, pp=1), tmp_path / "single", "engine",
                               options=RepoOptions(tokenizer_dir=tiny["src"]))
    for repo in (single, repos["llmapi"], repos["reference"]):
        assert "TRTLLM_ORCHESTRATOR" not in triton_environment(repo)
