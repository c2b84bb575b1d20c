"""Rich output for the CLI layer only: progress bars, tables, JSON. The library never prints."""

from __future__ import annotations

import contextlib
import json
import sys
import time

import click
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table

from fqopt._io import json_default

# progress and messages go to stderr so that stdout stays data (JSON, tables)
err = Console(stderr=True, highlight=False)
out = Console(highlight=False, soft_wrap=True)

format_option = click.option("--format", "fmt", type=click.Choice(["table", "json"]),
                             default="table", show_default=True, help="Output format.")
force_option = click.option("--force", is_flag=True, help="Overwrite existing outputs.")


def run_option(default: str | None = "runs/default", required: bool = False):
    return click.option("--run", "run_dir", default=default, required=required,
                        show_default=default is not None, type=click.Path(file_okay=False),
                        help="Run folder (config, checkpoint, tables, plans, reports).")


class RichProgress:
    """A library progress callback ``callback(stage, done, total, **info)`` drawn with rich.

    One bar per stage name; ``total`` may be ``None`` for an unknown length. Extra keyword info is
    shown as a short ``key=value`` suffix.
    """

    def __init__(self, console: Console = err, transient: bool = False,
                 log_every: float = 15.0):
        # without a terminal (CI logs, pipes) bars are not drawn: print a plain line when a
        # stage finishes, and at most every ``log_every`` seconds while it runs
        self._live = console.is_terminal
        self._console = console
        self._log_every = log_every
        self._last_log: dict[str, float] = {}
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=console, transient=transient)
        self._tasks: dict[str, int] = {}

    def __enter__(self):
        if self._live:  # a stopped live display prints a newline even when it drew nothing
            self._progress.start()
        return self

    def __exit__(self, *exc):
        if self._live:
            self._progress.stop()
        return False

    def __call__(self, stage: str, done: int, total: int | None = None, **info) -> None:
        text = "  ".join(f"{k}={_short(v)}" for k, v in info.items())
        if not self._live:
            now = time.monotonic()
            finished = total is not None and done >= total
            if finished or now - self._last_log.get(stage, now - self._log_every - 1) > \
                    self._log_every:
                self._last_log[stage] = now
                of = f"/{total}" if total is not None else ""
                self._console.print(f"{stage}: {done}{of}  {text}".rstrip())
            return
        if stage not in self._tasks:
            self._tasks[stage] = self._progress.add_task(stage, total=total, info=text)
        self._progress.update(self._tasks[stage], completed=done, total=total, info=text)


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


@contextlib.contextmanager
def progress():
    with RichProgress() as p:
        yield p


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")
    sys.stdout.flush()


def print_table(title: str | None, columns: list[str], rows: list[list]) -> None:
    table = Table(title=title, show_lines=False)
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*[_cell(v) for v in r])
    out.print(table)


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def warn(msg: str) -> None:
    """One plain line on stderr (no wrapping, no markup): ``fqopt: warning: ...``."""
    click.echo(f"fqopt: warning: {' '.join(str(msg).split())}", err=True)


def info(msg: str) -> None:
    err.print(msg)
