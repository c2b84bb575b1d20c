"""``fqopt.search.run``: the Optuna study over plans (docs/design.md §4.6).

The loop, per process (every worker runs the same code on the same study):

1. open the study (create it if missing; the creator enqueues the seed trials, see ``_seeds``),
   check its directions and that it belongs to this run's model;
2. re-enqueue seeds that are missing (an interrupted run loses the trial it was running);
3. until the study holds ``n_trials`` complete trials: if running and complete trials already
   fill the target, wait for the running ones (another worker's, or a killed process's, which
   the heartbeat marks failed after a grace period, freeing its slot); otherwise run one trial.

Several workers on one storage therefore finish together with exactly ``n_trials`` complete
trials, each seed run once; ``--trials`` is the study's total, so ``--trials 100`` after an
interrupted ``--trials 100`` runs only the missing ones. Ctrl-C stops the loop once the running
trial is stored (a second Ctrl-C at once); a killed process loses its running trial only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState

from fqopt._registry import Registry
from fqopt.errors import UserError
from fqopt.runs import Run
from fqopt.search import _storage
from fqopt.search._defaults import DEFAULT_TRIALS
from fqopt.search._plans import PlanMaker
from fqopt.search._seeds import ATTR_SEED, SeedTrial, default_seeds, direct_seeds
from fqopt.search._space import DirectSpace, SearchSpace
from fqopt.search._trial import ATTR_CONSTRAINT, SplitEvaluator, TrialObjective, WeightBank
from fqopt.sensitivity import SensitivityTable

DEFAULT_POPULATION = 20
#: seconds between checks while other workers finish the last trials
POLL_SECONDS = 2.0

SamplerFactory = Callable[..., object]
SAMPLERS: Registry[SamplerFactory] = Registry("sampler")


def register_sampler(name: str):
    """Function decorator: ``fn(*, seed, constrained, population_size)`` makes sampler
    ``name``."""
    return SAMPLERS.register(name)


def _constraints(frozen_trial) -> list[float]:
    """Direct mode: ``avg_bits − high`` and ``low − avg_bits`` (feasible when both ≤ 0)."""
    return list(frozen_trial.user_attrs.get(ATTR_CONSTRAINT, [0.0, 0.0]))


@register_sampler("nsga2")
def _nsga2(*, seed, constrained: bool, population_size: int | None):
    return optuna.samplers.NSGAIISampler(
        seed=seed, population_size=population_size or DEFAULT_POPULATION,
        constraints_func=_constraints if constrained else None)


@register_sampler("tpe")
def _tpe(*, seed, constrained: bool, population_size: int | None):
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=10,
                                      constraints_func=_constraints if constrained else None)


def make_sampler(name: str, *, seed: int | None, constrained: bool = False,
                 population_size: int | None = None):
    """``nsga2`` (default) or ``tpe``, seeded. ``constrained``: direct mode's budget range
    (Optuna ≥ 5 reads the constraints each trial sets; older versions need the function)."""
    factory = SAMPLERS.get(name)
    if hasattr(optuna.trial.Trial, "set_constraint"):
        constrained = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return factory(seed=seed, constrained=constrained,
                              population_size=population_size)


def _file_sha256(path) -> str | None:
    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    except FileNotFoundError:
        return None


def run_identity(run) -> dict:
    """What a study must agree with: model, dataset, classes, image size, checkpoint hash."""
    return {"model": run.model_name, "dataset": run.config["dataset"],
            "num_classes": run.num_classes, "image_size": run.image_size,
            "checkpoint": _file_sha256(run.checkpoint_path)}


def default_study_name(model_name: str, granularity: str, direct: bool = False) -> str:
    return f"fqopt-{model_name}-{granularity}" + ("-direct" if direct else "")


def _as_tables(tables) -> dict:
    if isinstance(tables, SensitivityTable):
        return {tables.meta.get("method", "table"): tables}
    if not isinstance(tables, dict) or not tables:
        raise UserError("tables must be a SensitivityTable or a non-empty dict "
                        "method -> SensitivityTable")
    return dict(tables)


def _plain(obj):
    return json.loads(json.dumps(obj))


def _sampler_seed(seed: int | None, created: bool, n_existing: int) -> int | None:
    """The process that creates the study uses ``seed`` itself (a fresh search is reproducible);
    a resumed run or an extra worker mixes in the history length and its own identity, so it
    does not redraw the trials that are already in the study."""
    if seed is None or created:
        return seed
    text = f"{seed}:{n_existing}:{socket.gethostname()}:{os.getpid()}"
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def _fail_stale(study) -> None:
    """Mark trials whose heartbeat stopped (killed workers) as failed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def count_states(study) -> dict[str, int]:
    out = {s.name.lower(): 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name.lower()] += 1
    return out


def reconcile_seeds(study, seeds: list[SeedTrial], n_trials: int) -> int:
    """Enqueue the first ``n_trials`` seeds that no live trial (waiting, running, complete)
    carries; returns how many were enqueued."""
    live = study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING,
                                                    TrialState.COMPLETE))
    present = {t.user_attrs.get(ATTR_SEED) for t in live}
    added = 0
    for seed in seeds[:max(0, n_trials)]:
        if seed.key not in present:
            study.enqueue_trial(seed.params, user_attrs=seed.user_attrs())
            added += 1
    return added


def run(run, tables, *, n_trials: int = DEFAULT_TRIALS, storage: str | None = None,
        study_name: str | None = None, sampler: str = "nsga2", seed: int | None = 0,
        space: SearchSpace | None = None, direct: bool = False, seeds: bool | list = True,
        timeout: float | None = None, backend: str | None = None,
        population_size: int | None = None,
        force: bool = False, device=None, evaluator: SplitEvaluator | None = None,
        model=None, callback=None, artifacts=True, budget=None):
    """Run (or resume, or join) the multi-objective search; returns the ``optuna.Study``.

    Args:
        run: a :class:`~fqopt.runs.Run` (or its folder) with a trained model.
        tables: ``method -> SensitivityTable`` (one granularity; ``layer`` for ``direct``).
        n_trials: the study's total of complete trials (not this call's): a resumed or
            shared study runs only what is missing.
        storage: an Optuna storage URL; default ``sqlite:///RUN/study.db``.
        study_name: default ``fqopt-<model>-<granularity>[-direct]``.
        sampler: ``nsga2`` (default) or ``tpe``; ``seed`` seeds it.
        space: the :class:`SearchSpace` (default: every method of ``tables``, both quantizers,
            budgets 2.5-7 average bits).
        direct: let Optuna pick every layer's bits itself (layer granularity only); the budget
            range becomes a constraint.
        seeds: enqueue the default seed trials (True), none (False), or these SeedTrials.
        budget: the average bits a recommendation will be made at: the default seeds then
            include fqopt's, FairQuant's and the HAWQ-style plan at exactly that budget (a
            sequence: at each of them).
        timeout: stop starting new trials after this many seconds.
        backend: solver back-end (default ``lagrange`` at channel granularity, ``auto``
            at layer granularity).
        force: delete the study first and start over.
        evaluator, model: reuse an already built :class:`SplitEvaluator` / loaded model.
        callback: ``callback(stage, done, total, **info)`` after each trial (``stage`` is
            ``"search"``; ``done`` counts the study's complete trials).
        artifacts: where each trial's plan and report are also stored as Optuna artifacts
            (a folder for a ``FileSystemArtifactStore``, or an ``ArtifactStore``); ``True``
            (default): ``RUN/artifacts``; ``None``/``False``: none. The artifacts' records live
            in the study's storage (SQLite or PostgreSQL alike), their files in the store.

    Every complete trial has values ``(avg_acc, worst_acc, avg_bits)`` on the search split and
    user attributes ``plan`` (AllocationPlan dict), ``report`` (FairnessReport dict) and
    ``seconds`` (solve, apply, evaluate, restore).
    """
    if not isinstance(run, Run):
        run = Run.open(run)
    if int(n_trials) < 1:
        raise UserError(f"--trials must be at least 1, got {n_trials}")
    tables = _as_tables(tables)
    maker = PlanMaker(tables, model_name=run.model_name, backend=backend)
    granularity = maker.granularity
    if space is None:
        space = SearchSpace(methods=tuple(tables))
    missing = [m for m in getattr(space, "methods", ()) if m not in tables]
    if missing:
        raise UserError(f"search space names method(s) {missing} without a profiled table "
                        f"(profiled: {', '.join(tables)})")
    if direct:
        if granularity != "layer":
            raise UserError("--direct picks one bit-width per layer: profile with "
                            "--granularity layer (the tables here are per channel)")
        solver_space = space
        free = [layer.name for layer in maker.units.layers
                if layer.name not in maker.units.pinned]
        space = DirectSpace(layers=tuple(free), bits=tuple(maker.bits),
                            budget_range=solver_space.budget_range,
                            quantizers=solver_space.quantizers)
    if seeds is True:
        seed_list = (direct_seeds(space, maker, solver_space, budget=budget) if direct
                     else default_seeds(space, maker, budget=budget))
    elif seeds is False or seeds is None:
        seed_list = []
    else:
        seed_list = list(seeds)

    storage_url = storage or _storage.default_storage_url(run.path)
    study_name = study_name or default_study_name(run.model_name, granularity, direct)
    store = _storage.open_storage(storage_url)
    identity = run_identity(run)
    settings = _plain({"granularity": granularity, "direct": bool(direct),
                       "space": space.to_dict(), "sampler": sampler,
                       "methods": list(tables), "tables": {
                           m: {"method": t.meta.get("method"), "seed": t.meta.get("seed"),
                               "calib_samples": t.meta.get("calib_samples")}
                           for m, t in tables.items()}})

    def setup(study):
        reconcile_seeds(study, seed_list, n_trials)

    study, created = _storage.open_study(store, study_name, sampler=None, identity=identity,
                                         settings=settings, force=force, setup=setup,
                                         describe=f"run {run.path}")
    n_existing = len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(sampler, seed=_sampler_seed(seed, created, n_existing),
                                 constrained=direct, population_size=population_size)

    if evaluator is None:
        model = model if model is not None else run.model()
        if device is not None:
            model = model.to(device)
        quantizers = getattr(space, "quantizers", ("maxabs",))
        bank = (WeightBank(model, maker.bits) if WeightBank.fits(model, maker.bits,
                                                                   len(quantizers)) else None)
        for q in quantizers if bank is not None else ():
            bank.bank(q)  # once, before the trials (not billed to the first trial's apply)
        evaluator = SplitEvaluator(model, run.dataset(), "search", bank=bank)
    objective = TrialObjective(maker=maker, evaluator=evaluator, space=space,
                               n_trials=int(n_trials),
                               artifact_store=artifact_store(run, artifacts),
                               default_builder="direct" if direct else "solver",
                               budget_range=space.budget_range if direct else None)

    started = time.monotonic()
    _fail_stale(study)
    if not created:
        # a resumed run re-enqueues the seeds lost with interrupted trials
        reconcile_seeds(study, seed_list, n_trials)
    with _stop_between_trials() as interrupted:
        _optimize(study, objective, n_trials, seed_list, timeout, started, callback, interrupted)
    if callback is not None:
        counts = count_states(study)
        callback("search", counts["complete"], int(n_trials), running=counts["running"])
    study.set_user_attr("fqopt:n_trials", int(max(n_trials, study.user_attrs.get(
        "fqopt:n_trials", 0))))
    return study


ARTIFACT_DIR = "artifacts"


def artifact_store(run, artifacts=True):
    """The Optuna artifact store of a run's study (see :func:`run`), or None."""
    if artifacts is None or artifacts is False:
        return None
    if artifacts is True:
        artifacts = run.path / ARTIFACT_DIR
    if isinstance(artifacts, (str, os.PathLike)):
        os.makedirs(artifacts, exist_ok=True)
        return FileSystemArtifactStore(str(artifacts))
    return artifacts


@contextlib.contextmanager
def _stop_between_trials():
    """Ctrl-C (SIGINT) during the trials stops the search after the running trial, so that no
    storage write is cut in half (Optuna's own tell is not safe against KeyboardInterrupt);
    a second Ctrl-C stops at once. Yields a list that holds True once interrupted."""
    interrupted: list = []
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return

    def handler(signum, frame):
        if interrupted:
            raise KeyboardInterrupt
        interrupted.append(True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        raise KeyboardInterrupt


def _optimize(study, objective, n_trials, seed_list, timeout, started, callback, interrupted):
    while not interrupted:
        if timeout is not None and time.monotonic() - started >= timeout:
            break
        counts = count_states(study)
        complete, running = counts["complete"], counts["running"]
        if callback is not None:
            callback("search", complete, int(n_trials), running=running)
        if complete >= n_trials:
            break
        if complete + running >= n_trials:
            # the rest is running elsewhere, or in a killed process: the heartbeat marks such a
            # trial failed after the grace period; its seed (if any) is enqueued again
            time.sleep(POLL_SECONDS)
            _fail_stale(study)
            reconcile_seeds(study, seed_list, n_trials)
            continue
        study.optimize(objective, n_trials=1, catch=())
        if objective.last_skip == "surplus":
            time.sleep(random.uniform(0.2, 1.0))  # lost a race for the last slot


def complete_trials(study) -> list:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def pareto_trials(study, *, unique: bool = True) -> list:
    """The Pareto-optimal complete trials (``study.best_trials``), sorted by average bits.

    Samplers propose the same plan again now and then (it is evaluated once and its result
    reused); with ``unique`` each plan appears once, as its first trial.
    """
    best = study.best_trials if complete_trials(study) else []
    best = sorted(best, key=lambda t: (t.values[2], -t.values[1], -t.values[0], t.number))
    if not unique:
        return best
    out, seen = [], set()
    for t in sorted(best, key=lambda t: t.number):
        plan = t.user_attrs.get("plan") or {}
        key = json.dumps([plan.get("assignments"), t.params.get("quantizer")], sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return sorted(out, key=lambda t: (t.values[2], -t.values[1], -t.values[0], t.number))


def check_existing(run, *, storage: str | None, study_name: str | None, granularity: str,
                   direct: bool = False) -> bool:
    """Before any heavy work: reach the storage and, if the study exists, check that it has
    fqopt's directions and belongs to this run. Returns whether the study exists."""
    url = storage or _storage.default_storage_url(run.path)
    name = study_name or default_study_name(run.model_name, granularity, direct)
    store = _storage.open_storage(url, heartbeat=False)
    try:
        study = optuna.load_study(study_name=name, storage=store)
    except KeyError:
        return False
    _storage.check_directions(study, name)
    attrs = study.user_attrs
    if _storage.ATTR_IDENTITY in attrs:
        _storage.check_identity(attrs, run_identity(run), {}, name, f"run {run.path}")
    return True


def load_study(run_or_dir, *, storage: str | None = None, study_name: str | None = None):
    """Open an existing fqopt study of a run (no sampler state; for ``show`` and ``report``).

    With no ``study_name``, the run's storage must hold exactly one fqopt study, or the default
    name for the run's model is used.
    """
    run = run_or_dir if isinstance(run_or_dir, Run) else Run.open(run_or_dir)
    url = storage or _storage.default_storage_url(run.path)
    if storage is None and not run.study_path.is_file():
        raise UserError(f"run {run.path} has no search yet ({run.study_path} is missing); run "
                        f"`fqopt search --run {run.path}` first")
    store = _storage.open_storage(url, heartbeat=False)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage=store)]
    if study_name is None:
        ours = [n for n in names if n.startswith(f"fqopt-{run.model_name}-")]
        if len(ours) == 1:
            study_name = ours[0]
        elif not ours:
            raise UserError(f"storage {_storage.masked_url(url)} has no fqopt study of model "
                            f"{run.model_name!r} (studies: {', '.join(names) or 'none'})")
        else:
            raise UserError(f"storage {_storage.masked_url(url)} holds several studies of "
                            f"{run.model_name!r} ({', '.join(ours)}); name one with --study")
    if study_name not in names:
        raise UserError(f"storage {_storage.masked_url(url)} has no study {study_name!r} "
                        f"(studies: {', '.join(names) or 'none'})")
    study = optuna.load_study(study_name=study_name, storage=store)
    _storage.check_directions(study, study_name)
    _storage.check_identity(study.user_attrs, run_identity(run),
                            study.user_attrs.get(_storage.ATTR_SETTINGS) or {}, study_name,
                            f"run {run.path}")
    return study
