"""The allocation problem as plain arrays (docs/design.md §4.3). Imports no solver.

Choose one bit-width per unit. With ``x_u`` the chosen bit-width of unit u, group g's predicted
cost is ``C_g(x) = Σ_u costs[u, g, x_u]`` and the plan minimises an objective of the group costs
under one linear budget ``Σ_u a_u · x_u ≤ cap``; the objectives are ``_objective.py``'s.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from dataclasses import dataclass, field

import numpy as np

from fqopt.errors import UserError
from fqopt.sensitivity import CostsShape, table_provenance, table_unit_set
from fqopt.solvers._objective import Objective
from fqopt.units import (BUDGET_KINDS, UnitSet, budget_cap, budget_weights, check_bits,
                         check_budget_kind, usage_value)

__all__ = ["AllocationProblem", "ReducedProblem", "BUDGET_KINDS", "GAP_FLOOR", "OPTIMAL_GAP"]
# the gap is relative to |objective|, floored at this fraction of the cost scale (costs near zero)
GAP_FLOOR = 1e-6
# the largest certified gap a result may have and still be called optimal (float noise)
OPTIMAL_GAP = 1e-6


# --------------------------------------------------------------------------- reduced problem
@dataclass(frozen=True, eq=False)
class ReducedProblem(CostsShape):
    """What the back-ends solve: tied units merged, fixed units folded into constants.

    ``V`` free super-units (at least two allowed bit-widths each) with summed ``costs``
    ``[V, G, K]`` (0 where not allowed), ``allowed`` ``[V, K]`` and integer budget ``usage``
    ``[V, K]`` (= summed budget weight × bits). ``base_costs`` ``[G]`` and ``base_usage`` belong
    to fixed units. A choice ``k`` ``[V]`` (index into ``bits``) is feasible iff it is allowed
    and ``base_usage + Σ_v usage[v, k_v] ≤ cap``. ``token`` is shared by every budget of one
    problem, so back-ends can keep work between the budgets of a ladder; ``family`` is shared
    also by the problem's other objectives (:meth:`AllocationProblem.with_objective`): same
    costs, usage and allowed choices.
    """

    costs: np.ndarray
    allowed: np.ndarray
    usage: np.ndarray
    bits: np.ndarray
    base_costs: np.ndarray
    base_usage: int
    cap: int
    objective: Objective
    token: object
    sizes: np.ndarray                  # [V] weights per super-unit
    counts: np.ndarray                 # [V] units per super-unit
    scores: np.ndarray | None = None   # [V] importance scores (size-weighted mean), if given
    family: object = None

    @property
    def free_cap(self) -> int:
        return self.cap - self.base_usage

    def min_choice(self) -> np.ndarray:
        """The allowed choice of least usage per super-unit (lowest bits) ``[V]``."""
        return np.argmax(self.allowed, axis=1)

    def max_choice(self) -> np.ndarray:
        K = self.allowed.shape[1]
        return K - 1 - np.argmax(self.allowed[:, ::-1], axis=1)

    def group_costs(self, choice: np.ndarray) -> np.ndarray:
        v = np.arange(self.num_units)
        return self.base_costs + self.costs[v, :, choice].sum(axis=0)

    def total_usage(self, choice: np.ndarray) -> int:
        return self.base_usage + int(self.usage[np.arange(self.num_units), choice].sum())

    def value(self, choice: np.ndarray) -> float:
        return float(self.objective(self.group_costs(choice)))

    def is_feasible(self, choice: np.ndarray) -> bool:
        v = np.arange(self.num_units)
        return bool(self.allowed[v, choice].all()) and self.total_usage(choice) <= self.cap


# --------------------------------------------------------------------------- the problem
@dataclass(eq=False)
class AllocationProblem(CostsShape):
    """Choose a bit-width per unit (plain arrays; solved by :func:`fqopt.solvers.solve`).

    Args:
        costs: float64 ``[U, G, K]``; ``costs[u, g, k]`` is group g's predicted cost increase when
            unit u is at ``bits[k]``. ``+inf`` forbids a choice.
        bits: int ``[K]`` strictly increasing candidate bit-widths.
        sizes: int64 ``[U]`` weights per unit.
        budget: the budget's value, in the unit of ``budget_kind``:
            ``avg_bits`` (parameter-weighted average bits over all units, pinned ones included:
            ``Σ size_u·b_u ≤ budget · Σ size_u``), ``size_bytes`` (packed weights ``⌈Σ
            size_u·b_u / 8⌉`` plus ``size_overhead`` bytes of scales and float parameters), or
            ``bops`` (``Σ macs_u · b_u · activation_bits``).
        objective: ``worst`` | ``balanced`` | ``mean`` | ``blend:λ`` | ``cvar:α``
            (see :class:`Objective`).
        group_counts: int ``[G]`` calibration samples per group (needed by ``mean``).
        macs: int64 ``[U]`` multiply-accumulates per sample (needed by ``bops``).
        pins: unit index -> bits (the unit keeps exactly that bit-width).
        min_bits, max_bits: a number or ``[U]`` array bounding each unit's bit-width.
        ties: lists of unit indices that must share one bit-width.
        unit_names, group_names: for messages and plans.
        scores: float ``[U]`` importance scores (higher = more important), e.g. FairQuant's
            mean |importance| per weight; only the ``quantile`` baseline reads them.
        size_overhead: bytes added to the packed weights by a ``size_bytes`` budget.
        units: the :class:`~fqopt.units.UnitSet` the units are (set by :meth:`from_units`), so
            that a result becomes a plan without the table (:meth:`AllocationResult.to_plan`).
        provenance: what a plan of this problem records about where it comes from: ``model``,
            ``quantizer`` and ``meta`` (e.g. the table's method, dataset and granularity).

    The budget arithmetic (weights ``a_u``, integer cap, usage in the budget's unit) is
    :mod:`fqopt.units`'s, shared with plans and the export's budget check.
    """

    costs: np.ndarray
    bits: np.ndarray
    sizes: np.ndarray
    budget: float
    budget_kind: str = "avg_bits"
    objective: str = "worst"
    group_counts: np.ndarray | None = None
    macs: np.ndarray | None = None
    pins: dict[int, int] | None = None
    min_bits: int | np.ndarray | None = None
    max_bits: int | np.ndarray | None = None
    ties: list[list[int]] | None = None
    unit_names: list[str] | None = None
    group_names: list[str] | None = None
    size_overhead: int = 0
    activation_bits: int = 8
    scores: np.ndarray | None = None
    source: str = "allocation problem"
    units: UnitSet | None = field(default=None, repr=False)
    provenance: dict = field(default_factory=dict, repr=False)
    # the reduction at cap 0, built once and shared by with_budget; and unit -> super-unit maps
    _reduced: ReducedProblem | None = field(default=None, init=False, repr=False)
    _expansion: tuple | None = field(default=None, init=False, repr=False)

    # ---------------------------------------------------------------- validation
    def __post_init__(self):
        src = self.source
        self.costs = np.asarray(self.costs, dtype=np.float64)
        if self.costs.ndim != 3 or 0 in self.costs.shape:
            raise UserError(f"{src}: costs must be a non-empty [U, G, K] array, got shape "
                            f"{self.costs.shape}")
        U, G, K = self.costs.shape
        self.bits = np.asarray(self.bits, dtype=np.int64).reshape(-1)
        self.sizes = np.asarray(self.sizes, dtype=np.int64).reshape(-1)
        if self.bits.shape != (K,):
            raise UserError(f"{src}: bits has shape {self.bits.shape}, expected ({K},)")
        if np.any(self.bits <= 0) or np.any(np.diff(self.bits) <= 0):
            raise UserError(f"{src}: bits must be positive and strictly increasing, got "
                            f"{self.bits.tolist()}")
        check_bits(self.bits.tolist(), what=f"{src}: bits")
        if self.sizes.shape != (U,) or np.any(self.sizes <= 0):
            raise UserError(f"{src}: sizes must be {U} positive weight counts")
        self.unit_names = ([f"unit {u}" for u in range(U)] if self.unit_names is None
                           else [str(n) for n in self.unit_names])
        self.group_names = ([f"group {g}" for g in range(G)] if self.group_names is None
                            else [str(n) for n in self.group_names])
        if len(self.unit_names) != U or len(self.group_names) != G:
            raise UserError(f"{src}: {len(self.unit_names)} unit names and "
                            f"{len(self.group_names)} group names for costs of shape {(U, G, K)}")
        if np.isnan(self.costs).any() or np.isneginf(self.costs).any():
            u, g, k = np.argwhere(np.isnan(self.costs) | np.isneginf(self.costs))[0]
            raise UserError(f"{src}: cost of unit {self.unit_names[u]!r}, group "
                            f"{self.group_names[g]!r} at {self.bits[k]} bits is "
                            f"{self.costs[u, g, k]}; expected a number or +inf")
        if self.group_counts is not None:
            self.group_counts = np.asarray(self.group_counts, dtype=np.int64).reshape(-1)
        if self.macs is not None:
            self.macs = np.asarray(self.macs, dtype=np.int64).reshape(-1)
            if self.macs.shape != (U,):
                raise UserError(f"{src}: macs has shape {self.macs.shape}, expected ({U},)")
        if self.scores is not None:
            self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
            if self.scores.shape != (U,) or not np.isfinite(self.scores).all():
                raise UserError(f"{src}: scores must be {U} finite numbers, one per unit")
        check_budget_kind(self.budget_kind)
        if self.units is not None and self.units.names != self.unit_names:
            raise UserError(f"{src}: the unit names differ from its UnitSet's")
        self.objective_fn = Objective.parse(self.objective, G, self.group_counts)
        self.objective = self.objective_fn.spec
        self.allowed = self._allowed_mask()
        self.ties = [list(map(int, t)) for t in (self.ties or []) if len(t) > 1]
        self._weights = budget_weights(self.budget_kind, self.sizes, self.macs,
                                       activation_bits=self.activation_bits,
                                       unit_names=self.unit_names, source=src)
        self._set_budget(self.budget)

    def _allowed_mask(self) -> np.ndarray:
        U = self.num_units
        allowed = np.isfinite(self.costs).all(axis=1)
        if self.min_bits is not None:
            lo = np.broadcast_to(np.asarray(self.min_bits, dtype=np.int64), (U,))
            allowed &= self.bits[None, :] >= lo[:, None]
        if self.max_bits is not None:
            hi = np.broadcast_to(np.asarray(self.max_bits, dtype=np.int64), (U,))
            allowed &= self.bits[None, :] <= hi[:, None]
        for u, b in (self.pins or {}).items():
            u, b = int(u), int(b)
            if not 0 <= u < U:
                raise UserError(f"{self.source}: pinned unit index {u} out of range 0..{U - 1}")
            if b not in self.bits:
                raise UserError(f"{self.source}: unit {self.unit_names[u]!r} is pinned to {b} "
                                f"bits, which is not a candidate bit-width {self.bits.tolist()}")
            row = self.bits == b
            if not (allowed[u] & row).any():
                raise UserError(f"{self.source}: unit {self.unit_names[u]!r} is pinned to {b} "
                                "bits, but its cost there is +inf or outside its min/max bits")
            allowed[u] = row
        empty = ~allowed.any(axis=1)
        if empty.any():
            u = int(np.argmax(empty))
            raise UserError(f"{self.source}: unit {self.unit_names[u]!r} has no allowed bit-width "
                            f"(min/max bits, pins or +inf costs exclude all of "
                            f"{self.bits.tolist()})")
        return allowed

    def _set_budget(self, value) -> None:
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise UserError(f"budget must be a number, got {value!r}") from None
        if not math.isfinite(value):
            raise UserError(f"budget must be finite, got {value}")
        self.budget = value
        self.cap = budget_cap(self.budget_kind, value, total_size=int(self.sizes.sum()),
                              overhead=int(self.size_overhead))

    def with_budget(self, value: float) -> "AllocationProblem":
        """The same problem at another budget; shares the reduction (and solvers' warm starts)."""
        self.reduced()  # build the shared reduction (and cost scale) once, before copying
        self.cost_scale  # noqa: B018 - cached on self, shared by the copy
        other = copy.copy(self)
        other._set_budget(value)
        return other

    def with_objective(self, spec: str) -> "AllocationProblem":
        """The same problem with another objective (see :class:`Objective`); shares the
        reduction's arrays, and the Lagrangian back-end's cuts, which hold for every objective."""
        self.reduced()
        self.cost_scale  # noqa: B018
        other = copy.copy(self)
        other.objective_fn = Objective.parse(spec, self.num_groups, self.group_counts)
        other.objective = other.objective_fn.spec
        other._reduced = dataclasses.replace(self._reduced, objective=other.objective_fn,
                                             token=object())
        return other

    def relax_pins(self, floor: int | None = 4) -> "AllocationProblem":
        """The same problem with its pins turned into bounds: a pinned unit may take any
        candidate bit-width from ``floor`` up to its pin (``floor=None``: from the smallest).

        For a budget below what the pins alone need: a small model's stem and head at 8 bits
        can hold more than the whole budget (``test_vit``'s need 3.004 average bits), and a
        search or benchmark at 2.5 bits would otherwise get no plan. Plans of the relaxed
        problem record the relaxed layers under ``meta['pins_relaxed']`` (layer -> floor).
        Returns ``self`` when nothing is pinned.
        """
        if not self.pins:
            return self
        if floor is not None:
            floor = int(floor)
            if floor not in self.bits:
                raise UserError(f"relax_pins: floor {floor} is not a candidate bit-width "
                                f"{self.bits.tolist()}")
        U = self.num_units
        lo = np.array(np.broadcast_to(np.asarray(0 if self.min_bits is None else self.min_bits,
                                                 dtype=np.int64), (U,)))
        hi = np.array(np.broadcast_to(np.asarray(np.iinfo(np.int64).max if self.max_bits is None
                                                 else self.max_bits, dtype=np.int64), (U,)))
        relaxed: dict[str, int] = {}
        layer_of = {}
        if self.units is not None:
            for layer, sl in self.units.unit_slices().items():
                layer_of.update(dict.fromkeys(range(sl.start, sl.stop), layer))
        for u, b in self.pins.items():
            u, b = int(u), int(b)
            hi[u] = min(hi[u], b)
            low = int(self.bits[0]) if floor is None else min(floor, b)
            lo[u] = max(lo[u], low)
            name = layer_of.get(u, self.unit_names[u])
            relaxed[name] = min(relaxed.get(name, low), low)
        prov = copy.deepcopy(self.provenance)
        prov.setdefault("meta", {})["pins_relaxed"] = relaxed
        return dataclasses.replace(self, pins=None, min_bits=lo, max_bits=hi,
                                   provenance=prov)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_units(cls, units: UnitSet, costs, *, bits, budget: float,
                   budget_kind: str = "avg_bits", objective: str = "worst",
                   group_counts=None, group_names=None, pins="default", min_bits=None,
                   max_bits=None, ties="default", activation_bits: int = 8, scores=None,
                   macs=None, provenance: dict | None = None,
                   source: str = "allocation problem") -> "AllocationProblem":
        """The problem over the units of ``units`` (sizes, MACs and the export's overhead come
        from it; the problem keeps it, so a result becomes a plan by itself).

        costs: ``[U, G, K]`` in ``units.names`` order; bits: ``[K]`` candidate bit-widths.
        pins: ``"default"`` (``units.pinned``), ``"none"``/``None``, or a dict layer-or-unit
            name -> bits: a number (a layer name pins all of its units to it) or one bit-width
            per unit of the layer (e.g. a plan's own per-channel bits).
        min_bits, max_bits: a number, or a dict layer-or-unit name -> bits.
        ties: ``"default"`` (``units.ties``), ``None``, or lists of layer or unit names (layers
            tie channel by channel).
        macs: ``[U]`` MACs per unit where they are not ``units.macs`` (a hand-written table
            may give channels of one layer different MACs).
        provenance: see the class docstring.
        """
        index = {n: i for i, n in enumerate(units.names)}
        slices = units.unit_slices()

        def members(name: str) -> list[int]:
            if name in index:
                return [index[name]]
            if name in slices:
                return list(range(slices[name].start, slices[name].stop))
            raise UserError(f"{source}: {name!r} is neither a unit nor a layer of the table "
                            f"(e.g. {units.names[0]!r})")

        def per_unit(spec, what):
            if spec is None or isinstance(spec, (int, np.integer)):
                return spec
            if not isinstance(spec, dict):
                raise UserError(f"{what} must be a number or a dict name -> bits")
            arr = np.full(len(units), -1, dtype=np.int64)
            for name, b in spec.items():
                arr[members(name)] = int(b)
            fill = 0 if what == "min_bits" else np.iinfo(np.int64).max
            return np.where(arr < 0, fill, arr)

        if isinstance(pins, str) and pins == "default":
            pin_units = {index[n]: b for n, b in units.pinned_units().items()}
        elif pins is None or (isinstance(pins, str) and pins == "none"):
            pin_units = {}
        elif isinstance(pins, dict):
            pin_units = {}
            for name, b in pins.items():
                idx = members(name)
                vals = np.asarray(b, dtype=np.int64).reshape(-1)
                if vals.size not in (1, len(idx)):
                    raise UserError(f"{source}: {vals.size} pinned bit-widths for {name!r}, "
                                    f"which has {len(idx)} units")
                pin_units.update(zip(idx, np.broadcast_to(vals, (len(idx),)).tolist()))
        else:
            raise UserError(f"pins must be 'default', 'none' or a dict name -> bits, got {pins!r}")
        if isinstance(ties, str) and ties == "default":
            tie_units = [[index[n] for n in group] for group in units.tied_units()]
        elif ties is None:
            tie_units = []
        else:
            tie_units = []
            for group in ties:
                lists = [members(n) for n in group]
                if len({len(m) for m in lists}) != 1:
                    raise UserError(f"cannot tie {list(group)}: they have different numbers of "
                                    "units")
                tie_units.extend([list(t) for t in zip(*lists)])
        return cls(costs=costs, bits=bits, sizes=units.sizes, budget=budget,
                   budget_kind=budget_kind, objective=objective, group_counts=group_counts,
                   macs=units.macs if macs is None else macs, pins=pin_units, min_bits=per_unit(min_bits, "min_bits"),
                   max_bits=per_unit(max_bits, "max_bits"), ties=tie_units,
                   unit_names=units.names, group_names=group_names,
                   size_overhead=units.overhead_bytes, activation_bits=activation_bits,
                   scores=scores, source=source, units=units, provenance=dict(provenance or {}))

    @classmethod
    def from_table(cls, table, *, budget: float, budget_kind: str = "avg_bits",
                   objective: str = "worst", pins="default", min_bits=None, max_bits=None,
                   ties="default", activation_bits: int = 8) -> "AllocationProblem":
        """The problem a :class:`~fqopt.sensitivity.SensitivityTable` describes:
        :meth:`from_units` on the table's :class:`~fqopt.units.UnitSet` (``meta``'s shapes, pins
        and ties), costs, bits, groups and scores (``meta['scores']``), with the table's model,
        quantizer, file, method, dataset and granularity as provenance for its plans."""
        units = table_unit_set(table)
        src = f"sensitivity table {table.source}"
        scores = _table_scores(table, {n: i for i, n in enumerate(units.names)}, src)
        return cls.from_units(units, table.costs, bits=table.bits, budget=budget,
                              budget_kind=budget_kind, objective=objective,
                              group_counts=table.group_counts, group_names=table.groups,
                              pins=pins, min_bits=min_bits, max_bits=max_bits, ties=ties,
                              activation_bits=activation_bits, scores=scores, macs=table.macs,
                              provenance=table_provenance(table), source=src)

    # ---------------------------------------------------------------- shape
    @property
    def budget_spec(self) -> dict:
        return {"kind": self.budget_kind, "value": self.budget}

    @functools.cached_property
    def cost_scale(self) -> float:
        """Largest group cost any assignment could reach (``max_g Σ_u max_k |costs|``); the
        gap's floor is ``GAP_FLOOR`` times this."""
        c = np.where(self.allowed[:, None, :], np.abs(self.costs), 0.0)
        return float(c.max(axis=2).sum(axis=0).max())

    # ---------------------------------------------------------------- budget
    def usage_to_budget(self, usage: int) -> float:
        """Integer usage (bits, or bit-MACs) -> the budget's unit."""
        return usage_value(self.budget_kind, usage, total_size=int(self.sizes.sum()),
                           overhead=int(self.size_overhead))

    def _usage_at(self, which: str) -> int:
        red = self.reduced()
        choice = red.min_choice() if which == "min" else red.max_choice()
        return red.base_usage + int(red.usage[np.arange(red.num_units), choice].sum())

    def min_budget(self) -> float:
        """The smallest budget value for which a feasible assignment exists."""
        return self.usage_to_budget(self._usage_at("min"))

    def max_budget(self) -> float:
        """The budget at which every unit can take its largest allowed bit-width."""
        return self.usage_to_budget(self._usage_at("max"))

    @property
    def is_budget_feasible(self) -> bool:
        return self._usage_at("min") <= self.cap

    def infeasibility_message(self) -> str:
        need = self.min_budget()
        return (f"budget {self._fmt(self.budget)} {self.budget_kind} is infeasible: the pins, "
                f"ties and minimum bits need at least {self._fmt(need)} {self.budget_kind} "
                f"(short by {self._fmt(need - self.budget)})")

    def _fmt(self, v: float) -> str:
        return f"{v:.6g}" if self.budget_kind == "avg_bits" else f"{v:.0f}"

    # ---------------------------------------------------------------- assignments
    def _choice_of(self, assignment) -> np.ndarray:
        a = np.asarray(assignment)
        if a.shape != (self.num_units,):
            raise UserError(f"assignment has shape {a.shape}, expected ({self.num_units},) "
                            "bit-widths")
        a = a.astype(np.int64)
        k = np.clip(np.searchsorted(self.bits, a), 0, self.num_bits - 1)
        bad = self.bits[k] != a
        if bad.any():
            u = int(np.argmax(bad))
            raise UserError(f"unit {self.unit_names[u]!r} is assigned {int(a[u])} bits, not a "
                            f"candidate bit-width {self.bits.tolist()}")
        return k

    def group_costs(self, assignment) -> np.ndarray:
        """``[G]`` predicted cost per group of an assignment (bits per unit, ``[U]``)."""
        k = self._choice_of(assignment)
        return self.costs[np.arange(self.num_units), :, k].sum(axis=0)

    def evaluate(self, assignment) -> float:
        """The objective of an assignment, recomputed from the costs."""
        return float(self.objective_fn(self.group_costs(assignment)))

    def usage(self, assignment) -> int:
        return int(self._weights @ np.asarray(assignment, dtype=np.int64))

    def budget_used(self, assignment) -> float:
        """What the assignment spends, in the budget's unit."""
        return self.usage_to_budget(self.usage(assignment))

    def check_feasible(self, assignment) -> None:
        """Raise a UserError naming the first violated constraint (bits, pins, min/max, ties,
        budget); return None if the assignment is feasible."""
        k = self._choice_of(assignment)
        a = np.asarray(assignment, dtype=np.int64)
        ok = self.allowed[np.arange(self.num_units), k]
        if not ok.all():
            u = int(np.argmin(ok))
            pinned = (self.pins or {}).get(u)
            if pinned is not None:
                raise UserError(f"unit {self.unit_names[u]!r} is pinned to {int(pinned)} bits "
                                f"but assigned {int(a[u])}")
            allowed = self.bits[self.allowed[u]].tolist()
            raise UserError(f"unit {self.unit_names[u]!r} is assigned {int(a[u])} bits; its "
                            f"min/max bits and +inf costs allow only {allowed}")
        for t in self.ties:
            if len(set(a[t].tolist())) > 1:
                raise UserError(f"tied units {[self.unit_names[u] for u in t][:4]} have "
                                f"different bit-widths {sorted(set(a[t].tolist()))}")
        used = self.usage(a)
        if used > self.cap:
            raise UserError(f"assignment uses {self._fmt(self.usage_to_budget(used))} "
                            f"{self.budget_kind}, over the budget {self._fmt(self.budget)}")

    def is_feasible(self, assignment) -> bool:
        try:
            self.check_feasible(assignment)
        except UserError:
            return False
        return True

    # ---------------------------------------------------------------- reduction
    def _build_reduction(self) -> None:
        U, G, K = self.costs.shape
        for t in self.ties:
            bad = [u for u in t if not 0 <= u < U]
            if bad:
                raise UserError(f"{self.source}: tied unit index {bad[0]} out of range")
        group_of = _tie_groups(U, self.ties)           # [U] super-unit of every unit
        n = int(group_of.max()) + 1
        masked = np.where(self.allowed[:, None, :], self.costs, 0.0)
        if n == U:  # no ties: the units are the super-units
            allowed, costs, weights = self.allowed, masked, self._weights
        else:
            allowed = np.ones((n, K), dtype=bool)
            np.logical_and.at(allowed, group_of, self.allowed)
            empty = ~allowed.any(axis=1)
            if empty.any():
                bad = np.flatnonzero(group_of == int(np.argmax(empty)))
                raise UserError(f"{self.source}: tied units "
                                f"{[self.unit_names[u] for u in bad][:4]} have no common "
                                "allowed bit-width")
            costs = np.zeros((n, G, K))
            np.add.at(costs, group_of, masked)
            costs[~np.broadcast_to(allowed[:, None, :], costs.shape)] = 0.0
            weights = np.bincount(group_of, weights=self._weights, minlength=n).astype(np.int64)
        free = allowed.sum(axis=1) > 1
        fixed_k = np.where(free, -1, np.argmax(allowed, axis=1))
        fixed = np.flatnonzero(~free)
        base_costs = costs[fixed, :, fixed_k[fixed]].sum(axis=0) if fixed.size else np.zeros(G)
        sizes = np.bincount(group_of, weights=self.sizes, minlength=n)
        scores = None
        if self.scores is not None:
            scores = (np.bincount(group_of, weights=self.scores * self.sizes, minlength=n)
                      / sizes)[free]
        self._expansion = (np.where(free, np.cumsum(free) - 1, -1)[group_of], fixed_k[group_of])
        self._reduced = ReducedProblem(
            costs=np.ascontiguousarray(costs[free]), allowed=allowed[free],
            usage=weights[free][:, None] * self.bits[None, :], bits=self.bits,
            base_costs=np.asarray(base_costs, dtype=np.float64),
            base_usage=int((weights[fixed] * self.bits[fixed_k[fixed]]).sum()), cap=0,
            objective=self.objective_fn, token=object(), sizes=sizes[free].astype(np.int64),
            counts=np.bincount(group_of, minlength=n)[free], scores=scores, family=object())

    def reduced(self) -> ReducedProblem:
        """Ties merged, fixed units folded into constants (see :class:`ReducedProblem`)."""
        if self._reduced is None:
            self._build_reduction()
        return dataclasses.replace(self._reduced, cap=self.cap)

    def expand(self, choice: np.ndarray) -> np.ndarray:
        """Super-unit choices ``[V]`` (indices into ``bits``) -> bits per unit ``[U]``."""
        if self._reduced is None:
            self._build_reduction()
        super_of, fixed_k = self._expansion
        choice = np.asarray(choice, dtype=np.int64)
        k = fixed_k if choice.size == 0 else np.where(super_of >= 0,
                                                      choice[np.maximum(super_of, 0)], fixed_k)
        return self.bits[k].astype(np.int64)

    def __repr__(self) -> str:
        U, G, _ = self.costs.shape
        return (f"AllocationProblem(units={U}, groups={G}, bits={self.bits.tolist()}, "
                f"objective={self.objective!r}, budget={self.budget:g} {self.budget_kind})")


def _tie_groups(U: int, ties: list[list[int]]) -> np.ndarray:
    """``[U]`` index of each unit's tie group (union-find over overlapping ties), 0..n-1."""
    if not ties:
        return np.arange(U)
    parent = list(range(U))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for t in ties:
        root = find(t[0])
        for u in t[1:]:
            parent[find(u)] = root
    return np.unique([find(u) for u in range(U)], return_inverse=True)[1]


def _table_scores(table, index: dict[str, int], src: str) -> np.ndarray | None:
    """``meta['scores']``: unit importance scores, a list ``[U]`` or a dict unit -> score."""
    raw = (table.meta or {}).get("scores")
    if raw is None:
        return None
    if isinstance(raw, dict):
        out = np.full(len(index), np.nan)
        for name, v in raw.items():
            if name not in index:
                raise UserError(f"{src}: meta['scores'] names unknown unit {name!r}")
            out[index[name]] = float(v)
        if np.isnan(out).any():
            raise UserError(f"{src}: meta['scores'] has no score for unit "
                            f"{list(index)[int(np.argmax(np.isnan(out)))]!r}")
        return out
    try:
        out = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(f"{src}: meta['scores'] must be a list of numbers or a dict") from None
    if out.shape != (len(index),):
        raise UserError(f"{src}: meta['scores'] has {out.size} values for {len(index)} units")
    return out
