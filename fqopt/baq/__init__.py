"""BAQ: learnable bit-widths, trained with the weights, rounded by the solver (docs/design.md §4.7).

``refine(run, plan)`` starts from an :class:`~fqopt.plan.AllocationPlan` and learns one
continuous bit-width ``b_u`` per unit (a layer, or one output channel, as the plan's granularity)
together with the weights, then rounds the bit-widths under the exact budget with the allocation
solver and fine-tunes the weights at the rounded bits.

**Differentiable bits (FracBits-style).** With ``lo = clamp(⌊b⌋, b_min, b_max − 1)`` and
``α = b − lo ∈ [0, 1]``, the weight used in the forward pass is

    ŵ = (1 − α)·Q_lo(w) + α·Q_{lo+1}(w)      (each Q with a straight-through gradient to w)

so ``∂ŵ/∂w = 1`` and ``∂L/∂b = Σ (Q_{lo+1}(w) − Q_lo(w))·∂L/∂ŵ``: the task and fairness losses
move the bit-widths. At an integer ``b`` the forward pass is exactly ``Q_b(w)`` (what evaluation
applies) and the gradient is the right derivative, never zero. FairQuant's own BAQ builds
``w + stopgrad(ŵ − w)``, so its bit logits get no gradient from the task loss (docs/reference.md).

**Loss.** ``CE + λ_f·R_fair + ψ(g)``. ``R_fair`` is computed from the mean cross-entropy of each
group present in the batch (:data:`FAIRNESS_TERMS`: ``range`` = max − min as FairQuant,
``worst`` = max, ``cvar:α`` = mean of the ⌈α·P⌉ largest of the P present groups, ``dro:η`` =
Group DRO with exponentiated-gradient group weights). ``g = (Σ_u a_u·b_u − cap) / Σ_u a_u`` is
the budget violation in average bits (``a_u`` = the unit's weights, or MACs × activation bits for
a ``bops`` budget) and ``ψ`` the augmented-Lagrangian (PHR) penalty
``(max(0, μ + ρ·g)² − μ²) / (2ρ)`` with the multiplier updated after every step,
``μ ← max(0, μ + ρ·g)``; so the bits settle on the budget instead of drifting up.

**Rounding.** The learned ``b*`` are rounded by :func:`fqopt.solvers.solve` under the exact
budget. The per-unit cost of choosing ``x`` bits is ``a_u·(4^(b*_u − x) − 1)/ln 4``: if unit u's
loss behaves like the quantization-noise model ``c_u·4^(−b)`` and ``b*_u`` is where its marginal
gain equals the price of a bit (``a_u`` per bit, up to the common multiplier), stationarity fixes
``c_u`` and this is the loss change of moving from ``b*_u`` to ``x``. It is convex and asymmetric
(one bit below ``b*`` costs four times what one bit above saves), and it spends the whole budget.
The result is a solver plan: its ``avg_bits`` (or size, or BOPs) is within the budget exactly as
the solver's ``budget_used`` reports.

**Fine-tune.** A short fixed-bit fine-tune (straight-through estimator, weights only) at the
rounded bits follows. Pinned units keep the plan's bits throughout. With ``distill`` = α > 0 each
sample's loss is (1 − α)·CE + α·T²·KL(p_FP,T ‖ p_T), the run's FP model as the teacher
(:func:`distillation_loss`).

**Runs and resumption.** CUDA with bf16 autocast when present, CPU otherwise. A checkpoint is
written after every epoch of both phases (``baq_state.pt``, ``finetune_state.pt``); a new call
with the same plan and settings continues where the last one stopped (also with more epochs);
a checkpoint of another plan or other settings is a :class:`~fqopt.errors.UserError` unless
``force``. Outputs in ``out_dir``: ``plan.json`` (the refined plan), ``model.pt`` (the refined FP
weights; with the plan they give the quantized model, see :func:`load_refined`), the
FairnessReports of the static and refined plans on the search and test splits, ``history.json``
and ``refine.json`` (a summary).

**Layout.** ``_config`` (:class:`RefineConfig`, the settings and their resume fingerprint),
``_bits`` (:class:`BitWidths`), ``_fairness`` (the fairness-term registry), ``_distill``, ``_budget`` (the
augmented Lagrangian and the rounding costs), ``_session`` (one refinement: budget, pins, the
training loop, rounding, fine-tune), ``_state`` (checkpoints), ``_result`` (:class:`RefineResult`)
and ``_refine`` (the entry points). The differentiable quantizers are in :mod:`fqopt.quantizers`.
"""

from fqopt.baq._bits import BitWidths, fixed_bit_weights
from fqopt.baq._budget import AugmentedLagrangian, rounding_costs
from fqopt.baq._config import RefineConfig
from fqopt.baq._distill import distillation_loss
from fqopt.baq._fairness import (FAIRNESS_TERMS, FairnessTerm, group_losses, make_fairness,
                                 register_fairness)
from fqopt.baq._refine import finished_refinement, load_refined, measure_step_times, refine
from fqopt.baq._result import RefineResult, step_time_ratio
from fqopt.baq._state import plan_fingerprint
from fqopt.quantizers import fixed_fake_quantize_ste, fractional_fake_quantize

__all__ = ["refine", "RefineConfig", "load_refined", "RefineResult", "BitWidths",
           "fractional_fake_quantize", "FairnessTerm", "FAIRNESS_TERMS", "register_fairness",
           "make_fairness", "group_losses", "AugmentedLagrangian", "rounding_costs",
           "plan_fingerprint", "measure_step_times", "fixed_bit_weights",
           "fixed_fake_quantize_ste", "step_time_ratio", "finished_refinement",
           "distillation_loss"]
