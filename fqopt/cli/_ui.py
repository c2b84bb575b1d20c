"""Rich output for the CLI layer only: progress bars, tables, JSON. The library never prints."""

from __future__ import annotations

import contextlib
import json
import sys
import threading
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


#: the stage-header event of a library callback: ``callback(HEADER, k, n, title=..., detail=...)``
#: opens stage k of n; ``finished=seconds`` closes it (see ``fqopt.search._pipeline``)
HEADER = "header"


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class RichProgress:
    """A library progress callback ``callback(stage, done, total, **info)`` drawn with rich.

    One bar per stage name; ``total`` may be ``None`` for an unknown length. Extra keyword info is
    shown as a short ``key=value`` suffix. ``callback("header", k, n, title=..., detail=...)``
    prints a stage header (and ``finished=seconds`` its closing line).

    Without a terminal (CI logs, pipes) bars are not drawn: a plain line with done/total, the
    stage's elapsed time and an ETA is printed when a stage starts and finishes and at most every
    ``log_every`` seconds while it runs; a heartbeat thread repeats the running stage's line
    when nothing was printed for ``log_every`` seconds, so a log is never silent for longer,
    however long one step takes.
    """

    def __init__(self, console: Console = err, transient: bool = False,
                 log_every: float = 15.0, heartbeat: bool | None = None):
        self._live = console.is_terminal
        self._console = console
        self._log_every = float(log_every)
        self._heartbeat = (not self._live) if heartbeat is None else bool(heartbeat)
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=console, transient=transient)
        self._tasks: dict[str, int] = {}
        self._lock = threading.RLock()
        self._started = time.monotonic()
        # stage -> [first seen, done at first sight, last done, total, info text, last printed]
        self._stages: dict[str, list] = {}
        self._current: str | None = None      # the stage whose line the heartbeat repeats
        self._header: tuple[str, float] | None = None   # (title, started)
        self._last_print = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self):
        if self._live:  # a stopped live display prints a newline even when it drew nothing
            self._progress.start()
        if self._heartbeat:
            self._thread = threading.Thread(target=self._beat, name="fqopt-heartbeat",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self._live:
            self._progress.stop()
        return False

    # ---------------------------------------------------------------- printing
    def _print(self, text: str) -> None:
        with self._lock:
            (self._progress.console if self._live else self._console).print(
                text, highlight=False, soft_wrap=True)
            self._last_print = time.monotonic()

    def _line(self, stage: str, now: float, still: bool = False) -> str:
        first, done0, done, total, text, _ = self._stages[stage]
        elapsed = now - first
        parts = [f"  {stage}: {done}" + (f"/{total}" if total is not None else ""),
                 f"{_clock(elapsed)} elapsed"]
        if total is not None and done >= total:
            parts[-1] = f"done in {_clock(elapsed)}"
        elif total is not None and done > done0 and elapsed > 0:
            rate = (done - done0) / elapsed
            parts.append(f"ETA {_clock((total - done) / rate)}")
        elif total is not None:
            parts.append("ETA –")
        if text:
            parts.append(text)
        if still:
            parts.append("(working)")
        return "  ".join(parts)

    def _beat(self) -> None:
        while not self._stop.wait(min(1.0, self._log_every / 4)):
            now = time.monotonic()
            with self._lock:
                if now - self._last_print < self._log_every:
                    continue
                st = self._stages.get(self._current) if self._current else None
                if st is not None and not (st[3] is not None and st[2] >= st[3]):
                    st[5] = now  # the stage's next regular line waits another log_every
                    self._print(self._line(self._current, now, still=True))
                elif self._header is not None:
                    title, since = self._header
                    self._print(f"  {title}: working, {_clock(now - since)} elapsed")
                else:
                    self._print(f"  working, {_clock(now - self._started)} elapsed in all")

    # ---------------------------------------------------------------- the callback
    def __call__(self, stage: str, done: int, total: int | None = None, **info) -> None:
        if stage == HEADER:
            self._on_header(done, total, **info)
            return
        text = "  ".join(f"{k}={_short(v)}" for k, v in info.items())
        now = time.monotonic()
        with self._lock:
            st = self._stages.get(stage)
            if st is None or (st[3] is not None and st[2] >= st[3] and done < st[2]):
                st = self._stages[stage] = [now, done, done, total, text, None]
            repeat = st[2] == done and st[3] == total and st[5] is not None
            st[2], st[3], st[4] = done, total, text
            self._current = stage
            if not self._live:
                finished = total is not None and done >= total
                if (finished and not repeat) or st[5] is None or now - st[5] > self._log_every:
                    st[5] = now
                    self._print(self._line(stage, now))
                return
            if stage not in self._tasks:
                self._tasks[stage] = self._progress.add_task(stage, total=total, info=text)
            self._progress.update(self._tasks[stage], completed=done, total=total, info=text)

    def _on_header(self, index: int, count: int | None, *, title: str, detail: str = "",
                   finished: float | None = None, **_) -> None:
        now = time.monotonic()
        total = _clock(now - self._started)
        with self._lock:
            if finished is not None:
                self._print(f"  {title} finished in {_clock(finished)}  (total {total})")
                self._header = None
                self._current = None
                return
            of = f" {index}/{count}" if count else ""
            rule = f"── stage{of}: {title} " + ("── " + detail + " " if detail else "")
            self._print(f"[bold]{rule}[/]── {total} elapsed")
            self._header = (title, now)
            self._current = None


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
    # never wrapped: a log keeps commands (export, optuna-dashboard) on one line to copy
    err.print(msg, soft_wrap=True)
