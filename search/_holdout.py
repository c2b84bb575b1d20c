"""Stage 4 of ``fqopt search``: the Pareto plans, the seed baselines and FP32 re-evaluated on the
**test** split (the search never saw it), with bootstrap intervals and per-image predictions;
the plan files ``plans/pareto-NN-<bits>b-<what>.json``; the README's acceptance check.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

from fqopt import mct
from fqopt.apply import resolve_plan
from fqopt.data import iter_batches
from fqopt.plan import AllocationPlan
from fqopt.search._plans import plan_key
from fqopt.search._results import AcceptanceCheck, PlanRecord, SearchResults, SplitFigures
from fqopt.search._seeds import ATTR_SEED, DEFAULT_UNIFORM
from fqopt.search._study import complete_trials, pareto_trials
from fqopt.search._trial import ATTR_PLAN, SplitEvaluator, WeightBank, compact_report
from fqopt.search._verdict import Predictions
from fqopt.units import discover_units, within_budget

#: the acceptance figure of the README: plans at or below this many average bits ...
CHECK_BITS = 4.5
#: ... against uniform at this many bits
CHECK_UNIFORM = 4
#: FairQuant-style uniform baselines (every layer, pins ignored) evaluated beside the study
UNIFORM_ALL_LAYERS = (2, 3, 4, 8)


def _plan_bits(trials) -> list[int]:
    bits = set()
    for t in trials:
        bits.update(int(b) for b in t.user_attrs[ATTR_PLAN]["bits"])
    return sorted(bits)


#: bootstrap resamples of every test-split report (intervals on each group figure)
TEST_BOOTSTRAP = 1000


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", str(text).lower()).strip("-")


def plan_file_name(rec: PlanRecord, index: int) -> str:
    """``pareto-03-3.42b-fisher-l0.80-mse.json``: index, average bits and what the plan is
    (its configuration, or the baseline it reproduces) and quantizer."""
    kind, params, q = rec.kind, rec.params, rec.quantizer
    seed = str(rec.seed or "")
    if kind == "uniform":
        what = f"uniform{seed.split(':')[-1]}"
    elif kind == "ladder":
        what = f"worst-{params.get('method')}"
    elif kind == "fairquant":
        what = seed.split("@")[0].replace("fairquant:", "fairquant-")
    elif kind == "hawq":
        what = "hawq-mean"
    elif "lambda" in params:
        what = f"{params.get('method')}-l{params['lambda']:.2f}"
    else:
        what = "direct"
    return f"pareto-{index:02d}-{rec.avg_bits:.2f}b-{_slug(what)}-{q}.json"


def evaluate_on_test(run, study, *, model=None, callback=None, plans_dir=None,
                     with_predictions: bool = False, mct_budget: float | None = None,
                     notes: list | None = None):
    """Re-evaluate the Pareto plans and every seed baseline on the test split (with bootstrap
    intervals); write ``plans/pareto-NN-<bits>b-<what>.json``. Returns a
    :class:`SearchResults` holding ``fp32`` (both splits), ``pareto`` and ``baselines``.
    Uniform plans outside the study's budget range, and FairQuant's uniform baselines (every
    layer), are evaluated here beside the study.
    With ``with_predictions``, returns ``(results, Predictions)``: every record's per-image
    test predictions (each record names its own in ``pred``), for paired comparisons.
    ``mct_budget`` (average bits): also Sony MCT's mixed precision at that weights memory
    (weights only, :mod:`fqopt.mct`), a baseline of kind ``mct`` — when MCT is installed; why
    it is missing goes into ``notes``."""
    model = model if model is not None else run.model()
    ds = run.dataset()
    plans_dir = Path(plans_dir or run.plans_dir)
    pareto = pareto_trials(study)
    pareto_numbers = {t.number for t in pareto}
    seeds = [t for t in complete_trials(study)
             if t.user_attrs.get(ATTR_SEED) and t.number not in pareto_numbers]
    todo = list(pareto) + seeds
    in_study = {t.user_attrs.get(ATTR_SEED) for t in complete_trials(study)}
    beside = [b for b in DEFAULT_UNIFORM if f"uniform:{b}" not in in_study]
    total = 2 + len(todo) + len(beside) + len(UNIFORM_ALL_LAYERS)
    step = [0]

    def tick(what):
        step[0] += 1
        if callback is not None:
            callback("test split", step[0], total, plan=what)

    bank = WeightBank(model, _plan_bits(todo)) if todo else None
    test = SplitEvaluator(model, ds, "test", bank=bank)
    predictions = Predictions(test.y.numpy(), test.g.numpy(), ds.group_names)
    fp_test = test.report(bootstrap=TEST_BOOTSTRAP)[0]
    predictions.add("fp32", test.last_predictions)
    tick("FP32 test")
    # one evaluator of the search split (loaded once) for FP32 and every plan beside the study
    search_eval = SplitEvaluator(model, ds, "search", bank=bank)
    fp = {"test": compact_report(fp_test), "search": compact_report(search_eval.report()[0])}
    fp["test"]["pred"] = "fp32"
    tick("FP32 search")
    records, baselines = [], []
    cache: dict[str, tuple[dict, str]] = {}
    plans_dir.mkdir(parents=True, exist_ok=True)
    for t in todo:
        plan = AllocationPlan.from_dict(t.user_attrs[ATTR_PLAN], source=f"trial {t.number}")
        rec = PlanRecord.from_trial(t)
        key = plan_key(plan, rec.quantizer)
        if key not in cache:
            rep = compact_report(test.report(plan, rec.quantizer, bootstrap=TEST_BOOTSTRAP)[0])
            predictions.add(key, test.last_predictions)
            cache[key] = (rep, key)
        rec.test, rec.pred = SplitFigures(cache[key][0]), cache[key][1]
        if t.number in pareto_numbers:
            idx = len(records)
            rec.index = idx
            name = plan_file_name(rec, idx)
            rec.plan_file = f"plans/{name}"
            plan.quantizer = rec.quantizer  # also for trials stored before plans recorded it
            plan.meta.update(trial=t.number, quantizer=rec.quantizer, label=rec.label,
                             search={k: rec.search.get(k) for k in ("avg_acc", "worst_acc")},
                             test={k: rec.test.get(k) for k in ("avg_acc", "worst_acc")})
            plan.save(plans_dir / name)
            records.append(rec)
        if rec.seed:
            rec.pareto = t.number in pareto_numbers
            baselines.append(dataclasses.replace(rec))
        tick(rec.label)
    keep = {Path(r.plan_file).name for r in records}
    for stale in plans_dir.glob("pareto-*.json"):
        if stale.name not in keep:
            stale.unlink(missing_ok=True)  # another worker may have removed it
    # FairQuant's uniform baselines quantize every layer, stem and head included; the study's
    # uniform seeds keep the pins of every other plan. Both are reported; uniform plans
    # outside the sampled budget range are not trials (see _seeds) and are evaluated here.
    extra = []
    if beside:
        units = discover_units(model, "layer")
        for b in beside:
            extra.append((AllocationPlan.uniform(units, int(b), model=run.model_name),
                          f"uniform {b}-bit", "uniform", f"uniform:{b}"))
    for b in UNIFORM_ALL_LAYERS:
        extra.append((resolve_plan(model, int(b)), f"uniform {b}-bit, all layers",
                      "uniform-all", f"uniform-all:{b}"))
    for plan, label, kind, seed_key in extra:
        key = plan_key(plan, "maxabs")
        rep = compact_report(test.report(plan, "maxabs", bootstrap=TEST_BOOTSTRAP)[0])
        predictions.add(key, test.last_predictions)
        baselines.append(PlanRecord(
            trial=None, index=None, label=label, kind=kind, seed=seed_key, params={},
            quantizer="maxabs", avg_bits=float(plan.avg_bits),
            avg_bits_channel=plan.avg_bits_channel, size_bytes=plan.size_bytes,
            objective=plan.objective, pareto=False, beside_study=True,
            search=SplitFigures(compact_report(search_eval.report(plan, "maxabs")[0])),
            test=SplitFigures(rep), pred=key))
        tick(label)
    if mct_budget is not None:
        rec = _mct_baseline(run, model, ds, float(mct_budget), test, search_eval, predictions,
                            notes if notes is not None else [])
        if rec is not None:
            baselines.append(rec)
    out = SearchResults(fp32={k: SplitFigures(v) for k, v in fp.items()}, pareto=records,
                        baselines=baselines)
    return (out, predictions) if with_predictions else out


#: representative train images MCT calibrates and scores its mixed precision with
MCT_IMAGES = 512


def _mct_baseline(run, model, ds, budget, test, search_eval, predictions, notes):
    """Sony MCT's weights-only mixed precision at ``budget`` average bits, evaluated on both
    splits (None, with a note, when MCT is missing or cannot quantize the model)."""
    if not mct.available():
        notes.append("MCT baseline skipped: model-compression-toolkit is not installed "
                     "(pip install 'fqopt[bench]')")
        return None
    idx = np.random.default_rng([run.seed, 512]).permutation(ds.split("train"))[:MCT_IMAGES]
    batches = [x for x, _, _ in iter_batches(ds, idx, 64)]
    try:
        res = mct.mct_quantize(model, batches, avg_bits=budget, activations=False)
    except mct.MCTFailed as exc:
        notes.append(f"MCT baseline skipped: {exc}")
        return None
    key = f"mct:{budget:g}"
    rep = compact_report(test.report(model=res.model, bootstrap=TEST_BOOTSTRAP)[0])
    predictions.add(key, test.last_predictions)
    label = f"Sony MCT mixed precision, weights only @ {budget:g} bits"
    return PlanRecord(
        trial=None, index=None, label=label, kind="mct", seed=key, params={},
        quantizer="mct", avg_bits=float(res.avg_bits), objective="mct:mixed-precision",
        pareto=False, beside_study=True,
        search=SplitFigures(compact_report(search_eval.report(model=res.model)[0])),
        test=SplitFigures(rep), pred=key,
        extra={"mct": {"seconds": round(res.seconds, 1), **res.info}})


def acceptance_check(results: SearchResults, bits: float = CHECK_BITS,
                     uniform: int = CHECK_UNIFORM) -> AcceptanceCheck:
    """Does a Pareto plan at ≤ ``bits`` average bits beat uniform ``uniform``-bit on test
    ``worst_acc``? (The search chose the plans on the search split.) ``passed`` compares with
    the uniform plan that keeps the pins of every plan in the study (stem and head at 8 bits);
    ``passed_all_layers`` with FairQuant's uniform baseline (every layer at ``uniform`` bits)."""
    uni = results.baseline(f"uniform:{uniform}")
    uni_all = results.baseline(f"uniform-all:{uniform}")
    cands = [p for p in results.pareto if within_budget(p.avg_bits, bits)]
    best = max(cands, key=lambda p: p.test.worst_acc, default=None)
    return AcceptanceCheck(
        bits=bits, uniform_bits=uniform,
        uniform_test_worst_acc=None if uni is None else uni.test.worst_acc,
        uniform_avg_bits=None if uni is None else uni.avg_bits,
        uniform_all_layers_test_worst_acc=None if uni_all is None else uni_all.test.worst_acc,
        best_plan=None if best is None else {
            "index": best.index, "trial": best.trial, "avg_bits": best.avg_bits,
            "test_worst_acc": best.test.worst_acc, "test_avg_acc": best.test.avg_acc},
        plans_at_or_below=len(cands),
        passed=bool(uni is not None and best is not None
                    and best.test.worst_acc > uni.test.worst_acc),
        passed_all_layers=bool(uni_all is not None and best is not None
                               and best.test.worst_acc > uni_all.test.worst_acc))
