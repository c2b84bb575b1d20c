"""Applying plans in place: quantized weights inside the block, exact restore after it."""

import copy

import numpy as np
import pytest
import timm
import torch
from torch import nn

import fqopt
from fqopt.apply import quantize_, quantized, quantized_layers, quantized_weights
from fqopt.errors import UserError
from fqopt.plan import AllocationPlan
from fqopt.quantizers import fake_quantize
from fqopt.units import discover_units


@pytest.fixture()
def model():
    torch.manual_seed(0)
    m = timm.create_model("test_resnet", num_classes=4).eval()
    # non-trivial BN statistics so that a forward pass depends on them
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    return m


def _layers(m):
    return {n: mod for n, mod in m.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))}


def _snapshot(m):
    """Exact copies of every parameter and buffer, compared bit for bit (as int32)."""
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _assert_bit_identical(m, snap):
    for k, v in m.state_dict().items():
        a, b = v.detach(), snap[k]
        if a.is_floating_point():
            assert torch.equal(a.view(torch.int32), b.view(torch.int32)), k
        else:
            assert torch.equal(a, b), k


def _channel_plan(m, seed=0):
    units = discover_units(m, "channel")
    ub = np.random.default_rng(seed).choice([2, 3, 4, 6, 8], size=len(units))
    return AllocationPlan.from_unit_bits(units, ub, model="test_resnet")


@pytest.mark.parametrize("method", ["maxabs", "mse"])
def test_inside_weights_are_quantized_per_plan(model, method):
    plan = _channel_plan(model)
    orig = {n: mod.weight.detach().clone() for n, mod in _layers(model).items()}
    with quantized(model, plan, method=method) as m:
        assert m is model
        for name, mod in _layers(model).items():
            bits = torch.as_tensor(plan.layer_bits()[name])
            assert torch.equal(mod.weight, fake_quantize(orig[name], bits, method)), name
            for c, b in enumerate(bits.tolist()):
                assert mod.weight[c].unique().numel() <= 2 ** b - 1


def test_output_matches_an_independently_quantized_copy(model):
    plan = _channel_plan(model, seed=3)
    x = torch.randn(4, 3, 32, 32)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name, mod in _layers(ref).items():
            mod.weight.copy_(fake_quantize(mod.weight, torch.as_tensor(plan.layer_bits()[name])))
        expect = ref(x)
        fp = model(x)
        with quantized(model, plan):
            got = model(x)
        assert torch.equal(got, expect)
        assert not torch.equal(got, fp)
        assert torch.equal(model(x), fp)


def test_restore_is_bit_exact_and_in_place(model):
    snap = _snapshot(model)
    params = {n: p for n, p in model.named_parameters()}
    ptrs = {n: p.data_ptr() for n, p in params.items()}
    flags = {n: p.requires_grad for n, p in params.items()}
    with quantized(model, _channel_plan(model)):
        # same Parameter objects and storage: nothing was copied or replaced
        for n, p in model.named_parameters():
            assert p is params[n] and p.data_ptr() == ptrs[n]
        # biases and norm layers are untouched
        for k, v in model.state_dict().items():
            if not k.endswith(".weight") or "bn" in k:
                assert torch.equal(v, snap[k]), k
    _assert_bit_identical(model, snap)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


def test_restore_after_an_exception(model):
    snap = _snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        with quantized(model, 2):
            assert not torch.equal(model.fc.weight, snap["fc.weight"])
            raise RuntimeError("boom")
    _assert_bit_identical(model, snap)


def test_nested_blocks_restore_in_order(model):
    snap = _snapshot(model)
    with quantized(model, 8):
        w8 = model.fc.weight.detach().clone()
        with quantized(model, 2):
            # the inner block quantizes the already-quantized weights
            assert torch.equal(model.fc.weight, fake_quantize(w8, 2))
        assert torch.equal(model.fc.weight, w8)
    _assert_bit_identical(model, snap)


def test_int_plan_path_plan_and_top_level_name(model, tmp_path):
    snap = _snapshot(model)
    units = discover_units(model, "layer")
    plan = AllocationPlan.uniform(units, 3, model="test_resnet")  # stem and head pinned at 8
    path = tmp_path / "plan.json"
    plan.save(path)
    with fqopt.quantized(model, str(path)):
        assert torch.equal(model.fc.weight, fake_quantize(snap["fc.weight"], 8))
        w = model.layer1[0].conv1.weight
        assert torch.equal(w, fake_quantize(snap["layer1.0.conv1.weight"], 3))
    with quantized(model, 3):  # an int quantizes every layer, stem and head included
        assert torch.equal(model.fc.weight, fake_quantize(snap["fc.weight"], 3))
    _assert_bit_identical(model, snap)


def test_plan_for_another_model_fails_before_touching_weights(model):
    snap = _snapshot(model)
    other = timm.create_model("test_resnet", num_classes=7)
    plan = AllocationPlan.uniform(discover_units(other, "layer"), 4, model="test_resnet")
    with pytest.raises(UserError, match=r"layer 'fc' has weight shape \[7, 96\] in the plan"):
        with quantized(model, plan):
            pass
    _assert_bit_identical(model, snap)
    with pytest.raises(UserError, match="quantizer 'fp4'"):
        with quantized(model, 4, method="fp4"):
            pass
    with pytest.raises(UserError, match="outside the supported range"):
        with quantized(model, 9):
            pass
    with pytest.raises(UserError, match="plan must be"):
        with quantized(model, {"fc": 4}):
            pass
    _assert_bit_identical(model, snap)


def test_quantized_layers_touches_only_the_named_layer(model):
    snap = _snapshot(model)
    with quantized_layers(model, {"layer2.0.conv1": 2}):
        for k, v in model.state_dict().items():
            if k == "layer2.0.conv1.weight":
                assert torch.equal(v, fake_quantize(snap[k], 2))
            else:
                assert torch.equal(v, snap[k]), k
    _assert_bit_identical(model, snap)
    with pytest.raises(UserError, match="no Conv2d/Linear layer named 'ghost'"):
        with quantized_layers(model, {"ghost": 2}):
            pass


def test_quantize_permanent_and_quantized_weights(model):
    plan = _channel_plan(model, seed=5)
    expect = quantized_weights(model, plan)
    snap = _snapshot(model)
    _assert_bit_identical(model, snap)  # quantized_weights left the model alone
    quantize_(model, plan)
    for name, mod in _layers(model).items():
        assert torch.equal(mod.weight, expect[name])


def test_works_under_inference_mode_and_with_grad_enabled(model):
    snap = _snapshot(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        with quantized(model, 4):
            model(x)
    _assert_bit_identical(model, snap)
    # gradients flow to the (quantized) weights inside the block
    with quantized(model, 4):
        model(x).sum().backward()
    assert model.fc.weight.grad is not None
    _assert_bit_identical(model, snap)
