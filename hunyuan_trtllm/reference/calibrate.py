"""Streaming, layer-wise FP8 calibration of a Hugging Face Hunyuan checkpoint -> :class:`Fp8Scales`.

Layer-major: every sample is embedded first, then each decoder layer is loaded (only that layer's weights, read
from disk through ``source.get``), every sample's activations go through it to become the next layer's input,
and the layer is freed before the next one loads. Peak memory is about one layer's weights (in the stored dtype,
plus one float32 copy of the tensor in use) and the samples' activations; the embedding table is read once at
the start and freed; the final norm and lm_head are never read (not FP8 linears, and no logits are needed).

What is measured (all scales are dequantization scales ``amax / 448``, see :mod:`fp8_scales`):

- weight: ``max |w|`` of every FP8 linear (:func:`linear_weight_names`), every routed expert included;
- activation: ``max |x|`` of each linear's input over all tokens of all samples, as the forward feeds it (a routed
  expert's input is only the tokens routed to it). An expert that no calibration token reached gets, per
  projection (gate, up, down), the maximum over the layer's reached experts' input amax: TensorRT-LLM uses one
  input scale per layer for all experts (the maximum), so this never lowers that scale, and it stays sensible
  for per-expert consumers;
- kv: per KV-producing layer, ``max(max |K|, max |V|)`` of what its KV cache stores (K after RoPE and the key
  norm; V as projected), over all tokens. TensorRT-LLM keeps one ``kv_cache_scaling_factor`` for K and V (their
  maximum). CLA consumers read their producer's cache and get no entry.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F

from hunyuan_trtllm.checkpoints.fp8_scales import Fp8Scales, check_scale, scale_from_amax
from hunyuan_trtllm.checkpoints.source import SourceCheckpoint
from hunyuan_trtllm.checkpoints.tokenizer import HunyuanTokenizer
from hunyuan_trtllm.errors import UserError
from hunyuan_trtllm.reference.hf_forward import ClaState, decoder_layer, embed, linear_weight_names

# Called after each decoder layer with (layers done, number of layers).
ProgressFn = Callable[[int, int], None]
BUILTIN_SAMPLES = "data/calibration.jsonl"


def calibrate(
    source: SourceCheckpoint,
    samples: list[list[int]],
    progress: ProgressFn | None = None,
    device: str = "cpu",
) -> Fp8Scales:
    """FP8 scales of every linear's weight and input and of every KV cache, measured on ``samples``.

    ``device`` ("cpu", "cuda", "cuda:N") holds the layer being calibrated and the activations. NaN/Inf or
    all-zero weights (or activations) raise :class:`UserError` naming the tensor.
    """
    spec = source.spec
    target = _device(device)
    _check_samples(samples, spec.vocab_size)

    table = {"model.embed_tokens.weight": source.get("model.embed_tokens.weight").to(target)}
    hidden = [embed(spec, table.__getitem__, ids) for ids in samples]  # [T_i, H] each, float32
    del table
    cla_states = [ClaState() for _ in samples]

    scales = Fp8Scales(origin=f"calibration ({len(samples)} samples, {sum(map(len, samples))} tokens)")
    for layer in range(spec.num_layers):
        _calibrate_layer(source, layer, hidden, cla_states, target, scales)
        if progress is not None:
            progress(layer + 1, spec.num_layers)
    return scales


def _calibrate_layer(
    source: SourceCheckpoint,
    layer: int,
    hidden: list[torch.Tensor],
    cla_states: list[ClaState],
    target: torch.device,
    scales: Fp8Scales,
) -> None:
    """Load layer ``layer``, run every sample through it (``hidden`` is replaced in place), record its scales.

    The layer's weights live only in this call's ``weights`` dict and are freed when it returns.
    """
    spec = source.spec
    weights: dict[str, torch.Tensor] = {}

    def get(name: str) -> torch.Tensor:
        if name not in weights:
            weights[name] = source.get(name).to(target)
        return weights[name]

    linears = linear_weight_names(spec, layer)
    for name in linears:
        amax = get(name).abs().amax().item()
        scales.weight[name] = check_scale(name, scale_from_amax(amax))

    input_amax: dict[str, torch.Tensor] = {}  # 0-d tensors on the device: no sync per call
    kv_amax: list[torch.Tensor] = []

    def record_linear(name: str, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        amax = x.abs().amax()
        input_amax[name] = torch.maximum(input_amax[name], amax) if name in input_amax else amax
        return F.linear(x, weight)

    def record_kv(_layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        kv_amax.append(torch.maximum(k.abs().amax(), v.abs().amax()))

    for i, state in enumerate(cla_states):
        hidden[i] = decoder_layer(spec, get, layer, hidden[i], state, linear=record_linear, kv_hook=record_kv)

    observed = {name: amax.item() for name, amax in input_amax.items()}
    if spec.is_moe_layer(layer):
        _fill_unreached_experts(spec.num_experts, layer, observed)
    for name in linears:
        scales.activation[name] = check_scale(f"{name} (input activations)", scale_from_amax(observed[name]))
    if kv_amax:
        amax = torch.stack(kv_amax).amax().item()
        scales.kv[layer] = check_scale(f"model.layers.{layer} KV cache (K and V)", scale_from_amax(amax))


def _fill_unreached_experts(num_experts: int, layer: int, observed: dict[str, float]) -> None:
    """An expert no token reached gets, per projection, the max over the layer's reached experts' input amax."""
    for proj in ("gate", "up", "down"):
        names = [f"model.layers.{layer}.mlp.experts.{e}.{proj}_proj.weight" for e in range(num_experts)]
        reached = [observed[name] for name in names if name in observed]  # never empty: every token picks top_k
        for name in names:
            observed.setdefault(name, max(reached))


def _device(name: str) -> torch.device:
    """``cpu`` or a CUDA device that exists; anything else is a :class:`UserError`."""
    if name == "cpu":
        return torch.device("cpu")
    if not name.startswith("cuda"):
        raise UserError(f"calibration device '{name}' is not supported; use 'cpu' or 'cuda'")
    if not torch.cuda.is_available():
        raise UserError(f"calibration device '{name}': CUDA is not available to this torch "
                        f"({torch.__version__}); use device 'cpu'")
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:
        raise UserError(f"calibration device '{name}': {exc}") from None
    return device


def _check_samples(samples: list[list[int]], vocab_size: int) -> None:
    """At least one sample, none empty, every id inside the vocabulary."""
    if not samples:
        raise UserError("calibration needs at least one sample")
    for index, ids in enumerate(samples):
        if not ids:
            raise UserError(f"calibration sample {index} is empty")
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise UserError(f"calibration sample {index}: token id {bad[0]} is outside the vocabulary "
                            f"of {vocab_size} ids")


# ---- calibration text ---------------------------------------------------------------------------------------


def load_calibration_samples(
    path: Path | None, tokenizer_dir: Path, num_samples: int, seq_len: int
) -> list[list[int]]:
    """Token ids of the first ``num_samples`` lines of a JSONL file, each cut to ``seq_len`` tokens.

    Each non-blank line is an object with a ``"text"`` string, or ``"messages"`` (OpenAI-style chat turns)
    rendered with the model's chat template (a whole conversation: no generation prompt). Text is tokenized with
    :meth:`HunyuanTokenizer.from_model_dir` of ``tokenizer_dir``; special-token strings in it become their ids.
    ``path`` None uses the built-in mixed Chinese / English / code set (``hunyuan_trtllm/data/calibration.jsonl``,
    40 lines). An empty file, invalid JSON or a line without text is a :class:`UserError` naming file and line.
    """
    if num_samples < 1 or seq_len < 1:
        raise UserError(f"calibration needs num_samples >= 1 and seq_len >= 1 (got {num_samples}, {seq_len})")
    where = str(path) if path is not None else f"built-in {BUILTIN_SAMPLES}"
    try:
        if path is None:
            text = resources.files("hunyuan_trtllm").joinpath(BUILTIN_SAMPLES).read_text(encoding="utf-8")
        else:
            text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{where}: cannot read calibration samples ({exc})") from None

    tokenizer = HunyuanTokenizer.from_model_dir(tokenizer_dir)
    samples: list[list[int]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if len(samples) == num_samples:
            break
        if not line.strip():
            continue
        ids = tokenizer.encode(_line_text(tokenizer, line, f"{where}:{number}"))
        if not ids:
            raise UserError(f"{where}:{number}: the text has no tokens")
        samples.append(ids[:seq_len])
    if not samples:
        raise UserError(f"{where}: no calibration samples (the file is empty)")
    return samples


def _line_text(tokenizer: HunyuanTokenizer, line: str, where: str) -> str:
    """The text of one JSONL line: its ``"text"``, or its ``"messages"`` rendered with the chat template."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: invalid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object with a 'text' or 'messages' field")
    if isinstance(record.get("text"), str) and record["text"].strip():
        return record["text"]
    if isinstance(record.get("messages"), list) and record["messages"]:
        try:
            return tokenizer.render_chat(record["messages"], add_generation_prompt=False)
        except (ValueError, UserError) as exc:
            raise UserError(f"{where}: cannot render 'messages' ({exc})") from None
    raise UserError(f"{where}: no text (expected a non-empty 'text' string or a 'messages' list)")
