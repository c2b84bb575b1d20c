"""``RefineConfig``: the settings of one refinement, validated once, with their defaults.

:func:`~fqopt.baq.refine` takes a config, keyword overrides of its fields, or both
(``refine(run, plan, RefineConfig(epochs=5), seed=1)``). ``to_dict``/``from_dict`` give its JSON
form (with a schema); :meth:`RefineConfig.fingerprint` the part a checkpoint must match to be
resumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fqopt._config import Config
from fqopt.baq._fairness import make_fairness
from fqopt.errors import UserError
from fqopt.quantizers import QUANTIZERS
from fqopt.solvers import get_solver


@dataclass(frozen=True)
class RefineConfig(Config):
    """What :func:`~fqopt.baq.refine` does; every field is also a keyword of ``refine``.

    budget / budget_kind: the budget to end within (``avg_bits``, ``size_bytes`` or ``bops``);
        None: the plan's recorded budget, else its own usage.
    fairness: ``range`` | ``worst`` | ``cvar[:α]`` | ``dro[:η]``; lambda_fair: its weight λ_f.
    lambda_budget: ρ of the augmented-Lagrangian budget term (0: none while learning).
    epochs: epochs of joint bit/weight training; finetune_epochs: fixed-bit epochs after rounding.
    min_finetune_steps: at least this many fixed-bit steps (None: no minimum): on a small
        train split, where an epoch has few steps, the fine-tune runs more epochs. Under a
        max-abs fine-tune a short one was worse than none (test_resnet at 2.25 bits: 8 steps
        2.9 points of type VI below the static plan); under mse it did not help
        (benchmarks/small_data.py, benchmarks/RESULTS.md).
    lr: weight learning rate (AdamW); bit_lr: bit-width learning rate (bits per step);
    weight_decay: AdamW decay of the weight matrices.
    batch_size; steps_per_epoch: a cap on one epoch's steps (None: one pass over the train split).
    balanced: group-balanced sampling; augment: flips and right-angle rotations.
    distill: weight α ∈ [0, 1] of knowledge distillation from the run's FP model: each sample's
        loss is (1 − α)·CE + α·T²·KL(p_FP,T ‖ p_T) at temperature ``distill_temperature`` T
        (the fairness term then ranges over these per-group losses); 0: plain cross-entropy.
    bits: candidate bit-widths of the rounding (None: the plan's).
    pin: ``"plan"``, ``"none"`` or layer names (a comma-separated string or a sequence).
    quantizer: ``maxabs`` | ``mse`` (None: the plan's own). solver: the rounding's back-end.
    seed; device: ``auto``, ``cpu``, ``cuda``, ...; allow_over_budget: start from a plan over the
        budget (the budget term pulls it down).
    """

    budget: float | None = None
    budget_kind: str | None = None
    fairness: str = "range"
    lambda_fair: float = 0.5
    lambda_budget: float = 1.0
    epochs: int = 3
    finetune_epochs: int = 1
    min_finetune_steps: int | None = None
    lr: float = 1e-4
    bit_lr: float = 0.05
    weight_decay: float = 0.0
    batch_size: int = 64
    steps_per_epoch: int | None = None
    balanced: bool = False
    augment: bool = True
    distill: float = 0.0
    distill_temperature: float = 1.0
    bits: tuple[int, ...] | None = None
    pin: str | tuple[str, ...] | None = "plan"
    quantizer: str | None = None
    solver: str = "lagrange"
    seed: int = 0
    device: str = "auto"
    allow_over_budget: bool = False

    SCHEMA = "fqopt.refine_config/1"
    OPTION = "refine"

    def __post_init__(self):
        for name in ("epochs", "finetune_epochs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise UserError(f"{name} must be an integer ≥ 0, got {v!r}")
        make_fairness(self.fairness, 2)
        for name in ("lambda_fair", "lambda_budget", "bit_lr", "weight_decay"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < 0:
                raise UserError(f"{name} must be a number ≥ 0, got {v!r}")
        lr = self.lr
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) \
                or lr <= 0:
            raise UserError(f"lr must be a positive number, got {lr!r}")
        bs = self.batch_size
        if isinstance(bs, bool) or not isinstance(bs, (int, np.integer)) or bs < 1:
            raise UserError(f"batch_size must be a positive integer, got {bs!r}")
        spe = self.steps_per_epoch
        if spe is not None and (isinstance(spe, bool) or not isinstance(spe, (int, np.integer))
                                or spe < 1):
            raise UserError(f"steps_per_epoch must be a positive integer or None, got {spe!r}")
        mfs = self.min_finetune_steps
        if mfs is not None and (isinstance(mfs, bool) or not isinstance(mfs, (int, np.integer))
                                or mfs < 1):
            raise UserError(f"min_finetune_steps must be a positive integer or None, got "
                            f"{mfs!r}")
        d = self.distill
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d <= 1:
            raise UserError(f"distill must be a number in [0, 1], got {d!r}")
        t = self.distill_temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) \
                or t <= 0:
            raise UserError(f"distill_temperature must be a positive number, got {t!r}")
        if self.quantizer is not None:
            QUANTIZERS.get(self.quantizer)
        get_solver(self.solver)  # an unknown back-end fails here, not after the training epochs
        # sequences become tuples (the config stays hashable and equal to its JSON round trip)
        if self.bits is not None and not isinstance(self.bits, (str, tuple)):
            object.__setattr__(self, "bits", tuple(self.bits))
        if self.pin is not None and not isinstance(self.pin, (str, tuple)):
            object.__setattr__(self, "pin", tuple(self.pin))
        if not isinstance(self.device, str):
            object.__setattr__(self, "device", "auto" if self.device is None else str(self.device))

    # ------------------------------------------------------------------ resume
    def finetune_epochs_for(self, steps_per_epoch: int) -> int:
        """The fixed-bit epochs to run when one epoch has ``steps_per_epoch`` steps:
        ``finetune_epochs``, raised to reach ``min_finetune_steps`` (none asked: none run)."""
        epochs = int(self.finetune_epochs)
        if epochs == 0 or self.min_finetune_steps is None:
            return epochs
        return max(epochs, math.ceil(int(self.min_finetune_steps) / max(1, steps_per_epoch)))

    def fingerprint(self, *, plan: str, budget: dict, bits: list[int], pinned: list[str]
                    ) -> dict:
        """The settings a checkpoint records and a resumed run must match: what one training
        step computes, with the plan-dependent values resolved (``plan``: its fingerprint,
        ``budget``: ``{"kind", "value"}``, the candidate ``bits``, the ``pinned`` layers; the
        quantizer must be resolved, not None). Epochs are not in it, so a longer run continues a
        shorter one; neither is the device. Distillation enters only when on, so checkpoints
        written before it existed still resume."""
        out = {
            "plan": plan, "budget": budget, "fairness": make_fairness(self.fairness, 2).spec,
            "lambda_fair": float(self.lambda_fair), "lambda_budget": float(self.lambda_budget),
            "lr": float(self.lr), "bit_lr": float(self.bit_lr),
            "weight_decay": float(self.weight_decay), "batch_size": int(self.batch_size),
            "steps_per_epoch": (None if self.steps_per_epoch is None
                                else int(self.steps_per_epoch)),
            "balanced": bool(self.balanced), "augment": bool(self.augment),
            "bits": list(bits), "pinned": list(pinned), "quantizer": self.quantizer,
            "solver": self.solver, "seed": int(self.seed),
        }
        if self.distill > 0:
            out.update(distill=float(self.distill),
                       distill_temperature=float(self.distill_temperature))
        return out
