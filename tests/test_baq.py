"""BAQ refinement (fqopt.baq, ``fqopt refine``): differentiable bits, fairness terms, the budget,
rounding, checkpoints and resumption, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fqopt.baq import (AugmentedLagrangian, BitWidths, RefineConfig, fixed_bit_weights,
                       fractional_fake_quantize, group_losses, load_refined, make_fairness,
                       measure_step_times, plan_fingerprint, refine, rounding_costs)
from fqopt.errors import UserError
from fqopt.plan import AllocationPlan
from fqopt.quantizers import fake_quantize
from fqopt.units import discover_units, quantizable_layers
from tests.fixtures import random_weight_run, randomize_batchnorm

FAST = dict(epochs=1, finetune_epochs=0, batch_size=48, evaluate=False)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A run with a random-weight test_resnet on a small synthderm (no training needed)."""
    return random_weight_run(tmp_path_factory.mktemp("baq") / "run", samples=240,
                             batchnorm=True)


def mixed_plan(run, seed=0, granularity="channel", budget_slack=None) -> AllocationPlan:
    """A plan with random bits in {2, 3, 4, 6, 8}, the default pins at 8 bits."""
    model = run.model()
    units = discover_units(model, granularity)
    rng = np.random.default_rng(seed)
    bits = rng.choice([2, 3, 4, 6], size=len(units))
    for name, b in units.pinned_units().items():
        bits[units.names.index(name)] = b
    plan = AllocationPlan.from_unit_bits(units, bits, model=run.model_name,
                                         bits=[2, 3, 4, 6, 8])
    if budget_slack is not None:
        plan.budget = {"kind": "avg_bits", "value": plan.avg_bits + budget_slack}
    return plan


# ------------------------------------------------------------------ differentiable bits
@pytest.mark.parametrize("method", ["maxabs", "mse"])
def test_fractional_quantizer_is_q_at_integers_and_interpolates(method):
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3)
    bits = torch.tensor([2.0, 3.0, 4.0, 5.0, 7.0, 8.0])
    assert torch.equal(fractional_fake_quantize(w, bits, method),
                       fake_quantize(w, bits.long(), method))
    frac = torch.tensor([2.25, 3.5, 4.75, 5.0, 7.9, 8.0])
    lo = torch.tensor([2, 3, 4, 5, 7, 7])
    alpha = (frac - lo).view(-1, 1, 1, 1)
    expected = (1 - alpha) * fake_quantize(w, lo, method) + alpha * fake_quantize(w, lo + 1,
                                                                                  method)
    torch.testing.assert_close(fractional_fake_quantize(w, frac, method), expected)
    # one bit-width for the whole layer (0-d tensor)
    assert torch.equal(fractional_fake_quantize(w, torch.tensor(4.0), method),
                       fake_quantize(w, 4, method))


def test_fractional_gradients():
    torch.manual_seed(1)
    w = torch.randn(5, 7, requires_grad=True)
    b = torch.tensor([2.0, 3.3, 4.0, 6.5, 8.0], requires_grad=True)
    g = torch.randn(5, 7)
    (fractional_fake_quantize(w, b) * g).sum().backward()
    assert torch.equal(w.grad, g)  # straight-through to the weights
    lo = torch.tensor([2, 3, 4, 6, 7])
    d = fake_quantize(w, lo + 1) - fake_quantize(w, lo)
    torch.testing.assert_close(b.grad, (d * g).sum(dim=1))
    assert (b.grad != 0).all()     # at integers too: the right derivative, never zero


def test_cross_entropy_alone_moves_the_bits_and_matches_finite_differences():
    """λ_f = λ_budget = 0: the task loss gives every learnable bit-width a gradient, equal to a
    finite difference of the loss. FairQuant's construction gives none."""
    from fqopt import models

    torch.manual_seed(0)
    model = randomize_batchnorm(models.create("test_resnet", 4)).double().eval()
    units = discover_units(model, "layer")
    plan_bits = np.array([8 if n in units.pinned else 3 + i % 4
                          for i, n in enumerate(units.names)])
    bw = BitWidths(units, plan_bits, fixed=units.pinned).double()
    modules = dict(quantizable_layers(model))
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    y = torch.arange(4)

    def loss_fn():
        logits = torch.func.functional_call(model, bw.quantized_weights(modules), (x,))
        return torch.nn.functional.cross_entropy(logits, y)

    loss_fn().backward()
    grads = [p.grad for p in bw.params]
    assert len(grads) == len(units) - len(units.pinned)
    assert all(g is not None and torch.isfinite(g).all() and g.abs() > 0 for g in grads)
    h = 1e-5
    for i in (0, len(bw.params) // 2, len(bw.params) - 1):
        with torch.no_grad():
            base = loss_fn().item()
            bw.params[i] += h
            moved = loss_fn().item()
            bw.params[i] -= h
        fd = (moved - base) / h
        assert fd == pytest.approx(bw.params[i].grad.item(), rel=1e-3, abs=1e-9)

    # FairQuant: b = round_ste(β), ŵ = w + stopgrad(Q_b(w) − w): β gets no task gradient
    beta = torch.tensor(4.2, requires_grad=True)
    b_q = beta + (torch.round(beta) - beta).detach()
    overrides = {}
    for name, m in modules.items():
        q = fake_quantize(m.weight, int(b_q.item()))
        overrides[f"{name}.weight"] = m.weight + (q - m.weight).detach()
    logits = torch.func.functional_call(model, overrides, (x,))
    torch.nn.functional.cross_entropy(logits, y).backward()
    assert beta.grad is None


def test_refine_step_gives_bits_a_task_gradient(small_run):
    """Through refine's own step, with both weights at zero."""
    from fqopt.baq._refine import _prepare

    plan = mixed_plan(small_run)
    session, settings, _ = _prepare(small_run, plan, lambda_fair=0.0, lambda_budget=0.0,
                                    batch_size=32)
    bw = session._bit_widths()
    opt = session._optimizer(settings, bw)
    fair = make_fairness("range", small_run.dataset().num_groups)
    al = AugmentedLagrangian(rho=0.0)
    _, x, y, g = next(session._batches(0, settings, "bits"))
    before = [p.detach().clone() for p in bw.params]
    session.model.train()
    session._step(x, y, g, settings, opt, fair, bw=bw, al=al, cap_g=session._constraint_fn())
    grads = torch.cat([p.grad.reshape(-1) for p in bw.params])
    assert torch.isfinite(grads).all()
    assert (grads != 0).float().mean() > 0.9
    moved = torch.cat([(p.detach() - b).reshape(-1) for p, b in zip(bw.params, before)])
    assert (moved != 0).any()


# ------------------------------------------------------------------------ loss terms
def test_fairness_terms():
    losses = torch.tensor([0.5, 2.0, 1.0, 0.0], requires_grad=True)
    present = torch.tensor([True, True, True, False])
    assert make_fairness("range", 4)(losses, present).item() == pytest.approx(1.5)
    assert make_fairness("worst", 4)(losses, present).item() == pytest.approx(2.0)
    assert make_fairness("cvar:0.5", 4)(losses, present).item() == pytest.approx(1.5)  # ⌈1.5⌉=2
    assert make_fairness("cvar:0.3", 4)(losses, present).item() == pytest.approx(2.0)
    assert make_fairness("range", 4)(losses, torch.tensor([False, True, False, False])) == 0
    dro = make_fairness("dro:1.0", 4)
    first = dro(losses, present).item()
    # weights start uniform, then tilt to the worst group; the absent group keeps its weight
    q = torch.exp(torch.tensor([0.5, 2.0, 1.0, 0.0], dtype=torch.float64))
    q[3] = 1.0
    q = q / q.sum()
    torch.testing.assert_close(dro.q, q)
    expected = float((q[:3] * torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)).sum()
                     / q[:3].sum())
    assert first == pytest.approx(expected)
    for bad in ("median", "cvar:2", "dro:-1", "worst:3", "cvar:x"):
        with pytest.raises(UserError):
            make_fairness(bad, 4)


def test_group_losses():
    per = torch.tensor([1.0, 3.0, 2.0, 4.0])
    g = torch.tensor([0, 0, 2, 2])
    losses, present = group_losses(per, g, 3)
    assert losses.tolist() == [2.0, 0.0, 3.0]
    assert present.tolist() == [True, False, True]


def test_augmented_lagrangian():
    al = AugmentedLagrangian(rho=2.0, mu=0.5)
    g = torch.tensor(0.25, requires_grad=True)
    al.penalty(g).backward()
    assert g.grad.item() == pytest.approx(0.5 + 2.0 * 0.25)
    g2 = torch.tensor(-1.0, requires_grad=True)
    assert al.penalty(g2).item() == pytest.approx(-0.5 ** 2 / 4)   # μ+ρg < 0: flat
    al.update(0.25)
    assert al.mu == pytest.approx(1.0)
    al.update(-10.0)
    assert al.mu == 0.0
    off = AugmentedLagrangian(rho=0.0)
    assert off.penalty(torch.tensor(5.0)).item() == 0.0


def test_rounding_costs_keep_an_integer_plan_at_its_budget():
    from fqopt.solvers import AllocationProblem, solve

    rng = np.random.default_rng(3)
    bits = np.array([2, 3, 4, 6, 8])
    b_star = rng.choice(bits, size=40).astype(float)
    sizes = rng.integers(5, 50, size=40)
    costs = rounding_costs(b_star, bits, sizes)
    assert costs.shape == (40, 1, 5)
    k = np.searchsorted(bits, b_star)
    assert np.allclose(costs[np.arange(40), 0, k], 0.0)
    # convex in the bits, asymmetric: one bit below costs 4x what one bit above saves
    one = rounding_costs([3.0], [2, 3, 4], [1.0])[0, 0]
    assert one[0] == pytest.approx(-4 * one[2])
    budget = float((sizes * b_star).sum() / sizes.sum())
    problem = AllocationProblem(costs=costs, bits=bits, sizes=sizes, budget=budget,
                                objective="balanced")
    for backend in ("cpsat", "lagrange"):
        res = solve(problem, backend)
        assert np.array_equal(res.assignment, b_star.astype(int)), backend


# -------------------------------------------------------------------------- refine
def test_refine_meets_the_budget_exactly_as_the_solver_reports(small_run, tmp_path):
    plan = mixed_plan(small_run, seed=1)
    budget = plan.avg_bits - 0.25
    res = refine(small_run, plan, budget=budget, allow_over_budget=True, epochs=1,
                 finetune_epochs=1, batch_size=32, bit_lr=0.2, out_dir=tmp_path / "r")
    assert res.plan.avg_bits <= budget
    assert res.plan.avg_bits == res.rounding["budget_used"]
    assert res.rounding["status"] in ("optimal", "feasible")
    assert res.plan.budget == {"kind": "avg_bits", "value": budget}
    # recomputed independently from the assignments and the model's shapes
    units = discover_units(small_run.model(), "channel")
    b = res.plan.unit_bits(units)
    assert (units.sizes * b).sum() <= math.floor(budget * units.sizes.sum())
    for layer, pinned in units.pinned.items():          # pins kept
        assert set(res.plan.layer_bits()[layer].tolist()) == {pinned}
    assert set(np.unique(b)) <= {2, 3, 4, 6, 8}
    assert [h["phase"] for h in res.history] == ["bits", "finetune"]
    # the outputs: the refined weights with the plan give the reported figures
    model, plan2 = load_refined(res.out_dir)
    assert plan2.assignments == res.plan.assignments
    assert res.plan.quantizer == plan2.quantizer == plan.quantizer  # the plan's own quantizer
    from fqopt.evaluation import evaluate

    rep = evaluate(model, small_run.dataset(), "test", plan=plan2)
    assert rep.avg_acc == res.report_test.avg_acc
    assert rep.worst_acc == res.report_test.worst_acc
    for name in ("refine.json", "history.json", "report_test.json", "static_report_test.json"):
        assert (res.out_dir / name).is_file()
    assert res.static_report_test is not None


def test_budget_term_pulls_the_bits_under_the_budget(small_run, tmp_path):
    plan = mixed_plan(small_run, seed=2)
    budget = plan.avg_bits - 0.6
    res = refine(small_run, plan, budget=budget, allow_over_budget=True, epochs=2,
                 finetune_epochs=0, batch_size=48, bit_lr=0.3, lambda_budget=5.0,
                 evaluate=False, out_dir=tmp_path / "r")
    rows = [h for h in res.history if h["phase"] == "bits"]
    assert rows[-1]["avg_bits"] < plan.avg_bits - 0.3    # the learned bits went down
    assert res.plan.avg_bits <= budget


def test_resume_continues_where_it_stopped(small_run, tmp_path):
    plan = mixed_plan(small_run, seed=3, granularity="layer")
    opts = dict(batch_size=48, bit_lr=0.1, evaluate=False)
    straight = refine(small_run, plan, epochs=2, finetune_epochs=1, out_dir=tmp_path / "a",
                      **opts)

    class Stop(Exception):
        pass

    def interrupt(stage, done, total, **info):   # dies in the middle of epoch 2
        if stage.startswith("refine 2/") and done == 2:
            raise Stop

    with pytest.raises(Stop):
        refine(small_run, plan, epochs=2, finetune_epochs=1, out_dir=tmp_path / "b",
               callback=interrupt, **opts)
    stages = []
    resumed = refine(small_run, plan, epochs=2, finetune_epochs=1, out_dir=tmp_path / "b",
                     callback=lambda s, d, t, **i: stages.append(s), **opts)
    assert not any(s.startswith("refine 1/") for s in stages)    # epoch 1 was not redone
    assert any(s.startswith("refine 2/") for s in stages)
    np.testing.assert_array_equal(resumed.continuous_bits, straight.continuous_bits)
    assert resumed.plan.assignments == straight.plan.assignments
    a = torch.load(straight.checkpoint, weights_only=True)
    b = torch.load(resumed.checkpoint, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 1]

    # more epochs later: continues from epoch 2
    stages.clear()
    longer = refine(small_run, plan, epochs=3, finetune_epochs=1, out_dir=tmp_path / "b",
                    callback=lambda s, d, t, **i: stages.append(s), **opts)
    assert {s.split()[1] for s in stages if s.startswith("refine")} == {"3/3"}
    assert [(h["phase"], h["epoch"]) for h in longer.history] == [
        ("bits", 1), ("bits", 2), ("bits", 3), ("finetune", 1)]
    with pytest.raises(UserError, match="more than the 2"):
        refine(small_run, plan, epochs=2, finetune_epochs=1, out_dir=tmp_path / "b", **opts)


def test_checkpoint_of_another_plan_or_settings_is_refused(small_run, tmp_path):
    out = tmp_path / "r"
    plan_a, plan_b = mixed_plan(small_run, seed=4), mixed_plan(small_run, seed=5)
    assert plan_fingerprint(plan_a) != plan_fingerprint(plan_b)
    refine(small_run, plan_a, out_dir=out, **FAST)
    with pytest.raises(UserError, match="written for another plan.*--force"):
        refine(small_run, plan_b, out_dir=out, **FAST)
    with pytest.raises(UserError, match="other settings.*lambda_fair"):
        refine(small_run, plan_a, out_dir=out, lambda_fair=0.1, **FAST)
    with pytest.raises(UserError, match="resuming is off"):
        refine(small_run, plan_a, out_dir=out, resume=False, **FAST)
    res = refine(small_run, plan_b, out_dir=out, force=True, **FAST)
    assert res.plan.meta["refined_from"] == plan_fingerprint(plan_b)
    # a truncated checkpoint
    state = out / "baq_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(UserError, match="cannot be read.*--force"):
        refine(small_run, plan_b, out_dir=out, **FAST)
    # outputs without a checkpoint are not overwritten
    state.unlink()
    with pytest.raises(UserError, match="already holds a refinement"):
        refine(small_run, plan_b, out_dir=out, **FAST)


# ------------------------------------------------------------------------ RefineConfig
def test_min_finetune_steps_sets_the_epochs_of_a_small_split():
    c = RefineConfig(finetune_epochs=2, min_finetune_steps=100)
    assert c.finetune_epochs_for(50) == 2            # 2 × 50 steps already reach 100
    assert c.finetune_epochs_for(4) == 25            # 256 images at batch 64
    assert c.finetune_epochs_for(16) == 7            # 1,024 images: ⌈100 / 16⌉
    assert c.finetune_epochs_for(300) == 2           # never fewer than asked
    assert RefineConfig(finetune_epochs=2).finetune_epochs_for(4) == 2
    assert RefineConfig(finetune_epochs=0, min_finetune_steps=100).finetune_epochs_for(4) == 0


def test_refine_runs_at_least_min_finetune_steps(small_run, tmp_path):
    """The small run's train split has few batches: the fine-tune takes as many epochs as the
    minimum needs, counted from the steps it really ran."""
    plan = mixed_plan(small_run, seed=2)
    n_train = len(small_run.dataset().split("train"))
    per_epoch = n_train // 32
    assert 1 <= per_epoch < 10
    res = refine(small_run, plan, epochs=0, finetune_epochs=1, batch_size=32,
                 min_finetune_steps=10, out_dir=tmp_path / "m", evaluate=False)
    ft = [h for h in res.history if h["phase"] == "finetune"]
    assert len(ft) == math.ceil(10 / per_epoch)
    assert sum(h["steps"] for h in ft) >= 10


@pytest.mark.parametrize("field, value, message", [
    ("epochs", -1, "epochs must be an integer ≥ 0, got -1"),
    ("finetune_epochs", 1.5, "finetune_epochs must be an integer"),
    ("epochs", True, "epochs must be an integer"),
    ("fairness", "gini", "unknown fairness term 'gini'"),
    ("fairness", "cvar:2", "α must lie in"),
    ("lambda_fair", -0.1, "lambda_fair must be a number ≥ 0"),
    ("lambda_budget", float("nan"), "lambda_budget must be a number ≥ 0"),
    ("bit_lr", "0.1", "bit_lr must be a number ≥ 0"),
    ("weight_decay", -1, "weight_decay must be a number ≥ 0"),
    ("lr", 0, "lr must be a positive number"),
    ("batch_size", 0, "batch_size must be a positive integer"),
    ("steps_per_epoch", 0, "steps_per_epoch must be a positive integer or None"),
    ("min_finetune_steps", 0, "min_finetune_steps must be a positive integer or None"),
    ("min_finetune_steps", 2.5, "min_finetune_steps must be a positive integer or None"),
    ("quantizer", "lsq", "unknown quantizer 'lsq'; expected one of maxabs, mse"),
    ("solver", "gurobi", "unknown solver 'gurobi'"),
])
def test_refine_config_validates_each_field(field, value, message):
    with pytest.raises(UserError, match=message):
        RefineConfig(**{field: value})
    with pytest.raises(UserError, match=message):       # the keyword form checks the same
        RefineConfig.build(RefineConfig(), **{field: value})
    with pytest.raises(UserError, match=r"unknown refine option\(s\) \['nonsense'\]"):
        RefineConfig.build(None, nonsense=1)


def test_refine_config_dict_round_trip():
    import json

    config = RefineConfig(budget=np.float64(3.5), budget_kind="avg_bits", fairness="cvar:0.3",
                          epochs=np.int64(2), bits=[2, 4, 8], pin=["conv1", "fc"],
                          quantizer="maxabs", solver="cpsat", seed=7, device="cpu",
                          steps_per_epoch=5, balanced=True)
    d = json.loads(json.dumps(config.to_dict()))      # plain JSON, no numpy scalars
    assert d["schema"] == "fqopt.refine_config/1" and d["bits"] == [2, 4, 8]
    back = RefineConfig.from_dict(d)
    assert back == config and back.bits == (2, 4, 8) and back.pin == ("conv1", "fc")
    assert RefineConfig.from_dict(RefineConfig().to_dict()) == RefineConfig()
    with pytest.raises(UserError, match="schema 'fqopt.refine_config/0'"):
        RefineConfig.from_dict({**d, "schema": "fqopt.refine_config/0"})
    with pytest.raises(UserError, match=r"unknown refine option\(s\) \['momentum'\]"):
        RefineConfig.from_dict({**d, "momentum": 0.9})
    with pytest.raises(UserError, match="lr must be a positive number"):
        RefineConfig.from_dict({**d, "lr": -1})


def test_refine_with_a_config_is_refine_with_keywords(small_run, tmp_path):
    """Same settings fingerprint, so a config call resumes a keyword call's checkpoint, and the
    same result."""
    from fqopt.baq._refine import _prepare

    plan = mixed_plan(small_run, seed=8)
    keywords = dict(fairness="worst", lambda_fair=0.2, epochs=1, finetune_epochs=1,
                    batch_size=48, seed=3)
    config = RefineConfig(**keywords)
    assert (_prepare(small_run, plan, config)[1] == _prepare(small_run, plan, **keywords)[1]
            == _prepare(small_run, plan, RefineConfig(fairness="range"), **keywords)[1])
    by_keywords = refine(small_run, plan, out_dir=tmp_path / "a", evaluate=False, **keywords)
    by_config = refine(small_run, plan, config, out_dir=tmp_path / "b", evaluate=False)
    assert by_config.settings == by_keywords.settings
    assert by_config.plan.assignments == by_keywords.plan.assignments
    np.testing.assert_array_equal(by_config.continuous_bits, by_keywords.continuous_bits)
    # the keyword run's checkpoint is this config's: it resumes, it does not refuse
    stages = []
    again = refine(small_run, plan, config, out_dir=tmp_path / "a", evaluate=False,
                   callback=lambda s, d, t, **i: stages.append(s))
    assert not any(s.startswith(("refine", "fine-tune")) for s in stages)
    assert again.plan.assignments == by_keywords.plan.assignments
    # a config override is a setting like any other
    with pytest.raises(UserError, match="other settings.*lambda_fair"):
        refine(small_run, plan, config, out_dir=tmp_path / "a", evaluate=False, lambda_fair=0.3)


def test_bad_budgets(small_run, tmp_path):
    plan = mixed_plan(small_run, seed=6, budget_slack=0.0)
    with pytest.raises(UserError, match=r"over the budget"):
        refine(small_run, plan, budget=plan.avg_bits - 0.5, out_dir=tmp_path / "a", **FAST)
    with pytest.raises(UserError, match=r"infeasible.*at least"):
        refine(small_run, plan, budget=1.5, allow_over_budget=True, out_dir=tmp_path / "b",
               **FAST)
    # a plan whose own avg_bits exceeds its recorded budget
    plan.budget = {"kind": "avg_bits", "value": plan.avg_bits - 0.1}
    with pytest.raises(UserError, match="over the budget"):
        refine(small_run, plan, out_dir=tmp_path / "c", **FAST)
    for kwargs in ({"epochs": -1}, {"lr": 0}, {"fairness": "gini"}, {"quantizer": "lsq"},
                   {"batch_size": 0}, {"nonsense": 1}):
        with pytest.raises((UserError, TypeError)):
            refine(small_run, plan, out_dir=tmp_path / "d", **{**FAST, **kwargs})


def test_layer_plan_size_budget_and_defaults(small_run):
    """Layer granularity, a size_bytes budget, and the default output folder."""
    plan = mixed_plan(small_run, seed=7, granularity="layer")
    budget = plan.size_bytes - 2000
    res = refine(small_run, plan, budget=budget, budget_kind="size_bytes",
                 allow_over_budget=True, solver="cpsat", fairness="dro", **FAST)
    assert res.plan.size_bytes <= budget
    assert res.plan.granularity == "layer"
    assert res.out_dir == small_run.path / "refined" / f"plan-{plan_fingerprint(plan)[:10]}"


def test_measure_step_times(small_run):
    out = measure_step_times(small_run, mixed_plan(small_run), steps=2, batch_size=48)
    assert out["refine_step_s"] > 0 and out["fixed_step_s"] > 0
    assert out["ratio"] == pytest.approx(out["refine_step_s"] / out["fixed_step_s"])


def test_fixed_bit_weights_are_the_plan(small_run):
    from fqopt.apply import plan_layer_bits, quantized_weights

    model = small_run.model()
    plan = mixed_plan(small_run)
    modules = {n: m for n, m in quantizable_layers(model)}
    ours = fixed_bit_weights(modules, plan_layer_bits(plan))
    ref = quantized_weights(model, plan)
    assert all(torch.equal(ours[f"{n}.weight"], ref[n]) for n in ref)


# ---------------------------------------------------------------------------- CLI
def _cli(capsys, *argv):
    from fqopt.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_refine(small_run, tmp_path, capsys):
    plan = mixed_plan(small_run, seed=8, budget_slack=0.1)
    path = tmp_path / "p.json"
    plan.save(path)
    out = tmp_path / "out"
    code, stdout, err = _cli(capsys, "refine", "--run", small_run.path, "--plan", path,
                             "--epochs", 1, "--finetune-epochs", 1, "--batch-size", 32,
                             "--out", out, "--format", "json")
    assert code == 0, err
    import json

    summary = json.loads(stdout)
    assert summary["refined"]["avg_bits"] <= plan.avg_bits + 0.1
    assert summary["budget"] == {"kind": "avg_bits", "value": plan.avg_bits + 0.1}
    assert (out / "plan.json").is_file() and (out / "model.pt").is_file()
    # a finished refinement is kept: the same command again is refused, --force redoes it
    weights = (out / "model.pt").read_bytes()
    again = ["refine", "--run", small_run.path, "--plan", path, "--epochs", 1,
             "--finetune-epochs", 1, "--batch-size", 32, "--out", out]
    code, stdout, err = _cli(capsys, *again)
    assert code == 2 and "finished refinement" in err and "--force" in err, err
    assert (out / "model.pt").read_bytes() == weights
    code, stdout, err = _cli(capsys, *again, "--force")
    assert code == 0, err
    assert "refined plan" in stdout and "test worst_acc" in stdout

    # bad input: one line, exit code 2
    other = mixed_plan(small_run, seed=9)
    other_path = tmp_path / "other.json"
    other.save(other_path)
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text(path.read_text()[:200])
    unfinished = tmp_path / "unfinished"   # a checkpoint of `path`'s refinement, no outputs
    unfinished.mkdir()
    (unfinished / "baq_state.pt").write_bytes((out / "baq_state.pt").read_bytes())
    cases = [
        (["--plan", path, "--budget", plan.avg_bits - 0.5], "over the budget"),
        (["--plan", path, "--budget", 1.0], "infeasible"),
        (["--plan", other_path, "--out", out], "finished refinement"),
        (["--plan", other_path, "--out", unfinished], "another plan"),
        (["--plan", corrupt], "not valid JSON"),
        (["--plan", path, "--fairness", "gini"], "unknown fairness"),
    ]
    for args, needle in cases:
        code, stdout, err = _cli(capsys, "refine", "--run", small_run.path, "--epochs", 1,
                                 "--batch-size", 32, *args)
        assert code == 2, (args, err)
        assert needle in err
        assert len(err.strip().splitlines()) == 1
