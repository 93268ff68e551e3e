"""A small runtime for the executing TensorRT-LLM stand-in (tests/fake_trtllm), mirroring what TensorRT-LLM 1.2's
C++ runtime feeds an engine built from our model definition.

- Every rank's model comes from the converted checkpoint through TensorRT-LLM's loading path
  (``MODEL_MAP[architecture].from_checkpoint(ckpt_dir, rank)``: config.json -> ``PretrainedConfig.from_dict`` ->
  ``set_rank`` -> ``rank{r}.safetensors`` -> ``preprocess_weights`` -> constructor (+ quantize pass) -> ``load``).
- One step = one engine execution per rank: a fresh network, ``prepare_inputs`` (the engine's input declarations),
  the runtime's tensors bound by name (``TransformerBuffers`` / ``RuntimeBuffers``: ``position_ids`` and the KV-cache
  inputs go to every stage, whichever stage declares them), then ``forward``. The ranks of a pipeline stage run in
  lockstep (threads; all-reduce = sum over the TP group), the stages in order; ``send``/``recv`` carry the hidden
  states from one stage to the next.
- In-flight batching: requests bring their tokens packed (``remove_input_padding``), context requests first, then
  generation requests of one token each; KV-cache blocks of ``tokens_per_block`` tokens are handed out from a
  shuffled free list (so a request's blocks are not contiguous) and released when a request ends.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

CONTEXT, GENERATION = 0, 1


@dataclass
class _Request:
    prompt_len: int = 0
    length: int = 0  # tokens in the KV cache
    blocks: list[int] = field(default_factory=list)


class StandInRuntime:
    """Executes a converted checkpoint on the stand-in, one rank per thread within a pipeline stage."""

    def __init__(self, ckpt_dir: Path, *, tokens_per_block: int = 4, num_blocks: int = 48, max_batch_size: int = 8,
                 max_seq_len: int = 64, max_num_tokens: int = 128) -> None:
        from tensorrt_llm import _kernels
        from tensorrt_llm.models import MODEL_MAP

        config = json.loads((Path(ckpt_dir) / "config.json").read_text())
        cls = MODEL_MAP[config["architecture"]]
        mapping = config["mapping"]
        self.tp, self.pp = mapping["tp_size"], mapping["pp_size"]
        self.vocab = config["vocab_size"]
        self.models = [cls.from_checkpoint(str(ckpt_dir), rank=rank) for rank in range(self.tp * self.pp)]
        self.tokens_per_block, self.max_seq_len = tokens_per_block, max_seq_len
        self.max_batch_size, self.max_num_tokens = max_batch_size, max_num_tokens
        self.free_blocks = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(0)).tolist()
        self.pools = [self._pool(model, num_blocks) for model in self.models]
        self.addresses = [_kernels.register_pool(pool) for pool in self.pools]
        self.requests: dict[str, _Request] = {}

    def _pool(self, model, num_blocks: int) -> torch.Tensor:
        """[blocks, the stage's KV-owning layers, K|V, tokens_per_block, kv heads per rank, head dim]."""
        config = model.config
        layers = [layer for layer in model.transformer.layers if layer.attention.owns_kv_cache]
        attention = layers[0].attention
        dtype = torch.float8_e4m3fn if config.quant_mode.has_fp8_kv_cache() else getattr(torch, config.dtype)
        return torch.zeros(num_blocks, len(layers), 2, self.tokens_per_block, attention.num_attention_kv_heads,
                           attention.attention_head_size, dtype=dtype)

    def close(self) -> None:
        from tensorrt_llm import _kernels

        for address in self.addresses:
            _kernels.release_pool(address)

    def release(self, request_id: str) -> None:
        """The request is finished: its blocks go back to the free list."""
        self.free_blocks.extend(self.requests.pop(request_id).blocks)

    # ---- one step ---------------------------------------------------------------------------------------------------
    def step(self, batch: dict[str, list[int]]) -> dict[str, torch.Tensor]:
        """Run one engine step: ``batch`` maps request ids to this step's tokens (a new id is a context request with
        its whole prompt; a known one a generation request with one token). Returns each request's logits [vocab]."""
        order = sorted(batch, key=lambda rid: rid in self.requests)  # context requests first
        kinds = [GENERATION if rid in self.requests else CONTEXT for rid in order]
        for rid, kind in zip(order, kinds, strict=True):
            if kind == GENERATION and len(batch[rid]) != 1:
                raise ValueError(f"generation request {rid} brings {len(batch[rid])} tokens")
            request = self.requests.setdefault(rid, _Request(prompt_len=len(batch[rid])))
            self._reserve(request, request.length + len(batch[rid]))
        feeds = self._feeds(order, kinds, batch)
        hidden = None
        for stage in range(self.pp):
            outputs = self._run_stage(stage, feeds, hidden)
            hidden = outputs[0].get("hidden_states_output")
        logits = outputs[0]["logits"]
        for rank_outputs in outputs[1:]:
            if not torch.equal(rank_outputs["logits"], logits):
                raise AssertionError("TP ranks of the last stage produced different logits")
        for rid in order:
            self.requests[rid].length += len(batch[rid])
        return {rid: logits[b, : self.vocab].float() for b, rid in enumerate(order)}

    def _reserve(self, request: _Request, length: int) -> None:
        while len(request.blocks) * self.tokens_per_block < length:
            if not self.free_blocks:
                raise RuntimeError("out of KV-cache blocks")
            request.blocks.append(self.free_blocks.pop())

    def _feeds(self, order: list[str], kinds: list[int], batch: dict[str, list[int]]) -> dict[str, torch.Tensor]:
        """The runtime's tensor map for this step (what every rank gets, before the per-rank pool pointers)."""
        def i32(values) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int32)

        requests = [self.requests[rid] for rid in order]
        counts = [len(batch[rid]) for rid in order]
        max_blocks = max(len(r.blocks) for r in requests)
        offsets = torch.zeros(1, len(order), 2, max_blocks, dtype=torch.int32)
        for b, request in enumerate(requests):
            offsets[0, b, :, : len(request.blocks)] = i32(request.blocks)
        positions = [p for r, n in zip(requests, counts, strict=True) for p in range(r.length, r.length + n)]
        return {
            "input_ids": i32([t for rid in order for t in batch[rid]]),
            "position_ids": i32(positions),
            "last_token_ids": i32(torch.tensor(counts).cumsum(0).tolist()),
            "sequence_length": i32([r.length + n for r, n in zip(requests, counts, strict=True)]),
            "host_past_key_value_lengths": i32([r.length for r in requests]),
            "context_lengths": i32([r.prompt_len for r in requests]),
            "host_context_lengths": i32([r.prompt_len for r in requests]),
            "host_request_types": i32(kinds),
            "kv_cache_block_offsets": offsets, "host_kv_cache_block_offsets": offsets.clone(),
            "cache_indirection": torch.zeros(len(order), 1, self.max_seq_len, dtype=torch.int32),
            "host_runtime_perf_knobs": torch.full((16,), -1, dtype=torch.int64),
            "host_context_progress": torch.zeros(1, dtype=torch.int64),
            "host_sink_token_length": i32([0]),
        }

    def _run_stage(self, stage: int, feeds: dict[str, torch.Tensor], hidden: torch.Tensor | None) -> list[dict]:
        from tensorrt_llm import _nccl

        world = getattr(self, "_world", None) or _nccl.World(self.tp * self.pp)
        self._world = world
        ranks = range(stage * self.tp, (stage + 1) * self.tp)
        results: dict[int, dict] = {}
        errors: list[BaseException] = []

        def run(rank: int) -> None:
            try:
                _nccl.bind(world, rank)
                results[rank] = self._execute(rank, feeds, hidden)
            except BaseException as exc:  # noqa: BLE001 - re-raised below in the calling thread
                errors.append(exc)
                world.abort()

        threads = [threading.Thread(target=run, args=(rank,)) for rank in ranks]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
            self._world = None
            raise (real or errors)[0]
        return [results[rank] for rank in ranks]

    def _execute(self, rank: int, feeds: dict[str, torch.Tensor], hidden: torch.Tensor | None) -> dict:
        """One engine execution on ``rank``: declare the inputs, bind the runtime's tensors, run forward."""
        from tensorrt_llm.network import Network, net_guard

        model = self.models[rank]
        network = Network()
        network.plugin_config.tokens_per_block = self.tokens_per_block
        with net_guard(network):
            inputs = model.prepare_inputs(max_batch_size=self.max_batch_size, max_input_len=self.max_seq_len - 1,
                                          max_seq_len=self.max_seq_len, max_num_tokens=self.max_num_tokens,
                                          use_cache=True)
            declared = {t.name for t in network.get_inputs()}
            values = dict(feeds)
            values["host_kv_cache_pool_pointers"] = torch.tensor([[self.addresses[rank], 0]], dtype=torch.int64)
            # the KV-cache manager's layer-to-pool mapping and window sizes: one row per *attention* layer of the
            # stage (kvCacheManager.cpp: [numLayers, 2] with numLayers = countLocalLayers(kATTENTION))
            layers = self.pools[rank].shape[1]
            values["host_kv_cache_pool_mapping"] = torch.tensor([[0, i] for i in range(layers)], dtype=torch.int32)
            values["host_max_attention_window_sizes"] = torch.full((layers,), self.max_seq_len, dtype=torch.int32)
            if "hidden_states_input" in declared:  # the receive buffer of a later stage
                values["hidden_states_input"] = torch.zeros_like(hidden)
            network.feed(values)
            model(**inputs)
        return {name: tensor.value for name, tensor in network.outputs.items()}
