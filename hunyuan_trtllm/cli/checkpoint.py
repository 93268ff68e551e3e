"""Checkpoint subcommands: inspect, convert, verify, synth, demo."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import click

from hunyuan_trtllm.cli.app import ByteProgress, cli, console, print_json, print_rich_table, print_table, stdout
from hunyuan_trtllm.cli.fp8_options import calibration_options, resolve_scales
from hunyuan_trtllm.errors import UserError

GB = 1e9


@cli.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for programs instead of a table.")
def inspect(model: str, as_json: bool) -> None:
    """Describe MODEL: architecture, parameters (total/active), experts, layers, KV bytes per token.

    MODEL is a local checkpoint directory or a Hugging Face repo id (only config and weight headers are read).

    \b
    Examples:
      hunyuan-trtllm inspect ./Hunyuan-A13B-Instruct
      hunyuan-trtllm inspect tencent/Hunyuan-A13B-Instruct --json
    """
    from hunyuan_trtllm.checkpoints.param_counts import mtp_parameter_count, parameter_counts
    from hunyuan_trtllm.checkpoints.source import load_spec
    from hunyuan_trtllm.checkpoints.trtllm_config import routing

    path, spec = load_spec(model)
    total, active = parameter_counts(spec)
    mtp = mtp_parameter_count(spec)
    kv = {"bfloat16": spec.kv_bytes_per_token(2), "fp8": spec.kv_bytes_per_token(1)}
    if as_json:
        print_json({"model": str(path), "spec": spec.to_dict(), "rotary_base": spec.rotary_base,
                    "params_total": total, "params_active": active, "params_mtp": mtp, "kv_bytes_per_token": kv,
                    "normalization_mode": spec.normalization_mode.name if spec.is_moe else None,
                    "routing": routing(spec) if spec.is_moe else None})
        return
    rows = [
        ("architecture", spec.architecture),
        ("layers / hidden", f"{spec.num_layers} / {spec.hidden_size}"),
        ("attention heads / KV heads / head dim", f"{spec.num_heads} / {spec.num_kv_heads} / {spec.head_dim}"),
        ("parameters total / active", f"{total / 1e9:.2f}B / {active / 1e9:.2f}B ({total:,} / {active:,})"),
    ]
    if mtp:
        rows.append(("MTP layers (not in total)", f"{spec.num_mtp_layers}: {mtp / 1e9:.2f}B ({mtp:,}); convert "
                                                  "leaves them out unless --mtp keep"))
    if spec.is_moe:
        rows += [
            ("experts / top-k / routing", f"{spec.num_experts} / {spec.top_k} / {_routing_text(spec)}"),
            ("expert / shared expert width", f"{spec.expert_intermediate_size} / {spec.shared_intermediate_size}"),
        ]
        if spec.first_dense_layers:
            rows.append(("dense layers", f"0..{spec.first_dense_layers - 1} (MLP width {spec.intermediate_size})"))
    else:
        rows.append(("MLP width", spec.intermediate_size))
    rows += [
        ("cross-layer attention", f"factor {spec.cla_share_factor}" if spec.uses_cla else "no"),
        ("KV cache per token (bf16 / fp8)", f"{kv['bfloat16'] / 1024:g} KiB / {kv['fp8'] / 1024:g} KiB"),
        ("RoPE", f"theta {spec.rope_theta:g}, alpha {spec.rope_alpha:g} -> base {spec.rotary_base:.6g}"),
        ("QK norm", ("before" if spec.qk_norm_before_rope else "after") + " RoPE" if spec.use_qk_norm else "no"),
        ("vocab / tied embeddings", f"{spec.vocab_size} / {spec.tie_word_embeddings}"),
        ("stored dtype", spec.torch_dtype + (" (lm_head computed in float32)" if spec.lm_head_fp32 else "")),
    ]
    rows += [("note", note) for note in spec.notes]
    print_table(str(path), rows)


def _routing_text(spec) -> str:
    """``RENORMALIZE``, or Hy3's ``sigmoid + expert bias (selection only), renormalized, x 2.826``."""
    if spec.router_scoring == "softmax":
        return spec.normalization_mode.name
    bias = " + expert bias (selection only)" if spec.expert_bias else ""
    norm = ", renormalized" if spec.route_norm else ""
    return f"{spec.router_scoring}{bias}{norm}, x {spec.routed_scaling_factor:g}"


@cli.command()
@click.argument("model")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path), help="Output directory.")
@click.option("--tp", default=1, show_default=True, help="Tensor-parallel size (= moe_tp x moe_ep).")
@click.option("--ep", default=1, show_default=True, help="Expert-parallel size for MoE layers (divides --tp).")
@click.option("--pp", default=1, show_default=True, help="Pipeline-parallel size.")
@click.option("--dtype", default="auto", show_default=True,
              type=click.Choice(["auto", "bfloat16", "float16", "float32", "fp8"]),
              help="Weight dtype; auto keeps the checkpoint's; fp8: per-tensor FP8 (quant_algo FP8, bf16 activations).")
@calibration_options
@click.option("--save-scales", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="With --dtype fp8: also write the FP8 scales used (JSON) for later runs (--scales).")
@click.option("--mtp", default="drop", show_default=True, type=click.Choice(["drop", "keep"]),
              help="Hy3's MTP layer: leave it out, or write it as a draft part in OUTPUT/mtp.")
@click.option("--workers", default=1, show_default=True, help="Worker processes.")
@click.option("--write-mode", default="direct", show_default=True,
              type=click.Choice(["direct", "dropbehind", "buffered"]),
              help="How rank files reach the disk: O_DIRECT, or page cache written back and dropped, or plain.")
@click.option("--parallel-embedding", is_flag=True,
              help="Split the vocabulary embedding's rows over the tp ranks (use_parallel_embedding) instead of "
                   "replicating it on each: saves (tp-1)/tp of it per GPU.")
@click.option("--ranks", default=None, help="Convert only these ranks, e.g. 0-3 (split a conversion over machines).")
@click.option("--overwrite", is_flag=True, help="Replace whatever the output directory holds.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def convert(model: str, out_dir: Path, tp: int, ep: int, pp: int, dtype: str, kv_cache_dtype: str,
            calib_data: Path | None, calib_builtin: bool, calib_samples: int, calib_seq_len: int, calib_device: str,
            scales_file: Path | None, save_scales: Path | None, mtp: str, workers: int, write_mode: str,
            parallel_embedding: bool, ranks: str | None, overwrite: bool, quiet: bool, as_json: bool) -> None:
    """Convert MODEL to a TensorRT-LLM checkpoint (config.json + rank{N}.safetensors).

    Reads only the slices each rank needs, writes every rank file atomically, and resumes an interrupted
    conversion into the same directory (finished ranks are skipped). config.json appears last, once every
    rank file exists.

    \b
    Examples:
      hunyuan-trtllm convert ./Hunyuan-A13B-Instruct -o ckpt --tp 8 --ep 8 --workers 2
      hunyuan-trtllm convert ./Hunyuan-A13B-Instruct -o ckpt --tp 8 --ep 8 --parallel-embedding
      hunyuan-trtllm convert tencent/Hunyuan-A13B-Instruct -o ckpt --tp 4 --ep 2 --pp 2
      hunyuan-trtllm convert ./Hunyuan-Large -o ckpt --tp 16 --ep 16 --ranks 0-7   # this machine's half
      hunyuan-trtllm convert ./Hunyuan-A13B-Instruct-FP8 -o ckpt --tp 4 --ep 4 --dtype fp8   # scales from the source
      hunyuan-trtllm convert ./Hunyuan-A13B-Instruct -o ckpt --tp 4 --ep 4 --dtype fp8 --kv-cache-dtype fp8 \\
          --calib-builtin --calib-samples 128
      hunyuan-trtllm convert tencent/Hy3 -o hy3-tp8 --tp 8 --ep 8 --mtp keep   # Hy3 + its MTP draft part
      hunyuan-trtllm convert tencent/Hy3-FP8 -o hy3-fp8-tp4 --tp 4 --ep 4 --dtype fp8   # no calibration
    """
    from hunyuan_trtllm.checkpoints.convert import convert as run_convert
    from hunyuan_trtllm.checkpoints.mapping import Mapping, parse_ranks

    mapping = Mapping(tp=tp, pp=pp, moe_ep=ep)
    if workers < 1:
        raise UserError("--workers must be at least 1")
    wanted = parse_ranks(ranks, mapping.world_size)
    scales = None
    if dtype == "fp8":
        from hunyuan_trtllm.checkpoints.source import open_source

        scales = resolve_scales(open_source(model), calib_data, calib_builtin, calib_samples, calib_seq_len,
                                calib_device, scales_file)
        if save_scales and scales is not None:
            scales.save(save_scales)
    try:
        with ByteProgress("convert", quiet or as_json) as bar:
            result = run_convert(model, out_dir, mapping, dtype=dtype, workers=workers,
                                 ranks=wanted, overwrite=overwrite, progress=bar.start,
                                 scales=scales, kv_cache_fp8=kv_cache_dtype == "fp8", mtp=mtp,
                                 write_mode=write_mode, parallel_embedding=parallel_embedding)
            speed = result.bytes_written / max(result.seconds, 1e-9) / GB
            bar.finish(speed * GB)
    except KeyboardInterrupt:
        console.print("interrupted: finished rank files are kept, partial ones were removed; run the same command "
                      "to resume")
        raise
    summary = {
        "output": str(result.out_dir), "complete": result.complete, "world_size": mapping.world_size,
        "mapping": mapping.to_dict(), "kv_cache_dtype": kv_cache_dtype,
        "dtype": "fp8" if dtype == "fp8" else str(result.plan.dtype).removeprefix("torch."),
        "converted_ranks": result.converted_ranks, "skipped_ranks": result.skipped_ranks,
        "bytes_written": result.bytes_written, "seconds": round(result.seconds, 3), "gb_per_s": float(f"{speed:.3g}"),
        "notes": result.notes,
    }
    if as_json:
        print_json(summary)
        return
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    print_table("convert", [
        ("output", result.out_dir), ("layout", f"tp {tp} (moe_tp {mapping.moe_tp} x ep {ep}), pp {pp}"),
        ("dtype", _dtype_label(result.plan.dtype, dtype, kv_cache_dtype)),
        ("ranks written", result.converted_ranks or "none"),
        ("ranks already done", result.skipped_ranks or "none"),
        ("bytes", f"{result.bytes_written / GB:.3f} GB in {result.seconds:.1f} s ({speed:.3g} GB/s)"),
        ("complete", "yes (config.json written)" if result.complete else "no: other ranks still missing"),
    ])


def _dtype_label(plan_dtype: object, requested: str, kv_cache_dtype: str) -> str:
    """What the checkpoint holds: ``bfloat16``, or ``fp8`` (+ the FP8 KV cache) with its unquantized dtype."""
    name = str(plan_dtype).removeprefix("torch.")
    if requested != "fp8":
        return name
    kv = ", FP8 KV cache" if kv_cache_dtype == "fp8" else ""
    return f"fp8 (per-tensor FP8 linears{kv}; router, embeddings, norms in {name})"


@cli.command()
@click.argument("ckpt", type=click.Path(path_type=Path))
@click.option("--against", "model", required=True, help="The Hugging Face model the checkpoint was converted from.")
@click.option("--reference", default="auto", show_default=True, type=click.Choice(["auto", "transformers", "plain"]),
              help="transformers' Hunyuan classes, or the plain HF-layout forward (needed for CLA).")
@click.option("--prompts", "prompts_file", type=click.Path(path_type=Path), default=None,
              help="JSON token-id prompts ({name: [ids]}); default: built-in prompts.")
@click.option("--atol", type=float, default=None, help="Max |logit diff| allowed (default depends on dtype).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for programs.")
def verify(ckpt: Path, model: str, reference: str, prompts_file: Path | None, atol: float | None, quiet: bool,
           as_json: bool) -> None:
    """Compare the converted CKPT's logits with an independent reference; exit 1 beyond tolerance.

    \b
    Examples:
      hunyuan-trtllm verify ckpt --against ./Hunyuan-A13B-Instruct
      hunyuan-trtllm verify ckpt --against ./Hunyuan-Large --reference plain --json
    """
    from hunyuan_trtllm.reference.verify import load_prompts

    report = _verify_with_progress(ckpt, model, load_prompts(prompts_file), reference, atol, quiet or as_json)
    if as_json:
        print_json(report.to_json())
    else:
        print_verify_table(report)
    if not report.passed:
        raise SystemExit(1)


def _verify_with_progress(ckpt: Path, model: str, prompts: dict[str, list[int]] | None, reference: str,
                          atol: float | None, quiet: bool):
    """:func:`hunyuan_trtllm.reference.verify.verify` with a bar in bytes and GB/s over the checkpoint's layers."""
    from hunyuan_trtllm.reference.verify import verify as run_verify

    def stage(text: str) -> None:
        if not quiet:
            console.print(text)

    with ByteProgress("verify", quiet) as bar:
        report = run_verify(ckpt, model, prompts, reference=reference, atol=atol, progress=bar.start, stage=stage)
        bar.finish(report.checkpoint_bytes_per_s)
    return report


def print_verify_table(report) -> None:
    from rich.table import Table

    table = Table(title=f"verify {report.checkpoint} against {report.model}", title_justify="left")
    for column in ("prompt", "tokens", "max abs", "max rel", "min cosine", "top-1 agree"):
        table.add_column(column, justify="right" if column != "prompt" else "left")
    for p in report.prompts:
        table.add_row(p.prompt, str(p.tokens), f"{p.max_abs:.2e}", f"{p.max_rel:.2e}", f"{p.min_cosine:.5f}",
                      f"{p.top1_agreement:.1%}")
    print_rich_table(table)
    verdict = "[green]PASS[/]" if report.passed else "[red]FAIL[/]"
    if report.quantization:
        bar = f"{report.quantization}: min cosine {report.min_cosine:.4f} vs required {report.min_cosine_required}"
    else:
        bar = f"dtype {report.dtype}; max abs {report.max_abs:.2e} vs tolerance {report.atol:g}"
    stdout.print(f"reference: {report.reference}; {bar}; top-1 {report.top1_agreement:.1%}: {verdict}")
    stdout.print(f"{sum(p.tokens for p in report.prompts)} tokens, layer by layer: {report.checkpoint_gb_read:.3f} GB "
                 f"of checkpoint read in {report.checkpoint_seconds:.1f} s "
                 f"({report.checkpoint_bytes_per_s / GB:.3g} GB/s); {report.seconds:.1f} s with the reference")


@cli.command()
@click.option("--arch", required=True, type=click.Choice(["a13b", "large", "dense", "hy3"]), help="Architecture.")
@click.option("--preset", default="tiny", show_default=True, type=click.Choice(["tiny", "full-width"]),
              help="tiny: for tests and demos; full-width: real widths, few layers, for benchmarks.")
@click.option("--layers", type=int, default=None, help="Override the number of layers.")
@click.option("--seed", default=0, show_default=True, help="Random seed (tiny MoE presets scan upward from it).")
@click.option("--dtype", default=None, type=click.Choice(["bfloat16", "float16", "float32"]),
              help="Stored dtype (default: float32 tiny, bfloat16 full-width).")
@click.option("--fused", is_flag=True, help="Store the older fused qkv_proj / gate_and_up_proj layout.")
@click.option("--fp8", is_flag=True, help="Tencent's per-tensor static FP8 release format (Hy3-FP8's for hy3).")
@click.option("--whole-char-head", is_flag=True,
              help="Zero the output-head rows of byte pieces and special tokens, so greedy decoding writes whole "
                   "characters (the demo's model).")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path), help="Output directory.")
def synth(arch: str, preset: str, layers: int | None, seed: int, dtype: str | None, fused: bool, fp8: bool,
          whole_char_head: bool, out_dir: Path) -> None:
    """Write a random checkpoint in Tencent's exact format (config, safetensors, hy.tiktoken tokenizer).

    \b
    Examples:
      hunyuan-trtllm synth --arch a13b -o tiny-a13b
      hunyuan-trtllm synth --arch large --preset full-width --layers 2 -o large-2l
      hunyuan-trtllm synth --arch hy3 -o tiny-hy3                  # with its MTP layer, float32 expert bias
      hunyuan-trtllm synth --arch hy3 --fp8 -o tiny-hy3-fp8        # Tencent's Hy3-FP8 format
      hunyuan-trtllm synth --arch a13b --whole-char-head -o demo-a13b   # the demo's model
    """
    from hunyuan_trtllm.synth.checkpoint import synth_checkpoint

    if fp8:
        from hunyuan_trtllm.synth.fp8 import synth_fp8_checkpoint

        if fused or dtype:
            raise UserError("--fp8 writes e4m3 linears and bfloat16 elsewhere: no --fused or --dtype")
        synth_fp8_checkpoint(out_dir, arch, seed=seed, preset=preset, layers=layers)
        console.print(f"wrote an FP8 {arch} ({preset}) in Tencent's FP8 release format to {out_dir}")
        return
    spec = synth_checkpoint(out_dir, arch, preset=preset, layers=layers, seed=seed, dtype=dtype, fused=fused,
                            progress=True, whole_char_head=whole_char_head)
    console.print(f"wrote {spec.architecture} ({spec.num_layers} layers, hidden {spec.hidden_size}) to {out_dir}")


@cli.command()
@click.option("-o", "--output", "work_dir", type=click.Path(path_type=Path), default=None,
              help="Keep the demo files here (default: a temporary directory).")
def demo(work_dir: Path | None) -> None:
    """The whole pipeline on a built-in tiny A13B, no GPU, no downloads: synth -> convert (TP2 x EP2) -> verify
    -> serve through the real Triton server on CPU and answer one chat request.

    \b
    Example:
      hunyuan-trtllm demo -o demo
    """
    from hunyuan_trtllm.checkpoints.convert import convert as run_convert
    from hunyuan_trtllm.checkpoints.mapping import Mapping
    from hunyuan_trtllm.reference.verify import verify as run_verify
    from hunyuan_trtllm.synth.checkpoint import synth_checkpoint

    keep = contextlib.nullcontext(work_dir) if work_dir else tempfile.TemporaryDirectory(prefix="hunyuan-demo-")
    with keep as base:
        base = Path(base)
        model, ckpt = base / "hunyuan-a13b-tiny", base / "trtllm-ckpt-tp2-ep2"
        if not model.exists():
            console.print("[bold]1/4 synth[/] a tiny random Hunyuan-A13B in Tencent's format (whole-character head)")
            synth_checkpoint(model, "a13b", preset="tiny", dtype="float32", whole_char_head=True)
        console.print("[bold]2/4 convert[/] to TensorRT-LLM at TP2 x EP2 (float32)")
        run_convert(model, ckpt, Mapping(tp=2, moe_ep=2), dtype="float32", overwrite=True)
        console.print("[bold]3/4 verify[/] reference executor on the rank files vs an independent reference")
        report = run_verify(ckpt, str(model))
        print_verify_table(report)
        console.print("[bold]4/4 serve[/]: reference repository -> Triton (CPU) -> OpenAI endpoint, 1 request")
        _demo_chat(ckpt, model)
        if work_dir:
            console.print(f"files kept in {os.fspath(work_dir)}")
    if not report.passed:
        raise SystemExit(1)



def _demo_chat(ckpt: Path, model: Path) -> None:
    """Serve the converted checkpoint through the real Triton server and print one chat completion."""
    import importlib.util
    import json
    import socket
    import urllib.request

    if importlib.util.find_spec("pytriton") is None:
        console.print("[yellow]skipped:[/] the Triton server for CPU comes with nvidia-pytriton "
                      "(pip install -e '.[demo]')")
        return
    from hunyuan_trtllm.serve.launch import reference_stack

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with reference_stack(ckpt, model, "127.0.0.1", port, "hunyuan-a13b-tiny") as endpoint:
        request = {"model": endpoint.model, "max_tokens": 16, "temperature": 0,
                   "messages": [{"role": "user", "content": "你好! Tell me about Hunyuan."}]}
        post = urllib.request.Request(f"{endpoint.url}/v1/chat/completions", data=json.dumps(request).encode(),
                                      headers={"content-type": "application/json"})
        with urllib.request.urlopen(post, timeout=120) as response:
            reply = json.loads(response.read())
    message = reply["choices"][0]["message"]
    print_table(f"POST {endpoint.url}/v1/chat/completions (random weights: real words, no meaning)", [
        ("request", request["messages"][0]["content"]),
        ("reasoning_content", repr(message.get("reasoning_content"))),
        ("content", repr(message["content"])),
        ("finish_reason / usage", f"{reply['choices'][0]['finish_reason']} / {reply['usage']}"),
    ])
