"""The public entry points: :func:`refine`, :func:`measure_step_times`, :func:`load_refined`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from fqopt import models
from fqopt._io import read_json
from fqopt.baq._config import RefineConfig
from fqopt.baq._result import RefineResult
from fqopt.baq._session import RefineSession
from fqopt.baq._state import plan_fingerprint
from fqopt.errors import UserError
from fqopt.evaluation import resolve_device
from fqopt.plan import AllocationPlan
from fqopt.runs import Run
from fqopt.units import discover_units


def refine(run, plan, config: RefineConfig | None = None, *, out_dir=None, resume: bool = True,
           force: bool = False, evaluate: bool = True, callback: Callable | None = None,
           **overrides) -> RefineResult:
    """BAQ refinement of ``plan`` on ``run`` (a :class:`~fqopt.runs.Run` or a run folder).

    plan: an AllocationPlan or a plan JSON path, validated against the run's model.
    config: a :class:`RefineConfig` (default: its defaults); ``overrides``: any of its fields
        as keywords (``budget``, ``fairness``, ``epochs``, ``lr``, ``seed``, ...), applied on top.
        A plan that already exceeds the budget is a UserError unless ``allow_over_budget``; a
        budget below what the pins and the smallest bit-width allow is a UserError naming the
        smallest feasible value; an unknown quantizer or solver fails before any work.
    out_dir: where checkpoints and outputs go (default ``RUN/refined/<plan name>``).
    resume: continue from a checkpoint of the same plan and settings in ``out_dir``.
    force: discard a checkpoint of another plan or other settings and overwrite outputs.
    evaluate: compute the FairnessReports of the static and refined plans (search, test).
    callback: ``callback(stage, done, total, **info)`` progress reports.

    Returns a :class:`RefineResult`; writes ``out_dir/plan.json``, ``model.pt``, the reports,
    ``history.json`` and ``refine.json``.
    """
    config = RefineConfig.build(config, **overrides)
    session, settings, plan_name = _prepare(run, plan, config)
    out_dir = Path(out_dir) if out_dir is not None else (
        session.run.path / "refined" / (plan_name or f"plan-{settings['plan'][:10]}"))
    return session.run_all(out_dir=out_dir, settings=settings, epochs=int(config.epochs),
                           finetune_epochs=config.finetune_epochs_for(
                               session.steps_per_epoch(settings)), resume=resume,
                           force=force, evaluate=evaluate, callback=callback)


def finished_refinement(out_dir) -> bool:
    """Whether ``out_dir`` holds a finished refinement (``refine.json`` and its outputs)."""
    out_dir = Path(out_dir)
    return (out_dir / "refine.json").is_file() and any(
        (out_dir / n).exists() for n in ("plan.json", "model.pt"))


def measure_step_times(run, plan, config: RefineConfig | None = None, *, steps: int = 10,
                       **overrides) -> dict:
    """Seconds per step of BAQ refinement and of fixed-bit fine-tuning of ``plan`` on ``run``,
    alternated on the same batches (medians over ``steps`` steps each, after one warm-up).

    ``config`` / ``overrides``: as for :func:`refine` (what shapes a step: budget, fairness,
    lambda_fair, lambda_budget, lr, bit_lr, batch_size, bits, pin, quantizer, seed, device, ...).
    Returns ``{"steps", "refine_step_s", "fixed_step_s", "ratio"}``; nothing is written.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserError(f"steps must be a positive integer, got {steps!r}")
    session, settings, _ = _prepare(run, plan, config, **overrides)
    return session.measure_steps(settings, steps)


def _prepare(run, plan, config: RefineConfig | None = None, **overrides):
    """Open the run and the plan under a validated config: ``(session, settings, plan name)``,
    ``settings`` being the config's resume fingerprint."""
    config = RefineConfig.build(config, **overrides)
    run = run if isinstance(run, Run) else Run.open(run)
    plan_name, source = None, f"for {getattr(plan, 'model', '?')!r}"
    if isinstance(plan, (str, os.PathLike)):
        plan_name, source = Path(plan).stem, str(plan)
        plan = AllocationPlan.load(plan)
    if not isinstance(plan, AllocationPlan):
        raise UserError(f"plan must be an AllocationPlan or a plan JSON path, "
                        f"got {type(plan).__name__}")
    if config.quantizer is None:
        config = RefineConfig.build(config, quantizer=plan.quantizer)
    session = RefineSession(run, plan, device=resolve_device(config.device),
                            budget=config.budget, budget_kind=config.budget_kind,
                            bits=config.bits, pin=config.pin, quantizer=config.quantizer,
                            allow_over_budget=config.allow_over_budget, source=source)
    settings = config.fingerprint(plan=plan_fingerprint(plan), budget=session.budget_spec,
                                  bits=session.bits.tolist(), pinned=sorted(session.pinned))
    return session, settings, plan_name


def load_refined(out_dir, run=None, *, device=None):
    """``(model, plan)`` of a refinement folder: the refined FP weights (eval mode) and the
    refined plan; ``fqopt.quantized(model, plan)`` gives the quantized model. ``run`` defaults to
    the run recorded in ``refine.json``."""
    out_dir = Path(out_dir)
    if run is None:
        summary = read_json(out_dir / "refine.json", what="refine summary")
        if "run" not in summary:
            raise UserError(f"refine summary {out_dir / 'refine.json'} names no run; pass run=")
        run = summary["run"]
    run = run if isinstance(run, Run) else Run.open(run)
    plan = AllocationPlan.load(out_dir / "plan.json")
    model = run.new_model()
    models.load_weights(model, out_dir / "model.pt", name=run.model_name)
    plan.validate(discover_units(model, plan.granularity, pin="none"), model=run.model_name)
    if device is not None:
        model = model.to(device)
    return model.eval(), plan
