"""Group-aware sensitivity profiling (docs/design.md §4.2), checked against independent computations."""

import copy
import json
import re

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from fqopt.data._base import FairDataset
from fqopt.errors import UserError
from fqopt.profiling import (METHODS, Calibration, profile, register_method,
                             select_calibration)
from fqopt.quantizers import fake_quantize
from fqopt.sensitivity import SensitivityTable
from fqopt.units import discover_units
from tests.fixtures import random_weight_run

BITS = (2, 3, 4, 6, 8)


class RandomFair(FairDataset):
    """Random images whose mean brightness carries the label (so gradients are not pure noise)."""

    def __init__(self, n=60, num_groups=3, size=8, seed=0, groups=None):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 3, n)
        groups = rng.integers(0, num_groups, n) if groups is None else np.asarray(groups)
        super().__init__(name="randomfair", class_names=["a", "b", "c"],
                         group_names=[f"g{i}" for i in range(num_groups)], labels=labels,
                         groups=groups, image_size=size, attribute="tone",
                         splits={"train": np.arange(n)})
        base = rng.integers(0, 120, (n, size, size, 3)) + 60 * labels[:, None, None, None]
        self.images = base.astype(np.uint8)

    def load_images(self, indices):
        return self.images[np.asarray(indices)]


def small_model(seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                      nn.Conv2d(4, 5, 3, padding=1, bias=False), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))
    with torch.no_grad():
        m[1].running_mean.uniform_(-0.2, 0.2)
        m[1].running_var.uniform_(0.5, 2.0)
    return m.eval()


def _weights(m):
    return [mod.weight for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]


def _unit_sum(t, granularity):
    t = t.detach().double()
    return t.sum().reshape(1) if granularity == "layer" else t.reshape(t.shape[0], -1).sum(1)


def _per_sample_grads(m, ds, idx):
    """Per-sample gradients of the cross-entropy w.r.t. every layer weight (a plain loop)."""
    m = copy.deepcopy(m).eval()
    out = []
    for i in idx:
        x, y, _ = ds.get_batch([i])
        loss = F.cross_entropy(m(x), y)
        out.append([g.detach() for g in torch.autograd.grad(loss, _weights(m))])
    return out


def _taylor_costs(m, ds, curvature_and_mean, granularity, bits=BITS, first_order=False):
    """costs [U, G, K] from per-group (ḡ, curvature) lists, computed without fqopt.profiling."""
    ws = _weights(m)
    rows = []
    for g in range(ds.num_groups):
        gbar, curv = curvature_and_mean(g)
        per_layer = []
        for li, w in enumerate(ws):
            cols = []
            for b in bits:
                d = fake_quantize(w, b) - w.detach()
                c = 0.5 * _unit_sum(curv[li] * d * d, granularity)
                if first_order:
                    c = c + _unit_sum(gbar[li] * d, granularity)
                cols.append(c)
            per_layer.append(torch.stack(cols, 1))
        rows.append(torch.cat(per_layer))
    return torch.stack(rows, 1).numpy()


@pytest.fixture(scope="module")
def ds():
    return RandomFair()


# ------------------------------------------------------------------ estimators, exactly
@pytest.mark.parametrize("granularity", ["layer", "channel"])
@pytest.mark.parametrize("first_order", [False, True])
def test_fisher_with_batch_size_one_is_the_per_sample_empirical_fisher(ds, granularity,
                                                                       first_order):
    m = small_model()
    table = profile(m, ds, "train", method="fisher", granularity=granularity, batch_size=1,
                    first_order=first_order, quantizer="maxabs")
    grads = _per_sample_grads(m, ds, np.arange(len(ds)))

    def stats(g):
        members = [grads[i] for i in np.flatnonzero(ds.groups == g)]
        gbar = [torch.stack(t).mean(0) for t in zip(*members)]
        fisher = [torch.stack(t).pow(2).mean(0) for t in zip(*members)]
        return gbar, fisher

    expect = _taylor_costs(m, ds, stats, granularity, first_order=first_order)
    np.testing.assert_allclose(table.costs, expect, rtol=1e-4, atol=1e-6 * np.abs(expect).max())
    assert (table.costs >= 0).all() or first_order


def test_fisher_batch_estimator_one_batch_per_group(ds):
    """With one batch per group the estimator is n_g·ḡ_g², ḡ_g the group's mean-loss gradient."""
    m = small_model(1)
    table = profile(m, ds, "train", method="fisher", granularity="channel", batch_size=1000,
                    quantizer="maxabs")

    def stats(g):
        x, y, _ = ds.get_batch(np.flatnonzero(ds.groups == g))
        gbar = [t.detach() for t in torch.autograd.grad(F.cross_entropy(m(x), y), _weights(m))]
        return gbar, [len(y) * t * t for t in gbar]

    np.testing.assert_allclose(table.costs, _taylor_costs(m, ds, stats, "channel"), rtol=1e-4,
                               atol=1e-12)


def test_hutchinson_converges_to_the_exact_hessian_diagonal():
    """Softmax regression: diag H[c, j] = mean_i p_ic (1 - p_ic) x_ij² in closed form."""
    data = RandomFair(n=40, num_groups=2, size=3, seed=4)
    torch.manual_seed(2)
    m = nn.Sequential(nn.Flatten(), nn.Linear(27, 3)).eval()
    table = profile(m, data, "train", method="hutchinson", granularity="channel", bits=(2, 4),
                    batch_size=1000, hutchinson_probes=400, seed=1, quantizer="maxabs")
    w = m[1].weight
    for g in range(2):
        x, _, _ = data.get_batch(np.flatnonzero(data.groups == g))
        x = x.flatten(1)
        with torch.no_grad():
            p = torch.softmax(m(x), 1)
        diag = ((p * (1 - p)).T @ (x * x)) / len(x)
        for k, b in enumerate((2, 4)):
            d = fake_quantize(w, b) - w.detach()
            exact = 0.5 * (diag * d * d).sum(1).double().numpy()
            np.testing.assert_allclose(table.costs[:, g, k], exact, rtol=0.15)


def test_measured_is_the_loss_change_of_each_layer_alone(ds):
    m = small_model(2)
    table = profile(m, ds, "train", method="measured", granularity="layer", bits=(2, 4, 8),
                    batch_size=7, quantizer="maxabs")

    def group_losses(model):
        x, y, g = ds.get_batch(np.arange(len(ds)))
        with torch.no_grad():
            loss = F.cross_entropy(model(x), y, reduction="none").double()
        return np.array([loss[g == k].mean().item() for k in range(ds.num_groups)])

    base = group_losses(m)
    for li in range(3):
        for k, b in enumerate((2, 4, 8)):
            q = copy.deepcopy(m)
            w = _weights(q)[li]
            with torch.no_grad():
                w.copy_(fake_quantize(w, b))
            # float32 losses of batches of 7 vs one batch: agree to float32 resolution
            np.testing.assert_allclose(table.costs[li, :, k], group_losses(q) - base,
                                       rtol=1e-5, atol=5e-7)
            assert np.abs(table.costs[li, :, k]).max() > 5e-6 or b == 8


@pytest.mark.parametrize("method", ["gradient", "grape"])
def test_fairquant_importance_costs_and_scores(ds, method):
    m = small_model(3)
    table = profile(m, ds, "train", method=method, granularity="channel", batch_size=1000,
                    quantizer="maxabs")
    ws = _weights(m)
    maps = []
    for g in range(ds.num_groups):
        x, y, _ = ds.get_batch(np.flatnonzero(ds.groups == g))
        grads = torch.autograd.grad(F.cross_entropy(m(x), y), ws)
        maps.append([gr.abs() if method == "gradient" else (w.detach() * gr) ** 2
                     for w, gr in zip(ws, grads)])
    for g in range(ds.num_groups):
        col = 0
        for li, w in enumerate(ws):
            n = w.shape[0]
            s = _unit_sum(maps[g][li], "channel").numpy()
            np.testing.assert_allclose(table.extras["scores"][col:col + n, g],
                                       s / w[0].numel(), rtol=1e-5)
            wn = _unit_sum(w * w, "channel").numpy()
            for k, b in enumerate(BITS):
                d = fake_quantize(w, b) - w.detach()
                rel = _unit_sum(d * d, "channel").numpy() / wn
                np.testing.assert_allclose(table.costs[col:col + n, g, k], s * rel, rtol=1e-5)
            col += n
    # FairQuant's group combinations, per weight, then the unit mean
    mass = [sum(t.sum().item() for t in maps[g]) for g in range(ds.num_groups)]
    total = sum(mass)
    col = 0
    for li, w in enumerate(ws):
        n, per = w.shape[0], w[0].numel()
        stack = torch.stack([maps[g][li] for g in range(ds.num_groups)])
        for rule, comb in (("max", stack.amax(0)), ("mean", stack.mean(0)),
                           ("balanced", torch.stack([stack[g] / (mass[g] / total)
                                                     for g in range(ds.num_groups)]).amax(0))):
            np.testing.assert_allclose(table.extras[f"scores_{rule}"][col:col + n],
                                       _unit_sum(comb, "channel").numpy() / per, rtol=1e-5)
        col += n


# ------------------------------------------------------------------ the table's contract
@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=3)


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_table_matches_model_and_data(resnet, ds, granularity, tmp_path):
    data = RandomFair(n=45, num_groups=4, size=16, seed=7)
    table = profile(resnet, data, "train", granularity=granularity, bits=(2, 4, 8),
                    model_name="test_resnet")
    units = discover_units(resnet, granularity, input_size=(3, 16, 16))
    assert table.units == units.names
    assert table.costs.shape == (len(units), 4, 3)
    assert table.sizes.tolist() == units.sizes.tolist()
    assert table.macs.tolist() == units.macs.tolist() and (table.macs > 0).all()
    assert table.groups == data.group_names
    assert table.group_counts.tolist() == np.bincount(data.groups, minlength=4).tolist()
    assert table.bits.tolist() == [2, 4, 8]
    assert np.isfinite(table.costs).all() and (table.costs >= 0).all()
    # coarser quantization of a whole layer predicts a larger loss rise (summed over units)
    assert (table.costs[:, :, 0].sum(0) > table.costs[:, :, 2].sum(0)).all()
    meta = table.meta
    for key in ("model", "dataset", "method", "granularity", "seed", "fqopt_version",
                "quantizer", "shapes", "pinned", "ties", "float_params", "kinds", "bits",
                "calib_samples"):
        assert key in meta, key
    assert meta["model"] == "test_resnet" and meta["method"] == "fisher"
    assert meta["pinned"] == {"conv1.0": 8, "fc": 8}
    assert meta["shapes"]["fc"] == [3, 96] and meta["kinds"]["fc"] == "Linear"
    path = tmp_path / "t.npz"
    table.save(path)
    back = SensitivityTable.load(path)
    assert back.units == table.units and back.meta == json.loads(json.dumps(meta))
    np.testing.assert_array_equal(back.costs, table.costs)
    from fqopt.sensitivity import table_unit_set

    assert table_unit_set(back).names == units.names


@pytest.mark.parametrize("method", ["fisher", "hutchinson", "gradient", "grape", "measured"])
def test_profiling_leaves_the_model_exactly_as_it_was(resnet, method):
    data = RandomFair(n=24, num_groups=2, size=16, seed=8)
    m = copy.deepcopy(resnet).train()
    m.layer1.eval()                         # a mixed mode must survive too
    m.fc.bias.requires_grad_(False)
    snap = {k: v.clone() for k, v in m.state_dict().items()}
    modes = {n: mod.training for n, mod in m.named_modules()}
    flags = {n: p.requires_grad for n, p in m.named_parameters()}
    profile(m, data, "train", method=method, bits=(2, 8),
            granularity="layer" if method == "measured" else "channel")
    for k, v in m.state_dict().items():   # BatchNorm running stats and counters included
        assert torch.equal(v, snap[k]), k
    assert {n: mod.training for n, mod in m.named_modules()} == modes
    assert {n: p.requires_grad for n, p in m.named_parameters()} == flags
    assert all(p.grad is None for p in m.parameters())


def test_bn_statistics_frozen_even_if_a_method_fails(resnet, ds):
    @register_method("_explodes")
    class Explodes(METHODS["fisher"]):
        def run(self, ctx):
            assert not ctx.model.training
            ctx.model(torch.randn(4, 3, 16, 16))
            raise RuntimeError("boom")

    try:
        m = copy.deepcopy(resnet).train()
        snap = {k: v.clone() for k, v in m.state_dict().items()}
        with pytest.raises(RuntimeError, match="boom"):
            profile(m, RandomFair(n=12, size=16), "train", method="_explodes")
        assert m.training
        for k, v in m.state_dict().items():
            assert torch.equal(v, snap[k]), k
    finally:
        METHODS.unregister("_explodes")


@pytest.mark.parametrize("num_groups", [1, 3, 6])
def test_all_groups_in_one_pass(num_groups):
    """Every calibration sample goes through the model once, whatever the number of groups."""
    data = RandomFair(n=72, num_groups=num_groups, size=8, seed=num_groups)
    m = small_model()
    seen = []
    # (the all-zero sample of discover_units' MAC count is not calibration data)
    hook = m[0].register_forward_hook(
        lambda mod, inp, out: seen.append(inp[0].shape[0]) if inp[0].any() else None)
    try:
        profile(m, data, "train", method="fisher", batch_size=16)
    finally:
        hook.remove()
    assert sum(seen) == 72
    counts = np.bincount(data.groups, minlength=num_groups)
    assert len(seen) == sum(int(np.ceil(c / 16)) for c in counts if c)


def test_calibration_batches_are_group_homogeneous(ds):
    cal = Calibration(ds, np.arange(len(ds)), batch_size=8, seed=1)
    assert sorted(np.concatenate([i for _, i in cal.batches]).tolist()) == list(range(len(ds)))
    for g, idx in cal.batches:
        assert (ds.groups[idx] == g).all() and 1 <= len(idx) <= 8
    assert [g for g, _ in cal.batches] == sorted(g for g, _ in cal.batches)
    assert cal.group_counts.tolist() == np.bincount(ds.groups).tolist()


def test_select_calibration_is_stratified_and_seeded():
    groups = np.repeat([0, 1, 2, 3], [500, 300, 150, 50])
    idx = np.arange(1000)
    chosen = select_calibration(groups, idx, 100, seed=3)
    assert len(chosen) == 100 and len(np.unique(chosen)) == 100
    assert np.abs(np.bincount(groups[chosen]) - [50, 30, 15, 5]).max() <= 1
    assert np.array_equal(chosen, select_calibration(groups, idx, 100, seed=3))
    assert not np.array_equal(chosen, select_calibration(groups, idx, 100, seed=4))
    # a rare group keeps at least one sample
    rare = np.array([0] * 999 + [1])
    assert 1 in rare[select_calibration(rare, np.arange(1000), 10, seed=0)]
    skewed = np.repeat(np.arange(6), [995, 1, 1, 1, 1, 1])
    few = select_calibration(skewed, np.arange(1000), 6, seed=0)
    assert len(few) == 6 and sorted(skewed[few].tolist()) == [0, 1, 2, 3, 4, 5]
    assert np.array_equal(select_calibration(groups, idx, None), idx)


def test_calib_limits_the_samples(ds):
    table = profile(small_model(), ds, "train", calib=30, seed=2)
    assert table.group_counts.sum() == 30 and table.meta["calib_samples"] == 30


# ------------------------------------------------------------------ bad input
def test_empty_calibration_group(ds):
    data = RandomFair(n=30, num_groups=3, groups=[0, 1] * 15)
    with pytest.raises(UserError, match="no samples of group\\(s\\) g2 \\(attribute 'tone'"):
        profile(small_model(), data, "train")
    table = profile(small_model(), data, "train", allow_empty_groups=True)
    assert table.group_counts.tolist() == [15, 15, 0]
    assert (table.costs[:, 2] == 0).all() and (table.costs[:, :2].sum() > 0)


@pytest.mark.parametrize("kwargs,message", [
    (dict(method="measured", granularity="channel"), "measures whole layers only"),
    (dict(method="taylor"), "unknown sensitivity method 'taylor'"),
    (dict(bits=(1, 4)), "bits \\[1\\] outside the supported range 2-8"),
    (dict(bits=(4, 9)), "bits \\[9\\] outside the supported range 2-8"),
    (dict(bits=(2.5, 4)), "bits must be integers"),
    (dict(granularity="weight"), "unknown granularity 'weight'"),
    (dict(quantizer="lsq"), "unknown quantizer 'lsq'"),
    (dict(calib=0), "at least 1 sample"),
    (dict(batch_size=0), "batch size must be at least 1"),
    (dict(method="hutchinson", hutchinson_probes=0), "at least 1"),
])
def test_bad_arguments(ds, kwargs, message):
    with pytest.raises(UserError, match=message):
        profile(small_model(), ds, "train", **kwargs)


def test_table_with_nan_or_inf_costs_is_rejected(tmp_path):
    base = dict(bits=np.array([2, 4]), sizes=np.array([9, 9]), units=np.array(["a", "b"]),
                groups=np.array(["g0", "g1"]), group_counts=np.array([3, 4]))
    for bad, word in ((np.nan, "NaN"), (-np.inf, "-inf"), (np.inf, "+inf")):
        costs = np.zeros((2, 2, 2))
        costs[1, 0, 1] = bad
        path = tmp_path / f"bad_{word}.npz"
        np.savez(path, costs=costs, **base)
        with pytest.raises(UserError, match=re.escape(
                f"cost is {word} for unit 'b', group 'g0', 4 bits")):
            SensitivityTable.load(path)
    costs = np.zeros((2, 2, 2))
    np.savez(tmp_path / "ok.npz", costs=costs, scores=np.ones((2, 2)), **base)
    table = SensitivityTable.load(tmp_path / "ok.npz")
    assert list(table.extras) == ["scores"]


# ------------------------------------------------------------------ command line
@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A run folder with an untrained (random) model: enough to exercise the command."""
    return random_weight_run(tmp_path_factory.mktemp("runs") / "prof")


def test_cli_profile_writes_the_table(cli_run, capsys):
    from fqopt.cli import main

    rc = main(["profile", "--run", str(cli_run.path), "--calib", "60", "--bits", "2,4,8",
               "--granularity", "layer", "--format", "json"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    table = SensitivityTable.load(cli_run.table_path)
    assert summary["units"] == table.num_units == 16
    assert table.group_counts.sum() == 60 and table.groups == ["I", "II", "III", "IV", "V", "VI"]
    assert table.meta["model"] == "test_resnet" and table.meta["dataset"] == "synthderm"
    # never overwritten without --force
    rc = main(["profile", "--run", str(cli_run.path), "--calib", "60"])
    err = capsys.readouterr().err
    assert rc == 2 and "already exists" in err and len(err.strip().splitlines()) == 1
    rc = main(["profile", "--run", str(cli_run.path), "--calib", "60", "--method", "grape",
               "--force"])
    assert rc == 0
    assert SensitivityTable.load(cli_run.table_path).meta["method"] == "grape"


@pytest.mark.parametrize("args,message", [
    (["--bits", "2,9"], "--bits '2,9'"),
    (["--bits", "two"], "--bits must be a comma list"),
    (["--method", "measured"], "measured measures whole layers only"),
    (["--method", "oracle"], "--method 'oracle' is not a sensitivity method"),
    (["--pin", "ghost"], "cannot pin ['ghost']"),
    (["--calib", "3"], "no samples of group(s)"),
])
def test_cli_bad_input_is_one_line_exit_2(cli_run, capsys, args, message):
    from fqopt.cli import main

    rc = main(["profile", "--run", str(cli_run.path), "--out",
               str(cli_run.path / "other.npz")] + args)
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_cli_not_a_run(tmp_path, capsys):
    from fqopt.cli import main

    assert main(["profile", "--run", str(tmp_path / "nowhere")]) == 2
    assert "not a run folder" in capsys.readouterr().err
