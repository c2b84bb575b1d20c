"""``fqopt search`` with no arguments: the whole pipeline on a run folder (docs/design.md §3).

Stages, each skipped when its output is already there and current:

1. ``train``: the FP baseline, when the run has no trained model (or an unfinished training);
2. ``profile``: one sensitivity table per method, cached in the run folder (``sensitivity.npz``
   for ``fisher`` as ``fqopt profile`` writes it, ``tables/<method>-<granularity>.npz`` for the
   others); a table older than ``model.pt`` is profiled again;
3. ``search``: :func:`fqopt.search.run` (resumes the study);
4. ``test``: the Pareto plans, the seed baselines and FP32 re-evaluated on the **test** split
   (the search never sees it), with bootstrap intervals; ``plans/pareto-NN-<bits>b-<what>.json``
   and ``reports/search_test.json`` (``_holdout``);
5. ``refine``: fixed-bit fine-tuning (default) or BAQ of the recommended Pareto plan
   (``fqopt.baq.refine``, :data:`REFINE_MODES`);
6. ``report``: ``reports/report.html`` and PNG figures (``_report``).

Progress goes through ``callback(stage, done, total, **info)``, stage headers through
``callback("header", k, n, title=..., detail=...)`` (and ``finished=seconds``); nothing is
printed. The test stage keeps every plan's per-image test predictions
(``reports/test_predictions.npz``) for the paired comparisons of the summary
(``results.summary``: the recommended plan at ``budget`` against the best baseline); the
results travel as :class:`fqopt.search._results.SearchResults`.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from optuna.artifacts import upload_artifact

from fqopt._io import write_json
from fqopt.baq import refine
from fqopt.errors import UserError
from fqopt.evaluation import evaluate
from fqopt.plan import AllocationPlan
from fqopt.profiling import available_methods, profile
from fqopt.runs import Run
from fqopt.search._config import DEFAULT_CALIB, REFINE_MODES, PipelineConfig, TrainOptions
from fqopt.search._holdout import CHECK_BITS, TEST_BOOTSTRAP, acceptance_check, evaluate_on_test
from fqopt.search._plans import pinned_min_budget, plan_key
from fqopt.search._report import write_report
from fqopt.search._results import (RESULTS_FILE, PlanRecord, RefinedRecord, RunInfo,
                                   SearchResults, SplitFigures, StudyInfo)
from fqopt.search._space import SearchSpace
from fqopt.search._storage import default_storage_url, masked_url, open_storage
from fqopt.search._study import ARTIFACT_DIR, artifact_store, check_existing, count_states
from fqopt.search._study import run as run_search
from fqopt.search._trial import SplitEvaluator, compact_report
from fqopt.search._verdict import PREDICTIONS_FILE, dashboard_command, summarize
from fqopt.sensitivity import SensitivityTable
from fqopt.training import TrainConfig, read_train_state, train
from fqopt.units import within_budget

DEFAULT_BITS = (2, 3, 4, 6, 8)


@dataclass
class PipelineResult:
    run: object
    study: object
    results: SearchResults | None
    results_path: Path | None
    report_path: Path | None
    stages: dict[str, float]
    notes: list[str]


def _cb(callback, stage, done, total, **info):
    if callback is not None:
        callback(stage, done, total, **info)


# --------------------------------------------------------------------------- 1. train
def ensure_trained(run_dir, options: TrainOptions, *, callback=None) -> tuple[object, bool]:
    """Open the run, creating and training it when it has no (finished) model.

    Returns ``(run, trained_now)``. A run folder that holds another model or dataset than
    asked for explicitly is a UserError.
    """
    path = Path(run_dir)
    if (path / "config.json").is_file():
        run = Run.open(path)
        if options.model is not None and options.model != run.model_name:
            raise UserError(f"run folder {path} holds model {run.model_name!r}, not "
                            f"{options.model!r}; use another --run or drop --model")
        if options.dataset is not None and options.dataset != run.config["dataset"]["name"]:
            raise UserError(f"run folder {path} holds dataset "
                            f"{run.config['dataset']['name']!r}, not {options.dataset!r}; use "
                            "another --run or drop --dataset")
        unfinished = False
        if run.train_state_path.is_file():
            unfinished = not bool(read_train_state(run.train_state_path)["state"].get("finished"))
        if run.has_model() and not unfinished:
            return run, False
        config = TrainConfig.from_dict(run.config.get("train") or {"seed": run.seed})
    else:
        dataset = options.dataset or "synthderm"
        dataset_options = dict(options.data_options)
        if options.samples is not None:
            if dataset != "synthderm":
                raise UserError("--samples applies to the synthderm dataset only")
            dataset_options["n"] = int(options.samples)
        run = Run.create(path, dataset=dataset, dataset_options=dataset_options,
                         model=options.model, image_size=options.image_size, seed=options.seed)
        config = TrainConfig(seed=options.seed)
    if options.epochs is not None:
        config = TrainConfig.from_dict({**config.__dict__, "epochs": int(options.epochs)})

    def train_cb(stage, done, total, **info):
        if stage == "epochs":
            _cb(callback, "train", done, total, **info)
        else:  # "epoch k/N": batches of the current epoch
            _cb(callback, "train batches", done, total, epoch=stage.split()[-1], **info)

    # the dataset is generated or read before the first batch (minutes for the default)
    _cb(callback, "train: preparing the dataset and the model", 0, None)
    train(run, config, callback=train_cb)
    rep = evaluate(run.model(), run.dataset(), "test", callback=lambda stage, done, total, **i:
                   _cb(callback, "train: FP32 on the test split", done, total))
    run.reports_dir.mkdir(parents=True, exist_ok=True)
    rep.save(run.reports_dir / "fp_test.json")
    return run, True


# --------------------------------------------------------------------------- 2. profile
def table_path(run, method: str, granularity: str) -> Path:
    return run.path / "tables" / f"{method}-{granularity}.npz"


def _table_matches(table, run, method, granularity, bits, quantizer) -> bool:
    meta = table.meta or {}
    return (meta.get("method") == method and meta.get("granularity") == granularity
            and meta.get("model") == run.model_name
            and [int(b) for b in table.bits] == list(bits)
            and meta.get("quantizer", "maxabs") == quantizer)


def table_quantizer(quantizers) -> str:
    """The quantizer a search's tables are profiled with: ``mse`` when the trials may use it
    (fqopt's default), else the first of ``quantizers``."""
    quantizers = list(quantizers)
    return "mse" if "mse" in quantizers or not quantizers else quantizers[0]


def ensure_tables(run, methods, granularity: str, *, bits=DEFAULT_BITS, calib=DEFAULT_CALIB,
                  model=None, quantizer: str = "mse", callback=None
                  ) -> tuple[dict, list[str]]:
    """``method -> SensitivityTable`` profiled with ``quantizer`` (cached files reused when
    current), and the notes."""
    unknown = [m for m in methods if m not in available_methods()]
    if unknown:
        raise UserError(f"--methods names unknown sensitivity method(s) {unknown}; expected "
                        f"some of {', '.join(available_methods())}")
    model_time = run.checkpoint_path.stat().st_mtime
    tables, notes = {}, []
    for method in methods:
        candidates = [table_path(run, method, granularity)]
        if method == "fisher":
            candidates.insert(0, run.table_path)
        found = None
        for p in candidates:
            if p.is_file() and p.stat().st_mtime >= model_time:
                t = SensitivityTable.load(p)
                if _table_matches(t, run, method, granularity, bits, quantizer):
                    found = t
                    break
        if found is None:
            if model is None:
                model = run.model()
            ds = run.dataset()
            target = candidates[-1]
            if method == "fisher" and not run.table_path.exists():
                target = run.table_path  # what `fqopt profile` would write
            found = profile(model, ds, "train", method=method, granularity=granularity,
                            bits=bits, calib=calib, seed=run.seed, model_name=run.model_name,
                            quantizer=quantizer,
                            callback=lambda stage, done, total, **info: _cb(
                                callback, f"profile {method}", done, total, **info))
            found.save(target)
            found.source = str(target)
            notes.append(f"profiled {method} ({granularity}) in {found.meta['seconds']:.1f} s "
                         f"→ {target}")
        tables[method] = found
    return tables, notes


# --------------------------------------------------------------------------- 5. refine
def refine_plans(run, records: list[PlanRecord], top: int, *, seed: int = 0, callback=None,
                 plans_dir=None, predictions=None, budget: float = CHECK_BITS,
                 mode: str = "finetune") -> tuple[list[RefinedRecord], list[str]]:
    """Refine the ``top`` Pareto plans with the best search ``worst_acc`` (then ``avg_acc``,
    then fewer bits) at most ``budget`` average bits (else overall): the first is the plan the
    summary recommends at that budget. ``mode``: a key of :data:`REFINE_MODES` (fixed-bit
    fine-tuning, or BAQ).

    Calls ``fqopt.baq.refine(run, plan, budget=plan.avg_bits, quantizer=q, seed=seed,
    evaluate=False, callback=cb, **REFINE_MODES[mode])`` (``q``: the mode's ``quantizer``, else
    the plan's; the refined plan records it), then evaluates ``result.checkpoint``
    (refined FP weights)
    under ``result.plan`` on the search and test splits here (test with bootstrap intervals;
    its predictions go into ``predictions`` when given, for the paired comparison with the
    plan it started from).
    """
    if top <= 0 or not records:
        return [], []
    low = [r for r in records if within_budget(r.avg_bits, budget)] or records
    chosen = sorted(low, key=lambda r: (-r.search.worst_acc, -r.search.avg_acc,
                                        r.avg_bits))[:top]
    plans_dir = Path(plans_dir or run.plans_dir)
    out, notes = [], []
    phases = {"refine": "learn bits", "fine-tune": "fine-tune"}
    for i, rec in enumerate(chosen):
        plan = AllocationPlan.load(run.path / rec.plan_file)
        t0 = time.perf_counter()
        name = f"pareto-{rec.index:02d}"
        prefix = f"refine {name}" + (f" ({i + 1}/{len(chosen)})" if len(chosen) > 1 else "")

        def cb(stage, done, total, _prefix=prefix, **info):
            # BAQ's stages are "refine k/N" (bits learn), "fine-tune k/N" and "evaluate"
            word, _, epoch = stage.partition(" ")
            if word in phases and "/" in epoch:
                _cb(callback, f"{_prefix}: {phases[word]}", done, total, epoch=epoch, **info)
            else:
                _cb(callback, f"{_prefix}: {stage}", done, total, **info)

        settings = dict(REFINE_MODES[mode])
        # the mode's quantizer trains and deploys the refined model; else the plan's own
        quantizer = settings.pop("quantizer", None) or rec.quantizer
        try:
            res = refine(run, plan, budget=plan.avg_bits, quantizer=quantizer,
                         seed=seed, evaluate=False, callback=cb, **settings)
        except UserError as exc:  # the search's results stand without this refinement
            notes.append(f"refinement ({mode}) of {rec.plan_file} failed: {exc}")
            continue
        new_plan = getattr(res, "plan", None) or plan
        checkpoint = getattr(res, "checkpoint", None)
        model = run.model()
        if checkpoint is not None:
            model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
        reports, pred_key = {}, None
        for split in ("search", "test"):
            _cb(callback, f"{prefix}: evaluate", 0 if split == "search" else 1, 2, split=split)
            ev = SplitEvaluator(model, run.dataset(), split)
            reports[split] = SplitFigures(compact_report(ev.report(
                new_plan, quantizer, bootstrap=TEST_BOOTSTRAP if split == "test" else 0
            )[0]))
            if split == "test" and predictions is not None:
                pred_key = "refined:" + plan_key(new_plan, quantizer)
                predictions.add(pred_key, ev.last_predictions)
        _cb(callback, f"{prefix}: evaluate", 2, 2)
        fname = f"refined-{rec.index:02d}-{new_plan.avg_bits:.2f}b-{mode}-{quantizer}.json"
        new_plan.quantizer = quantizer
        new_plan.meta.update(refined_from=rec.plan_file, trial=rec.trial,
                             quantizer=quantizer,
                             checkpoint=None if checkpoint is None else str(checkpoint))
        new_plan.save(plans_dir / fname)
        out.append(RefinedRecord(
            from_index=rec.index, trial=rec.trial,
            label=f"{'fine-tuned' if mode == 'finetune' else 'BAQ of'} {name}", mode=mode,
            plan_file=f"plans/{fname}", avg_bits=float(new_plan.avg_bits),
            quantizer=quantizer, size_bytes=new_plan.size_bytes, search=reports["search"],
            test=reports["test"], pred=pred_key,
            checkpoint=None if checkpoint is None else str(checkpoint),
            seconds=time.perf_counter() - t0))
    return out, notes


# --------------------------------------------------------------------------- the pipeline
def precheck(run_dir, *, storage=None, study_name=None, granularity="channel",
             direct: bool = False, force: bool = False) -> None:
    """Fail fast, before training or profiling: an unreachable storage, or an existing study
    with other directions or of another run, is a UserError."""
    if direct:
        granularity = "layer"
    existing = Run.open(run_dir) if (Path(run_dir) / "config.json").is_file() else None
    if existing is not None and existing.has_model() and not force:
        check_existing(existing, storage=storage, study_name=study_name,
                       granularity=granularity, direct=direct)
    elif storage is not None:
        open_storage(storage, heartbeat=False)


class _Headers:
    """Stage headers through the progress callback: ``callback("header", k, n, title=...,
    detail=...)`` when stage k of n starts and ``finished=seconds`` when it ends (the CLI
    prints them; a library caller may ignore them)."""

    NAMES = ("train", "profile", "search", "test", "refine", "report")

    def __init__(self, callback, stages: dict):
        self.callback, self.stages = callback, stages

    @contextlib.contextmanager
    def __call__(self, name: str, detail: str = ""):
        k = self.NAMES.index(name) + 1
        _cb(self.callback, "header", k, len(self.NAMES), title=name, detail=detail)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = time.perf_counter() - t0
            _cb(self.callback, "header", k, len(self.NAMES), title=name,
                finished=self.stages[name])


def run_pipeline(run_dir="runs/default", config: PipelineConfig | None = None, *,
                 callback=None, **overrides) -> PipelineResult:
    """Train (if needed), profile, search, re-evaluate on test, refine and report.

    ``config``: a :class:`~fqopt.search._config.PipelineConfig` (default: its defaults);
    ``overrides``: any of its fields as keywords (``n_trials``, ``storage``, ``methods``,
    ``budget_range``, ``refine_mode``, ...), applied on top. ``timeout`` (seconds) bounds the
    search stage. ``force`` deletes the study (not the trained model or the tables) and starts
    the search over. ``budget`` (average bits) is where the summary recommends a plan
    (``results.summary``, see :func:`fqopt.search._verdict.summarize`). ``artifacts``: see
    :func:`fqopt.search.run`; the results, the recommended plan and the report are also stored
    as artifacts of the study. Stage headers and progress go through ``callback``.
    Returns a :class:`PipelineResult`.
    """
    c = PipelineConfig.build(config, **overrides)
    # the stages below read the settings as local names
    n_trials, storage, study_name, sampler, seed = (c.n_trials, c.storage, c.study_name,
                                                    c.sampler, c.seed)
    granularity, methods, budget_range, quantizers = (c.granularity, c.methods, c.budget_range,
                                                      c.quantizers)
    direct, refine_top, refine_mode, budget = c.direct, c.refine_top, c.refine_mode, c.budget
    timeout, force, artifacts = c.timeout, c.force, c.artifacts
    stages: dict[str, float] = {}
    notes: list[str] = []
    header = _Headers(callback, stages)

    precheck(run_dir, storage=storage, study_name=study_name, granularity=granularity,
             direct=direct, force=force)

    with header("train", f"FP baseline in {run_dir}"):
        run, trained = ensure_trained(run_dir, c.train or TrainOptions(seed=seed),
                                      callback=callback)
    if trained:
        notes.append(f"trained {run.model_name} in {stages['train']:.0f} s")

    with header("profile", f"{', '.join(methods)} sensitivity, {granularity} granularity"):
        model = run.model()
        tables, more = ensure_tables(run, list(methods), granularity, calib=c.calib, model=model,
                                     quantizer=table_quantizer(quantizers), callback=callback)
    notes += more

    if budget < budget_range[0]:
        # the recommendation is made at `budget`: the study must be able to propose plans there
        notes.append(f"budget range widened to {budget:g}–{budget_range[1]:g} bits to include "
                     f"--budget {budget:g}")
        budget_range = (float(budget), budget_range[1])
    pins_need = pinned_min_budget(tables)
    if pins_need > budget_range[0]:
        notes.append(f"the pinned layers (stem and head at 8 bits) alone need "
                     f"{pins_need:.3f} average bits; plans below that let them go down to 4 "
                     "bits, then lower (recorded in each plan's meta as pins_relaxed)")
    url = storage or default_storage_url(run.path)
    store = artifact_store(run, artifacts)
    with header("search", f"{n_trials} trials, {sampler}, budgets "
                          f"{budget_range[0]:g}–{budget_range[1]:g} bits, {masked_url(url)}"):
        space = SearchSpace(budget_range=tuple(budget_range), methods=tuple(methods),
                            quantizers=tuple(quantizers))
        study = run_search(run, tables, n_trials=n_trials, storage=storage,
                           study_name=study_name, sampler=sampler, seed=seed, space=space,
                           direct=direct, timeout=timeout, force=force, model=model,
                           budget=budget,
                           callback=callback, artifacts=store if store is not None else None)
    counts = count_states(study)
    if counts["complete"] < n_trials:
        notes.append(f"the study has {counts['complete']} of {n_trials} complete trials "
                     "(timeout); run the same command again to finish it")

    with header("test", "Pareto plans and baselines on the test split, with 95 % intervals"):
        tested, predictions = evaluate_on_test(run, study, model=model, callback=callback,
                                               mct_budget=budget, notes=notes,
                                               with_predictions=True)

    ds = run.dataset()
    artifact_dir = (str(run.path / ARTIFACT_DIR) if artifacts is True else
                    str(artifacts) if isinstance(artifacts, (str, os.PathLike)) else None)
    results = tested
    results.study = StudyInfo(
        name=study.study_name, storage=masked_url(url),
        dashboard=dashboard_command(masked_url(url), artifact_dir), artifacts=artifact_dir,
        n_trials=n_trials, states=counts, sampler=sampler, seed=seed, granularity=granularity,
        direct=bool(direct), methods=list(methods), budget_range=list(budget_range))
    results.run = RunInfo(
        path=str(run.path), model=run.model_name, dataset=run.config["dataset"],
        image_size=run.image_size, num_classes=run.num_classes, groups=list(ds.group_names),
        splits={s: int(len(ds.split(s))) for s in ("train", "search", "test")})
    results.notes = notes
    results.check = acceptance_check(results)
    results.summary = summarize(results, predictions, budget=budget, run_path=run.path)
    results.stages = dict(stages)
    run.reports_dir.mkdir(parents=True, exist_ok=True)
    results_path = run.reports_dir / RESULTS_FILE
    # written now: an interrupted refinement keeps it
    write_json(results_path, results.to_dict())
    predictions.save(run.reports_dir / PREDICTIONS_FILE)

    what = "fixed-bit fine-tuning" if refine_mode == "finetune" else "BAQ"
    detail = (f"{what} of the best {refine_top} plan(s) at ≤ {budget:g} bits" if refine_top
              else "skipped (--refine-top 0)")
    with header("refine", detail):
        refined, more = refine_plans(run, results.pareto, refine_top, seed=seed,
                                     callback=callback, predictions=predictions, budget=budget,
                                     mode=refine_mode)
    notes += more
    results.refined, results.notes = refined, notes
    results.summary = summarize(results, predictions, budget=budget, run_path=run.path)
    results.stages = dict(stages)
    write_json(results_path, results.to_dict())
    predictions.save(run.reports_dir / PREDICTIONS_FILE)

    report_path = None
    if c.report:
        with header("report", f"HTML and figures in {run.reports_dir}"):
            report_path = write_report(run, study, results, force=True, callback=callback)
        results.stages = dict(stages)
        write_json(results_path, results.to_dict())
    if store is not None:
        _study_artifacts(store, study, run, results, results_path, report_path, notes)
    return PipelineResult(run=run, study=study, results=results, results_path=results_path,
                          report_path=report_path, stages=stages, notes=notes)


def _study_artifacts(store, study, run, results, results_path, report_path, notes) -> None:
    """The results, the recommended plan and the report as artifacts of the study (shown whole
    by optuna-dashboard); a failure is a note, never the end of a finished search."""
    rec = results.summary.recommended if results.summary else None
    files = [(results_path, "application/json")]
    if rec is not None and rec.plan_file:
        files.append((run.path / rec.plan_file, "application/json"))
    if report_path is not None:
        files.append((report_path, "text/html"))
    try:
        for path, mime in files:
            upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study,
                            mimetype=mime, encoding="utf-8")
    except Exception as exc:  # noqa: BLE001 - the artifacts are a copy of files on disk
        notes.append(f"could not store the study's artifacts: {exc}")
