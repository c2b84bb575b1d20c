"""Units (discovery, pins, ties, MACs) and AllocationPlan (JSON contract, figures, validation)."""

import json
import math

import numpy as np
import pytest
import timm
import torch
from torch import nn

from fqopt.errors import UserError
from fqopt.plan import SCHEMA, AllocationPlan
from fqopt.units import discover_units, parse_unit_name
from tests.fixtures import Tiny


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=4).eval()


def _layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


# ------------------------------------------------------------------ units
def test_layer_units_match_the_model(resnet):
    units = discover_units(resnet, "layer")
    layers = _layers(resnet)
    assert units.names == [n for n, _ in layers]
    assert units.sizes.tolist() == [m.weight.numel() for _, m in layers]
    assert units.layer_of.tolist() == list(range(len(layers)))
    assert units.channel_of.tolist() == [-1] * len(layers)
    assert units.quantized_params == sum(m.weight.numel() for _, m in layers)
    assert units.float_params == (sum(p.numel() for p in resnet.parameters())
                                  - units.quantized_params)


def test_channel_units_match_the_model(resnet):
    units = discover_units(resnet, "channel")
    layers = _layers(resnet)
    expect = [f"{n}[{c}]" for n, m in layers for c in range(m.weight.shape[0])]
    assert units.names == expect
    assert len(units) == units.num_channels == sum(m.weight.shape[0] for _, m in layers)
    assert units.sizes.sum() == units.quantized_params
    for name, sl in units.unit_slices().items():
        assert all(parse_unit_name(units.names[i])[0] == name for i in range(sl.start, sl.stop))
    assert parse_unit_name("layer1.0.conv1[12]") == ("layer1.0.conv1", 12)
    assert parse_unit_name("fc") == ("fc", None)


def test_default_pins_are_stem_and_head(resnet):
    units = discover_units(resnet, "channel")
    assert units.pinned == {"conv1.0": 8, "fc": 8}
    pinned = units.pinned_units()
    assert len(pinned) == 16 + 4 and set(pinned.values()) == {8}
    assert discover_units(resnet, "layer", pin="none").pinned == {}
    assert discover_units(resnet, "layer", pin="layer1.0.conv1, fc", pin_bits=6).pinned == \
        {"layer1.0.conv1": 6, "fc": 6}
    with pytest.raises(UserError, match="cannot pin \\['nope'\\]"):
        discover_units(resnet, "layer", pin="nope")


def test_default_pins_on_a_vit():
    vit = timm.create_model("test_vit", num_classes=3)
    units = discover_units(vit, "layer")
    assert units.pinned == {"patch_embed.proj": 8, "head": 8}
    assert all(u.kind in ("Conv2d", "Linear") for u in units.layers)


def test_macs_counted_by_hand_and_modes_kept():
    m = Tiny()
    m.train()
    m.bn.eval()  # a mixed mode (frozen BN) must survive the counting pass
    bn_state = {k: v.clone() for k, v in m.bn.state_dict().items()}
    units = discover_units(m, "layer", input_size=(3, 16, 16))
    # stem: 8x8 output positions x 8 channels x (3*3*3) MACs; dw: 8x8 x 8 x (1*3*3); head 8*5
    assert units.macs.tolist() == [8 * 8 * 8 * 27, 8 * 8 * 8 * 9, 40]
    assert m.training and not m.bn.training and m.stem.training
    for k, v in m.bn.state_dict().items():
        assert torch.equal(v, bn_state[k])
    ch = discover_units(m, "channel", input_size=(3, 16, 16))
    assert ch.macs[:8].tolist() == [8 * 8 * 27] * 8
    assert discover_units(m, "layer").macs.tolist() == [-1, -1, -1]


def test_ties(resnet):
    units = discover_units(resnet, "channel", ties=[["layer1.0.conv1", "layer1.0.conv2"]])
    tied = units.tied_units()
    assert len(tied) == 32 and tied[5] == ["layer1.0.conv1[5]", "layer1.0.conv2[5]"]
    bad = discover_units(resnet, "channel", ties=[["layer1.0.conv1", "layer2.0.conv1"]])
    with pytest.raises(UserError, match="channel counts differ"):
        bad.tied_units()
    with pytest.raises(UserError, match="cannot tie \\['ghost'\\]"):
        discover_units(resnet, "layer", ties=[["fc", "ghost"]])


def test_no_quantizable_layer_and_bad_granularity():
    with pytest.raises(UserError, match="no Conv2d or Linear"):
        discover_units(nn.Sequential(nn.ReLU()), "layer")
    with pytest.raises(UserError, match="unknown granularity 'weight'"):
        discover_units(Tiny(), "weight")


# ------------------------------------------------------------------ plans
def _brute_figures(model, layer_bits):
    """avg_bits, avg_bits_channel, size_bytes computed straight from the modules."""
    bits = params = 0
    chans = []
    for name, m in _layers(model):
        b = np.asarray(layer_bits[name])
        per = m.weight[0].numel()
        bits += int(b.sum()) * per
        params += m.weight.numel()
        chans.extend(b.tolist())
    floats = sum(p.numel() for p in model.parameters()) - params
    # buffers as an export stores them: float32 statistics, int64 counters
    buffers = sum(b.numel() * (4 if b.is_floating_point() else 8) for b in model.buffers())
    size = math.ceil(bits / 8) + 4 * len(chans) + 4 * floats + buffers
    return bits / params, float(np.mean(chans)), size


def test_uniform_plan_figures(resnet):
    units = discover_units(resnet, "channel")
    plan = AllocationPlan.uniform(units, 4, model="test_resnet")
    lb = {n: np.full(m.weight.shape[0], 8 if n in ("conv1.0", "fc") else 4)
          for n, m in _layers(resnet)}
    avg, avg_ch, size = _brute_figures(resnet, lb)
    assert plan.avg_bits == pytest.approx(avg)
    assert plan.avg_bits_channel == pytest.approx(avg_ch)
    assert plan.size_bytes == size
    assert plan.bits == [4, 8]
    free = AllocationPlan.uniform(units, 3, model="test_resnet", respect_pins=False)
    assert free.avg_bits == pytest.approx(3.0) and free.avg_bits_channel == 3.0
    assert free.bits == [3]
    with pytest.raises(UserError, match="outside the supported range 2-8"):
        AllocationPlan.uniform(units, 9, model="test_resnet")


def test_channel_plan_figures_and_views(resnet):
    units = discover_units(resnet, "channel")
    rng = np.random.default_rng(1)
    ub = rng.choice([2, 3, 4, 6, 8], size=len(units))
    plan = AllocationPlan.from_unit_bits(units, ub, model="test_resnet", bits=[2, 3, 4, 6, 8])
    lb = plan.layer_bits()
    avg, avg_ch, size = _brute_figures(resnet, lb)
    assert plan.avg_bits == pytest.approx(avg)
    assert plan.avg_bits_channel == pytest.approx(ub.mean())
    assert plan.size_bytes == size
    assert np.array_equal(plan.unit_bits(units), ub)
    by_name = AllocationPlan.from_unit_bits(units, dict(zip(units.names, ub.tolist())),
                                            model="test_resnet")
    assert by_name.assignments == plan.assignments
    # a plan with mixed bits inside a layer cannot be read at layer granularity
    with pytest.raises(UserError, match="several bit-widths"):
        plan.unit_bits(discover_units(resnet, "layer"))
    with pytest.raises(UserError, match="no bit-width for unit"):
        AllocationPlan.from_unit_bits(units, {units.names[0]: 4}, model="m")
    with pytest.raises(UserError, match="3 bit-widths given"):
        AllocationPlan.from_unit_bits(units, [4, 4, 4], model="m")


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_plan_json_round_trip(resnet, tmp_path, granularity):
    units = discover_units(resnet, granularity)
    rng = np.random.default_rng(2)
    ub = rng.choice([2, 4, 8], size=len(units))
    plan = AllocationPlan.from_unit_bits(
        units, ub, model="test_resnet", bits=[2, 4, 8], budget={"kind": "avg_bits", "value": 4},
        objective="worst", predicted={"I": 0.25, "VI": 0.5},
        solver={"backend": "lagrange", "status": "optimal", "objective": 0.5, "bound": 0.49,
                "gap": 0.01, "seconds": 0.1}, meta={"note": "x"})
    path = tmp_path / "plan.json"
    plan.save(path)
    raw = json.loads(path.read_text())
    assert raw["schema"] == SCHEMA == "fqopt.plan/1"
    for key in ("model", "granularity", "bits", "assignments", "avg_bits", "avg_bits_channel",
                "size_bytes", "budget", "objective", "predicted", "solver"):
        assert key in raw
    back = AllocationPlan.load(path)
    assert back.to_dict() == plan.to_dict()
    assert np.array_equal(back.unit_bits(units), ub)


def test_plan_per_channel_keys_are_folded(resnet):
    units = discover_units(resnet, "channel")
    plan = AllocationPlan.uniform(units, 4, model="test_resnet")
    d = plan.to_dict()
    d["assignments"] = {f"{n}[{c}]": 4 if c % 2 else 6 for n, shape in d["shapes"].items()
                        for c in range(shape[0])}
    d["bits"] = [4, 6, 8]  # the candidates must include every assigned bit-width
    back = AllocationPlan.from_dict(d)
    assert back.layer_bits()["fc"].tolist() == [6, 4, 6, 4]
    del d["assignments"]["fc[3]"]
    with pytest.raises(UserError, match="'fc' misses some channels"):
        AllocationPlan.from_dict(d)


def test_plan_for_another_model_is_a_clear_error(resnet, tmp_path):
    other = Tiny()
    plan = AllocationPlan.uniform(discover_units(other, "layer"), 4, model="tiny")
    with pytest.raises(UserError, match="unit 'stem' is not a quantizable layer"):
        plan.validate(discover_units(resnet, "layer"))
    with pytest.raises(UserError, match="does not fit model 'test_resnet'"):
        plan.validate(discover_units(resnet, "layer"), model="test_resnet")
    # same names, different shape: the layer and both shapes are named
    wide = Tiny()
    wide.head = nn.Linear(8, 7)
    with pytest.raises(UserError, match=r"layer 'head' has weight shape \[5, 8\] in the plan "
                                        r"but \[7, 8\] in the model"):
        plan.validate(discover_units(wide, "layer"))
    d = plan.to_dict()
    del d["assignments"]["dw"]
    del d["shapes"]["dw"]
    with pytest.raises(UserError, match="no bit-width for layer 'dw'"):
        AllocationPlan.from_dict(d).validate(discover_units(other, "layer"))


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.update(schema="fqopt.plan/0"), "schema is 'fqopt.plan/0'"),
    (lambda d: d.pop("shapes"), "missing field"),
    (lambda d: d["assignments"].update(head=9), "unit 'head' must be an integer 2-8, got 9"),
    (lambda d: d["assignments"].update(head=1), "unit 'head' must be an integer 2-8, got 1"),
    (lambda d: d["assignments"].update(head=3.5), "unit 'head' must be an integer 2-8"),
    (lambda d: d["assignments"].update(head="four"), "unit 'head' must be an integer 2-8"),
    (lambda d: d["assignments"].update(head=[4, 4]), "'head' has 2 channel bit-widths for 5"),
    (lambda d: d.update(granularity="weight"), "granularity is 'weight'"),
    (lambda d: d.update(assignments=[]), "'assignments' must be a non-empty JSON object"),
    (lambda d: d["shapes"].update(head=[5, -8]), "shape of layer 'head'"),
    (lambda d: d.update(bits=[4, 16]), "candidate bits \\[16\\] outside"),
])
def test_bad_plan_json(mutate, message):
    plan = AllocationPlan.uniform(discover_units(Tiny(), "layer"), 4, model="tiny")
    d = json.loads(json.dumps(plan.to_dict()))
    mutate(d)
    with pytest.raises(UserError, match=message):
        AllocationPlan.from_dict(d, source="p.json")


def test_plan_file_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        AllocationPlan.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        AllocationPlan.load(bad)
