"""``PipelineConfig``: what ``fqopt search`` (:func:`~fqopt.search.run_pipeline`) does, with its
defaults written once; ``TrainOptions`` (how a run without a model is trained) and
:data:`REFINE_MODES` (the refinement stage's settings) are part of it.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, field

from fqopt._config import Config
from fqopt.errors import UserError
from fqopt.search._space import DEFAULT_BUDGET_RANGE, DEFAULT_METHODS, DEFAULT_QUANTIZERS
from fqopt.search._defaults import DEFAULT_BUDGET, DEFAULT_TRIALS
from fqopt.search._study import SAMPLERS
from fqopt.units import GRANULARITIES

#: calibration samples per sensitivity table
DEFAULT_CALIB = 1024

#: ``mode -> fqopt.baq.refine`` settings of the refinement stage. ``finetune`` (the default):
#: the plan's bits kept, its weights fine-tuned for 2 epochs of at most 50 steps (no
#: ``min_finetune_steps``: on small train splits it helped under max-abs, not under mse;
#: benchmarks/small_data.py) with CE + 0.5·(max − min group loss) as FairQuant's FQ-QAT,
#: plus distillation from the FP model (α = 0.5), trained and deployed with the plan's own
#: quantizer (``mse`` for the search's plans). Session 5 trained under max-abs instead: a tie on
#: test_resnet and test_vit, but on the depthwise family (test_efficientnet) max-abs
#: fine-tuning at 2.25–2.75 bits lost 2–7 points of type-VI accuracy that mse keeps
#: (benchmarks/RESULTS.md, Frontier, session 6). BAQ (bits learned too, ``baq``) had gained
#: nothing over fixed-bit fine-tuning (benchmarks/refine.py). A mode's ``quantizer``, when
#: given, replaces the plan's.
REFINE_MODES = {
    "finetune": {"epochs": 0, "finetune_epochs": 2, "steps_per_epoch": 50, "fairness": "range",
                 "lambda_fair": 0.5, "distill": 0.5},
    "baq": {},
}


@dataclass
class TrainOptions:
    """How to train a run that has no model (``fqopt train``'s defaults)."""

    dataset: str | None = None   # None: the run's own, or synthderm for a new run
    model: str | None = None
    samples: int | None = None
    image_size: int | None = None
    epochs: int | None = None
    seed: int = 0
    data_options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PipelineConfig(Config):
    """The settings of :func:`~fqopt.search.run_pipeline`; every field is also its keyword.

    n_trials: trials of the study (None: :data:`~fqopt.search._study.DEFAULT_TRIALS`);
    storage / study_name: the Optuna storage URL (None: the run's SQLite file) and study;
    sampler: ``nsga2`` | ``tpe``; seed; granularity: ``channel`` | ``layer`` (``direct`` forces
    ``layer``); methods, budget_range (average bits), quantizers: the search space;
    direct: trials choose per-layer bits directly; refine_top / refine_mode: how many of the
    recommended plans to refine and how (:data:`REFINE_MODES`); report: write the HTML report;
    timeout: seconds for the search stage; force: delete the study and search again;
    train: :class:`TrainOptions` for a run without a model (None: the defaults, with ``seed``);
    calib: calibration samples per table; budget: average bits where the summary recommends
    a plan (None: :data:`~fqopt.search._verdict.DEFAULT_BUDGET`); artifacts: see
    :func:`fqopt.search.run`.
    """

    n_trials: int | None = DEFAULT_TRIALS
    storage: str | None = None
    study_name: str | None = None
    sampler: str = "nsga2"
    seed: int = 0
    granularity: str = "channel"
    methods: tuple[str, ...] = DEFAULT_METHODS
    budget_range: tuple[float, float] = DEFAULT_BUDGET_RANGE
    quantizers: tuple[str, ...] = DEFAULT_QUANTIZERS
    direct: bool = False
    refine_top: int = 1
    refine_mode: str = "finetune"
    report: bool = True
    timeout: float | None = None
    force: bool = False
    train: TrainOptions | None = None
    calib: int = DEFAULT_CALIB
    budget: float | None = DEFAULT_BUDGET
    artifacts: bool | str | os.PathLike = True

    SCHEMA = "fqopt.pipeline_config/1"
    OPTION = "search"

    def __post_init__(self):
        put = object.__setattr__
        put(self, "n_trials", DEFAULT_TRIALS if self.n_trials is None else self.n_trials)
        put(self, "budget", DEFAULT_BUDGET if self.budget is None else self.budget)
        if not _is_int(self.n_trials) or self.n_trials < 1:
            raise UserError(f"n_trials must be a positive integer, got {self.n_trials!r}")
        if not _is_int(self.refine_top) or self.refine_top < 0:
            raise UserError(f"refine_top must be an integer ≥ 0, got {self.refine_top!r}")
        put(self, "n_trials", int(self.n_trials))
        put(self, "refine_top", int(self.refine_top))
        if self.refine_mode not in REFINE_MODES:
            raise UserError(f"unknown refine mode {self.refine_mode!r}; expected one of "
                            f"{', '.join(REFINE_MODES)}")
        SAMPLERS.get(self.sampler)
        if self.granularity not in GRANULARITIES:
            raise UserError(f"unknown granularity {self.granularity!r}; expected one of "
                            f"{', '.join(GRANULARITIES)}")
        if self.direct:
            put(self, "granularity", "layer")  # direct mode chooses per-layer bits
        try:
            budget = float(self.budget)
        except (TypeError, ValueError):
            budget = math.nan
        if not (math.isfinite(budget) and budget > 0):
            raise UserError(f"budget must be a positive number of average bits, got "
                            f"{self.budget!r}")
        put(self, "budget", budget)
        put(self, "methods", tuple(self.methods))
        put(self, "quantizers", tuple(self.quantizers))
        try:
            lo, hi = (float(x) for x in self.budget_range)
        except (TypeError, ValueError):
            raise UserError(f"budget_range must be two numbers (low, high) of average bits, got "
                            f"{self.budget_range!r}") from None
        put(self, "budget_range", (lo, hi))

    @classmethod
    def _fields_from_json(cls, d: dict) -> dict:
        if isinstance(d.get("train"), dict):
            d = {**d, "train": TrainOptions(**d["train"])}
        return d


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)
