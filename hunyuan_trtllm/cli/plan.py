"""The ``plan`` subcommand: will it fit, with which TP/EP/PP, how many sequences, how fast at best."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from hunyuan_trtllm.builder.gpu_specs import GPUS
from hunyuan_trtllm.builder.planner_models import DEFAULT_FREE_FRACTION, PRESETS
from hunyuan_trtllm.cli.app import cli, print_json, print_rich_table, print_table, stdout

GB = 1e9
KIB = 1024


@cli.command()
@click.argument("model", required=False)
@click.option("--preset", type=click.Choice(list(PRESETS)), default=None,
              help="A built-in model (its published config.json) instead of MODEL.")
@click.option("--gpu", required=True, type=click.Choice(list(GPUS)), help="GPU model (datasheet figures).")
@click.option("--gpus", "gpus_per_node", default=8, show_default=True, help="GPUs per node.")
@click.option("--nodes", default=1, show_default=True, help="Nodes (all GPUs of all nodes serve one model).")
@click.option("--dtype", type=click.Choice(["bf16", "fp8"]), default=None,
              help="Weight dtype (fp8: the per-tensor FP8 checkpoint `convert --dtype fp8` writes) "
                   "[default: fp8 for an FP8 release, else bf16].")
@click.option("--mtp", type=click.Choice(["drop", "keep"]), default="drop", show_default=True,
              help="Hy3: count the MTP draft part (`convert --mtp keep`) on the last pipeline stage.")
@click.option("--kv-cache-dtype", type=click.Choice(["bf16", "fp8"]), default=None,
              help="KV-cache dtype [default: same as --dtype].")
@click.option("--max-seq-len", type=int, default=None,
              help="Tokens per sequence (prompt + output) [default: the model's max_position_embeddings].")
@click.option("--free-gpu-memory-fraction", "free_fraction", type=float, default=DEFAULT_FREE_FRACTION,
              show_default=True, help="Share of the memory left after weights and workspace that goes to the KV "
                                      "cache (TensorRT-LLM's kv_cache_free_gpu_memory_fraction).")
@click.option("--parallel-embedding", is_flag=True,
              help="Plan the checkpoint of convert --parallel-embedding (1/tp of the embedding per GPU).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for programs instead of tables.")
def plan(model: str | None, preset: str | None, gpu: str, gpus_per_node: int, nodes: int, dtype: str | None,
         mtp: str, kv_cache_dtype: str | None, max_seq_len: int | None, free_fraction: float, parallel_embedding: bool,
         as_json: bool) -> None:
    """Plan a deployment before renting GPUs: for every TP/EP/PP layout on the given GPUs, does MODEL fit (and if
    not, which term overflows), how many sequences of --max-seq-len run at once, and the decode ceilings.

    MODEL is a checkpoint directory or a Hugging Face repo id (only config.json is read); or use --preset.
    Weight bytes per GPU are the converter's own weight plan; KV, workspace and speed ceilings are estimates whose
    assumptions are printed with the plan.

    \b
    Examples:
      hunyuan-trtllm plan --preset hunyuan-a13b --gpu h100 --gpus 8
      hunyuan-trtllm plan --preset hunyuan-a13b --gpu h200 --gpus 1 --dtype fp8 --max-seq-len 32768
      hunyuan-trtllm plan --preset hunyuan-large --gpu h100 --gpus 8 --nodes 2 --json
      hunyuan-trtllm plan ./Hunyuan-A13B-Instruct --gpu h20 --gpus 4 --dtype fp8 --kv-cache-dtype fp8
      hunyuan-trtllm plan --preset hy3 --gpu h200 --gpus 8 --max-seq-len 32768 --mtp keep
      hunyuan-trtllm plan --preset hy3-fp8 --gpu h200 --gpus 4
    """
    from hunyuan_trtllm.builder.planner import make_plan

    result = make_plan(model, preset, gpu, gpus_per_node, nodes, dtype, kv_cache_dtype, max_seq_len, free_fraction,
                       mtp=mtp == "keep", parallel_embedding=parallel_embedding)
    if as_json:
        print_json(result)
        return
    print_summary(result)
    print_layouts(result)
    print_recommendation(result)


def print_summary(result: dict[str, Any]) -> None:
    """What is planned, on what, and the assumptions behind every number (in full in the JSON)."""
    model, gpu, assume = result["model"], result["gpu"], result["assumptions"]
    kv = model["kv_bytes_per_token"]
    work = assume["workspace"]
    nodes = f"{result['nodes']} nodes x " if result["nodes"] > 1 else ""
    print_table(f"plan: {model['name']} on {nodes}{result['gpus_per_node']} x {gpu['name']}", [
        ("model", f"{model['architecture']}, {model['total_params'] / 1e9:.1f}B parameters, "
                  f"{model['active_params'] / 1e9:.1f}B active per token ({result['source']})"
                  + (f"; MTP {model['mtp_params'] / 1e9:.2f}B {'kept' if result['mtp'] else 'left out'}"
                     if model["num_mtp_layers"] else "")),
        ("KV cache per token (whole model)", f"{kv['bf16'] / KIB:g} KiB bf16 / {kv['fp8'] / KIB:g} KiB fp8 "
                                             f"({model['num_kv_layers']} of {model['num_layers']} layers own KV)"),
        ("GPU", f"{gpu['memory_bytes'] / GB:g} GB, {gpu['hbm_bandwidth_bytes_per_s'] / 1e12:g} TB/s, "
                f"{gpu['bf16_dense_flops'] / 1e12:g} BF16 / "
                f"{(gpu['fp8_dense_flops'] or 0) / 1e12:g} FP8 dense TFLOPS"),
        ("settings", f"weights {result['dtype']}, KV cache {result['kv_cache_dtype']}, "
                     f"{result['max_seq_len']:,} tokens per sequence, "
                     f"{assume['free_gpu_memory_fraction']:g} of free memory to KV, "
                     f"{assume['tokens_per_block']}-token KV blocks"),
        ("workspace allowance (estimate)", f"{work['runtime_reserve_bytes'] / 2**30:g} GiB runtime reserve + "
                                           f"{work['max_num_tokens']} tokens x activations per token"),
        ("decode ceilings", "batch 1: HBM bandwidth / bytes read per token (active weights + KV at this length); "
                            "large batch: dense FLOP/s / (2 x active parameters)"),
    ])


def layout_name(layout: dict[str, Any], moe: bool) -> str:
    """``tp8 (ep8 x mtp1) pp1``; a trailing ``*`` marks tensor parallelism across nodes."""
    experts = f" (ep{layout['moe_ep']} x mtp{layout['moe_tp']})" if moe else ""
    return f"tp{layout['tp']}{experts} pp{layout['pp']}" + (" *" if layout["tp_spans_nodes"] else "")


def print_layouts(result: dict[str, Any]) -> None:
    """The layouts, best first: memory per GPU, capacity, ceilings, and the verdict."""
    moe = result["model"]["num_experts"] > 1
    gpus = result["nodes"] * result["gpus_per_node"]
    table = Table(title=f"layouts on {gpus} GPU{'s' if gpus > 1 else ''}, best first", title_justify="left")
    for column in ("#", "layout", "weights/GPU", "workspace", "KV/token/GPU", "KV pool/GPU",
                   f"seqs @ {result['max_seq_len']:,}", "batch-1 tok/s", "compute-bound tok/s", "verdict"):
        table.add_column(column, justify="left" if column in ("layout", "verdict") else "right")
    for index, layout in enumerate(result["layouts"], 1):
        fits = layout["fits"]
        table.add_row(
            str(index), layout_name(layout, moe), f"{layout['weight_bytes_per_rank'] / GB:.1f} GB",
            f"{layout['workspace_bytes_per_rank'] / GB:.1f} GB",
            f"{layout['kv_bytes_per_token_per_rank'] / KIB:g} KiB",
            f"{layout['kv_cache_bytes_per_rank'] / GB:.1f} GB" if fits else "-",
            f"{layout['max_concurrent_sequences']:,}",
            f"{layout['decode_tokens_per_s_batch1']:,.0f}" if fits else "-",
            f"{layout['decode_tokens_per_s_compute_bound']:,.0f}" if fits else "-",
            "[green]fits" if fits else f"[red]{layout['reason']}",
        )
    print_rich_table(table)
    if any(layout["tp_spans_nodes"] for layout in result["layouts"]):
        stdout.print("* tensor parallelism across nodes: every layer's all-reduces cross the network")


def print_recommendation(result: dict[str, Any]) -> None:
    """The best fitting layout as convert flags, and any notes."""
    best = result["recommended"]
    if best is None:
        stdout.print("[red]no layout fits[/]")
    else:
        stdout.print(f"[bold]recommended:[/] tp {best['tp']}, ep {best['moe_ep']}, pp {best['pp']} "
                     f"(convert --tp {best['tp']} --ep {best['moe_ep']} --pp {best['pp']}"
                     f"{' --dtype fp8' if result['dtype'] == 'fp8' else ''}"
                     f"{' --kv-cache-dtype fp8' if result['kv_cache_dtype'] == 'fp8' else ''}"
                     f"{' --parallel-embedding' if best['parallel_embedding'] else ''}): "
                     f"{best['max_concurrent_sequences']:,} sequences of {result['max_seq_len']:,} tokens, "
                     f"at most {best['decode_tokens_per_s_batch1']:,.0f} tok/s per sequence at batch 1")
        saved = best["parallel_embedding_saves_bytes_per_rank"]
        if saved:
            verb = "saves" if best["parallel_embedding"] else "would save"
            stdout.print(f"--parallel-embedding {verb} {saved / GB:.2f} GB of weights on each first-stage GPU "
                         "(the vocabulary embedding split over the tp ranks instead of replicated)")
    for note in result["notes"]:
        stdout.print(f"[yellow]note:[/] {note}")
