"""Pieces shared by several sub-commands."""

from __future__ import annotations

import json

import click

from fqopt.cli import _ui
from fqopt.errors import UserError
from fqopt.units import check_bits


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
    if not bits:
        raise UserError(f"--bits {text!r}: name at least one bit-width")
    check_bits(bits, what=f"--bits {text!r}: bit-widths")
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


def quantizer_options(f):
    """``--quantizer`` (default: the plan's) and ``--override-quantizer`` of the commands that
    apply a plan (evaluate, export, refine); resolve them with :func:`resolve_quantizer`."""
    f = click.option("--override-quantizer", is_flag=True,
                     help="Apply --quantizer even where it differs from the quantizer the plan "
                          "records (said on stderr).")(f)
    return click.option("--quantizer", default=None, metavar="NAME",
                        help="Quantizer (maxabs, mse) [default: the one the plan records; "
                             "maxabs for --uniform and for plans that record none].")(f)


def resolve_quantizer(plan, given: str | None, override: bool, source: str) -> str:
    """The quantizer to apply to ``plan`` (an AllocationPlan, or None for the FP model).

    ``given`` (``--quantizer``) that contradicts the plan's recorded quantizer is a UserError
    unless ``override`` (``--override-quantizer``), which is then said on stderr: an ``mse``
    plan silently evaluated or exported with ``maxabs`` is a different model than the one the
    search chose.
    """
    # deferred: loads numpy (`fqopt <command> --help` stays fast)
    from fqopt.plan import DEFAULT_QUANTIZER, check_quantizer

    if given is not None:
        check_quantizer(given, where="--quantizer")
    if override and given is None:
        raise UserError("--override-quantizer needs --quantizer NAME (the quantizer to apply "
                        "instead of the plan's)")
    if plan is None:
        return given or DEFAULT_QUANTIZER
    if given is None or given == plan.quantizer:
        return plan.quantizer
    if not override:
        raise UserError(f"--quantizer {given} contradicts {source}, which records quantizer "
                        f"{plan.quantizer}; drop --quantizer to use {plan.quantizer}, or add "
                        f"--override-quantizer to apply {given} anyway")
    _ui.info(f"note: applying {source} (made with quantizer {plan.quantizer}) with quantizer "
             f"{given}, as --override-quantizer asks")
    return given


def load_plan_or_uniform(run, model, plan: str | None, uniform: int | None,
                         granularity="layer", quantizer: str | None = None):
    """An AllocationPlan from ``--plan FILE`` or ``--uniform B`` (pins respected, made with
    ``quantizer``, default maxabs) checked against ``model`` (the run's loaded model), or
    None."""
    if plan is not None and uniform is not None:
        raise click.UsageError("give --plan or --uniform, not both")
    if plan is None and uniform is None:
        return None
    # deferred: loads numpy and torch (`fqopt <command> --help` stays fast)
    from fqopt.discovery import discover_units
    from fqopt.plan import AllocationPlan

    if plan is not None:
        p = AllocationPlan.load(plan)
        p.validate(discover_units(model, p.granularity, pin="none"), model=run.model_name)
        return p
    units = discover_units(model, granularity)
    return AllocationPlan.uniform(units, int(uniform), model=run.model_name,
                                  quantizer=quantizer or "maxabs")
