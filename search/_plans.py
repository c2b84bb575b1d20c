"""From a trial's choices to an AllocationPlan: the plan builders.

A builder turns ``(params, options)`` into a plan using the profiled tables; each trial names
its builder (sampled trials use ``solver``, seed trials name theirs in their user attributes).
Builders live in a registry, so a new baseline is one function and one ``@register_builder``.

- ``solver``: ``fqopt.solvers`` on the table of ``params['method']`` at budget
  ``params['budget']`` with objective ``blend:λ`` (``options`` may override the objective, e.g.
  ``mean`` for the HAWQ-style group-blind baseline);
- ``uniform``: every free unit at ``options['bits']`` (pinned layers keep their pins, as in every
  plan of the search, so that average bits compare);
- ``quantile``: FairQuant's static allocation (rank units by FairQuant's combined importance
  score ``options['combine']``, bits 2/4/8 at shares 0.2/0.4/0.4; at FairQuant's own shares, or
  tilted to meet ``options['budget']`` average bits);
- ``direct``: per-layer bits straight from the parameters (``--direct``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from fqopt._registry import Registry
from fqopt.errors import UserError
from fqopt.plan import AllocationPlan
from fqopt.solvers import AllocationProblem, get_solver

FAIRQUANT_BITS = (2, 4, 8)
FAIRQUANT_SHARES = (0.2, 0.4, 0.4)

Builder = Callable[["PlanMaker", dict, dict], object]
BUILDERS: Registry[Builder] = Registry("plan builder")


def register_builder(name: str):
    """Function decorator: make ``fn(maker, params, options) -> plan`` the builder ``name``."""
    return BUILDERS.register(name)


def plan_key(plan, quantizer: str) -> str:
    """A hash of what evaluation depends on: every layer's bits and the quantizer."""
    h = hashlib.sha256(quantizer.encode())
    for name in sorted(plan.assignments):
        b = plan.assignments[name]
        h.update(name.encode())
        h.update(np.asarray(b, dtype=np.int8).tobytes())
    return h.hexdigest()[:24]


# A trial's Lagrangian solve: the dual stops at 1e-4 relative rather than 1e-7, and the local
# search looks at the 500 moves of smallest reduced cost rather than 4,000. On the default's
# per-channel tables (100 random trials) the plans' predicted objective is the same as with
# tol 1e-8 in the median (mean +8e-5, worst +4e-3 relative, against accuracy estimates far
# noisier than that) at a third less solve time (benchmarks/search_overhead.py).
SEARCH_SOLVER_OPTIONS = {"lagrange": {"tol": 1e-4, "pool": 500}}


#: how far a plan's pins give way when the budget is below what they need, tried in order:
#: kept; pinned layers down to (the first candidate at or above) 4 bits; down to the smallest
RELAX_LEVELS = ("none", "floor", "all")
RELAX_FLOOR_BITS = 4


def pinned_min_budget(tables: dict) -> float:
    """The smallest average bits a plan keeping the tables' pins can have (every free unit at
    the smallest bit-width); below it, :meth:`PlanMaker.solve` relaxes the pins."""
    table = next(iter(tables.values()))
    return AllocationProblem.from_table(table, budget=8.0, objective="worst").min_budget()


class PlanMaker:
    """Builds plans from profiled tables (``method -> SensitivityTable``, one granularity).

    Problems are cached per ``(method, objective)`` and re-budgeted with
    ``AllocationProblem.with_budget``, so a trial costs one solve (milliseconds).
    """

    def __init__(self, tables: dict, *, model_name: str, backend: str | None = None,
                 time_limit: float | None = None, cache_size: int = 64):
        if not tables:
            raise UserError("the search needs at least one sensitivity table")
        self.tables = dict(tables)
        first = next(iter(self.tables.values()))
        for method, t in self.tables.items():
            if t.units != first.units or not np.array_equal(t.bits, first.bits):
                raise UserError(f"sensitivity tables disagree: {method!r} ({t.source}) has other "
                                f"units or bits than {first.source}; profile them from one model")
            if t.groups != first.groups:
                raise UserError(f"sensitivity tables disagree on groups: {t.groups} vs "
                                f"{first.groups}")
        self.bits = [int(b) for b in first.bits]
        self.model_name = model_name
        self.time_limit = time_limit
        self._problems: OrderedDict = OrderedDict()
        self._solvers: dict = {}
        self._cache_size = cache_size
        # the units (and their pins) come from the problem, as every plan's do
        self.units = self.problem(next(iter(self.tables)), "worst", 8.0).units
        self.granularity = self.units.granularity
        # channel scale: fqopt's Lagrangian solver (certified, sub-second); layer scale: auto
        # (exact CP-SAT on a few dozen units)
        self.backend = backend or ("lagrange" if self.granularity == "channel" else "auto")

    def table(self, method: str):
        if method not in self.tables:
            raise UserError(f"no sensitivity table for method {method!r}; profiled: "
                            f"{', '.join(self.tables)}")
        return self.tables[method]

    def problem(self, method: str, objective: str, budget: float, *, scores: str | None = None,
                relax: str = "none"):
        """The allocation problem for ``method``'s table: one reduction per table, re-targeted
        with ``with_objective`` (cached) and ``with_budget``. ``relax``: ``"none"`` (the
        table's pins), ``"floor"`` (pinned layers may go down to 4 bits) or ``"all"`` (to the
        smallest bit-width): see :meth:`AllocationProblem.relax_pins`."""
        if relax not in RELAX_LEVELS:
            raise UserError(f"relax must be one of {', '.join(RELAX_LEVELS)}, got {relax!r}")
        key = (method, objective, scores, relax)
        prob = self._problems.get(key)
        if prob is None:
            base = self._problems.get((method, None, scores, relax))
            if base is None:
                if relax == "none":
                    table = self.table(method)
                    if scores is not None:
                        table = _with_scores(table, scores)
                    base = AllocationProblem.from_table(table, budget=float(budget),
                                                        objective="worst")
                else:
                    strict = self.problem(method, "worst", budget, scores=scores)
                    base = strict.relax_pins(self._relax_floor(relax))
                self._problems[(method, None, scores, relax)] = base
            prob = base.with_objective(objective)
            self._problems[key] = prob
            stale = [k for k in self._problems if k[1] is not None and k != key]
            for k in stale[:max(0, len(self._problems) - self._cache_size)]:
                del self._problems[k]
        self._problems.move_to_end(key)
        return prob.with_budget(float(budget))

    def _relax_floor(self, relax: str) -> int | None:
        if relax == "all":
            return None
        # the floor is a candidate bit-width: the smallest one at or above 4 bits
        above = [b for b in self.bits if b >= RELAX_FLOOR_BITS]
        return above[0] if above else None

    def min_budget(self) -> float:
        """The smallest budget any plan can meet, the pins relaxed if need be (with them kept:
        :func:`pinned_min_budget`)."""
        method = next(iter(self.tables))
        return self.problem(method, "worst", 8.0, relax="all").min_budget()

    def solver(self, backend: str, **options):
        """One solver instance per back-end (without options), kept across trials: the
        Lagrangian back-end reuses its master LP and cuts per table."""
        if options:
            return get_solver(backend, **options)
        if backend not in self._solvers:
            self._solvers[backend] = get_solver(backend, **SEARCH_SOLVER_OPTIONS.get(backend, {}))
        return self._solvers[backend]

    def solve(self, method: str, budget: float, objective: str, *, backend: str | None = None,
              scores: str | None = None, **options):
        """``(plan, result)``. A budget below what the pins allow relaxes them: pinned layers
        may go down to 4 bits, then to the smallest bit-width (the plan's
        ``meta['pins_relaxed']`` says so); below even that, the budget is raised to the
        smallest feasible one."""
        for relax in RELAX_LEVELS:
            problem = self.problem(method, objective, budget, scores=scores, relax=relax)
            if problem.is_budget_feasible:
                break
        else:
            problem = problem.with_budget(problem.min_budget())
        res = self.solver(backend or self.backend, **options).solve(
            problem, time_limit=self.time_limit)
        if not res.ok:
            raise UserError(f"solver {res.backend} found no plan for {method} at "
                            f"{budget:g} average bits ({res.status}: {res.message})")
        # a search plan lists only the bit-widths it uses (refinement keeps to those)
        plan = res.to_plan(model=self.model_name, meta={"method": method}, bits="used")
        return plan, res

    def uniform(self, bits: int):
        if bits not in self.bits:
            raise UserError(f"uniform {bits} bits is not a candidate bit-width {self.bits}")
        return AllocationPlan.uniform(self.units, int(bits), model=self.model_name)

    def from_layer_bits(self, layer_bits: dict[str, int], *, objective: str = "direct"):
        """A plan with one bit-width per layer (pinned layers keep their pins)."""
        unit_bits = np.zeros(len(self.units), dtype=np.int64)
        slices = self.units.unit_slices()
        for layer in self.units.layers:
            b = self.units.pinned.get(layer.name, layer_bits.get(layer.name))
            if b is None:
                raise UserError(f"direct plan: no bit-width for layer {layer.name!r}")
            unit_bits[slices[layer.name]] = int(b)
        return AllocationPlan.from_unit_bits(self.units, unit_bits, model=self.model_name,
                                             bits=self.bits, objective=objective)


def _with_scores(table, rule: str):
    """The table with FairQuant's combined unit scores ``scores_<rule>`` as ``meta['scores']``
    (what the ``quantile`` back-end ranks by)."""
    key = f"scores_{rule}"
    if key not in table.extras:
        raise UserError(f"sensitivity table {table.source} has no {key!r} array: FairQuant's "
                        "scores come from the gradient and grape methods")
    meta = dict(table.meta)
    meta["scores"] = np.asarray(table.extras[key], dtype=np.float64).tolist()
    return dataclasses.replace(table, meta=meta)


# ------------------------------------------------------------------------- builders
def blend_objective(lam: float) -> str:
    lam = float(lam)
    if lam >= 1.0:
        return "worst"
    if lam <= 0.0:
        return "balanced"
    return f"blend:{lam:g}"


@register_builder("solver")
def _build_solver(maker: PlanMaker, params: dict, options: dict):
    objective = options.get("objective") or blend_objective(params["lambda"])
    budget = options.get("budget", params["budget"])
    plan, res = maker.solve(params["method"], budget, objective)
    return plan


@register_builder("uniform")
def _build_uniform(maker: PlanMaker, params: dict, options: dict):
    return maker.uniform(int(options["bits"]))


@register_builder("quantile")
def _build_quantile(maker: PlanMaker, params: dict, options: dict):
    combine = options.get("combine", "max")
    budget = options.get("budget")
    objective = "worst" if combine == "max" else "balanced"
    if budget is None:  # FairQuant's own shares: whatever average bits they give
        plan, res = maker.solve(params["method"], 8.0, objective, backend="quantile",
                                scores=combine, bits=FAIRQUANT_BITS, shares=FAIRQUANT_SHARES,
                                match_budget=False)
    else:
        plan, res = maker.solve(params["method"], float(budget), objective, backend="quantile",
                                scores=combine, bits=FAIRQUANT_BITS, shares=FAIRQUANT_SHARES,
                                match_budget=True)
    plan.objective = f"fairquant:{params['method']}+{combine}"
    return plan


@register_builder("direct")
def _build_direct(maker: PlanMaker, params: dict, options: dict):
    layer_bits = {k[len("bits:"):]: int(v) for k, v in params.items() if k.startswith("bits:")}
    if "layer_bits" in options:  # a seed given as explicit per-layer bits
        layer_bits = {k: int(v) for k, v in options["layer_bits"].items()}
    return maker.from_layer_bits(layer_bits)


def build_plan(maker: PlanMaker, builder: str, params: dict, options: dict | None = None):
    return BUILDERS.get(builder)(maker, params, dict(options or {}))
