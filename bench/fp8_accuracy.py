"""How close per-tensor FP8 can come to the unquantized model, next to what our FP8 checkpoints reach.

For each model (the golden fixtures and the synthetic tiny models by default), this prints the minimum logit cosine
and top-1 agreement against the unquantized model (bfloat16 weights), on the built-in verify prompts, of:

- ``ours``: ``convert --dtype fp8`` with layer-wise calibration on the built-in set, measured by ``verify``;
- ``weights only``: every linear's weight rounded through e4m3 with its own amax/448 scale, activations exact;
- ``oracle``: weights as above and every GEMM input rounded with the amax of that very input (dynamic scales,
  which no static checkpoint can beat on average; TensorRT-LLM's per-tensor FP8 uses static scales).

Weight rounding alone already sets a ceiling: e4m3 keeps 3 mantissa bits (≈3 % rounding), which is large against
the nearly flat logits of small random-weight models and flips their near-tied router choices.

    python bench/fp8_accuracy.py            # golden fixtures (when ../shared exists) and synthetic tiny models
    python bench/fp8_accuracy.py --json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from hunyuan_trtllm.checkpoints.convert import convert
from hunyuan_trtllm.checkpoints.mapping import Mapping
from hunyuan_trtllm.checkpoints.prompts import DEFAULT_PROMPTS
from hunyuan_trtllm.checkpoints.source import SourceCheckpoint, open_source
from hunyuan_trtllm.reference.calibrate import calibrate, load_calibration_samples
from hunyuan_trtllm.reference.hf_forward import hf_forward
from hunyuan_trtllm.reference.verify import verify
from hunyuan_trtllm.synth.checkpoint import synth_checkpoint

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "golden"
E4M3_MAX = 448.0
Linear = Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor]


def e4m3(x: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    """``x`` rounded through float8 e4m3 with the per-tensor scale amax/448, back in float32."""
    scale = amax.clamp(min=1e-12) / E4M3_MAX
    return (x / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).float() * scale


def weights_only(_name: str, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x @ e4m3(weight, weight.abs().max()).T


def oracle(_name: str, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return e4m3(x, x.abs().max()) @ e4m3(weight, weight.abs().max()).T


def agreement(src: SourceCheckpoint, linear: Linear) -> tuple[float, float]:
    """Min logit cosine and top-1 agreement of the model with ``linear`` against the plain bfloat16 model."""
    def get(name: str) -> torch.Tensor:
        tensor = src.get(name)
        return tensor.float() if name.endswith("mlp.gate.wg.weight") else tensor.bfloat16().float()

    cosines, agree, total = [], 0, 0
    for ids in DEFAULT_PROMPTS.values():
        want, got = hf_forward(src.spec, get, ids), hf_forward(src.spec, get, ids, linear=linear)
        cosines.append(torch.nn.functional.cosine_similarity(got, want, dim=-1).min().item())
        agree += int((got.argmax(-1) == want.argmax(-1)).sum())
        total += len(ids)
    return min(cosines), agree / total


def measure(name: str, model: Path, work: Path) -> dict:
    src = open_source(model)
    mapping = Mapping(tp=2, moe_ep=2) if src.spec.is_moe else Mapping(tp=2)
    samples = load_calibration_samples(None, model, 40, 64) if (model / "hy.tiktoken").exists() else [
        ids for ids in DEFAULT_PROMPTS.values()]
    out = work / f"{name}-fp8"
    convert(model, out, mapping, dtype="fp8", scales=calibrate(src, samples))
    report = verify(out, str(model))
    row = {"model": name, "ours_min_cosine": report.min_cosine, "ours_top1": report.top1_agreement}
    for label, linear in (("weights_only", weights_only), ("oracle", oracle)):
        row[f"{label}_min_cosine"], row[f"{label}_top1"] = agreement(src, linear)
    return row


def models(work: Path) -> dict[str, Path]:
    found = {f"golden {p.name}": p for p in sorted(GOLDEN.glob("*-tiny"))} if GOLDEN.is_dir() else {}
    for arch in ("a13b", "large", "dense"):
        synth_checkpoint(work / f"synth-{arch}", arch)
        found[f"synth {arch}"] = work / f"synth-{arch}"
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fp8-accuracy-") as tmp:
        work = Path(tmp)
        rows = [measure(name.replace(" ", "-"), path, work) for name, path in models(work).items()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="FP8 against the unquantized model: min logit cosine / top-1 agreement (verify prompts)")
    for column in ("model", "ours (calibrated)", "weights only", "oracle (dynamic scales)"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        table.add_row(row["model"], *(f"{row[f'{k}_min_cosine']:.4f} / {row[f'{k}_top1']:.0%}"
                                      for k in ("ours", "weights_only", "oracle")))
    Console().print(table)


if __name__ == "__main__":
    main()
