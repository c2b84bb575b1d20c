"""``fqopt search`` with no arguments: the whole pipeline on a run folder (DESIGN.md §3).

Stages, each skipped when its output is already there and current:

1. ``train``: the FP baseline, when the run has no trained model (or an unfinished training);
2. ``profile``: one sensitivity table per method, cached in the run folder (``sensitivity.npz``
   for ``fisher`` as ``fqopt profile`` writes it, ``tables/<method>-<granularity>.npz`` for the
   others); a table older than ``model.pt`` is profiled again;
3. ``search``: :func:`fqopt.search.run` (resumes the study);
4. ``test``: the Pareto plans, the seed baselines and FP32 re-evaluated on the **test** split
   (the search never sees it); ``plans/pareto-XX.json`` and ``reports/search_test.json``;
5. ``refine``: BAQ on the top Pareto plans (``fqopt.baq.refine``), when available;
6. ``report``: ``reports/report.html`` and PNG figures.

Progress goes through ``callback(stage, done, total, **info)``; nothing is printed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from fqopt.errors import UserError

RESULTS_SCHEMA = "fqopt.search-results/1"
RESULTS_FILE = "search_test.json"
DEFAULT_CALIB = 1024
DEFAULT_BITS = (2, 3, 4, 6, 8)
#: the acceptance figure of the README: plans at or below this many average bits ...
CHECK_BITS = 4.5
#: ... against uniform at this many bits
CHECK_UNIFORM = 4
#: FairQuant-style uniform baselines (every layer, pins ignored) evaluated beside the study
UNIFORM_ALL_LAYERS = (2, 3, 4, 8)


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


@dataclass
class PipelineResult:
    run: object
    study: object
    results: dict | None
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
    from fqopt.evaluation import evaluate
    from fqopt.runs import Run
    from fqopt.training import TrainConfig, read_train_state, train

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

    train(run, config, callback=train_cb)
    rep = evaluate(run.model(), run.dataset(), "test")
    run.reports_dir.mkdir(parents=True, exist_ok=True)
    rep.save(run.reports_dir / "fp_test.json")
    return run, True


# --------------------------------------------------------------------------- 2. profile
def table_path(run, method: str, granularity: str) -> Path:
    return run.path / "tables" / f"{method}-{granularity}.npz"


def _table_matches(table, run, method, granularity, bits) -> bool:
    meta = table.meta or {}
    return (meta.get("method") == method and meta.get("granularity") == granularity
            and meta.get("model") == run.model_name
            and [int(b) for b in table.bits] == list(bits)
            and meta.get("quantizer", "maxabs") == "maxabs")


def ensure_tables(run, methods, granularity: str, *, bits=DEFAULT_BITS, calib=DEFAULT_CALIB,
                  model=None, callback=None) -> tuple[dict, list[str]]:
    """``method -> SensitivityTable`` (cached files reused when current), and the notes."""
    from fqopt.profiling import available_methods, profile
    from fqopt.sensitivity import SensitivityTable

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
                if _table_matches(t, run, method, granularity, bits):
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
                            callback=lambda stage, done, total, **info: _cb(
                                callback, f"profile {method}", done, total, **info))
            found.save(target)
            found.source = str(target)
            notes.append(f"profiled {method} ({granularity}) in {found.meta['seconds']:.1f} s "
                         f"→ {target}")
        tables[method] = found
    return tables, notes


# --------------------------------------------------------------------------- 4. test split
def _trial_record(t, index=None) -> dict:
    from fqopt.search._seeds import ATTR_KIND, ATTR_LABEL, ATTR_SEED

    plan = t.user_attrs.get("plan", {})
    kind = t.user_attrs.get(ATTR_KIND, "sampled")
    params = dict(t.params)
    label = t.user_attrs.get(ATTR_LABEL)
    if label is None:
        if "lambda" in params:
            label = f"{params.get('method')} λ={params['lambda']:.2f} {params.get('quantizer')}"
        else:
            label = f"direct, {params.get('quantizer')}"
    return {"trial": t.number, "index": index, "label": label, "kind": kind,
            "seed": t.user_attrs.get(ATTR_SEED), "params": params,
            "quantizer": params.get("quantizer", "maxabs"),
            "avg_bits": float(t.values[2]), "avg_bits_channel": plan.get("avg_bits_channel"),
            "size_bytes": plan.get("size_bytes"), "objective": plan.get("objective"),
            "search": t.user_attrs.get("report")}


def _plan_bits(trials) -> list[int]:
    bits = set()
    for t in trials:
        bits.update(int(b) for b in t.user_attrs["plan"]["bits"])
    return sorted(bits)


def evaluate_on_test(run, study, *, model=None, callback=None, plans_dir=None) -> dict:
    """Re-evaluate the Pareto plans and every seed baseline on the test split; write
    ``plans/pareto-XX.json``. Returns the results dict (also FP32 on both splits)."""
    from fqopt.plan import AllocationPlan
    from fqopt.search._study import complete_trials, pareto_trials
    from fqopt.apply import resolve_plan
    from fqopt.search._trial import SplitEvaluator, WeightBank, compact_report

    model = model if model is not None else run.model()
    ds = run.dataset()
    plans_dir = Path(plans_dir or run.plans_dir)
    pareto = pareto_trials(study)
    pareto_numbers = {t.number for t in pareto}
    seeds = [t for t in complete_trials(study)
             if t.user_attrs.get("fqopt:seed") and t.number not in pareto_numbers]
    todo = list(pareto) + seeds
    total = len(todo) + 2
    bank = WeightBank(model, _plan_bits(todo)) if todo else None
    test = SplitEvaluator(model, ds, "test", bank=bank)
    search = SplitEvaluator(model, ds, "search")
    fp = {"test": compact_report(test.report()[0]), "search": compact_report(search.report()[0])}
    _cb(callback, "test split", 2, total)
    del search
    records, baselines = [], []
    cache: dict[str, dict] = {}
    plans_dir.mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(todo):
        plan = AllocationPlan.from_dict(t.user_attrs["plan"], source=f"trial {t.number}")
        rec = _trial_record(t)
        from fqopt.search._plans import plan_key

        key = plan_key(plan, rec["quantizer"])
        if key not in cache:
            cache[key] = compact_report(test.report(plan, rec["quantizer"])[0])
        rec["test"] = cache[key]
        if t.number in pareto_numbers:
            idx = len(records)
            rec["index"] = idx
            rec["plan_file"] = f"plans/pareto-{idx:02d}.json"
            plan.quantizer = rec["quantizer"]  # also for trials stored before plans recorded it
            plan.meta.update(trial=t.number, quantizer=rec["quantizer"],
                             search={k: rec["search"][k] for k in ("avg_acc", "worst_acc")},
                             test={k: rec["test"][k] for k in ("avg_acc", "worst_acc")})
            plan.save(plans_dir / f"pareto-{idx:02d}.json")
            records.append(rec)
        if rec["seed"]:
            rec["pareto"] = t.number in pareto_numbers
            baselines.append(dict(rec))
        _cb(callback, "test split", i + 3, total)
    keep = {f"pareto-{i:02d}.json" for i in range(len(records))}
    for stale in plans_dir.glob("pareto-*.json"):
        if stale.name not in keep:
            stale.unlink(missing_ok=True)  # another worker may have removed it
    # FairQuant's uniform baselines quantize every layer, stem and head included; the study's
    # uniform seeds keep the pins of every other plan. Both are reported.
    search_eval = SplitEvaluator(model, ds, "search", bank=bank)
    for b in UNIFORM_ALL_LAYERS:
        plan = resolve_plan(model, int(b))
        rec = {"trial": None, "index": None, "label": f"uniform {b}-bit, all layers",
               "kind": "uniform-all", "seed": f"uniform-all:{b}", "params": {},
               "quantizer": "maxabs", "avg_bits": float(plan.avg_bits),
               "avg_bits_channel": plan.avg_bits_channel, "size_bytes": plan.size_bytes,
               "objective": plan.objective, "pareto": False,
               "search": compact_report(search_eval.report(plan, "maxabs")[0]),
               "test": compact_report(test.report(plan, "maxabs")[0])}
        baselines.append(rec)
    return {"fp32": fp, "pareto": records, "baselines": baselines}


def acceptance_check(results: dict, bits: float = CHECK_BITS, uniform: int = CHECK_UNIFORM
                     ) -> dict:
    """Does a Pareto plan at ≤ ``bits`` average bits beat uniform ``uniform``-bit on test
    ``worst_acc``? (The search chose the plans on the search split.) ``passed`` compares with
    the uniform plan that keeps the pins of every plan in the study (stem and head at 8 bits);
    ``passed_all_layers`` with FairQuant's uniform baseline (every layer at ``uniform`` bits)."""
    def find(key):
        return next((b for b in results.get("baselines", []) if b.get("seed") == key), None)

    uni, uni_all = find(f"uniform:{uniform}"), find(f"uniform-all:{uniform}")
    cands = [p for p in results.get("pareto", []) if p["avg_bits"] <= bits + 1e-9]
    best = max(cands, key=lambda p: p["test"]["worst_acc"], default=None)
    out = {"bits": bits, "uniform_bits": uniform,
           "uniform_test_worst_acc": None if uni is None else uni["test"]["worst_acc"],
           "uniform_avg_bits": None if uni is None else uni["avg_bits"],
           "uniform_all_layers_test_worst_acc": None if uni_all is None else
           uni_all["test"]["worst_acc"],
           "best_plan": None if best is None else {
               "index": best["index"], "trial": best["trial"], "avg_bits": best["avg_bits"],
               "test_worst_acc": best["test"]["worst_acc"],
               "test_avg_acc": best["test"]["avg_acc"]},
           "plans_at_or_below": len(cands)}
    out["passed"] = bool(uni is not None and best is not None
                         and best["test"]["worst_acc"] > uni["test"]["worst_acc"])
    out["passed_all_layers"] = bool(uni_all is not None and best is not None
                                    and best["test"]["worst_acc"] > uni_all["test"]["worst_acc"])
    return out


# --------------------------------------------------------------------------- 5. refine
def refine_plans(run, records: list[dict], top: int, *, seed: int = 0, callback=None,
                 plans_dir=None) -> tuple[list[dict], list[str]]:
    """BAQ on the ``top`` Pareto plans with the best search ``worst_acc`` at most
    :data:`CHECK_BITS` average bits (else overall). Skipped with a note when ``fqopt.baq``
    has no ``refine``.

    Calls ``fqopt.baq.refine(run, plan, budget=plan.avg_bits, quantizer=q, seed=seed,
    callback=cb)`` and reads ``result.plan``, ``result.report_search``, ``result.report_test``
    (or ``result.model``, evaluated here on the test split under ``result.plan``) and
    ``result.checkpoint`` (refined FP weights; with the plan they give the quantized model).
    """
    if top <= 0 or not records:
        return [], []
    try:
        from fqopt.baq import refine
    except ImportError as exc:
        return [], [f"BAQ refinement skipped: fqopt.baq.refine is not available ({exc})"]
    from fqopt.evaluation import evaluate
    from fqopt.plan import AllocationPlan
    from fqopt.search._trial import compact_report

    low = [r for r in records if r["avg_bits"] <= CHECK_BITS + 1e-9] or records
    chosen = sorted(low, key=lambda r: -r["search"]["worst_acc"])[:top]
    plans_dir = Path(plans_dir or run.plans_dir)
    out, notes = [], []
    for i, rec in enumerate(chosen):
        plan = AllocationPlan.load(run.path / rec["plan_file"])
        t0 = time.perf_counter()

        def cb(stage, done, total, **info):
            _cb(callback, f"refine {i + 1}/{len(chosen)}: {stage}", done, total, **info)

        try:
            res = refine(run, plan, budget=plan.avg_bits, quantizer=rec["quantizer"],
                         seed=seed, callback=cb)
        except UserError as exc:  # the search's results stand without this refinement
            notes.append(f"BAQ refinement of {rec['plan_file']} failed: {exc}")
            continue
        new_plan = getattr(res, "plan", None) or plan
        reports = {"search": getattr(res, "report_search", None),
                   "test": getattr(res, "report_test", None)}
        if reports["test"] is None and getattr(res, "model", None) is not None:
            reports["test"] = evaluate(res.model, run.dataset(), "test", plan=new_plan,
                                       quantizer=rec["quantizer"])
        name = f"refined-{rec['index']:02d}.json"
        new_plan.quantizer = rec["quantizer"]
        new_plan.meta.update(refined_from=rec["plan_file"], trial=rec["trial"])
        new_plan.save(plans_dir / name)
        checkpoint = getattr(res, "checkpoint", None)
        out.append({"from_index": rec["index"], "trial": rec["trial"],
                    "label": f"BAQ of pareto-{rec['index']:02d}", "plan_file": f"plans/{name}",
                    "avg_bits": float(new_plan.avg_bits), "quantizer": rec["quantizer"],
                    **{split: None if r is None else (r if isinstance(r, dict)
                                                      else compact_report(r))
                       for split, r in reports.items()},
                    "checkpoint": None if checkpoint is None else str(checkpoint),
                    "seconds": time.perf_counter() - t0})
    return out, notes


# --------------------------------------------------------------------------- the pipeline
def precheck(run_dir, *, storage=None, study_name=None, granularity="channel",
             direct: bool = False, force: bool = False) -> None:
    """Fail fast, before training or profiling: an unreachable storage, or an existing study
    with other directions or of another run, is a UserError."""
    from fqopt.runs import Run
    from fqopt.search._storage import open_storage
    from fqopt.search._study import check_existing

    if direct:
        granularity = "layer"
    existing = Run.open(run_dir) if (Path(run_dir) / "config.json").is_file() else None
    if existing is not None and existing.has_model() and not force:
        check_existing(existing, storage=storage, study_name=study_name,
                       granularity=granularity, direct=direct)
    elif storage is not None:
        open_storage(storage, heartbeat=False)


def run_pipeline(run_dir="runs/default", *, n_trials: int | None = None,
                 storage: str | None = None, study_name: str | None = None,
                 sampler: str = "nsga2", seed: int = 0, granularity: str = "channel",
                 methods=("fisher", "gradient", "grape"), budget_range=(2.5, 7.0),
                 quantizers=("maxabs", "mse"), direct: bool = False, refine_top: int = 1,
                 report: bool = True, timeout: float | None = None, force: bool = False,
                 train: TrainOptions | None = None, calib: int = DEFAULT_CALIB,
                 callback=None) -> PipelineResult:
    """Train (if needed), profile, search, re-evaluate on test, refine and report.

    ``n_trials`` defaults to :data:`fqopt.search._study.DEFAULT_TRIALS`; ``timeout`` (seconds)
    bounds the search stage. ``force`` deletes the study (not the trained model or the tables)
    and starts the search over. Returns a :class:`PipelineResult`.
    """
    from fqopt._io import write_json
    from fqopt.search._space import SearchSpace
    from fqopt.search._storage import default_storage_url, masked_url
    from fqopt.search._study import DEFAULT_TRIALS, count_states
    from fqopt.search._study import run as run_search

    n_trials = DEFAULT_TRIALS if n_trials is None else int(n_trials)
    if direct and granularity != "layer":
        granularity = "layer"  # direct mode chooses per-layer bits
    stages: dict[str, float] = {}
    notes: list[str] = []

    precheck(run_dir, storage=storage, study_name=study_name, granularity=granularity,
             direct=direct, force=force)

    t0 = time.perf_counter()
    run, trained = ensure_trained(run_dir, train or TrainOptions(seed=seed), callback=callback)
    stages["train"] = time.perf_counter() - t0
    if trained:
        notes.append(f"trained {run.model_name} in {stages['train']:.0f} s")

    t0 = time.perf_counter()
    model = run.model()
    tables, more = ensure_tables(run, list(methods), granularity, calib=calib, model=model,
                                 callback=callback)
    notes += more
    stages["profile"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    space = SearchSpace(budget_range=tuple(budget_range), methods=tuple(methods),
                        quantizers=tuple(quantizers))
    study = run_search(run, tables, n_trials=n_trials, storage=storage, study_name=study_name,
                       sampler=sampler, seed=seed, space=space, direct=direct, timeout=timeout,
                       force=force, model=model, callback=callback)
    stages["search"] = time.perf_counter() - t0
    counts = count_states(study)
    if counts["complete"] < n_trials:
        notes.append(f"the study has {counts['complete']} of {n_trials} complete trials "
                     "(timeout); run the same command again to finish it")

    t0 = time.perf_counter()
    tested = evaluate_on_test(run, study, model=model, callback=callback)
    stages["test"] = time.perf_counter() - t0

    ds = run.dataset()
    results = {
        "schema": RESULTS_SCHEMA,
        "study": {"name": study.study_name,
                  "storage": masked_url(storage or default_storage_url(run.path)),
                  "n_trials": n_trials, "states": counts, "sampler": sampler, "seed": seed,
                  "granularity": granularity, "direct": bool(direct),
                  "methods": list(methods), "budget_range": list(budget_range)},
        "run": {"path": str(run.path), "model": run.model_name,
                "dataset": run.config["dataset"], "image_size": run.image_size,
                "num_classes": run.num_classes, "groups": list(ds.group_names),
                "splits": {s: int(len(ds.split(s))) for s in ("train", "search", "test")}},
        **tested, "refined": [], "notes": notes,
    }
    results["check"] = acceptance_check(results)
    results["stages"] = dict(stages)
    run.reports_dir.mkdir(parents=True, exist_ok=True)
    results_path = run.reports_dir / RESULTS_FILE
    write_json(results_path, results)  # written now: an interrupted refinement keeps it

    t0 = time.perf_counter()
    refined, more = refine_plans(run, results["pareto"], refine_top, seed=seed,
                                 callback=callback)
    notes += more
    stages["refine"] = time.perf_counter() - t0
    results.update(refined=refined, notes=notes, stages=dict(stages))
    write_json(results_path, results)

    report_path = None
    if report:
        from fqopt.search._report import write_report

        t0 = time.perf_counter()
        report_path = write_report(run, study, results, force=True, callback=callback)
        stages["report"] = time.perf_counter() - t0
        results["stages"] = dict(stages)
        write_json(results_path, results)
    return PipelineResult(run=run, study=study, results=results, results_path=results_path,
                          report_path=report_path, stages=stages, notes=notes)
