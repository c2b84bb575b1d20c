"""``fqopt allocate``: solve for a bit allocation under a budget and write the plan(s)."""

from __future__ import annotations

import math
from pathlib import Path

import click

from fqopt._io import check_writable
from fqopt.cli._ui import (RichProgress, force_option, format_option, info, print_json,
                           print_table)
from fqopt.errors import UserError
from fqopt.sensitivity import SensitivityTable
# numpy only: the back-ends load when they run
from fqopt.solvers import BUDGET_KINDS, AllocationProblem, get_solver, solve_ladder

_PLACEHOLDER = "{budget}"

_EPILOG = """\b
Budgets: one number, a ladder START:STOP:STEP (inclusive), or a comma list.
Output: one budget writes the file --out; several budgets write one plan each, into the
folder --out as plan_<kind>_<budget>.json, or to --out as a pattern containing {budget}
(e.g. plans/worst_{budget}.json). Existing files are never overwritten without --force.
Solvers: auto (cpsat up to 2000 units, lagrange above), lagrange, cpsat, milp, quantile,
exhaustive."""


def parse_budgets(text: str) -> list[float]:
    """``'4'`` -> [4.0]; ``'3:6:0.5'`` -> [3.0, 3.5, ..., 6.0]; ``'3,4.5'`` -> [3.0, 4.5]."""
    text = str(text).strip()
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3:
                raise ValueError
            start, stop, step = parts
            if not step > 0 or stop < start:
                raise UserError(f"budget ladder {text!r}: need START <= STOP and STEP > 0")
            n = math.floor((stop - start) / step + 1e-9) + 1
            if n > 10_000:
                raise UserError(f"budget ladder {text!r} has {n} budgets; at most 10000")
            values = [round(start + i * step, 10) for i in range(n)]
        else:
            values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UserError(f"--budget {text!r}: expected a number, START:STOP:STEP or a comma "
                        "list of numbers") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise UserError(f"--budget {text!r}: expected finite numbers")
    return values


def parse_pins(text: str):
    """``default`` | ``none`` | ``NAME[=BITS],...`` (8 bits when omitted) -> from_table's pins."""
    text = (text or "default").strip()
    if text in ("default", "none"):
        return text
    pins = {}
    for item in text.split(","):
        name, _, bits = item.strip().partition("=")
        if not name:
            continue
        try:
            pins[name.strip()] = int(bits) if bits else 8
        except ValueError:
            raise UserError(f"--pin {item.strip()!r}: bits must be an integer, e.g. "
                            f"{name.strip()}=8") from None
    return pins


def output_paths(out: str, kind: str, budgets: list[float]) -> list[Path]:
    if _PLACEHOLDER in out:
        paths = [Path(out.replace(_PLACEHOLDER, f"{b:g}")) for b in budgets]
    elif len(budgets) == 1:
        paths = [Path(out)]
    else:
        folder = Path(out)
        if folder.exists() and not folder.is_dir():
            raise UserError(f"--out {out} is a file; a budget ladder writes one plan per "
                            f"budget into a folder, or to a pattern containing {_PLACEHOLDER}")
        paths = [folder / f"plan_{kind}_{b:g}.json" for b in budgets]
    if len(set(paths)) != len(paths):
        raise UserError(f"--out {out}: two budgets map to the same file")
    return paths


@click.command("allocate", epilog=_EPILOG,
               help="Solve for a bit allocation under a budget; writes a plan JSON.")
@click.option("--table", "table_path", required=True, type=click.Path(dir_okay=False),
              help="Sensitivity table (.npz) written by fqopt profile or by hand.")
@click.option("--budget", "budget_text", required=True,
              help="Budget value, ladder START:STOP:STEP, or comma list.")
@click.option("--budget-kind", type=click.Choice(BUDGET_KINDS), default="avg_bits",
              show_default=True, help="Average bits (parameter-weighted), bytes, or BOPs.")
@click.option("--objective", default="worst", show_default=True,
              help="worst | balanced | mean | blend:λ | cvar:α")
@click.option("--solver", "backend", default="auto", show_default=True, help="Back-end.")
@click.option("--time-limit", type=float, default=60.0, show_default=True,
              help="Seconds per budget.")
@click.option("--pin", "pin_text", default="default", show_default=True,
              help="'default' (the table's pins), 'none', or NAME[=BITS],... replacing them "
                   "(8 bits if omitted; NAME is a layer or a unit).")
@click.option("--min-bits", type=int, default=None, help="Lowest bit-width for every unit.")
@click.option("--max-bits", type=int, default=None, help="Highest bit-width for every unit.")
@click.option("--out", required=True, help="Plan file (one budget), or folder / pattern.")
@force_option
@format_option
def command(table_path, budget_text, budget_kind, objective, backend, time_limit, pin_text,
            min_bits, max_bits, out, force, fmt):
    if not time_limit > 0:
        raise UserError(f"--time-limit must be positive seconds, got {time_limit}")
    budgets = parse_budgets(budget_text)
    get_solver(backend)  # an unknown solver fails before the table is read
    table = SensitivityTable.load(table_path)
    problem = AllocationProblem.from_table(
        table, budget=budgets[0], budget_kind=budget_kind, objective=objective,
        pins=parse_pins(pin_text), min_bits=min_bits, max_bits=max_bits)
    for b in budgets:
        p = problem.with_budget(b)
        if not p.is_budget_feasible:
            raise UserError(f"{p.infeasibility_message()} (table {table_path})")
    paths = output_paths(out, budget_kind, budgets)
    for path in paths:
        check_writable(path, force, what="plan")

    if len(budgets) > 1:
        with RichProgress(transient=True) as bar:
            results = solve_ladder(problem, budgets, backend, time_limit=time_limit,
                                   callback=lambda i, n, r: bar("allocate", i, n))
    else:
        results = solve_ladder(problem, budgets, backend, time_limit=time_limit)
    rows, records = [], []
    for b, res, path in zip(budgets, results, paths):
        if not res.ok:
            raise UserError(f"solver {res.backend} found no assignment for budget {b:g} "
                            f"{budget_kind} within {time_limit:g} s ({res.message}); raise "
                            "--time-limit or use --solver lagrange")
        plan = res.to_plan()   # records the table's file, method, dataset and granularity
        plan.save(path)
        rec = {"budget": b, **res.summary(), "avg_bits": plan.avg_bits,
               "size_bytes": plan.size_bytes, "plan": str(path)}
        records.append(rec)
        rows.append([f"{b:g}", res.backend, res.status, f"{res.objective:.6g}",
                     "-" if res.bound is None else f"{res.bound:.6g}",
                     "-" if res.gap is None else f"{res.gap:.1e}", f"{res.seconds:.3f}"])
    if fmt == "json":
        print_json(records[0] if len(records) == 1 else records)
    else:
        print_table(f"objective {problem.objective}, budget {budget_kind}",
                    ["budget", "solver", "status", "objective", "bound", "gap", "seconds"],
                    rows)
        where = paths[0] if len(paths) == 1 else (paths[0].parent if _PLACEHOLDER not in out
                                                   else out)
        info(f"wrote {len(paths)} plan{'s' if len(paths) > 1 else ''} to {where}")
