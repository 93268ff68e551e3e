"""convert --parallel-embedding: TensorRT-LLM's ``use_parallel_embedding`` (``embedding_sharding_dim`` 0).

Each tp rank holds ceil(V/tp) rows of the vocabulary embedding, rank r rows r*ceil(V/tp)... with zero rows past V
(TensorRT-LLM's Embedding declares ceil(V/tp) rows per rank, and its converters zero-pad V to a multiple of tp);
the reference executor looks ids up on the rank that holds them and all-reduces, as the engine does. Logits must
be those of the golden fixtures and of the replicated layout; the planner's bytes must be the files' bytes.
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from hunyuan_trtllm.builder.checkpoint import open_checkpoint
from hunyuan_trtllm.builder.planner_costs import parallel_embedding_saving, rank_costs
from hunyuan_trtllm.checkpoints.convert import convert
from hunyuan_trtllm.checkpoints.mapping import Mapping
from hunyuan_trtllm.checkpoints.safetensors_io import read_header
from hunyuan_trtllm.checkpoints.source import open_source
from hunyuan_trtllm.cli import cli
from hunyuan_trtllm.reference.executor import ReferenceExecutor

from .conftest import golden, golden_logits

EMBEDDING = "transformer.vocab_embedding.weight"
ODD_VOCAB = 1022  # not a multiple of 4: the last rank of tp 4 carries two zero rows


@pytest.fixture(scope="module")
def odd_vocab(tmp_path_factory):
    """The golden tiny A13B with its (tied) vocabulary cut to 1022 rows: the logits are the golden ones' first
    1022 columns, and tp 4 needs padding."""
    path = golden("a13b-tiny")
    tensors = load_file(path / "model.safetensors")
    tensors["model.embed_tokens.weight"] = tensors["model.embed_tokens.weight"][:ODD_VOCAB].contiguous()
    model = tmp_path_factory.mktemp("odd-vocab") / "a13b"
    model.mkdir()
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((path / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "vocab_size": ODD_VOCAB}))
    return model


@pytest.mark.parametrize(("name", "tp", "ep", "pp"), [("a13b-tiny", 2, 2, 1), ("a13b-tiny", 4, 2, 1),
                                                       ("large-tiny", 2, 1, 2)])
def test_logits_equal_with_and_without_it(name, tp, ep, pp, tmp_path):
    path = golden(name)
    prompts, expected = golden_logits(path)
    mapping = Mapping(tp=tp, pp=pp, moe_ep=ep)
    convert(path, tmp_path / "whole", mapping, dtype="float32")
    convert(path, tmp_path / "split", mapping, dtype="float32", parallel_embedding=True)
    whole, split = ReferenceExecutor(tmp_path / "whole"), ReferenceExecutor(tmp_path / "split")
    assert split.parallel_embedding and not whole.parallel_embedding
    for key, ids in prompts.items():
        logits = split.forward(ids)
        assert torch.equal(logits, whole.forward(ids)), key  # the lookup is exact: zeros added to one row
        assert (logits - expected[key]).abs().max().item() <= 1e-4, key


@pytest.mark.parametrize("tp", [2, 4])
def test_rows_are_split_and_padded(odd_vocab, tmp_path, tp):
    out = tmp_path / "ckpt"
    convert(odd_vocab, out, Mapping(tp=tp, moe_ep=2), dtype="float32", parallel_embedding=True)
    config = json.loads((out / "config.json").read_text())
    assert (config["use_parallel_embedding"], config["embedding_sharding_dim"]) == (True, 0)
    source = open_source(odd_vocab).get("model.embed_tokens.weight")
    rows = -(-ODD_VOCAB // tp)
    shards = [load_file(out / f"rank{r}.safetensors")[EMBEDDING] for r in range(tp)]
    assert all(s.shape == (rows, source.shape[1]) for s in shards)
    joined = torch.cat(shards)
    assert torch.equal(joined[:ODD_VOCAB], source) and not joined[ODD_VOCAB:].any()
    for r in range(tp):  # tied: lm_head is the same rows, so the engine can share one copy per rank
        assert torch.equal(load_file(out / f"rank{r}.safetensors")["lm_head.weight"], shards[r])
    prompts, expected = golden_logits(golden("a13b-tiny"))
    executor = ReferenceExecutor(out)
    for key, ids in prompts.items():
        assert (executor.forward(ids) - expected[key][:, :ODD_VOCAB]).abs().max().item() <= 1e-4, key


def test_planner_bytes_are_the_written_bytes(odd_vocab, tmp_path):
    mapping = Mapping(tp=4, moe_ep=2)
    written = {}
    for parallel in (False, True):
        out = tmp_path / f"parallel-{parallel}"
        convert(odd_vocab, out, mapping, dtype="bfloat16", parallel_embedding=parallel)
        files = [sum(i.nbytes for i in read_header(out / f"rank{r}.safetensors").tensors.values()) for r in range(4)]
        spec = open_checkpoint(out).spec
        assert [c.weight_bytes for c in rank_costs(spec, mapping, "bf16", "bf16", parallel_embedding=parallel)] == files
        assert open_checkpoint(out).plan.parallel_embedding is parallel
        written[parallel] = files
    saved = parallel_embedding_saving(spec, mapping)
    assert saved == written[False][0] - written[True][0] == (ODD_VOCAB - 256) * 128 * 2  # hidden 128, bfloat16


def test_cli_flag_and_verify(odd_vocab, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(cli, ["convert", str(odd_vocab), "-o", str(out), "--tp", "2", "--ep", "2",
                                      "--parallel-embedding", "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["use_parallel_embedding"] is True
    result = CliRunner().invoke(cli, ["verify", str(out), "--against", str(odd_vocab), "--reference", "plain",
                                      "--json"])
    assert result.exit_code == 0, result.output
