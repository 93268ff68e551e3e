"""The root of the ``hunyuan-trtllm`` command: the click group, its error handling and the output helpers.

The command modules beside this one register their subcommands on :data:`cli`; they import this module, never
the other way round.
"""

from __future__ import annotations

import contextlib
import errno
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from hunyuan_trtllm import __version__
from hunyuan_trtllm.errors import UserError

console = Console(stderr=True)
stdout = Console(soft_wrap=True)


class HunyuanGroup(click.Group):
    """Turns user mistakes (:class:`UserError`) into one line on stderr and exit code 2, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"error: {where}disk full ({exc.strerror}); free up space and run the command again", err=True)
            sys.exit(2)


@click.group(cls=HunyuanGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="hunyuan-trtllm")
def cli() -> None:
    """Convert Tencent Hunyuan checkpoints (A13B, Large, dense) for TensorRT-LLM and check them.

    \b
    Start here (no GPU, no downloads):
      hunyuan-trtllm demo
    Real models:
      hunyuan-trtllm inspect tencent/Hunyuan-A13B-Instruct
      hunyuan-trtllm convert tencent/Hunyuan-A13B-Instruct -o ckpt-tp8 --tp 8 --ep 8
      hunyuan-trtllm verify ckpt-tp8 --against tencent/Hunyuan-A13B-Instruct
    """


def byte_progress(label: str, quiet: bool) -> tuple[AbstractContextManager[Progress] | None,
                                                   Callable[[int, int], Callable[[int], None]]]:
    """A rich progress bar in bytes with GB/s, and the callback factory the converter expects.

    The bar appears when the work starts, so an error before that is one line with no empty bar above it."""
    progress = None if quiet else Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )

    def start(total: int, done: int) -> Callable[[int], None]:
        if progress is None:
            return lambda n: None
        progress.start()
        task = progress.add_task(label, total=total, completed=done)
        return lambda n: progress.advance(task, n)

    return (None if progress is None else _stopped_after(progress)), start


@contextlib.contextmanager
def _stopped_after(progress: Progress) -> Iterator[Progress]:
    try:
        yield progress
    finally:
        if progress.live.is_started:  # stop() prints an empty line even when the bar never appeared
            progress.stop()


def print_table(title: str, rows: list[tuple[str, Any]]) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, str(value))
    stdout.print(table)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))
