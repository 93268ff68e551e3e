"""The root of the ``hunyuan-trtllm`` command: the click group, its error handling and the output helpers.

The command modules beside this one register their subcommands on :data:`cli`; they import this module, never
the other way round.
"""

from __future__ import annotations

import errno
import json
import sys
from collections.abc import Callable
from typing import Any

import click
from rich.cells import cell_len
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from hunyuan_trtllm import __version__
from hunyuan_trtllm.errors import UserError

console = Console(stderr=True)
stdout = Console(soft_wrap=True)


class OneLineUsageError(click.UsageError):
    """click's usage error, shown as the one line ``error: ...`` that every other user mistake gets."""

    def show(self, file: Any = None) -> None:
        message = " ".join(self.format_message().split()).rstrip(".")
        hint = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        click.echo(f"error: {message[:1].lower()}{message[1:]}{hint}", err=True)


def _one_line(exc: click.UsageError) -> OneLineUsageError:
    return OneLineUsageError(exc.format_message(), exc.ctx)


class HunyuanGroup(click.Group):
    """Turns user mistakes (:class:`UserError`, click's usage errors) into one line on stderr and exit code 2,
    never a traceback. Its subgroups (``deploy``) are HunyuanGroups too."""

    group_class = type

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OneLineUsageError:
            raise
        except click.UsageError as exc:
            raise _one_line(exc) from None
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


class ByteProgress:
    """A rich progress bar in bytes with GB/s for ``with``; :meth:`start` is the callback factory the converter
    expects (``start(total, done)`` returns ``advance(n)``). Nothing is drawn before the first task, so an error
    raised before any work prints only its own line; :meth:`finish` makes the bar's final rate the summary's."""

    def __init__(self, label: str, quiet: bool) -> None:
        self.label = label
        self.progress = None if quiet else Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> ByteProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.progress is not None and self._task is not None:
            self.progress.stop()

    def start(self, total: int, done: int) -> Callable[[int], None]:
        progress = self.progress
        if progress is None:
            return lambda n: None
        task = self._task = progress.add_task(self.label, total=total, completed=done)
        progress.start()
        return lambda n: progress.advance(task, n)

    def finish(self, bytes_per_second: float) -> None:
        """Show ``bytes_per_second`` (the summary's average) as the final rate instead of rich's recent-window
        estimate."""
        if self.progress is not None and self._task is not None:
            task = next(t for t in self.progress.tasks if t.id == self._task)
            self.progress.update(self._task, total=task.completed)  # verify's estimate counts replicas too
            task.finished_speed = bytes_per_second


def print_table(title: str, rows: list[tuple[str, Any]]) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, str(value))
    print_rich_table(table)


def print_rich_table(table: Table) -> None:
    """Print ``table`` on stdout without cutting any value (never "layo…"): in a pipe at its natural width; in a
    narrow terminal with widths chosen so that no word of a cell is split (headers may fold), wider than the
    terminal only if even that cannot fit."""
    for column in table.columns:
        column.overflow = "fold"
    natural = stdout.measure(table, options=stdout.options.update_width(10_000)).maximum
    if natural <= stdout.width:
        stdout.print(table)
        return
    needed = _fit_columns(table, stdout.width) if stdout.is_terminal else natural
    if needed <= stdout.width:
        stdout.print(table)
    else:  # Console.print never goes wider than the console
        Console(file=stdout.file, width=needed, soft_wrap=True, force_terminal=stdout.is_terminal,
                no_color=stdout.no_color).print(table)


def _fit_columns(table: Table, width: int) -> int:
    """Fix each column's width for ``width`` terminal cells: at least its longest word (of the header too, if that
    fits), the room left shared in proportion to what each column lacks of its natural width. Returns the width the
    table then needs."""
    borders = 3 * len(table.columns) + 1  # one rule per column edge, one space of padding on each side
    lows, headed, highs = [], [], []
    for column in table.columns:
        lines = [Text.from_markup(c).plain if isinstance(c, str) else str(c) for c in column.cells]
        lows.append(max([cell_len(word) for line in lines for word in line.split()] or [1]))
        headed.append(max([lows[-1]] + [cell_len(word) for word in str(column.header).split()]))
        highs.append(max([cell_len(line) for line in lines] + [cell_len(str(column.header))]))
    if borders + sum(headed) <= width:
        lows = headed
    room = max(0, width - borders - sum(lows))
    lacks = [high - low for low, high in zip(lows, highs, strict=True)]
    total = sum(lacks) or 1
    for column, low, lack in zip(table.columns, lows, lacks, strict=True):
        column.width = low + min(lack, room * lack // total)
    return borders + sum(column.width or 0 for column in table.columns)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))
