"""Pieces shared by several sub-commands."""

from __future__ import annotations

import json

import click

from fqopt.cli import _ui
from fqopt.errors import UserError


def parse_options(pairs: tuple[str, ...], what: str = "--data-option") -> dict:
    """``("k=v", ...)`` -> dict; values are read as JSON when they parse (numbers, true, lists)."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"{what} {pair!r} must look like KEY=VALUE")
        k, v = pair.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def parse_bits(text: str) -> list[int]:
    try:
        bits = sorted({int(b) for b in text.split(",") if b.strip()})
    except ValueError:
        raise UserError(f"--bits must be a comma list of integers such as 2,3,4,6,8, "
                        f"got {text!r}") from None
    bad = [b for b in bits if not 2 <= b <= 8]
    if bad or not bits:
        raise UserError(f"--bits {text!r}: bit-widths must be integers in 2-8")
    return bits


def print_report(report, fmt: str, title: str | None = None) -> None:
    """A FairnessReport as JSON or as two tables (overall figures, per-group figures)."""
    d = report.to_dict() if hasattr(report, "to_dict") else dict(report)
    if fmt == "json":
        _ui.print_json(d)
        return
    keys = ["accuracy", "balanced_accuracy", "avg_acc", "worst_acc", "acc_gap",
            "acc_gap_maxmin", "eopp0", "eopp1", "eodd", "dp"]
    ci = d.get("ci") or {}
    rows = []
    for k in keys:
        if k in d:
            iv = ci.get(k)
            rows.append([k, d[k], f"[{iv[0]:.4f}, {iv[1]:.4f}]" if iv else ""])
    _ui.print_table(title, ["metric", "value", "95% CI" if ci else ""], rows)
    groups = list(d.get("group_accuracy", {}))
    n = d.get("n", {})
    gci = (ci.get("group_accuracy") or {}) if isinstance(ci.get("group_accuracy"), dict) else {}
    grows = []
    for g in groups:
        row = [g, n.get(g), d["group_accuracy"].get(g),
               (d.get("group_auc") or {}).get(g), (d.get("group_ece") or {}).get(g)]
        if gci:
            iv = gci.get(g)
            row.append(f"[{iv[0]:.4f}, {iv[1]:.4f}]" if iv else "")
        grows.append(row)
    cols = ["group", "n", "accuracy", "auc", "ece"] + (["acc 95% CI"] if gci else [])
    _ui.print_table(None, cols, grows)


def load_plan_or_uniform(run, model, plan: str | None, uniform: int | None,
                         granularity="layer"):
    """An AllocationPlan from ``--plan FILE`` or ``--uniform B`` (pins respected) checked
    against ``model`` (the run's loaded model), or None."""
    if plan is not None and uniform is not None:
        raise click.UsageError("give --plan or --uniform, not both")
    if plan is None and uniform is None:
        return None
    from fqopt.plan import AllocationPlan
    from fqopt.units import discover_units

    if plan is not None:
        p = AllocationPlan.load(plan)
        p.validate(discover_units(model, p.granularity, pin="none"), model=run.model_name)
        return p
    units = discover_units(model, granularity)
    return AllocationPlan.uniform(units, int(uniform), model=run.model_name)
