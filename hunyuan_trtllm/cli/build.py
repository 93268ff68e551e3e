"""The ``build`` subcommand: TensorRT-LLM 1.2.1 engines from a converted checkpoint, or the plan for them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hunyuan_trtllm.builder.build_config import DEFAULT_MAX_BATCH_SIZE
from hunyuan_trtllm.cli.app import cli, console, print_json, print_rich_table, print_table, stdout
from hunyuan_trtllm.errors import UserError

if TYPE_CHECKING:  # torch loads only when a build runs
    from hunyuan_trtllm.builder.build_plan import BuildPlan
    from hunyuan_trtllm.builder.checkpoint import BuildModel
    from hunyuan_trtllm.builder.rank_build import RankResult

GIB = 2**30


def size(nbytes: int) -> str:
    """Bytes in GiB, or MiB below one GiB."""
    return f"{nbytes / GIB:.2f} GiB" if nbytes >= GIB else f"{nbytes / 2**20:.1f} MiB"


@cli.command()
@click.argument("ckpt")
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Engine directory to write (new or empty); not needed with --dry-run.")
@click.option("--max-batch-size", default=DEFAULT_MAX_BATCH_SIZE, show_default=True, help="Requests per step.")
@click.option("--max-input-len", type=int, default=None, help="Longest prompt [default: 8192, at most --max-seq-len].")
@click.option("--max-seq-len", type=int, default=None,
              help="Longest prompt + output [default: 32768, at most the model's context; A13B: up to 262144].")
@click.option("--max-num-tokens", type=int, default=None, help="Tokens per step, all requests [default: 8192].")
@click.option("--workers", type=int, default=None, help="Parallel builds, one GPU each [default: one per local GPU].")
@click.option("--timing-cache", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="TensorRT timing cache reused between builds [default: ~/.cache/hunyuan-trtllm/timing.cache].")
@click.option("--tokenizer", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Hugging Face dir with the tokenizer to copy [default: the checkpoint's source model].")
@click.option("--gather-context-logits", is_flag=True, help="Let the engine return every prompt position's logits.")
@click.option("--dry-run", is_flag=True, help="Validate and print the plan and the exact BuildConfig; build nothing.")
@click.option("--from-config", is_flag=True,
              help="With --dry-run: CKPT is a Hugging Face model dir or config.json; plan a layout before converting.")
@click.option("--tp", type=int, default=None, help="--from-config: tensor-parallel size.")
@click.option("--ep", type=int, default=None, help="--from-config: expert-parallel size (divides --tp).")
@click.option("--pp", type=int, default=None, help="--from-config: pipeline-parallel size.")
@click.option("--dtype", type=click.Choice(["auto", "bfloat16", "float16", "float32", "fp8"]), default=None,
              help="--from-config: the checkpoint dtype convert would write.")
@click.option("--kv-cache-dtype", type=click.Choice(["auto", "fp8"]), default=None,
              help="--from-config: fp8 for an FP8 KV cache (with --dtype fp8).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for programs instead of tables.")
def build(ckpt: str, out_dir: Path | None, max_batch_size: int, max_input_len: int | None, max_seq_len: int | None,
          max_num_tokens: int | None, workers: int | None, timing_cache: Path | None, tokenizer: Path | None,
          gather_context_logits: bool, dry_run: bool, from_config: bool, tp: int | None, ep: int | None,
          pp: int | None, dtype: str | None, kv_cache_dtype: str | None, quiet: bool, as_json: bool) -> None:
    """Build TensorRT-LLM 1.2.1 engines (one per rank) from the converted checkpoint CKPT.

    Checks every rank file against the weight plan first (headers only: each tensor's presence, shape and dtype),
    then builds the ranks in parallel, one process per GPU (rank r on GPU r % GPUs). Writes config.json,
    rank{N}.engine, tokenizer/ and build_plan.json, all at once when every rank is built. Needs the TensorRT-LLM
    1.2.1 image (nvcr.io/nvidia/tensorrt-llm/release:1.2.1) or the 'trtllm' extra on a GPU host; --dry-run runs
    anywhere.

    \b
    Examples:
      hunyuan-trtllm build ckpt-tp8 -o engines-tp8
      hunyuan-trtllm build ckpt-tp8 -o engines-tp8 --max-seq-len 262144 --max-input-len 131072 --workers 8
      hunyuan-trtllm build ckpt-tp8 --dry-run --json
      hunyuan-trtllm build ./Hunyuan-A13B-Instruct --dry-run --from-config --tp 8 --ep 8 --dtype fp8
    """
    from hunyuan_trtllm.builder.build_config import resolve_limits
    from hunyuan_trtllm.builder.build_plan import make_plan
    from hunyuan_trtllm.builder.engines import local_gpu_count, require_gpus, tensorrt_llm_version

    _check_flags(out_dir, dry_run, from_config, {"--tp": tp, "--ep": ep, "--pp": pp, "--dtype": dtype,
                                                  "--kv-cache-dtype": kv_cache_dtype})
    version = None if dry_run else tensorrt_llm_version()  # before anything is read or written
    gpus = local_gpu_count() if dry_run else require_gpus()
    model, digest = _load_model(ckpt, from_config, tp, ep, pp, dtype, kv_cache_dtype)
    limits = resolve_limits(model.spec, max_batch_size, max_input_len, max_seq_len, max_num_tokens)
    plan = make_plan(model, limits, gpus or None, workers, timing_cache, tokenizer, gather_context_logits, digest)
    if dry_run:
        if as_json:
            print_json(plan.to_json())
        else:
            print_plan(plan, "build plan (dry run: nothing built)")
            stdout.print("[bold]BuildConfig[/] (TensorRT-LLM 1.2.1 BuildConfig fields, every rank):")
            click.echo(json.dumps(plan.build_config, indent=2))
        return
    assert out_dir is not None and version is not None
    data = _run_build(plan, out_dir, version, quiet or as_json, as_json)
    if as_json:
        print_json(data)
        return
    engine_bytes = sum(r["engine_bytes"] for r in data["ranks"])
    print_table(f"built {out_dir}", [
        ("engines", f"{len(data['ranks'])} x rank{{N}}.engine, {size(engine_bytes)}, {data['seconds']:.0f} s"),
        ("tokenizer", f"tokenizer/ ({len(data['tokenizer_files'])} files from {data['tokenizer']})"),
        ("recorded", "build_plan.json (plan, checkpoint digest, BuildConfig, per-rank device and time)"),
        ("serve", f"hunyuan-trtllm serve {out_dir} --with trtllm-serve   (or --with triton)"),
    ])


def _check_flags(out_dir: Path | None, dry_run: bool, from_config: bool, layout: dict[str, Any]) -> None:
    if not dry_run and out_dir is None:
        raise UserError("-o/--output ENGINES is required (or --dry-run to only print the plan)")
    if from_config and not dry_run:
        raise UserError("--from-config only plans (add --dry-run); engines are built from a converted checkpoint")
    given = [flag for flag, value in layout.items() if value is not None]
    if given and not from_config:
        raise UserError(f"{given[0]} applies with --from-config; a converted checkpoint's layout and dtype are fixed "
                        "by convert")


def _load_model(ckpt: str, from_config: bool, tp: int | None, ep: int | None, pp: int | None, dtype: str | None,
                kv_cache_dtype: str | None) -> tuple[BuildModel, str | None]:
    """The model to build and, for a converted checkpoint, its digest once every rank file is validated."""
    from hunyuan_trtllm.builder.checkpoint import model_from_config, open_checkpoint
    from hunyuan_trtllm.builder.validate import checkpoint_digest, validate_rank_files
    from hunyuan_trtllm.checkpoints.mapping import Mapping

    if from_config:
        mapping = Mapping(tp=tp or 1, pp=pp or 1, moe_ep=ep or 1)
        return model_from_config(ckpt, mapping, dtype or "auto", kv_cache_dtype or "auto"), None
    model = open_checkpoint(Path(ckpt))
    files = validate_rank_files(model.path, model.plan)
    return model, checkpoint_digest(model.path, files)


def _run_build(plan: BuildPlan, out_dir: Path, version: str, quiet: bool, as_json: bool) -> dict[str, Any]:
    from hunyuan_trtllm.builder.engines import build_engines

    if not as_json:
        print_plan(plan, f"building {out_dir} with TensorRT-LLM {version}")
    columns = (TextColumn("[bold]building[/] ranks"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=quiet) as bar:
        task = bar.add_task("build", total=len(plan.ranks))

        def done(result: RankResult) -> None:
            bar.advance(task)
            if not quiet:
                console.print(f"rank {result.rank} built on cuda:{result.device} in {result.seconds:.0f} s "
                              f"({size(result.engine_bytes)})")

        return build_engines(plan, out_dir, version, done=done)


def print_plan(plan: BuildPlan, title: str) -> None:
    """The plan as two tables: settings, then one row per rank."""
    model, limits, plugins = plan.model, plan.limits, plan.build_config["plugin_config"]
    spec, mapping = model.spec, model.mapping
    source = (f"{model.path} (all {mapping.world_size} rank files match the weight plan)" if model.converted
              else f"{model.path} (planned from its config; nothing converted yet)")
    moe = f", {spec.num_experts} experts top-{spec.top_k}" if spec.is_moe else ""
    weights = "FP8 per-tensor (bf16 activations)" if model.fp8 else model.dtype_name
    rows = [
        ("checkpoint", source),
        ("model", f"{spec.architecture}: {spec.num_layers} layers, hidden {spec.hidden_size}{moe}"),
        ("layout", f"world {mapping.world_size} = tp {mapping.tp} (moe_tp {mapping.moe_tp} x ep {mapping.moe_ep}) "
                   f"x pp {mapping.pp}"),
        ("weights / KV cache", f"{weights} / paged, {'fp8' if model.kv_cache_fp8 else model.dtype_name}, "
                               f"{plugins['tokens_per_block']} tokens per block"),
        ("max batch / input / seq / tokens", f"{limits.max_batch_size} / {limits.max_input_len} / "
                                             f"{limits.max_seq_len} / {limits.max_num_tokens}"),
        ("RoPE positions", plan.position_table),
        ("plugins", f"gpt_attention {plugins['gpt_attention_plugin']}, gemm {plugins['gemm_plugin']}, "
                    f"moe {plugins['moe_plugin']}"),
        ("context FMHA", f"{plugins['context_fmha']}, paged {plugins['use_paged_context_fmha']}, fp8 "
                         f"{plugins['use_fp8_context_fmha']}; remove_input_padding {plugins['remove_input_padding']}"),
        ("GPUs / workers", f"{plan.gpus} / {plan.workers}"),
        ("timing cache", plan.timing_cache),
        ("tokenizer", plan.tokenizer_dir or "not found (pass --tokenizer)"),
        ("engines (about the weights)", f"{size(plan.total_bytes)} total, "
                                        f"{size(max(r.weight_bytes for r in plan.ranks))} largest rank"),
    ]
    rows += [("note", note) for note in plan.notes]
    print_table(title, rows)
    table = Table(title="ranks", title_justify="left")
    for column in ("rank", "device", "tp rank", "ep rank", "pp rank", "engine size (est.)"):
        table.add_column(column, justify="right")
    for r in plan.ranks:
        table.add_row(str(r.rank), f"cuda:{r.device}", str(r.tp_rank), str(r.moe_ep_rank), str(r.pp_rank),
                      size(r.weight_bytes))
    print_rich_table(table)
