"""AllocationResult: what every back-end returns (docs/design.md §4.4)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fqopt.errors import UserError
from fqopt.plan import DEFAULT_QUANTIZER, AllocationPlan
from fqopt.sensitivity import SensitivityTable, table_provenance, table_unit_set
from fqopt.units import UnitSet


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
    # from the problem (AllocationProblem.from_units / from_table): what to_plan needs
    units: UnitSet | None = field(default=None, repr=False)
    candidate_bits: list[int] | None = field(default=None, repr=False)
    provenance: dict = field(default_factory=dict, repr=False)

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

    def to_plan(self, table_or_units=None, *, model: str | None = None,
                meta: dict | None = None, quantizer: str | None = None,
                bits: str | None = None) -> AllocationPlan:
        """An :class:`~fqopt.plan.AllocationPlan` of this assignment, over the units of the
        problem it solved (built with ``from_units`` or ``from_table``).

        The plan records the problem's provenance: ``model`` defaults to the table's
        ``meta['model']`` (else ``'unknown'``), ``quantizer`` (recorded and applied with the
        plan) to the table's ``meta['quantizer']`` (else ``maxabs``), and ``plan.meta`` starts
        with the table's file, method, dataset and granularity; ``meta`` adds to it.
        ``bits``: ``"candidates"`` records the problem's candidate bit-widths as the plan's
        ``bits``, ``"used"`` only those the assignment uses; the default is ``candidates``.

        ``table_or_units`` is accepted for compatibility (the table the problem came from, or a
        :class:`~fqopt.units.UnitSet`); it must describe the same units. A table given is read
        for provenance as it is now; for a problem built by hand, the table or a UnitSet gives
        the units (with a UnitSet, ``bits`` defaults to ``"used"`` as it did).
        """
        if self.assignment is None:
            raise UserError(f"no plan to write: the {self.backend} solve ended "
                            f"{self.status} ({self.message})")
        units, prov = self.units, self.provenance
        if table_or_units is not None:
            given = (table_or_units.units if isinstance(table_or_units, SensitivityTable)
                     else table_or_units.names if isinstance(table_or_units, UnitSet) else None)
            if given is None:
                raise UserError(f"to_plan takes a SensitivityTable or a UnitSet, got "
                                f"{type(table_or_units).__name__}")
            if isinstance(table_or_units, UnitSet):  # the old call: plans listed used bits
                units = table_or_units if units is None else units
                bits = bits or "used"
            else:  # the table as it is now (its meta may have been edited since)
                prov = table_provenance(table_or_units)
                units = table_unit_set(table_or_units) if units is None else units
            if len(given) != len(self.assignment) or (units is not None
                                                      and list(given) != units.names):
                raise UserError("to_plan: the table or units given are not those the problem "
                                "was built from")
        if units is None:
            raise UserError("to_plan: this result's problem has no units; build it with "
                            "AllocationProblem.from_units or from_table")
        bits = bits or "candidates"
        if bits not in ("candidates", "used"):
            raise UserError(f"to_plan: bits must be 'candidates' or 'used', got {bits!r}")
        return AllocationPlan.from_unit_bits(
            units, self.assignment, model=model or prov.get("model") or "unknown",
            bits=self.candidate_bits if bits == "candidates" else None,
            budget=dict(self.budget), objective=self.objective_name,
            predicted=self.predicted(), solver=self.summary(),
            meta={**prov.get("meta", {}), **(meta or {})},
            quantizer=quantizer or prov.get("quantizer") or DEFAULT_QUANTIZER)

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
