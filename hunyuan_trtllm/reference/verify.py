"""verify: logits of a converted checkpoint (reference executor) against an independent reference.

The reference is transformers' own ``hunyuan_v1_moe`` / ``hunyuan_v1_dense`` / ``hy_v3`` where they can represent
the model, else the plain Hugging Face-layout forward pass in :mod:`hunyuan_trtllm.reference.hf_forward` (which is
itself checked against Tencent's logits in the golden fixtures), e.g. for Hunyuan-Large's CLA. Both run in
float32 on weights rounded to the checkpoint's dtype, so the comparison measures the conversion (layout, sharding,
folds), not the rounding the user chose with ``--dtype``.

Memory stays bounded on full-width models: the executor runs the prompts layer by layer (one decoder layer of
every rank in memory at a time), the plain forward reads one tensor at a time, and ``auto`` picks the plain forward
for models above ``TRANSFORMERS_MAX_BYTES`` (transformers holds the whole model). The report carries the time
spent and the checkpoint bytes read per second.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from hunyuan_trtllm.checkpoints.prompts import DEFAULT_PROMPTS
from hunyuan_trtllm.checkpoints.source import open_source
from hunyuan_trtllm.reference.executor import ReferenceExecutor
from hunyuan_trtllm.reference.hf_forward import hf_forward
from hunyuan_trtllm.reference.transformers_ref import transformers_logits, transformers_supports

# Max |logit| difference allowed per checkpoint dtype. Both sides use the same rounded weights, so what remains is
# float32 summation order, plus the CLA query-norm fold, which is rounded once to the checkpoint dtype.
DEFAULT_ATOL = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}
# FP8 checkpoints are compared with the BF16 model: their logits differ by design, so the bar is the cosine
# similarity of every position's logits (and top-1 agreement is reported).
FP8_MIN_COSINE = 0.99
TRANSFORMERS_MAX_BYTES = 4 * 1024**3
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class PromptResult:
    prompt: str
    tokens: int
    max_abs: float
    max_rel: float  # max |diff| / max |reference logit|
    min_cosine: float  # min over positions of the cosine similarity of the logit vectors
    top1_agreement: float


@dataclass
class VerifyReport:
    checkpoint: str
    model: str
    reference: str
    dtype: str
    atol: float
    prompts: list[PromptResult]
    quantization: str | None = None  # "FP8" (+ "FP8 KV cache") for quantized checkpoints
    min_cosine_required: float = FP8_MIN_COSINE
    seconds: float = 0.0  # the whole comparison: reference and checkpoint
    checkpoint_gb_read: float = 0.0  # rank-file bytes the executor read (each tensor once)

    @property
    def max_abs(self) -> float:
        return max(p.max_abs for p in self.prompts)

    @property
    def top1_agreement(self) -> float:
        total = sum(p.tokens for p in self.prompts)
        return sum(p.top1_agreement * p.tokens for p in self.prompts) / total

    @property
    def min_cosine(self) -> float:
        return min(p.min_cosine for p in self.prompts)

    @property
    def passed(self) -> bool:
        if self.quantization:
            return self.min_cosine >= self.min_cosine_required
        return self.max_abs <= self.atol

    def to_json(self) -> dict:
        data = asdict(self)
        data.update(max_abs=self.max_abs, min_cosine=self.min_cosine, top1_agreement=self.top1_agreement,
                    passed=self.passed)
        return data


def load_prompts(path: Path | None) -> dict[str, list[int]]:
    """Prompts as token ids: a JSON object ``{name: [ids]}`` or list of id lists; default: built-in prompts."""
    if path is None:
        return dict(DEFAULT_PROMPTS)
    from hunyuan_trtllm.errors import UserError

    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read prompts ({exc})") from None
    prompts = data if isinstance(data, dict) else {f"prompt_{i}": ids for i, ids in enumerate(data)}
    valid = all(isinstance(v, list) and v and all(isinstance(i, int) for i in v) for v in prompts.values())
    if not prompts or not valid:
        raise UserError(f"{path}: expected {{name: [token ids]}} or [[token ids], ...] with non-empty lists")
    return prompts


def verify(
    ckpt_dir: Path,
    model: str,
    prompts: dict[str, Sequence[int]] | None = None,
    reference: str = "auto",
    atol: float | None = None,
) -> VerifyReport:
    """Compare a converted checkpoint with the source model on a few prompts."""
    from hunyuan_trtllm.errors import UserError

    start = time.perf_counter()
    executor = ReferenceExecutor(ckpt_dir)
    src = open_source(model)
    dtype_name = executor.config["dtype"]
    dtype = DTYPES[dtype_name]
    prompts = dict(prompts or DEFAULT_PROMPTS)
    too_big = [name for name, ids in prompts.items() if max(ids) >= src.spec.vocab_size]
    if too_big:
        raise UserError(f"prompt '{too_big[0]}' has token ids >= the vocabulary size {src.spec.vocab_size}")

    unsupported = transformers_supports(src.spec)
    if unsupported is None and importlib.util.find_spec("transformers") is None:
        unsupported = "transformers is not installed (pip install 'hunyuan-trtllm[demo]')"
    if reference == "auto":
        large = sum(info.nbytes for header in src.headers.values() for info in header.tensors.values()) \
            > TRANSFORMERS_MAX_BYTES
        reference = "plain" if unsupported or large else "transformers"
    if reference == "transformers":
        if unsupported:
            raise UserError(f"--reference transformers: {unsupported}; use --reference plain")
        expected = transformers_logits(src.path, src.spec, list(prompts.values()), dtype=dtype)
        label = "transformers (hy_v3)" if src.spec.is_hy3 else "transformers (hunyuan_v1_moe/hunyuan_v1_dense)"
    elif reference == "plain":

        def get(name: str) -> torch.Tensor:
            return src.get(name).to(dtype).float()

        expected = [hf_forward(src.spec, get, ids) for ids in prompts.values()]
        label = "plain HF-layout forward (hunyuan_trtllm.reference.hf_forward)"
    else:
        raise UserError(f"--reference {reference}: expected auto, transformers or plain")

    results = []
    outputs = executor.forward_layer_by_layer(list(prompts.values()))
    for (name, ids), ref, got in zip(prompts.items(), expected, outputs, strict=True):
        diff = (got - ref).abs()
        results.append(
            PromptResult(
                prompt=name,
                tokens=len(ids),
                max_abs=diff.max().item(),
                max_rel=(diff.max() / ref.abs().max()).item(),
                min_cosine=torch.nn.functional.cosine_similarity(got, ref, dim=-1).min().item(),
                top1_agreement=(got.argmax(-1) == ref.argmax(-1)).float().mean().item(),
            )
        )
    quant = executor.config.get("quantization") or {}
    quantization = None
    if quant.get("quant_algo"):
        quantization = quant["quant_algo"] + (" + FP8 KV cache" if quant.get("kv_cache_quant_algo") else "")
        label += f" on the unquantized weights ({dtype_name})"
    return VerifyReport(
        quantization=quantization,
        checkpoint=str(ckpt_dir),
        model=str(model),
        reference=label,
        dtype=dtype_name,
        atol=DEFAULT_ATOL[dtype_name] if atol is None else atol,
        prompts=results,
        seconds=time.perf_counter() - start,
        checkpoint_gb_read=executor.bytes_read / 1e9,
    )
