"""fqopt report: report.html and PNG figures of a run's search."""

from __future__ import annotations

import click

from fqopt import search  # light: its names load torch and Optuna on first use
from fqopt.cli import _ui
from fqopt.cli._render import open_search, study_options


@click.command("report", help="Write RUN/reports/report.html (self-contained) and PNG figures.")
@_ui.run_option()
@study_options
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for report.html and the PNGs [default: RUN/reports].")
@_ui.force_option
def command(run_dir, storage, study_name, out_dir, force):
    run, study, results = open_search(run_dir, storage, study_name)
    with _ui.RichProgress(transient=True) as cb:
        path = search.write_report(run, study, results, force=force, callback=cb, out_dir=out_dir)
    pngs = sorted(p.name for p in path.parent.glob("*.png"))
    _ui.info(f"saved {path} and {len(pngs)} figures ({', '.join(pngs)}) in {path.parent}")
