"""Seed trials: plans enqueued before the sampler starts (docs/design.md §4.6, §6).

- ``ladder``: fqopt's solver with the ``worst`` objective on the first method's table at a
  ladder of budgets;
- ``uniform``: every free layer at 2/3/4/6/8 bits;
- ``fairquant``: FairQuant's static allocation (``quantile`` back-end) with ``gradient`` + max
  and ``grape`` + balanced, at FairQuant's shares 0.2/0.4/0.4 and at matched average bits;
- ``hawq``: the group-blind ``mean`` objective (HAWQ-style), same solver.

A seed trial's *parameters* describe what it runs, in the search space's terms, so that
samplers (which learn only from shared parameters) breed from true points and optuna-dashboard
plots them where they belong: ``budget`` is the budget the plan was solved for, or, for plans
built without one (uniform, FairQuant's own shares), the plan's real average bits on the budget
grid; ``method`` the table it read; ``λ`` 1 for ``worst``/FairQuant max, 0 for
``balanced``/FairQuant balanced/HAWQ's ``mean`` (the nearest blend). A uniform plan reads no
table and has no λ: it carries the first method and λ 1 (importances leave seeds out, see
``_visualization.importance_info``). A uniform plan whose average bits lie outside the sampled
budget range (2-bit and 8-bit with the default 2.5:7) is not a trial: the test stage evaluates it
beside the study. What the trial really builds is in its user attributes (``fqopt:builder`` and
``fqopt:options``).
Each seed has a unique ``key``; a study never runs the same key twice (see ``_study``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from fqopt.search._plans import build_plan
from fqopt.units import within_budget

DEFAULT_LADDER = (2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0)
DEFAULT_UNIFORM = (2, 3, 4, 6, 8)
#: FairQuant baselines: (method, combine rule); budgets None = FairQuant's own shares
DEFAULT_FAIRQUANT = (("gradient", "max"), ("grape", "balanced"))
DEFAULT_FAIRQUANT_BUDGETS = (None, 4.0)
DEFAULT_HAWQ_BUDGETS = (3.0, 4.0)

ATTR_SEED = "fqopt:seed"
ATTR_KIND = "fqopt:kind"
ATTR_LABEL = "fqopt:label"
ATTR_BUILDER = "fqopt:builder"
ATTR_OPTIONS = "fqopt:options"


@dataclass(frozen=True)
class SeedTrial:
    """One enqueued plan. ``key`` is unique within a study."""

    key: str
    label: str
    kind: str
    builder: str
    params: dict
    options: dict = field(default_factory=dict)

    def user_attrs(self) -> dict:
        return {ATTR_SEED: self.key, ATTR_KIND: self.kind, ATTR_LABEL: self.label,
                ATTR_BUILDER: self.builder, ATTR_OPTIONS: dict(self.options)}


def default_seeds(space, maker, *, ladder=DEFAULT_LADDER, uniform=DEFAULT_UNIFORM,
                  fairquant=DEFAULT_FAIRQUANT, fairquant_budgets=DEFAULT_FAIRQUANT_BUDGETS,
                  hawq_budgets=DEFAULT_HAWQ_BUDGETS, quantizer: str = "maxabs",
                  budget: float | Sequence[float] | None = None) -> list[SeedTrial]:
    """The seed trials of a solver-driven study (``space``: a SearchSpace; ``maker``: the
    PlanMaker, for the smallest feasible budget). Order: the order they run in.
    ``budget``: where the recommendation will be made; fqopt's ``worst`` plan, FairQuant's and
    the HAWQ-style plan at exactly that budget join the ladder (a budget between the ladder's
    rungs would otherwise be judged on plans built for less); several budgets (a benchmark's)
    add all of theirs."""
    lo, hi = space.budget_range
    wanted = () if budget is None else (budget,) if isinstance(budget, (int, float)) \
        else tuple(budget)
    for b in wanted:
        b = round(float(b), 6)
        ladder = tuple(sorted(set(ladder) | {b}))
        fairquant_budgets = tuple(fairquant_budgets) + ((b,) if b not in fairquant_budgets
                                                        else ())
        hawq_budgets = tuple(sorted(set(hawq_budgets) | {b}))
    floor = maker.min_budget()
    main = space.methods[0]
    seeds: list[SeedTrial] = []

    def inside(bits: float) -> bool:
        # the range's ends are budgets too: lo <= bits <= hi, with the one budget tolerance
        return within_budget(lo, bits) and within_budget(bits, hi)

    for b in uniform:
        if b in maker.bits:
            real = float(maker.uniform(int(b)).avg_bits)
            if inside(real):
                seeds.append(SeedTrial(f"uniform:{b}", f"uniform {b}-bit", "uniform", "uniform",
                                       space.snap(real, 1.0, main, quantizer),
                                       {"bits": int(b)}))
    for b in ladder:
        if inside(b) and within_budget(floor, b):
            seeds.append(SeedTrial(f"worst@{b:g}", f"fqopt worst {b:g} bits", "ladder",
                                   "solver", space.snap(b, 1.0, main, quantizer),
                                   {"objective": "worst"}))
    for method, combine in fairquant:
        if method not in space.methods:
            continue  # not profiled: this baseline cannot run (its table is missing)
        lam = 1.0 if combine == "max" else 0.0
        for b in fairquant_budgets:
            name = f"FairQuant {method}+{combine}"
            if b is None:
                # FairQuant's shares (0.2/0.4/0.4 of the units at 2/4/8 bits) give 5.2 bits per
                # unit but far fewer per weight: the parameter is the plan's real average bits
                options = {"combine": combine}
                real = float(build_plan(maker, "quantile", {"method": method}, options)
                             .avg_bits)
                seeds.append(SeedTrial(f"fairquant:{method}+{combine}", f"{name} (0.2/0.4/0.4)",
                                       "fairquant", "quantile",
                                       space.snap(real, lam, method, quantizer), options))
            elif within_budget(floor, b):
                seeds.append(SeedTrial(f"fairquant:{method}+{combine}@{b:g}",
                                       f"{name} @ {b:g} bits", "fairquant", "quantile",
                                       space.snap(b, lam, method, quantizer),
                                       {"combine": combine, "budget": float(b)}))
    for b in hawq_budgets:
        if within_budget(floor, b):
            seeds.append(SeedTrial(f"mean@{b:g}", f"HAWQ-style mean {b:g} bits", "hawq",
                                   "solver", space.snap(b, 0.0, main, quantizer),
                                   {"objective": "mean", "budget": float(b)}))
    return seeds


def direct_seeds(space, maker, solver_space, **kwargs) -> list[SeedTrial]:
    """Seeds for a direct (per-layer bits) study: the default seeds, built once with the solver
    space and written as per-layer bits parameters."""
    out = []
    for seed in default_seeds(solver_space, maker, **kwargs):
        plan = build_plan(maker, seed.builder, seed.params, seed.options)
        layer_bits = {name: int(b) if isinstance(b, int) else int(b[0])
                      for name, b in plan.assignments.items()}
        params = {space.param_name(n): layer_bits[n] for n in space.layers}
        params["quantizer"] = seed.params["quantizer"]
        out.append(SeedTrial(seed.key, seed.label, seed.kind, "direct", params, {}))
    return out
