"""``RefineResult``: what :func:`~fqopt.baq.refine` returns, and its ``refine.json`` summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SUMMARY_SCHEMA = "fqopt.refine/1"


@dataclass
class RefineResult:
    """What :func:`refine` returns.

    ``plan``: the refined, solver-rounded plan (``plan.avg_bits`` within the budget);
    ``static_plan``: the plan refinement started from; ``checkpoint``: refined FP weights
    (state dict; with ``plan`` they give the quantized model); ``continuous_bits``: ``[U]``
    learned bits before rounding; ``rounding``: the solver's record (status, objective,
    ``budget_used``, ...); ``history``: one dict per epoch of both phases; reports: FairnessReports
    on the search and test splits (None when ``evaluate=False``).
    """

    plan: object
    static_plan: object
    out_dir: Path
    checkpoint: Path
    plan_path: Path
    budget: dict
    continuous_bits: np.ndarray
    rounding: dict
    history: list[dict] = field(default_factory=list)
    report_search: object = None
    report_test: object = None
    static_report_search: object = None
    static_report_test: object = None
    settings: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """A JSON-able record (what ``refine.json`` holds)."""
        def rep(r):
            return None if r is None else {k: r.to_dict()[k] for k in
                                           ("accuracy", "avg_acc", "worst_acc", "acc_gap")}
        return {"schema": SUMMARY_SCHEMA, "out_dir": str(self.out_dir),
                "budget": self.budget, "settings": self.settings,
                "static": {"avg_bits": self.static_plan.avg_bits,
                           "size_bytes": self.static_plan.size_bytes,
                           "search": rep(self.static_report_search),
                           "test": rep(self.static_report_test)},
                "refined": {"avg_bits": self.plan.avg_bits, "size_bytes": self.plan.size_bytes,
                            "search": rep(self.report_search), "test": rep(self.report_test)},
                "rounding": self.rounding,
                "step_time_ratio": step_time_ratio(self.history)}


def step_time_ratio(history: list[dict]) -> float | None:
    """Mean refinement step time over mean fixed-bit fine-tune step time (same batch size)."""
    a = [h["step_seconds"] for h in history if h.get("phase") == "bits" and h.get("step_seconds")]
    b = [h["step_seconds"] for h in history if h.get("phase") == "finetune"
         and h.get("step_seconds")]
    if not a or not b:
        return None
    return float(np.mean(a) / np.mean(b))
