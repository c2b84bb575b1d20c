"""AllocationResult: what every back-end returns (docs/design.md §4.4)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fqopt.errors import UserError

STATUSES = ("optimal", "feasible", "infeasible", "timeout")


@dataclass
class Solution:
    """A back-end's raw answer on the reduced problem.

    ``choice``: ``[V]`` indices into ``bits`` per super-unit, or None (no assignment found);
    ``bound``: a proven lower bound on the optimum in cost units (None: no bound).
    """

    status: str
    choice: np.ndarray | None
    bound: float | None = None
    info: dict = field(default_factory=dict)


@dataclass
class AllocationResult:
    """The outcome of one solve.

    ``status`` is ``optimal`` (proven, up to the reported gap's float noise), ``feasible`` (an
    assignment without proof of optimality, e.g. stopped by the time limit), ``infeasible`` (the
    budget cannot be met; ``info['min_budget']`` is the smallest feasible value) or ``timeout``
    (no assignment found in time). ``assignment`` is int64 ``[U]`` bits per unit (None unless
    optimal/feasible); ``objective`` is recomputed from the costs for that assignment; ``bound``
    is a proven lower bound on the optimal objective (None if the back-end proves none);
    ``gap = (objective − bound) / max(|objective|, 1e-6 · cost_scale)``; ``group_costs`` ``[G]``;
    ``budget_used`` in the budget's unit; ``seconds`` of wall time.
    """

    status: str
    assignment: np.ndarray | None
    objective: float | None
    bound: float | None
    gap: float | None
    seconds: float
    backend: str
    group_costs: np.ndarray | None = None
    budget_used: float | None = None
    info: dict = field(default_factory=dict)
    objective_name: str = ""
    budget: dict = field(default_factory=dict)      # {"kind": ..., "value": ...}
    groups: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the result carries an assignment."""
        return self.assignment is not None

    @property
    def message(self) -> str:
        return str(self.info.get("message", self.status))

    def summary(self) -> dict:
        """The plan's ``solver`` record: backend, status, objective, bound, gap, seconds."""
        out = {"backend": self.backend, "status": self.status,
               "objective": _num(self.objective), "bound": _num(self.bound),
               "gap": _num(self.gap), "seconds": round(float(self.seconds), 6)}
        for key in ("rounding_error", "scale", "timed_out", "selected_by", "min_budget"):
            if key in self.info:
                out[key] = _plain(self.info[key])
        return out

    def to_dict(self) -> dict:
        """A JSON-able record (summary, budget, objective, group costs, budget used)."""
        return {**self.summary(), "objective_name": self.objective_name,
                "budget": self.budget, "budget_used": _num(self.budget_used),
                "predicted": self.predicted(), "message": self.message}

    def predicted(self) -> dict[str, float]:
        if self.group_costs is None:
            return {}
        return {g: float(c) for g, c in zip(self.groups, self.group_costs)}

    def to_plan(self, table_or_units, *, model: str | None = None, meta: dict | None = None,
                quantizer: str | None = None):
        """An :class:`~fqopt.plan.AllocationPlan` of this assignment.

        ``table_or_units`` is the :class:`~fqopt.sensitivity.SensitivityTable` the problem came
        from or its :class:`~fqopt.units.UnitSet`; ``model`` defaults to the table's
        ``meta['model']`` (else ``'unknown'``). ``quantizer`` is recorded in the plan and
        applied with it; it defaults to the quantizer the table was profiled with
        (``meta['quantizer']``), else ``maxabs``.
        """
        from fqopt.plan import AllocationPlan
        from fqopt.sensitivity import SensitivityTable, table_unit_set

        if self.assignment is None:
            raise UserError(f"no plan to write: the {self.backend} solve ended "
                            f"{self.status} ({self.message})")
        if isinstance(table_or_units, SensitivityTable):
            units = table_unit_set(table_or_units)
            model = model or (table_or_units.meta or {}).get("model") or "unknown"
            bits = table_or_units.bits.tolist()
            quantizer = quantizer or (table_or_units.meta or {}).get("quantizer")
        else:
            units, bits = table_or_units, None
            model = model or "unknown"
        return AllocationPlan.from_unit_bits(
            units, self.assignment, model=model, bits=bits, budget=dict(self.budget),
            objective=self.objective_name, predicted=self.predicted(), solver=self.summary(),
            meta=meta, quantizer=quantizer or "maxabs")

    def __repr__(self) -> str:
        obj = "-" if self.objective is None else f"{self.objective:.6g}"
        gap = "-" if self.gap is None else f"{self.gap:.2e}"
        return (f"AllocationResult(backend={self.backend!r}, status={self.status!r}, "
                f"objective={obj}, gap={gap}, seconds={self.seconds:.3f})")


def _num(x):
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _plain(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x
