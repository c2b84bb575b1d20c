"""Frontier: test worst-group accuracy of quantization methods at matched bits (issue #12).

One command::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/frontier.py \\
        [--families cnn,vit] [--models 3] [--budgets 2.25,2.5,2.75,3.0,3.5,4.0] \\
        [--test-vi 1500] [--search-trials 40] [--finetune] [--rows NAME,...] \\
        [--cache runs/frontier] [--out bench_out/frontier.json] [--quick]
    .venv/bin/python benchmarks/frontier.py --print bench_out/frontier.json   # tables again

One file (about 1,200 lines) on purpose: the benchmark is one command a reader can audit end to
end — every row's definition, FairQuant-as-shipped's calibration, the statistics and the tables —
and nothing in it is imported by fqopt (MCT's runner lives in :mod:`fqopt.mct`).

**Models.** Per family (``cnn``: ``test_resnet`` at 40 px, synthderm's default; ``vit``:
``test_vit`` at 64 px, since its 16-px patches leave 2×2 tokens at 40 px), ``--models`` runs
trained with ``fqopt train`` defaults on synthderm seeds 0, 1, 2, ... (``Run`` folders under
``--cache``, so a rerun skips training, profiling and the search study).

**Test draw.** Each family's models are judged on one fresh synthderm draw at the family's
resolution, never used in any train or search split: ``--test-vi`` images of *every* skin type
(rendered by synthderm's generator with the tone fixed, labels at the usual class prevalence;
generator seed ``--test-seed``, distinct from the training seeds and their hold-out streams).
``avg_acc`` is the mean of the group accuracies, so equal group sizes do not bias it; type VI,
the worst group, gets ``--test-vi`` images rather than 4 % of the draw.

**Rows** (a registry: ``@register_row`` name → ``fn(ctx, budget) -> Candidate``), each at every
budget (parameter-weighted average bits) on the same test draw:

- ``fp32``; ``uniform_pinned`` (stem and head at 8 bits) and ``uniform_all`` (every Conv2d/
  Linear weight) at the nearest integer bit-width (their real ``avg_bits`` are reported and they
  count as baselines only where those are within the budget);
- ``fq_grad_max`` / ``fq_grape_bal``: FairQuant's quantile rule as its code runs it
  (docs/reference.md): importance from 50 batches of 128 of the shuffled, augmented (flips, ±15°
  rotation) train split, one forward per batch and one backward per skin type present, summed
  over batches, in **train mode** (BatchNorm running statistics drift and the drifted model is
  the one quantized and evaluated); per-weight combination (max, or balanced: each group's map
  over its total mass, then max); unit = output channel, score = mean |combined| over the
  channel, all channels ranked (stem and head included); bits {2,4,8} at shares 0.2/0.4/0.4
  tilted (``solvers/_quantile.py``) so the parameter-weighted average meets the budget;
  max-abs per-channel quantizer. ``*_fqbits``: the same on fqopt's bits {2,3,4,6,8} at equal
  shares (FairQuant's sweep passes bit lists without shares, i.e. equal shares);
- ``hawq_mean``: group-blind HAWQ-style allocation (fqopt's solver, objective ``mean``, on the
  fisher table, same pins and quantizer as ``fqopt_default``);
- ``mct_wonly`` / ``mct_default``: Sony MCT mixed-precision PTQ
  (``mct.ptq.pytorch_post_training_quantization`` with
  ``ResourceUtilization(weights_memory=budget · n_weights / 8)``, 512 representative train
  images, its mixed-precision search scoring on its default 32 of them, its IMX500 v1
  platform: weight bits {8,4,2}, BN folding, MSE thresholds, bias correction), weights only and
  with its default 8-bit activations; test_vit goes through :class:`fqopt.mct.TraceableViT`, a traceable
  re-expression of timm's forward with the same modules. Optional dependency
  (``pip install .[bench]``); skipped with a note when missing or when MCT cannot trace the
  model;
- ``ceiling`` (reference): every layer at 8 bits, fine-tuned exactly as ``fqopt_default`` —
  what a fine-tuned model reaches when quantization costs (almost) nothing;
- ``fqopt_default``: :func:`fqopt_default` below (edit it to change fqopt's configuration):
  the static ``worst`` plan, fine-tuned with distillation under its own ``mse`` quantizer as
  ``fqopt search`` refines; ``fqopt_ft_mse`` is session 4's default (no distillation, mse),
  ``fqopt_kd_maxabs`` session 5's (distillation, trained and deployed with max-abs) and
  ``fqopt_ft_maxabs`` session 5's without distillation;
- ``fqopt_search``: what ``fqopt search`` recommends at the budget: among the complete trials of
  a study (library API, ``--search-trials`` trials, budget range [min budget, 7]) with
  ``avg_bits ≤ budget``, the best *search-split* ``worst_acc``;
- with ``--finetune``: ``fq_qat`` (FairQuant's FQ-QAT: grape + balanced plan, then fixed-bit
  fine-tuning with CE + 0.5·(max − min group loss), ``--finetune-epochs`` short epochs).

**Figures.** Per (row, budget): mean ± sd over models of test ``worst_acc``, ``avg_acc`` and real
``avg_bits``. Per budget, for every fqopt row, the paired bootstrap 95 % interval (resampling
models, and within each model the test images of each group) of ``worst_acc`` (fqopt row −
best baseline), best baseline = the non-fqopt row (FP32 excluded) with the highest mean
``worst_acc`` among those whose mean ``avg_bits`` is within the budget; "tie" when the interval
contains 0. Where the best baseline is a fine-tuned row, the best static (not fine-tuned)
baseline is compared too. For every fqopt row and the best baseline, the same interval of the
row minus each reference row (FP32, ``ceiling``). Per-sample correctness is kept (and cached
per row under each run folder).

Rows are cached per (run, row, budget, settings); rows of kind ``fqopt`` are recomputed on every
call unless ``--reuse-fqopt`` (so an edited :func:`fqopt_default` is always measured);
``--recompute ROWS`` forces others. Bad arguments: one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fqopt.errors import UserError
from fqopt.units import MAX_BITS, MIN_BITS, within_budget

ALL_BUDGETS = (2.25, 2.5, 2.75, 3.0, 3.5, 4.0)
FQ_BITS, FQ_SHARES = (2, 4, 8), (0.2, 0.4, 0.4)
FQOPT_BITS = (2, 3, 4, 6, 8)


@dataclass(frozen=True)
class Family:
    model: str
    image_size: int


#: ``dw`` (not in the default ``--families``): timm's ``test_efficientnet``, depthwise-separable
#: convolutions with squeeze-excitation, the layers known to be hardest to quantize at low bits
FAMILIES = {"cnn": Family("test_resnet", 40), "vit": Family("test_vit", 64),
            "dw": Family("test_efficientnet", 40)}


# =========================================================================== fqopt's rows
# The lead's knobs: each fqopt configuration is one function (ctx, budget) -> Candidate.
def fqopt_select(ctx: "ModelContext", budget: float) -> "Candidate":
    """The static plan or its fine-tuned model (:func:`fqopt_default`), whichever has the higher
    search-split worst_acc (ties: static). Measured and rejected as the default: the search
    split's ~230 type-VI images chose the worse of the two too often."""
    from fqopt.evaluation import evaluate

    static = fqopt_static(ctx, budget)
    tuned = fqopt_default(ctx, budget)
    # the fine-tuned model only if the *search* split says it is better (ties keep the static
    # plan); the test split never chooses
    s_static = evaluate(ctx.model, ctx.dataset, "search", plan=static.plan).worst_acc
    s_tuned = evaluate(tuned.model, ctx.dataset, "search", plan=tuned.plan).worst_acc
    pick = tuned if s_tuned > s_static else static
    pick.info.update(search_worst_static=s_static, search_worst_tuned=s_tuned,
                     fine_tuned=pick is tuned)
    return pick


def fqopt_static(ctx: "ModelContext", budget: float) -> "Candidate":
    """fqopt's static ``worst`` plan without refinement (see :func:`fqopt_default`)."""
    plan = ctx.solve("fisher", "worst", budget)
    return Candidate(plan=plan, quantizer=plan.quantizer)


#: fqopt's fine-tune of session 4 (before distillation and the max-abs training quantizer)
S4_FINETUNE = {"epochs": 0, "finetune_epochs": 2, "steps_per_epoch": 50, "fairness": "range",
               "lambda_fair": 0.5}


def _fine_tuned(ctx, plan, tag: str, **settings) -> "Candidate":
    """``plan`` with the run's weights fine-tuned by ``fqopt.refine`` (bits kept); a
    ``quantizer`` in ``settings`` replaces the plan's (training and evaluation)."""
    from fqopt import models
    from fqopt.baq import refine

    if ctx.args.quick:   # a smoke run: the same settings, a few steps
        settings.update(finetune_epochs=ctx.args.finetune_epochs,
                        steps_per_epoch=ctx.args.finetune_steps)
    q = settings.pop("quantizer", None)
    if q is not None and q != plan.quantizer:
        plan = copy.deepcopy(plan)
        plan.quantizer = q

    res = refine(ctx.run, plan, budget=plan.avg_bits, quantizer=plan.quantizer, seed=ctx.seed,
                 device="cpu", out_dir=ctx.run.path / f"frontier-fqopt-{tag}" /
                 f"{plan.avg_bits:.4f}", force=True, evaluate=False, **settings)
    model = models.create(ctx.family.model, ctx.run.num_classes,
                          image_size=ctx.family.image_size)
    models.load_weights(model, res.checkpoint, name=ctx.family.model)
    return Candidate(plan=res.plan, model=model.eval(), quantizer=plan.quantizer,
                     info={k: v for k, v in settings.items()})


def fqopt_search(ctx: "ModelContext", budget: float) -> "Candidate":
    """What ``fqopt search`` recommends: best search-split worst_acc with avg_bits ≤ budget,
    refined by the search's default refinement."""
    from fqopt.plan import AllocationPlan

    study = ctx.study()
    best = None
    for t in study.get_trials(deepcopy=False):
        if (t.values is None or t.state.name != "COMPLETE"
                or not within_budget(t.values[2], budget)):
            continue
        key = (t.values[1], t.values[0], -t.values[2])   # worst, then avg, then fewer bits
        if best is None or key > best[0]:
            best = (key, t)
    if best is None:
        raise Skip(f"no study plan within {budget:g} bits")
    t = best[1]
    plan = AllocationPlan.from_dict(t.user_attrs["plan"], source=f"trial {t.number}")
    plan.quantizer = t.params.get("quantizer", "maxabs")
    # refined as the search refines the plan it recommends
    from fqopt.search import REFINE_MODES

    cand = _fine_tuned(ctx, plan, f"search-{budget:g}", **REFINE_MODES["finetune"])
    cand.info.update(trial=t.number, label=t.user_attrs.get("fqopt:label"),
                     search_worst_acc=t.values[1], search_avg_acc=t.values[0])
    return cand


def fqopt_maxabs(ctx: "ModelContext", budget: float) -> "Candidate":
    """The static plan of a fisher table profiled with ``maxabs``, applied with ``maxabs``
    (fqopt's default before session 4)."""
    from fqopt.search._pipeline import ensure_tables

    tables, _ = ensure_tables(ctx.run, ["fisher"], "channel", calib=ctx.args.calib,
                              model=ctx.model, quantizer="maxabs")
    plan = ctx.solve("fisher", "worst", budget, table=tables["fisher"])
    return Candidate(plan=plan, quantizer="maxabs")


def fqopt_static_bn(ctx: "ModelContext", budget: float) -> "Candidate":
    """:func:`fqopt_static`, then the BatchNorm statistics re-estimated on 1,024 stratified
    train images under the quantized weights (``fqopt.calibration``)."""
    from fqopt.apply import quantize_
    from fqopt.calibration import recalibrate_batchnorm
    from fqopt.data import iter_batches
    from fqopt.profiling import select_calibration

    cand = fqopt_static(ctx, budget)
    model = copy.deepcopy(ctx.model).eval()
    quantize_(model, cand.plan)
    ds = ctx.dataset
    idx = select_calibration(ds.groups, ds.split("train"), 1024, 0)
    recalibrate_batchnorm(model, iter_batches(ds, idx, 128))
    return Candidate(plan=cand.plan, model=model.eval(), quantizer=cand.quantizer,
                     info={"bn_images": len(idx)})


def _fine_tune_variant(fairness: str, balanced: bool, tag: str):
    def row(ctx, budget):
        settings = dict(S4_FINETUNE, fairness=fairness, balanced=balanced)
        return _fine_tuned(ctx, fqopt_static(ctx, budget).plan, tag, **settings)
    return row


# =========================================================================== registry
class Skip(Exception):
    """A row that cannot run here (missing optional dependency, no plan in budget)."""


@dataclass
class Candidate:
    """What a row builds: ``plan`` applied to ``model`` (default: the run's FP model) with
    ``quantizer``; or a ready ``model`` (``plan`` None; ``avg_bits`` must then be given)."""

    plan: object = None
    model: object = None
    quantizer: str = "maxabs"
    avg_bits: float | None = None
    info: dict = field(default_factory=dict)


@dataclass
class Row:
    name: str
    label: str
    fn: object
    kind: str = "baseline"       # baseline | fqopt | reference
    finetune: bool = False
    per_budget: bool = True


ROWS: dict[str, Row] = {}


def register_row(name: str, label: str, *, kind: str = "baseline", finetune: bool = False,
                 per_budget: bool = True):
    def deco(fn):
        ROWS[name] = Row(name, label, fn, kind, finetune, per_budget)
        return fn
    return deco


# fine-tuning is part of fqopt's default (100 steps: cheap), so the row runs without --finetune
register_row("fqopt_select", "fqopt worst, mse, fine-tuned if the search split says so",
             kind="fqopt")(fqopt_select)
register_row("fqopt_search", "fqopt search recommends", kind="fqopt")(fqopt_search)
register_row("fqopt_static", "fqopt worst, mse (static)", kind="fqopt")(fqopt_static)


@register_row("fqopt_default", "fqopt default (worst, mse plan, fine-tuned with distillation)",
              kind="fqopt")
def fqopt_default(ctx, budget):
    """fqopt's default output at a budget: the static ``worst`` plan (fisher table profiled with
    the ``mse`` quantizer, channel units, stem and head pinned at 8 bits, lagrange), refined as
    ``fqopt search`` refines and deploys its recommended plan
    (``fqopt.search.REFINE_MODES['finetune']``: the plan's bits kept, weights fine-tuned for
    2 × 50 steps with CE + 0.5·range of group losses and distillation from the FP model, α = 0.5,
    trained and deployed with the plan's ``mse`` quantizer)."""
    from fqopt.search import REFINE_MODES

    return _fine_tuned(ctx, fqopt_static(ctx, budget).plan, "default6",
                       **REFINE_MODES["finetune"])


@register_row("fqopt_ft_mse", "fqopt worst, mse, fine-tuned (session-4 default)", kind="fqopt")
def fqopt_ft_mse(ctx, budget):
    """Session 4's default: the same plan fine-tuned with CE + 0.5·range under ``mse``."""
    return _fine_tuned(ctx, fqopt_static(ctx, budget).plan, "default", **S4_FINETUNE)


register_row("fqopt_maxabs", "fqopt worst, maxabs (static, pre-session-4 default)",
             kind="fqopt")(fqopt_maxabs)
register_row("fqopt_static_bn", "fqopt worst, mse, BN re-estimated", kind="fqopt")(
    fqopt_static_bn)
def fqopt_ft_maxabs(ctx: "ModelContext", budget: float) -> "Candidate":
    """The static ``worst`` plan fine-tuned and deployed with the max-abs quantizer, without
    distillation (:func:`fqopt_default` less distillation)."""
    return _fine_tuned(ctx, fqopt_static(ctx, budget).plan, "ft-maxabs",
                       **dict(S4_FINETUNE, quantizer="maxabs"))


register_row("fqopt_ft_maxabs", "fqopt worst, fine-tuned with maxabs", kind="fqopt")(
    fqopt_ft_maxabs)


@register_row("fqopt_kd_maxabs", "fqopt worst, fine-tuned with distillation under maxabs "
              "(session-5 default)", kind="fqopt")
def fqopt_kd_maxabs(ctx: "ModelContext", budget: float) -> "Candidate":
    """Session 5's default: :func:`fqopt_default`'s fine-tune, trained and deployed with the
    max-abs quantizer instead of the plan's ``mse``."""
    from fqopt.search import REFINE_MODES

    return _fine_tuned(ctx, fqopt_static(ctx, budget).plan, "default5",
                       **dict(REFINE_MODES["finetune"], quantizer="maxabs"))


register_row("fqopt_ft_bal", "fqopt worst, mse, fine-tuned group-balanced", kind="fqopt",
             finetune=True)(_fine_tune_variant("range", True, "ft-bal"))
register_row("fqopt_ft_dro", "fqopt worst, mse, fine-tuned balanced + DRO", kind="fqopt",
             finetune=True)(_fine_tune_variant("dro", True, "ft-dro"))


@register_row("fp32", "FP32", kind="reference", per_budget=False)
def _fp32(ctx, budget):
    return Candidate(model=ctx.model, avg_bits=32.0)


@register_row("ceiling", "FP-level reference: every layer 8 bits, fine-tuned as fqopt's default",
              kind="reference", per_budget=False)
def _ceiling(ctx, budget):
    """What fine-tuning does to a model that quantization barely touches: every Conv2d/Linear
    weight at 8 bits (within noise of FP32), then the same fine-tuning as
    :func:`fqopt_default`. A fine-tuned quantized model that reaches this row has nothing left to
    recover; one above it has learned something the FP model had not."""
    from fqopt.plan import AllocationPlan
    from fqopt.search import REFINE_MODES
    from fqopt.units import discover_units

    units = discover_units(ctx.model, "layer", pin="none",
                           input_size=(3, ctx.family.image_size, ctx.family.image_size))
    plan = AllocationPlan.uniform(units, 8, model=ctx.family.model, respect_pins=False)
    plan.quantizer = "mse"
    return _fine_tuned(ctx, plan, "ceiling", **REFINE_MODES["finetune"])


def _uniform(ctx, budget, pinned: bool):
    from fqopt.plan import AllocationPlan
    from fqopt.units import discover_units

    bits = int(min(8, max(2, math.floor(budget + 0.5))))
    units = discover_units(ctx.model, "layer", pin="default" if pinned else "none",
                           input_size=(3, ctx.family.image_size, ctx.family.image_size))
    plan = AllocationPlan.uniform(units, bits, model=ctx.family.model,
                                  respect_pins=pinned)
    return Candidate(plan=plan, info={"bits": bits})


@register_row("uniform_pinned", "uniform, stem+head 8")
def _uniform_pinned(ctx, budget):
    return _uniform(ctx, budget, True)


@register_row("uniform_all", "uniform, all layers")
def _uniform_all(ctx, budget):
    return _uniform(ctx, budget, False)


def _fairquant(ctx, budget, method, combine, bits, shares):
    fq = ctx.fairquant()
    plan, info = fq.plan(method, combine, budget, bits, shares)
    return Candidate(plan=plan, model=fq.model, info=info)


@register_row("fq_grad_max", "FairQuant gradient+max {2,4,8}")
def _fq_grad_max(ctx, budget):
    return _fairquant(ctx, budget, "gradient", "max", FQ_BITS, FQ_SHARES)


@register_row("fq_grape_bal", "FairQuant grape+balanced {2,4,8}")
def _fq_grape_bal(ctx, budget):
    return _fairquant(ctx, budget, "grape", "balanced", FQ_BITS, FQ_SHARES)


@register_row("fq_grad_max_fqbits", "FairQuant gradient+max {2,3,4,6,8}")
def _fq_grad_max_fqbits(ctx, budget):
    return _fairquant(ctx, budget, "gradient", "max", FQOPT_BITS, (0.2,) * 5)


@register_row("fq_grape_bal_fqbits", "FairQuant grape+balanced {2,3,4,6,8}")
def _fq_grape_bal_fqbits(ctx, budget):
    return _fairquant(ctx, budget, "grape", "balanced", FQOPT_BITS, (0.2,) * 5)


@register_row("hawq_mean", "HAWQ-style group-blind (mean)")
def _hawq_mean(ctx, budget):
    plan = ctx.solve("fisher", "mean", budget)
    return Candidate(plan=plan, quantizer=plan.quantizer)


@register_row("mct_wonly", "MCT mixed precision, weights only")
def _mct_wonly(ctx, budget):
    return ctx.mct(budget, activations=False)


@register_row("mct_default", "MCT mixed precision, 8-bit act.")
def _mct_default(ctx, budget):
    return ctx.mct(budget, activations=True)


@register_row("fq_qat", "FQ-QAT (grape+bal {2,4,8}, fine-tuned)", finetune=True)
def _fq_qat(ctx, budget):
    """FairQuant's FQ-QAT: its grape+balanced plan, then fixed-bit fine-tuning with
    CE + 0.5·(max − min group loss) (fqopt.refine with epochs=0, pins as in the plan: none)."""
    from fqopt import models
    from fqopt.baq import refine

    fq = ctx.fairquant()
    plan, info = fq.plan("grape", "balanced", budget, FQ_BITS, FQ_SHARES)
    args = ctx.args
    res = refine(ctx.run, plan, budget=plan.avg_bits, epochs=0,
                 finetune_epochs=args.finetune_epochs, steps_per_epoch=args.finetune_steps,
                 fairness="range", lambda_fair=0.5, pin="none", quantizer="maxabs",
                 seed=ctx.seed, device="cpu",
                 out_dir=ctx.run.path / "frontier-qat" / f"{budget:g}", force=True,
                 evaluate=False)
    model = models.create(ctx.family.model, ctx.run.num_classes,
                          image_size=ctx.family.image_size)
    models.load_weights(model, res.checkpoint, name=ctx.family.model)
    return Candidate(plan=res.plan, model=model.eval(), quantizer=res.plan.quantizer,
                     info={**info, "finetune_epochs": args.finetune_epochs,
                           "steps_per_epoch": args.finetune_steps})


# =========================================================================== FairQuant
def _augment_fairquant(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """FairQuant's train transform on a batch: random horizontal and vertical flips and a
    random rotation in ±15° (bilinear, zeros outside)."""
    import torch.nn.functional as F

    n = x.shape[0]
    fh = torch.rand(n, generator=gen) < 0.5
    fv = torch.rand(n, generator=gen) < 0.5
    x = torch.where(fh.view(-1, 1, 1, 1), x.flip(3), x)
    x = torch.where(fv.view(-1, 1, 1, 1), x.flip(2), x)
    ang = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(15)
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros(n)], 1),
                         torch.stack([sin, cos, torch.zeros(n)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


class FairQuantAsShipped:
    """FairQuant's calibration and quantile allocation as its code runs them (docs/reference.md).

    ``model``: a copy of the FP model after calibration in train mode (drifted BatchNorm
    statistics), the model FairQuant quantizes and evaluates. ``scores[method][combine]``:
    per-channel unit scores in the order of ``units``.
    """

    def __init__(self, ctx: "ModelContext", batches: int = 50, batch_size: int = 128):
        import torch.nn.functional as F

        from fqopt.units import discover_units, quantizable_layers

        t0 = time.perf_counter()
        model = copy.deepcopy(ctx.model)
        size = ctx.family.image_size
        self.units = discover_units(model, "channel", pin="none", input_size=(3, size, size))
        named = dict(quantizable_layers(model))
        weights = [named[layer.name].weight for layer in self.units.layers]
        ds = ctx.dataset
        train_idx = ds.split("train")
        rng = np.random.default_rng([ctx.seed, 4242])
        order = train_idx[rng.permutation(len(train_idx))]
        gen = torch.Generator().manual_seed(ctx.seed)
        G = ds.num_groups
        maps = {m: [[torch.zeros_like(w) for w in weights] for _ in range(G)]
                for m in ("gradient", "grape")}
        flags = {p: p.requires_grad for p in model.parameters()}
        model.train()   # as shipped: BatchNorm uses batch statistics and updates running ones
        for p in model.parameters():
            p.requires_grad_(False)
        for w in weights:
            w.requires_grad_(True)
        n_batches = min(batches, len(order) // batch_size)
        for b in range(n_batches):
            x, y, g = ds.get_batch(order[b * batch_size:(b + 1) * batch_size])
            x = _augment_fairquant(x, gen)
            out = model(x)
            present = torch.unique(g).tolist()
            for i, grp in enumerate(present):
                sel = g == grp
                loss = F.cross_entropy(out[sel], y[sel])
                grads = torch.autograd.grad(loss, weights, retain_graph=i < len(present) - 1)
                for k, (w, gr) in enumerate(zip(weights, grads)):
                    maps["gradient"][grp][k].add_(gr.abs())
                    maps["grape"][grp][k].add_((w.detach() * gr) ** 2)
        for p, f in flags.items():
            p.requires_grad_(f)
        self.model = model.eval()
        self.scores = {m: self._combine(maps[m]) for m in maps}
        self.batches = n_batches
        self.seconds = time.perf_counter() - t0
        self.ctx = ctx

    def _combine(self, maps) -> dict[str, np.ndarray]:
        mass = [float(sum(m.double().sum() for m in mg)) for mg in maps]
        out = {}
        for rule in ("max", "balanced"):
            parts = []
            for k, layer in enumerate(self.units.layers):
                per_group = [maps[g][k] / (mass[g] if rule == "balanced" and mass[g] > 0 else 1.0)
                             for g in range(len(maps))]
                comb = torch.stack(per_group).amax(0).abs()
                parts.append(comb.reshape(comb.shape[0], -1).mean(1).double().numpy())
            out[rule] = np.concatenate(parts)
        return out

    def plan(self, method, combine, budget, bits, shares):
        """``(plan, info)``: the quantile rule with ``shares`` tilted to ``budget`` avg bits."""
        import dataclasses

        from fqopt.solvers import AllocationProblem, get_solver

        table = self.ctx.fisher_table()
        meta = dict(table.meta, pinned={}, ties=[],
                    scores=self.scores[method][combine].tolist())
        t = dataclasses.replace(table, meta=meta)
        assert list(t.units) == list(self.units.names), "unit order differs from the table's"
        prob = AllocationProblem.from_table(t, budget=float(budget), objective="worst",
                                            pins="none", ties=None)
        res = get_solver("quantile", bits=bits, shares=shares, match_budget=True).solve(prob)
        if not res.ok:
            raise Skip(f"quantile rule: {res.status} {res.message}")
        plan = res.to_plan(model=self.ctx.family.model)
        plan.objective = f"fairquant:{method}+{combine}"
        # FairQuant's code quantizes with per-channel max-abs scales (docs/reference.md); the
        # table this plan borrows its units from may record another quantizer
        plan.quantizer = "maxabs"
        return plan, {"shares": res.info.get("shares"), "calib_batches": self.batches,
                      "calib_seconds": round(self.seconds, 1)}


# =========================================================================== MCT
# =========================================================================== per model
class ModelContext:
    """One trained model and everything rows share: the run, its FP model (eval, CPU), its
    dataset (train/search splits), the family's test draw, and lazily built tables, FairQuant
    calibration, search study and MCT module."""

    def __init__(self, family_name: str, family: Family, seed: int, args, test):
        self.family_name, self.family, self.seed, self.args, self.test = (
            family_name, family, seed, args, test)
        self.run = ensure_model(Path(args.cache), family, seed, args.train_epochs, args.samples)
        self.model = self.run.model()
        self.dataset = self.run.dataset()
        self._tables = None
        self._fq = None
        self._study = None

    def tables(self) -> dict:
        if self._tables is None:
            from fqopt.search._pipeline import ensure_tables

            t0 = time.perf_counter()
            self._tables, notes = ensure_tables(self.run, ["fisher", "gradient", "grape"],
                                                "channel", calib=self.args.calib,
                                                model=self.model)
            for n in notes:
                log(f"  {self.name}: {n}")
            self.table_seconds = time.perf_counter() - t0
        return self._tables

    def fisher_table(self):
        return self.tables()["fisher"]

    @property
    def name(self) -> str:
        return self.run.path.name

    def solve(self, method: str, objective: str, budget: float, table=None):
        from fqopt.solvers import AllocationProblem, solve

        table = self.tables()[method] if table is None else table
        strict = prob = AllocationProblem.from_table(table, budget=float(budget),
                                                     objective=objective)
        for floor in (4, None):
            # a small model's stem and head at 8 bits can exceed a low budget (test_vit: 3.0
            # bits): let them go down to 4 bits, then lower (as fqopt search's plans do)
            if prob.min_budget() <= budget:
                break
            prob = strict.relax_pins(floor)
        res = solve(prob, "lagrange")
        if not res.ok:
            raise Skip(f"solver: {res.status} {res.message}")
        return res.to_plan(model=self.family.model)

    def fairquant(self) -> FairQuantAsShipped:
        if self._fq is None:
            self._fq = FairQuantAsShipped(self)
            log(f"  {self.name}: FairQuant calibration ({self._fq.batches} batches, train mode) "
                f"{self._fq.seconds:.0f} s")
        return self._fq

    def study(self):
        if self._study is None:
            from fqopt.search import SearchSpace
            from fqopt.search import run as run_search

            t0 = time.perf_counter()
            lo = max(2.0, min(self.args.budgets))
            space = SearchSpace(budget_range=(lo, 7.0),
                                methods=("fisher", "gradient", "grape"))
            n = self.args.search_trials
            self._study = run_search(
                self.run, self.tables(), n_trials=n,
                storage=f"sqlite:///{self.run.path / 'frontier-study.db'}",
                study_name=f"frontier-lo{lo:g}-at-budgets", seed=self.seed, space=space,
                model=self.model, budget=tuple(self.args.budgets))
            log(f"  {self.name}: search study ({n} trials) {time.perf_counter() - t0:.0f} s")
        return self._study

    def mct(self, budget: float, activations: bool) -> Candidate:
        from fqopt import mct
        from fqopt.data import iter_batches

        if not mct.available():
            raise Skip("model-compression-toolkit is not installed (pip install .[bench])")
        idx = np.random.default_rng([self.seed, 512]).permutation(
            self.dataset.split("train"))[:self.args.mct_images]
        batches = [x for x, _, _ in iter_batches(self.dataset, idx, 64)]
        try:
            res = mct.mct_quantize(self.model, batches, avg_bits=budget,
                                   activations=activations,
                                   mp_images=self.args.mct_mp_images or None)
        except mct.MCTFailed as exc:  # MCT's tracer fails on some graphs: record, do not abort
            raise Skip(str(exc)) from None
        return Candidate(model=res.model, avg_bits=res.avg_bits,
                         info={"mct_seconds": round(res.seconds, 1),
                               "mct_weights_counted": res.weights_counted,
                               "n_weights": res.n_weights, **res.info})


def ensure_model(cache: Path, family: Family, seed: int, epochs: int | None,
                 samples: int | None = None):
    """The run folder of (family, seed), trained with ``fqopt train`` defaults if needed."""
    from fqopt.runs import Run
    from fqopt.training import TrainConfig, train

    path = cache / f"{family.model}-{family.image_size}px-s{seed}"
    run = Run.open(path) if (path / "config.json").is_file() else Run.create(
        path, model=family.model, image_size=family.image_size, seed=seed,
        dataset_options={"n": samples} if samples else None)
    def finished():
        return run.has_model() and run.train_state_path.is_file() and torch.load(
            run.train_state_path, map_location="cpu", weights_only=True)["state"]["finished"]

    # another process training this run (its checkpoint is fresh): wait for it
    while (not finished() and run.train_state_path.is_file()
           and time.time() - run.train_state_path.stat().st_mtime < 180):
        log(f"waiting for another process training {path.name} ...")
        time.sleep(30)
    if not finished():
        cfg = TrainConfig(seed=seed, device="cpu",
                          **({"epochs": epochs} if epochs else {}))
        if run.train_state_path.is_file():
            saved = torch.load(run.train_state_path, map_location="cpu", weights_only=True)
            cfg = TrainConfig.from_dict(saved.get("config", {}) or {**cfg.__dict__})
        log(f"training {path.name} ...")
        t0 = time.perf_counter()
        train(run, cfg)
        log(f"  trained {path.name} in {time.perf_counter() - t0:.0f} s")
    return run


# =========================================================================== test draw
def draw_test(per_group: int, image_size: int, seed: int):
    """A fresh synthderm draw with ``per_group`` images of every skin type (split ``test``)."""
    from fqopt.data._synthderm import (_CHUNK, CLASS_NAMES, CLASS_PREVALENCE, GROUP_NAMES,
                                       SynthDerm, _render)

    imgs, labels, groups = [], [], []
    for g in range(len(GROUP_NAMES)):
        rng = np.random.default_rng([seed, 77, g])
        lab = rng.choice(len(CLASS_NAMES), size=per_group, p=CLASS_PREVALENCE)
        tones = np.full(per_group, g)
        out = np.empty((per_group, image_size, image_size, 3), dtype=np.uint8)
        for s in range(0, per_group, _CHUNK):
            sl = slice(s, min(per_group, s + _CHUNK))
            out[sl] = np.round(_render(rng, lab[sl], tones[sl], image_size) * 255)
        imgs.append(out)
        labels.append(lab)
        groups.append(tones)
    n = per_group * len(GROUP_NAMES)
    return SynthDerm(np.concatenate(imgs), name="synthderm", class_names=CLASS_NAMES,
                     group_names=list(GROUP_NAMES), labels=np.concatenate(labels),
                     groups=np.concatenate(groups), image_size=image_size,
                     attribute="skin_type", splits={"test": np.arange(n)},
                     info={"generator": "synthderm (tone-stratified)", "seed": seed,
                           "per_group": per_group})


def cached_test_draw(cache: Path, per_group: int, image_size: int, seed: int):
    """:func:`draw_test`, kept as ``CACHE/testdraw-...npz`` (rendering takes a minute)."""
    from fqopt.data._synthderm import SynthDerm

    f = cache / f"testdraw-{image_size}px-{per_group}-s{seed}.npz"
    if f.is_file():
        z = np.load(f)
        ref = draw_test(10, 8, 0)   # names and info only
        n = len(z["labels"])
        return SynthDerm(z["images"], name="synthderm", class_names=ref.class_names,
                         group_names=ref.group_names, labels=z["labels"], groups=z["groups"],
                         image_size=image_size, attribute="skin_type",
                         splits={"test": np.arange(n)},
                         info={"generator": "synthderm (tone-stratified)", "seed": seed,
                               "per_group": per_group})
    test = draw_test(per_group, image_size, seed)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(f, images=test.images, labels=test.labels, groups=test.groups)
    return test


# =========================================================================== evaluation
def predict_correct(model, test) -> np.ndarray:
    from fqopt.evaluation import predict

    p = predict(model, test, test.split("test"), batch_size=500)
    return p["y_pred"] == p["y_true"]


def evaluate(ctx: ModelContext, cand: Candidate, memo: dict) -> tuple[np.ndarray, float]:
    """``(correct [n] bool, avg_bits)``; identical (model, plan, quantizer) are evaluated once."""
    from fqopt.apply import quantized
    from fqopt.search._plans import plan_key

    model = cand.model if cand.model is not None else ctx.model
    if (cand.model is not None and cand.plan is not None
            and cand.plan.quantizer != cand.quantizer):
        # a fine-tuned model is only meaningful under the quantizer it was trained with
        raise RuntimeError(f"row evaluates a model fine-tuned with {cand.plan.quantizer!r} "
                           f"under {cand.quantizer!r}")
    if cand.plan is None:
        return predict_correct(model, ctx.test), float(cand.avg_bits)
    key = (id(model), plan_key(cand.plan, cand.quantizer))
    if key not in memo:
        with quantized(model, cand.plan, method=cand.quantizer):
            # the model is kept with its result: a freed model's id could be reused by the
            # next fine-tuned one, which would then read this entry
            memo[key] = (predict_correct(model, ctx.test), model)
    return memo[key][0], float(cand.plan.avg_bits)


def group_acc(correct: np.ndarray, groups: np.ndarray, G: int) -> np.ndarray:
    return np.array([correct[groups == g].mean() for g in range(G)])


# =========================================================================== statistics
def paired_bootstrap(a: list, b: list, groups: np.ndarray, G: int, resamples: int,
                     seed: int) -> dict:
    """Point estimate and 95 % percentile interval of mean over models of
    ``worst_acc(a) − worst_acc(b)``; resamples models, and within each model the test images
    of each group (the same images for ``a`` and ``b``: paired). ``a``, ``b``: per model,
    bool ``[n]``; ``groups`` ``[n]`` (one test draw shared by the models)."""
    rng = np.random.default_rng(seed)
    M = len(a)
    point = float(np.mean([group_acc(x, groups, G).min() - group_acc(y, groups, G).min()
                           for x, y in zip(a, b)]))
    per_model = np.empty((M, resamples))
    members = [np.flatnonzero(groups == g) for g in range(G)]
    for m in range(M):
        acc_a = np.empty((resamples, G))
        acc_b = np.empty((resamples, G))
        for g, idx in enumerate(members):
            pick = idx[rng.integers(0, len(idx), (resamples, len(idx)))]
            acc_a[:, g] = a[m][pick].mean(1)
            acc_b[:, g] = b[m][pick].mean(1)
        per_model[m] = acc_a.min(1) - acc_b.min(1)
    which = rng.integers(0, M, (resamples, M))
    diffs = per_model[which, np.arange(resamples)[:, None]].mean(1)
    lo, hi = (float(v) for v in np.percentile(diffs, [2.5, 97.5]))
    return {"diff": point, "lo": lo, "hi": hi, "tie": bool(lo <= 0.0 <= hi),
            "resamples": resamples}


def mean_sd(values) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


# =========================================================================== driver
def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cache_key(args, family: Family, row: Row) -> str:
    parts = {"test_vi": args.test_vi, "test_seed": args.test_seed, "size": family.image_size,
             "row": row.name}
    if row.name.startswith("mct"):
        parts["mct_images"] = args.mct_images
        if args.mct_mp_images:
            parts["mct_mp_images"] = args.mct_mp_images
    if row.name == "fqopt_search":
        parts.update(trials=args.search_trials, lo=min(args.budgets))
    if row.finetune:
        parts.update(ep=args.finetune_epochs, steps=args.finetune_steps)
    if row.name in ("fqopt_default", "fqopt_select", "fqopt_search", "ceiling"):
        from fqopt.search import REFINE_MODES

        parts["refine"] = REFINE_MODES["finetune"]   # what these rows' refinement is
    if row.name.startswith("fqopt") or row.name == "hawq_mean":
        parts["calib"] = args.calib
        parts["tables"] = "mse"  # fisher tables profiled with mse since session 4
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def run_model(ctx: ModelContext, rows: list[Row], args) -> dict:
    """Every row at every budget on ``ctx``: ``{row: {budget: record}}`` (records carry the
    correctness vector under ``_correct``)."""
    G = ctx.test.num_groups
    groups = ctx.test.groups
    memo: dict = {}
    out: dict = {}
    for row in rows:
        key = cache_key(args, ctx.family, row)
        cdir = ctx.run.path / "frontier-cache" / f"{row.name}-{key}"
        reuse = (row.name not in args.recompute
                 and (row.kind != "fqopt" or args.reuse_fqopt))
        out[row.name] = {}
        budgets = args.budgets if row.per_budget else [None]
        for budget in budgets:
            tag = "fp" if budget is None else f"{budget:g}"
            f = cdir / f"{tag}.npz"
            if reuse and f.is_file():
                z = np.load(f, allow_pickle=False)
                rec = json.loads(str(z["record"]))
                if "_skip" not in rec:   # a skipped row is tried again
                    rec["_correct"] = z["correct"]
                    out[row.name][tag] = rec
                    continue
            t0 = time.perf_counter()
            try:
                cand = row.fn(ctx, budget)
                correct, bits = evaluate(ctx, cand, memo)
            except Skip as exc:
                rec = {"_skip": str(exc)}
                log(f"  {ctx.name} {row.name} @ {tag}: skipped ({exc})")
                correct = np.zeros(0, bool)
            else:
                acc = group_acc(correct, groups, G)
                rec = {"avg_bits": bits, "worst_acc": float(acc.min()),
                       "avg_acc": float(acc.mean()), "group_acc": acc.tolist(),
                       "seconds": round(time.perf_counter() - t0, 2),
                       "info": _jsonable(cand.info)}
                log(f"  {ctx.name} {row.name:<20} @ {tag:>4}: bits {bits:.3f} worst "
                    f"{rec['worst_acc']:.4f} avg {rec['avg_acc']:.4f} "
                    f"({rec['seconds']:.0f} s)")
            cdir.mkdir(parents=True, exist_ok=True)
            np.savez(f, correct=correct, record=json.dumps(rec))
            if "_skip" not in rec:
                rec["_correct"] = correct
            out[row.name][tag] = rec
    return out


def _jsonable(d):
    return json.loads(json.dumps(d, default=lambda o: o.tolist() if hasattr(o, "tolist")
                                 else str(o)))


def summarize(family_name: str, per_model: list, rows: list[Row], test, args) -> dict:
    """Means, sds, best baselines and paired intervals of one family."""
    G, groups = test.num_groups, test.groups
    summary = {"rows": {}, "comparisons": {}}
    for row in rows:
        summary["rows"][row.name] = {}
        tags = (["fp"] if not row.per_budget else [f"{b:g}" for b in args.budgets])
        for tag in tags:
            recs = [m[row.name][tag] for m in per_model]
            ok = [r for r in recs if "_skip" not in r]
            if len(ok) < len(recs):
                summary["rows"][row.name][tag] = {
                    "skipped": sorted({r["_skip"] for r in recs if "_skip" in r}),
                    "models": len(ok)}
                continue
            cell = {"models": len(ok)}
            for k in ("worst_acc", "avg_acc", "avg_bits"):
                vals = [r[k] for r in ok]
                cell[k] = {"mean": mean_sd(vals)[0], "sd": mean_sd(vals)[1], "values": vals}
            summary["rows"][row.name][tag] = cell
    def best_of(tag, b, static):
        best, best_w = None, -1.0
        for row in rows:
            cell = summary["rows"][row.name].get(tag)
            if (row.kind != "baseline" or cell is None or "skipped" in cell
                    or (static and row.finetune)):
                continue
            if cell["avg_bits"]["mean"] > b + 1e-6:
                continue   # over the budget: shown, not a baseline at this budget
            if cell["worst_acc"]["mean"] > best_w:
                best, best_w = row.name, cell["worst_acc"]["mean"]
        return best

    def versus(tag, best):
        out = {}
        for row in rows:
            cell = summary["rows"][row.name].get(tag)
            if row.kind != "fqopt" or best is None or cell is None or "skipped" in cell:
                continue
            a = [m[row.name][tag]["_correct"] for m in per_model]
            c = [m[best][tag]["_correct"] for m in per_model]
            out[row.name] = paired_bootstrap(
                a, c, groups, G, args.resamples,
                seed=int(hashlib.sha256(f"{family_name}{tag}{row.name}".encode()).hexdigest()[:8],
                         16))
            d = [m[row.name][tag]["avg_acc"] - m[best][tag]["avg_acc"] for m in per_model]
            out[row.name]["avg_acc_diff"] = float(np.mean(d))
        return out

    def versus_reference(tag, best):
        """fqopt's rows and the best baseline minus each reference row (FP32, the fine-tuned
        8-bit ceiling), paired on the same models and images."""
        out = {}
        for ref in rows:
            rcell = summary["rows"][ref.name].get("fp")
            if ref.kind != "reference" or rcell is None or "skipped" in rcell:
                continue
            for row in rows:
                cell = summary["rows"][row.name].get(tag)
                if (row.kind != "fqopt" and row.name != best) or cell is None \
                        or "skipped" in cell:
                    continue
                a = [m[row.name][tag]["_correct"] for m in per_model]
                c = [m[ref.name]["fp"]["_correct"] for m in per_model]
                r = paired_bootstrap(a, c, groups, G, args.resamples, seed=int(hashlib.sha256(
                    f"{family_name}{tag}{row.name}-{ref.name}".encode()).hexdigest()[:8], 16))
                r["avg_acc_diff"] = float(np.mean(
                    [m[row.name][tag]["avg_acc"] - m[ref.name]["fp"]["avg_acc"]
                     for m in per_model]))
                out[f"{row.name}-{ref.name}"] = {"row": row.name, "reference": ref.name, **r}
        return out

    for b in args.budgets:
        tag = f"{b:g}"
        best = best_of(tag, b, static=False)
        comp = {"best_baseline": best, "vs": versus(tag, best),
                "vs_reference": versus_reference(tag, best)}
        static = best_of(tag, b, static=True)
        if static != best:   # the best baseline is fine-tuned: also the best static one
            comp["best_static_baseline"] = static
            comp["vs_static"] = versus(tag, static)
        summary["comparisons"][tag] = comp
    return summary


def print_table(family_name: str, family: Family, summary: dict, rows: list[Row], args,
                models: int) -> None:
    print(f"\n### {family_name}: {family.model} at {family.image_size} px, {models} model(s), "
          f"test draw {args.test_vi} images per skin type (seed {args.test_seed})\n")
    print("| budget | row | avg_bits | test worst_acc | test avg_acc |")
    print("|---:|---|---:|---:|---:|")
    for row in rows:
        fp = summary["rows"].get(row.name, {}).get("fp")
        if row.kind != "reference" or not fp or "skipped" in fp:
            continue
        print(f"| — | {row.label} | {fp['avg_bits']['mean']:.3g} | "
              f"{fp['worst_acc']['mean']:.4f} ± {fp['worst_acc']['sd']:.4f} "
              f"| {fp['avg_acc']['mean']:.4f} ± {fp['avg_acc']['sd']:.4f} |")
    for b in args.budgets:
        tag = f"{b:g}"
        comp = summary["comparisons"][tag]
        for row in rows:
            if not row.per_budget:
                continue
            cell = summary["rows"][row.name][tag]
            if "skipped" in cell:
                print(f"| {tag} | {row.label} | — | skipped: {'; '.join(cell['skipped'])} | |")
                continue
            mark = " **(best baseline)**" if row.name == comp["best_baseline"] else ""
            over = " (over budget)" if cell["avg_bits"]["mean"] > b + 1e-6 else ""
            print(f"| {tag} | {row.label}{mark} | {cell['avg_bits']['mean']:.3f}{over} | "
                  f"{cell['worst_acc']['mean']:.4f} ± {cell['worst_acc']['sd']:.4f} | "
                  f"{cell['avg_acc']['mean']:.4f} ± {cell['avg_acc']['sd']:.4f} |")
    print(f"\n{family_name}: fqopt row − best baseline on test worst_acc, paired bootstrap 95 % "
          f"({args.resamples} resamples over models and test images)\n")
    print("| budget | fqopt row | best baseline | Δ worst_acc (points) | 95 % interval | "
          "verdict | Δ avg_acc |")
    print("|---:|---|---|---:|---:|---|---:|")
    for b in args.budgets:
        tag = f"{b:g}"
        comp = summary["comparisons"][tag]
        for row in rows:
            cell = summary["rows"][row.name].get(tag, {})
            if row.kind == "fqopt" and "skipped" in cell:
                print(f"| {tag} | {row.name} | {comp['best_baseline']} | — | — | no plan: "
                      f"{'; '.join(cell['skipped'])} | — |")
        for key, base in (("vs", "best_baseline"), ("vs_static", "best_static_baseline")):
            for name, c in comp.get(key, {}).items():
                verdict = ("tie" if c["tie"] else
                           "fqopt ahead" if c["lo"] > 0 else "fqopt behind")
                what = comp[base] + (" (best static)" if key == "vs_static" else "")
                print(f"| {tag} | {name} | {what} | {100 * c['diff']:+.2f} | "
                      f"[{100 * c['lo']:+.2f}, {100 * c['hi']:+.2f}] | {verdict} | "
                      f"{100 * c['avg_acc_diff']:+.2f} |")
    refs = [c for b in args.budgets
            for c in summary["comparisons"][f"{b:g}"].get("vs_reference", {}).values()]
    if refs:
        print(f"\n{family_name}: row − reference (FP32; the fine-tuned 8-bit ceiling) on test "
              "worst_acc, paired bootstrap 95 %\n")
        print("| budget | row | reference | Δ worst_acc (points) | 95 % interval | verdict | "
              "Δ avg_acc |")
        print("|---:|---|---|---:|---:|---|---:|")
        for b in args.budgets:
            tag = f"{b:g}"
            for c in summary["comparisons"][tag].get("vs_reference", {}).values():
                verdict = ("tie" if c["tie"] else "above" if c["lo"] > 0 else "below")
                print(f"| {tag} | {c['row']} | {c['reference']} | {100 * c['diff']:+.2f} | "
                      f"[{100 * c['lo']:+.2f}, {100 * c['hi']:+.2f}] | {verdict} | "
                      f"{100 * c['avg_acc_diff']:+.2f} |")


class _Parser(argparse.ArgumentParser):
    def error(self, message):   # one line, exit status 2
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def parse_args(argv):
    p = _Parser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default="cnn,vit", help=f"some of {','.join(FAMILIES)}")
    p.add_argument("--models", type=int, default=3, help="trained models per family (seeds "
                   "0..N-1)")
    p.add_argument("--only-seeds", default="", help="of those models, compute only these seeds "
                   "(comma list; e.g. 1,2 in a second process sharing the cache)")
    p.add_argument("--budgets", default=",".join(f"{b:g}" for b in ALL_BUDGETS))
    p.add_argument("--test-vi", type=int, default=1500,
                   help="test images per skin type (type VI included)")
    p.add_argument("--test-seed", type=int, default=9_000_001)
    p.add_argument("--search-trials", type=int, default=40)
    p.add_argument("--calib", type=int, default=1024, help="fqopt profiling samples")
    p.add_argument("--mct-images", type=int, default=512)
    p.add_argument("--mct-mp-images", type=int, default=0,
                   help="images MCT's mixed-precision search scores with (0: MCT's default)")
    p.add_argument("--finetune", action="store_true", help="add the fine-tuned rows")
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--finetune-steps", type=int, default=50, help="steps per fine-tune epoch")
    p.add_argument("--rows", default="", help="only these rows (comma list; default: all)")
    p.add_argument("--recompute", default="", help="rows whose cached results are ignored")
    p.add_argument("--reuse-fqopt", action="store_true",
                   help="reuse cached results of the fqopt rows too")
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--train-epochs", type=int, default=None,
                   help="cap on training epochs of new runs (default: fqopt train's)")
    p.add_argument("--samples", type=int, default=None,
                   help="synthderm size of new runs (default: synthderm's 8,000)")
    p.add_argument("--cache", default="runs/frontier")
    p.add_argument("--out", default="bench_out/frontier.json")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 model per family, 150 images per type, 2 budgets, "
                        "6 trials, 1,000 samples trained 2 epochs, MCT on fewer images, "
                        "separate cache")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.quick:
        args.models = 1
        args.test_vi = 150 if args.test_vi == 1500 else args.test_vi
        args.budgets = "2.5,3.0" if args.budgets == p.get_default("budgets") else args.budgets
        args.search_trials = 6 if args.search_trials == 40 else args.search_trials
        args.train_epochs = args.train_epochs or 2
        args.samples = args.samples or 1000
        args.calib = 256 if args.calib == 1024 else args.calib
        args.mct_images = 128 if args.mct_images == 512 else args.mct_images
        args.mct_mp_images = args.mct_mp_images or 8
        args.resamples = 300 if args.resamples == 2000 else args.resamples
        args.finetune_steps = 5 if args.finetune_steps == 50 else args.finetune_steps
        args.finetune_epochs = 1 if args.finetune_epochs == 2 else args.finetune_epochs
        if args.cache == "runs/frontier":
            args.cache = "runs/frontier-quick"
    try:
        args.budgets = [float(x) for x in args.budgets.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--budgets must be numbers, got {args.budgets!r}") from None
    if not args.budgets or any(not MIN_BITS <= b <= MAX_BITS for b in args.budgets):
        raise UserError(f"--budgets must be average bits in {MIN_BITS}-{MAX_BITS}, "
                        f"got {args.budgets}")
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    bad = [f for f in args.families if f not in FAMILIES]
    if bad or not args.families:
        raise UserError(f"--families: unknown {bad or '[]'}; expected some of "
                        f"{', '.join(FAMILIES)}")
    if args.mct_mp_images < 0:
        raise UserError(f"--mct-mp-images must be ≥ 0, got {args.mct_mp_images}")
    for name in ("models", "test_vi", "search_trials", "calib", "mct_images", "resamples",
                 "finetune_steps"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got "
                            f"{getattr(args, name)}")
    if args.test_vi < 10:
        raise UserError(f"--test-vi must be at least 10, got {args.test_vi}")
    try:
        args.only_seeds = [int(x) for x in args.only_seeds.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--only-seeds must be whole numbers, got {args.only_seeds!r}") from None
    if any(not 0 <= x < args.models for x in args.only_seeds):
        raise UserError(f"--only-seeds must lie in 0..{args.models - 1} (--models "
                        f"{args.models}), got {args.only_seeds}")
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    args.recompute = [r.strip() for r in args.recompute.split(",") if r.strip()]
    unknown = [r for r in args.rows + args.recompute if r not in ROWS]
    if unknown:
        raise UserError(f"unknown row(s) {unknown}; rows: {', '.join(ROWS)}")
    return args


def print_saved(path: str) -> None:
    """Print the tables of a JSON this script wrote (also a partial one, after any model)."""
    res = json.loads(Path(path).read_text())
    a = res["args"]
    args = argparse.Namespace(budgets=a["budgets"], test_vi=a["test_vi"],
                              test_seed=a["test_seed"], resamples=a["resamples"])
    rows = [Row(name, r["label"], None, r["kind"], r["finetune"], name != "fp32")
            for name, r in res["rows"].items()]
    for fname, fam in res["families"].items():
        print_table(fname, Family(fam["model"], fam["image_size"]), fam, rows, args,
                    len(fam["models"]))
    print(f"\ncommand: {res['command']}\nmachine: {res['machine']}; {res['seconds'] / 60:.1f} "
          f"min so far; models: " + "; ".join(f"{m['run']} {m['seconds'] / 60:.1f} min"
                                             for f in res["families"].values()
                                             for m in f["models"]))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--print"]:
        if len(argv) != 2:
            raise UserError("--print takes one JSON file written by this script")
        return print_saved(argv[1])
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rows = [r for r in ROWS.values()
            if (not args.rows or r.name in args.rows or r.name == "fp32")
            and (args.finetune or not r.finetune)]
    out_path = Path(args.out)
    result = {"schema": "fqopt.bench-frontier/1", "command": " ".join(sys.argv),
              "args": {k: v for k, v in vars(args).items()},
              "rows": {r.name: {"label": r.label, "kind": r.kind, "finetune": r.finetune}
                       for r in rows},
              "machine": {"platform": platform.platform(), "torch": torch.__version__,
                          "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                          "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
              "families": {}}
    for fname in args.families:
        family = FAMILIES[fname]
        t0 = time.perf_counter()
        test = cached_test_draw(Path(args.cache), args.test_vi, family.image_size,
                                args.test_seed)
        log(f"{fname}: test draw {len(test)} images in {time.perf_counter() - t0:.0f} s")
        per_model, model_info = [], []
        for seed in (args.only_seeds or range(args.models)):
            t0 = time.perf_counter()
            ctx = ModelContext(fname, family, seed, args, test)
            res = run_model(ctx, rows, args)
            per_model.append(res)
            model_info.append({"run": str(ctx.run.path), "seed": seed,
                               "seconds": round(time.perf_counter() - t0, 1)})
            log(f"{fname} seed {seed}: {time.perf_counter() - t0:.0f} s")
            summary = summarize(fname, per_model, rows, test, args)
            result["families"][fname] = {
                "model": family.model, "image_size": family.image_size,
                "test": {"per_group": args.test_vi, "seed": args.test_seed,
                         "groups": list(test.group_names)},
                "models": model_info,
                "per_model": [{r: {t: {k: v for k, v in rec.items() if k != "_correct"}
                                   for t, rec in d.items()} for r, d in m.items()}
                              for m in per_model],
                **summary}
            out_path.parent.mkdir(parents=True, exist_ok=True)
            result["seconds"] = round(time.perf_counter() - started, 1)
            out_path.write_text(json.dumps(result, indent=1) + "\n")   # after every model
        print_table(fname, family, summary, rows, args, len(per_model))
    print(f"\ncommand: {result['command']}\nmachine: {platform.platform()}, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; total "
          f"{(time.perf_counter() - started) / 60:.1f} min; JSON: {out_path}")
    return result


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
