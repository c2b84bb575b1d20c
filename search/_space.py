"""What a trial chooses: the search spaces of ``fqopt search``.

:class:`SearchSpace` (the default, any granularity): four parameters per trial,

- ``budget``: average bits (parameter-weighted), a float on a grid of ``budget_step``;
- ``lambda``: the objective blend, the solver minimises ``(1 − λ)·balanced + λ·worst``
  (λ = 1 is ``worst``, λ = 0 ``balanced``; docs/design.md §4.3);
- ``method``: which sensitivity table the solver reads;
- ``quantizer``: ``maxabs`` or ``mse`` (docs/design.md §4.1), used when the plan is applied.

:class:`DirectSpace` (``--direct``, layer granularity): Optuna picks every free layer's bits
itself (``bits:<layer>`` categorical parameters) plus the quantizer; the budget range is enforced
through NSGA-II/TPE constraints (``avg_bits`` outside the range counts as infeasible).

Every trial of a study has the same parameters with the same distributions (seed trials
included), because Optuna's samplers only learn from the parameters all trials share.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from optuna.distributions import CategoricalDistribution, FloatDistribution

from fqopt.errors import UserError
from fqopt.quantizers import QUANTIZERS
from fqopt.units import MAX_BITS, MIN_BITS

DEFAULT_METHODS = ("fisher", "gradient", "grape")
# mse: per-channel clipping by weight MSE; on benchmarks/frontier.py it keeps 1.3-5.5 points
# more type-VI test accuracy than maxabs at 2.25-3 bits, so trials no longer spend half their
# budget on maxabs (``--quantizers maxabs,mse`` brings it back)
DEFAULT_QUANTIZERS = ("mse",)
DEFAULT_BUDGET_RANGE = (2.5, 7.0)


def check_budget_range(lo, hi, *, what: str | None = None) -> tuple[float, float]:
    """``(lo, hi)`` as floats if ``MIN_BITS ≤ lo < hi ≤ MAX_BITS`` average bits, else a
    UserError."""
    lo, hi = float(lo), float(hi)
    if not (MIN_BITS <= lo < hi <= MAX_BITS):
        raise UserError(f"{what or f'budget range {lo:g}:{hi:g}'}: average bits must satisfy "
                        f"{MIN_BITS} ≤ LOW < HIGH ≤ {MAX_BITS}")
    return lo, hi


def _on_grid(lo: float, hi: float, step: float) -> float:
    """``hi`` moved down onto the grid ``lo + k·step`` (Optuna needs hi − lo divisible)."""
    k = math.floor((hi - lo) / step + 1e-9)
    return round(lo + k * step, 10)


@dataclass(frozen=True)
class SearchSpace:
    """The solver-driven search space (see the module docstring). Budgets in average bits."""

    budget_range: tuple[float, float] = DEFAULT_BUDGET_RANGE
    budget_step: float = 0.05
    lambda_step: float = 0.05
    methods: tuple[str, ...] = DEFAULT_METHODS
    quantizers: tuple[str, ...] = DEFAULT_QUANTIZERS
    kind: str = field(default="solver", init=False)

    def __post_init__(self):
        lo, hi = check_budget_range(*self.budget_range)
        if not self.budget_step > 0 or not 0 < self.lambda_step <= 1:
            raise UserError("budget and λ steps must be positive (λ step at most 1)")
        object.__setattr__(self, "budget_range", (lo, _on_grid(lo, hi, self.budget_step)))
        if not self.methods:
            raise UserError("the search needs at least one sensitivity method")
        if len(set(self.methods)) != len(self.methods):
            raise UserError(f"sensitivity methods listed twice: {list(self.methods)}")
        bad = [q for q in self.quantizers if q not in QUANTIZERS]
        if bad or not self.quantizers:
            raise UserError(f"quantizers {bad or '[]'} are not known; expected some of "
                            f"{', '.join(QUANTIZERS)}")
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "quantizers", tuple(self.quantizers))

    def distributions(self) -> dict:
        lo, hi = self.budget_range
        return {
            "budget": FloatDistribution(lo, hi, step=self.budget_step),
            "lambda": FloatDistribution(0.0, _on_grid(0.0, 1.0, self.lambda_step),
                                        step=self.lambda_step),
            "method": CategoricalDistribution(list(self.methods)),
            "quantizer": CategoricalDistribution(list(self.quantizers)),
        }

    def suggest(self, trial) -> dict:
        """The trial's parameters (fixed ones, from an enqueued seed, come back as they are)."""
        return {name: suggest(trial, name, d) for name, d in self.distributions().items()}

    def snap(self, budget: float, lam: float, method: str, quantizer: str = "maxabs") -> dict:
        """Parameters of a seed trial, moved onto the grid and into the ranges (a baseline's
        parameters describe the nearest solver configuration; see ``_seeds``)."""
        lo, hi = self.budget_range
        b = min(max(float(budget), lo), hi)
        b = round(lo + round((b - lo) / self.budget_step) * self.budget_step, 10)
        lam_hi = _on_grid(0.0, 1.0, self.lambda_step)
        lam = round(round(min(max(float(lam), 0.0), lam_hi) / self.lambda_step)
                    * self.lambda_step, 10)
        if method not in self.methods:
            method = self.methods[0]
        if quantizer not in self.quantizers:
            quantizer = self.quantizers[0]
        return {"budget": min(b, hi), "lambda": min(lam, lam_hi), "method": method,
                "quantizer": quantizer}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["budget_range"] = list(d["budget_range"])
        d["methods"] = list(d["methods"])
        d["quantizers"] = list(d["quantizers"])
        return d


@dataclass(frozen=True)
class DirectSpace:
    """Per-layer bits chosen by the sampler (layer granularity).

    ``layers``: the free (unpinned) layers, in model order; ``bits``: candidate bit-widths;
    ``budget_range``: the feasible range of average bits (a constraint, not a parameter).
    """

    layers: tuple[str, ...]
    bits: tuple[int, ...]
    budget_range: tuple[float, float] = DEFAULT_BUDGET_RANGE
    quantizers: tuple[str, ...] = DEFAULT_QUANTIZERS
    kind: str = field(default="direct", init=False)

    def __post_init__(self):
        if not self.layers:
            raise UserError("direct search: the model has no free (unpinned) layer to choose "
                            "bits for")
        lo, hi = check_budget_range(*self.budget_range)
        object.__setattr__(self, "budget_range", (lo, hi))
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "bits", tuple(int(b) for b in self.bits))
        object.__setattr__(self, "quantizers", tuple(self.quantizers))

    @staticmethod
    def param_name(layer: str) -> str:
        return f"bits:{layer}"

    def distributions(self) -> dict:
        out = {self.param_name(n): CategoricalDistribution(list(self.bits)) for n in self.layers}
        out["quantizer"] = CategoricalDistribution(list(self.quantizers))
        return out

    def suggest(self, trial) -> dict:
        return {name: suggest(trial, name, d) for name, d in self.distributions().items()}

    def to_dict(self) -> dict:
        return {"kind": self.kind, "layers": list(self.layers), "bits": list(self.bits),
                "budget_range": list(self.budget_range), "quantizers": list(self.quantizers)}


def suggest(trial, name: str, dist):
    """Ask ``trial`` for ``name`` with the public ``suggest_*`` matching ``dist``."""
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, list(dist.choices))
    raise TypeError(f"unsupported distribution {type(dist).__name__}")  # pragma: no cover


def parse_budget_range(text: str) -> tuple[float, float]:
    """``"2.5:7"`` -> ``(2.5, 7.0)`` (average bits)."""
    try:
        lo, hi = (float(x) for x in str(text).split(":"))
    except ValueError:
        raise UserError(f"--budget-range must look like LOW:HIGH in average bits, e.g. 2.5:7, "
                        f"got {text!r}") from None
    return check_budget_range(lo, hi, what=f"--budget-range {text!r}")
