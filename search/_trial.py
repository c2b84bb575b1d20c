"""One trial: build a plan, apply it in place, evaluate it on the search split.

:class:`SplitEvaluator` keeps one split's images as tensors (decoded once per process) and
evaluates the model under a plan with ``fqopt.apply.quantized`` (weights swapped in place and
restored bit for bit). :class:`TrialObjective` is what ``study.optimize`` calls: it claims a
slot of the study's trial budget (so several workers together run exactly N trials), asks the
trial for its parameters, builds and evaluates the plan, and stores the plan and its
FairnessReport as user attributes. Identical plans (from different parameters) are evaluated once per process.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import optuna
import torch
from optuna.artifacts import upload_artifact
from optuna.trial import TrialState

from fqopt._io import json_default
from fqopt.apply import quantized
from fqopt.evaluation import report_from_predictions
from fqopt.plan import AllocationPlan
from fqopt.quantizers import fake_quantize
from fqopt.search._plans import build_plan, plan_key
from fqopt.search._seeds import ATTR_BUILDER, ATTR_OPTIONS, ATTR_SEED
from fqopt.units import discover_units, quantizable_layers

#: user attributes of every completed trial
ATTR_PLAN = "plan"
ATTR_REPORT = "report"
ATTR_SECONDS = "seconds"
ATTR_CONSTRAINT = "fqopt:constraint"
ATTR_SKIPPED = "fqopt:skipped"
ATTR_CACHED = "fqopt:cached"
ATTR_WORKER = "fqopt:worker"
#: who ran a trial (several processes or machines may share a study)
WORKER = f"{socket.gethostname()}:{os.getpid()}"


#: the weight bank is used while its fake-quantized copies take at most this many bytes
BANK_LIMIT_BYTES = 1 << 30


class WeightBank:
    """Every quantizable layer's weight fake-quantized at every candidate bit-width, per
    quantizer (computed on first use): applying a plan becomes one indexed copy per layer.

    Quantization is per output channel, so channel c of ``Q(w, bits)`` with per-channel bits
    equals channel c of ``Q(w, bits[c])``: the result is bit-identical to
    :func:`fqopt.apply.quantized` (a test checks it), at a fraction of its cost. Memory: ``K``
    copies of the quantized weights per quantizer used.
    """

    def __init__(self, model, bits):
        self.model = model
        self.bits = [int(b) for b in bits]
        self.modules = dict(quantizable_layers(model))
        self.originals = {n: m.weight.detach().clone() for n, m in self.modules.items()}
        self._banks: dict[str, dict[str, torch.Tensor]] = {}

    @staticmethod
    def fits(model, bits, quantizers=1) -> bool:
        n = sum(m.weight.numel() * m.weight.element_size() for _, m in quantizable_layers(model))
        return n * len(bits) * quantizers <= BANK_LIMIT_BYTES

    def bank(self, quantizer: str) -> dict[str, torch.Tensor]:
        if quantizer not in self._banks:
            with torch.no_grad():
                self._banks[quantizer] = {
                    n: torch.stack([fake_quantize(w, b, quantizer) for b in self.bits])
                    for n, w in self.originals.items()}
        return self._banks[quantizer]

    def covers(self, plan) -> bool:
        return all(b in self.bits for b in plan.bits) and set(plan.assignments) <= set(
            self.modules)

    def apply(self, plan, quantizer: str) -> None:
        """Write the plan's fake-quantized weights into the model (undo with :meth:`restore`)."""
        bank = self.bank(quantizer)
        lookup = np.full(max(self.bits) + 1, -1, dtype=np.int64)
        lookup[self.bits] = np.arange(len(self.bits))
        with torch.no_grad():
            for name, b in plan.layer_bits().items():
                k = lookup[b]
                w = self.modules[name].weight
                stack = bank[name]
                if np.all(k == k[0]):
                    w.copy_(stack[int(k[0])])
                else:
                    idx = torch.as_tensor(k, device=stack.device)
                    w.copy_(stack[idx, torch.arange(len(k), device=stack.device)])

    def restore(self) -> None:
        with torch.no_grad():
            for name, m in self.modules.items():
                m.weight.copy_(self.originals[name])


class SplitEvaluator:
    """Evaluate ``model`` on one split of ``dataset``; the split is loaded once as tensors.

    ``x`` ``[n, 3, H, W]`` float32, ``y``/``g`` ``[n]`` int64, on ``device``.
    """

    def __init__(self, model, dataset, split: str = "search", *, batch_size: int = 256,
                 device=None, bank: WeightBank | None = None):
        self.bank = bank
        self.model = model.eval()
        self.dataset = dataset
        self.split = split
        self.batch_size = int(batch_size)
        self.device = next(model.parameters()).device if device is None else torch.device(device)
        idx = np.asarray(dataset.split(split), dtype=np.int64)
        xs, ys, gs = [], [], []
        for start in range(0, len(idx), 1024):
            x, y, g = dataset.get_batch(idx[start:start + 1024])
            xs.append(x)
            ys.append(y)
            gs.append(g)
        self.x = torch.cat(xs).to(self.device) if xs else torch.zeros(0)
        self.y = torch.cat(ys) if ys else torch.zeros(0, dtype=torch.int64)
        self.g = torch.cat(gs) if gs else torch.zeros(0, dtype=torch.int64)
        # plans are validated against these (layer names and shapes), once per process
        self.units = discover_units(model, "layer", pin="none")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @torch.no_grad()
    def predict(self, model=None) -> dict:
        """Predictions of the evaluator's model, or of ``model`` (another module over the same
        inputs, e.g. a baseline tool's quantized model) on the split."""
        model = self.model if model is None else model.eval()
        device = next(iter(model.parameters()), self.x).device
        probs = []
        for start in range(0, len(self), self.batch_size):
            logits = model(self.x[start:start + self.batch_size].to(device))
            logits = (logits[0] if isinstance(logits, (list, tuple)) else logits).float()
            probs.append(torch.softmax(logits, dim=1).cpu())
        prob = torch.cat(probs).numpy().astype(np.float64)
        return {"y_true": self.y.numpy(), "y_pred": prob.argmax(axis=1),
                "groups": self.g.numpy(), "y_prob": prob}

    def report(self, plan=None, quantizer: str = "maxabs", *, bootstrap: int = 0,
               model=None) -> tuple[object, dict]:
        """``(FairnessReport, seconds)``; ``seconds`` has ``apply``, ``evaluate``, ``restore``.
        ``bootstrap`` > 0 adds the report's percentile intervals; the per-image predicted
        classes stay in ``last_predictions`` ``[n]`` (for paired comparisons). ``model``
        (``plan`` None): evaluate that module instead of the evaluator's own."""
        seconds = {"apply": 0.0, "evaluate": 0.0, "restore": 0.0}
        if model is not None and plan is not None:
            raise ValueError("report: give a plan or another model, not both")
        if plan is None:
            t0 = time.perf_counter()
            pred = self.predict(model)
            seconds["evaluate"] = time.perf_counter() - t0
        elif self.bank is not None and self.bank.covers(plan):
            t0 = time.perf_counter()
            plan.validate(self.units)
            self.bank.apply(plan, quantizer)
            t1 = time.perf_counter()
            try:
                pred = self.predict()
            finally:
                t2 = time.perf_counter()
                self.bank.restore()
                t3 = time.perf_counter()
            seconds.update(apply=t1 - t0, evaluate=t2 - t1, restore=t3 - t2)
        else:
            t0 = time.perf_counter()
            ctx = quantized(self.model, plan, method=quantizer, units=self.units)
            ctx.__enter__()
            t1 = time.perf_counter()
            try:
                pred = self.predict()
            except BaseException as exc:
                ctx.__exit__(type(exc), exc, exc.__traceback__)
                raise
            t2 = time.perf_counter()
            ctx.__exit__(None, None, None)
            t3 = time.perf_counter()
            seconds.update(apply=t1 - t0, evaluate=t2 - t1, restore=t3 - t2)
        t0 = time.perf_counter()
        rep = report_from_predictions(pred, self.dataset, bootstrap=bootstrap)
        self.last_predictions = pred["y_pred"]
        seconds["evaluate"] += time.perf_counter() - t0
        return rep, seconds


def compact_report(report) -> dict:
    """The report's dict without the constant policy text (kept small in trial attributes)."""
    d = report.to_dict()
    d.pop("policy", None)
    return d


@dataclass
class TrialObjective:
    """``study.optimize``'s objective: ``trial -> (avg_acc, worst_acc, avg_bits)``.

    ``n_trials`` is the study's total target: a trial that finds the target already taken by
    other running or finished trials is pruned at once (marked ``fqopt:skipped``), so workers
    racing for the last slot never run more than ``n_trials`` trials together.
    """

    maker: object
    evaluator: SplitEvaluator
    space: object
    n_trials: int
    default_builder: str = "solver"
    budget_range: tuple[float, float] | None = None
    artifact_store: object = None                  # optuna ArtifactStore (plans, reports)
    memo: dict = field(default_factory=dict)       # plan_key -> report dict
    plans: dict = field(default_factory=dict)      # (builder, params, options) -> plan dict
    last_skip: str | None = None

    def __call__(self, trial):
        self.last_skip = None
        reason = claim_slot(trial, self.n_trials)
        if reason is not None:
            self.last_skip = reason
            trial.set_user_attr(ATTR_SKIPPED, reason)
            raise optuna.TrialPruned(reason)
        params = self.space.suggest(trial)
        attrs = trial.user_attrs
        builder = attrs.get(ATTR_BUILDER, self.default_builder)
        options = attrs.get(ATTR_OPTIONS) or {}
        quantizer = params.get("quantizer", "maxabs")

        t0 = time.perf_counter()
        # NSGA-II and TPE propose the same parameters again now and then: solve once
        pkey = json.dumps([builder, params, options], sort_keys=True, default=str)
        if pkey in self.plans:
            plan = AllocationPlan.from_dict(self.plans[pkey])
        else:
            plan = build_plan(self.maker, builder, params, options)
            self.plans[pkey] = plan.to_dict()
        solve_s = time.perf_counter() - t0
        key = plan_key(plan, quantizer)
        if key in self.memo:
            report_dict, seconds = self.memo[key], {"apply": 0.0, "evaluate": 0.0,
                                                     "restore": 0.0}
            trial.set_user_attr(ATTR_CACHED, True)
        else:
            report, seconds = self.evaluator.report(plan, quantizer)
            report_dict = compact_report(report)
            self.memo[key] = report_dict
        seconds = {"solve": solve_s, **seconds}
        plan.meta.update(trial=trial.number, quantizer=quantizer, builder=builder)
        plan.quantizer = quantizer  # the stored plan records what it was evaluated with
        trial.set_user_attr(ATTR_PLAN, plan.to_dict())
        trial.set_user_attr(ATTR_REPORT, report_dict)
        trial.set_user_attr(ATTR_SECONDS, {k: round(v, 6) for k, v in seconds.items()})
        trial.set_user_attr(ATTR_WORKER, WORKER)
        trial.set_user_attr("avg_bits_channel", plan.avg_bits_channel)
        trial.set_user_attr("size_bytes", plan.size_bytes)
        if self.artifact_store is not None:
            upload_json(self.artifact_store, trial, {
                f"plan-trial{trial.number:04d}.json": plan.to_dict(),
                f"report-trial{trial.number:04d}.json": report_dict})
        if self.budget_range is not None:
            lo, hi = self.budget_range
            c = [plan.avg_bits - hi, lo - plan.avg_bits]
            trial.set_user_attr(ATTR_CONSTRAINT, c)
            if hasattr(trial, "set_constraint"):  # Optuna ≥ 5: samplers read these
                trial.set_constraint("avg_bits_over", c[0])
                trial.set_constraint("avg_bits_under", c[1])
        return report_dict["avg_acc"], report_dict["worst_acc"], float(plan.avg_bits)


def upload_json(artifact_store, study_or_trial, files: dict[str, object]) -> None:
    """Store each ``name -> JSON-able object`` as an Optuna artifact of ``study_or_trial``:
    optuna-dashboard shows artifacts whole (user attributes are cut at 1,024 characters
    there). The artifact's metadata goes into the study's storage, its bytes into the store."""
    with tempfile.TemporaryDirectory(prefix="fqopt-artifact-") as tmp:
        for name, obj in files.items():
            path = os.path.join(tmp, name)
            with open(path, "w", encoding="utf-8") as f:
                json.dump(obj, f, indent=1, default=json_default)
            upload_artifact(artifact_store=artifact_store, file_path=path,
                            study_or_trial=study_or_trial, mimetype="application/json",
                            encoding="utf-8")


def claim_slot(trial, n_trials: int) -> str | None:
    """None if ``trial`` may run, else why not (``surplus`` or ``duplicate seed``).

    Safe under concurrency because a trial is RUNNING in the storage before it checks: of any
    set of trials that pass, the last to check saw all the others running or complete, so at
    most ``n_trials`` pass. WAITING trials numbered below this one keep their slots (seeds).
    A seed key already complete, or held by a lower-numbered live trial, is a duplicate (two
    workers resuming at once may both re-enqueue a lost seed; one copy runs).
    """
    study = trial.study
    me = trial.number
    live = study.get_trials(deepcopy=False,
                            states=(TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING))
    taken = sum(1 for t in live if t.number != me
                and (t.state != TrialState.WAITING or t.number < me))
    if taken >= n_trials:
        return "surplus"
    key = trial.user_attrs.get(ATTR_SEED)
    if key is not None:
        for t in live:
            if t.number != me and t.user_attrs.get(ATTR_SEED) == key and (
                    t.state == TrialState.COMPLETE or t.number < me):
                return "duplicate seed"
    return None
