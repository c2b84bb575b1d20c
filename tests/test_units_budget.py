"""The unit model without torch: budgets and sizes, the bit range, the table meta, and the one
way from a table to a plan (UnitSet -> AllocationProblem.from_units -> result.to_plan)."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from fqopt.discovery import discover_units
from fqopt.errors import UserError
from fqopt.plan import AllocationPlan
from fqopt.sensitivity import SensitivityTable, table_unit_set
from fqopt.solvers import AllocationProblem, solve
from fqopt.units import (BUDGET_RTOL, MAX_BITS, MIN_BITS, LayerInfo, UnitSet, check_bits,
                         is_bit_width, within_budget)
from tests.fixtures import Tiny

# Tiny at a 3×8×8 input, counted by hand (tests/fixtures.py):
#   stem  Conv2d(3, 8, 3, stride 2, pad 1): weight [8, 3, 3, 3] = 216, output 8×4×4 -> 16·8·27
#   dw    Conv2d(8, 8, 3, groups 8):        weight [8, 1, 3, 3] = 72,  output 8×4×4 -> 16·8·9
#   head  Linear(8, 5):                     weight [5, 8] = 40,        output 5     -> 5·8
SIZES = {"stem": 216, "dw": 72, "head": 40}
MACS = {"stem": 16 * 8 * 27, "dw": 16 * 8 * 9, "head": 5 * 8}
FLOAT_PARAMS = 8 + 8 + 8 + 5          # stem bias, BN weight and bias, head bias
BUFFERS = 4 * (8 + 8) + 8             # BN running mean and var (float32), num_batches (int64)
OVERHEAD = 4 * (8 + 8 + 5) + 4 * FLOAT_PARAMS + BUFFERS   # scales + float params + buffers


@pytest.fixture(scope="module")
def tiny_units():
    torch.manual_seed(0)
    return discover_units(Tiny(), "layer", pin="none", input_size=(3, 8, 8))


def test_the_unit_model_imports_no_torch():
    code = ("import sys, fqopt.units, fqopt.plan, fqopt.sensitivity, fqopt.solvers; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    # the discovery names stay importable from fqopt.units (and load torch then)
    from fqopt import discovery, units

    assert units.discover_units is discovery.discover_units


def test_usage_matches_a_hand_count(tiny_units):
    u = tiny_units
    assert u.names == ["stem", "dw", "head"]
    assert u.sizes.tolist() == list(SIZES.values()) and u.macs.tolist() == list(MACS.values())
    assert u.float_params == FLOAT_PARAMS and u.buffer_bytes == BUFFERS
    assert u.overhead_bytes == OVERHEAD == 272
    bits = np.array([8, 4, 6])
    weight_bits = 216 * 8 + 72 * 4 + 40 * 6                    # 2256
    assert u.weight_bits(bits) == weight_bits
    assert u.usage(bits, "avg_bits") == weight_bits / 328
    assert u.usage(bits, "size_bytes") == math.ceil(weight_bits / 8) + 272 == 554
    assert u.usage(bits, "bops") == (3456 * 8 + 1152 * 4 + 40 * 6) * 8
    assert u.usage(bits, "bops", activation_bits=4) == (3456 * 8 + 1152 * 4 + 40 * 6) * 4
    assert u.budget_weights("size_bytes").tolist() == [216, 72, 40]
    assert u.budget_weights("bops", 8).tolist() == [3456 * 8, 1152 * 8, 40 * 8]
    # a plan and the solver's problem say the same
    plan = AllocationPlan.from_unit_bits(u, bits, model="tiny")
    assert plan.avg_bits == u.usage(bits, "avg_bits") and plan.size_bytes == 554
    prob = AllocationProblem(costs=np.zeros((3, 1, 7)), bits=range(2, 9), sizes=u.sizes,
                             budget=8, budget_kind="size_bytes", macs=u.macs,
                             size_overhead=u.overhead_bytes)
    assert prob.budget_used(bits) == 554.0
    # channel units spend the same as their layers
    ch = discover_units(Tiny(), "channel", pin="none", input_size=(3, 8, 8))
    ch_bits = np.repeat(bits, [8, 8, 5])
    for kind in ("avg_bits", "size_bytes", "bops"):
        assert ch.usage(ch_bits, kind) == u.usage(bits, kind), kind


def test_meta_round_trip(tiny_units):
    u = UnitSet(granularity="channel", layers=tiny_units.layers, pinned={"stem": 8, "head": 6},
                ties=[["stem", "dw"]], float_params=29, buffer_bytes=72)
    meta = json.loads(json.dumps(u.to_meta()))        # as a table's .npz stores it
    assert set(meta) == {"granularity", "shapes", "kinds", "pinned", "ties", "float_params",
                         "buffer_bytes"}
    back = UnitSet.from_meta(meta, units=u.names, sizes=u.sizes, macs=u.macs)
    assert back.layers == u.layers and back.names == u.names
    assert (back.pinned, back.ties) == (u.pinned, u.ties)
    assert (back.float_params, back.buffer_bytes) == (29, 72)
    np.testing.assert_array_equal(back.sizes, u.sizes)
    np.testing.assert_array_equal(back.macs, u.macs)
    assert back.overhead_bytes == u.overhead_bytes and back.tied_units() == u.tied_units()
    # a meta that contradicts the units is refused, naming the source
    with pytest.raises(UserError, match=r"^t\.npz: size of unit 'stem\[0\]'"):
        UnitSet.from_meta(meta, units=u.names, sizes=u.sizes + 1, source="t.npz")
    with pytest.raises(UserError, match="unit names do not match"):
        UnitSet.from_meta(meta, units=u.names[::-1], sizes=u.sizes[::-1])


def _table(**meta_extra):
    rng = np.random.default_rng(1)
    units = UnitSet(granularity="channel",
                    layers=[LayerInfo("conv1", "Conv2d", (4, 3, 1, 1), 4 * 3 * 25),
                            LayerInfo("block", "Conv2d", (6, 4, 1, 1), 6 * 4 * 25),
                            LayerInfo("fc", "Linear", (3, 6), 18)],
                    pinned={"conv1": 8}, float_params=17, buffer_bytes=40)
    bits = np.array([2, 4, 8])
    costs = units.sizes[:, None, None] * rng.lognormal(0, 1, (len(units), 2, 1)) * 4.0 ** -bits
    meta = {"model": "toy", "quantizer": "mse", "method": "fisher", "dataset": "synthderm",
            "seed": 3, **units.to_meta(), **meta_extra}
    return units, SensitivityTable(costs=costs, bits=bits, sizes=units.sizes, units=units.names,
                                   groups=["a", "b"], group_counts=[5, 7], macs=units.macs,
                                   meta=meta)


def test_from_units_is_from_table():
    units, table = _table()
    kw = dict(budget=4.0, objective="blend:0.5", pins={"fc": 4}, min_bits={"block[0]": 4})
    a = AllocationProblem.from_table(table, **kw)
    b = AllocationProblem.from_units(units, table.costs, bits=table.bits, group_names=table.groups,
                                     group_counts=table.group_counts, **kw)
    for name in ("costs", "bits", "sizes", "macs", "allowed", "group_counts"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert (a.cap, a.size_overhead, a.pins, a.ties, a.unit_names, a.group_names) == \
        (b.cap, b.size_overhead, b.pins, b.ties, b.unit_names, b.group_names)
    assert a.units.names == b.units.names == units.names
    assert solve(a, "exhaustive").assignment.tolist() == solve(b, "exhaustive").assignment.tolist()
    # "default" pins and ties are the UnitSet's
    c = AllocationProblem.from_units(units, table.costs, bits=table.bits, budget=4.0)
    assert c.pins == {i: 8 for i in range(4)}
    assert c.provenance == {} and a.provenance["quantizer"] == "mse"


def test_from_units_takes_baq_style_per_unit_pins():
    units, table = _table()
    init = np.array([8, 8, 4, 2] + [4] * 6 + [8, 4, 2])
    pins = {units.names[u]: int(init[u]) for u in range(4)}     # the stem keeps its own bits
    costs = np.zeros((len(units), 1, 3))
    p = AllocationProblem.from_units(units, costs, bits=[2, 4, 8], budget=4.0, pins=pins,
                                     ties=None, objective="balanced", group_names=["rounding"],
                                     source="BAQ rounding")
    assert p.pins == {0: 8, 1: 8, 2: 4, 3: 2} and p.ties == []
    assert p.size_overhead == units.overhead_bytes and p.group_names == ["rounding"]
    assert p.budget_used(init) == units.usage(init, "avg_bits")
    # a layer pinned to one bit-width per unit: the same problem
    q = AllocationProblem.from_units(units, costs, bits=[2, 4, 8], budget=4.0,
                                     pins={"conv1": init[:4]}, ties=None, objective="balanced",
                                     group_names=["rounding"], source="BAQ rounding")
    assert q.pins == p.pins and q.cap == p.cap
    with pytest.raises(UserError, match="3 pinned bit-widths for 'conv1', which has 4 units"):
        AllocationProblem.from_units(units, costs, bits=[2, 4, 8], budget=4.0,
                                     pins={"conv1": [8, 8, 8]})
    with pytest.raises(UserError, match="^BAQ rounding: unit 'conv1\\[0\\]' is pinned to 3"):
        AllocationProblem.from_units(units, costs, bits=[2, 4, 8], budget=4.0,
                                     pins={"conv1[0]": 3}, source="BAQ rounding")


def _old_to_plan(res, table):
    """What to_plan(table) built before the problem kept its units (the reference)."""
    return AllocationPlan.from_unit_bits(
        table_unit_set(table), res.assignment, model=table.meta.get("model") or "unknown",
        bits=table.bits.tolist(), budget=dict(res.budget), objective=res.objective_name,
        predicted=res.predicted(), solver=res.summary(), meta=None,
        quantizer=table.meta.get("quantizer") or "maxabs")


def test_to_plan_needs_no_table(tmp_path):
    _, table = _table()
    table.save(tmp_path / "t.npz")
    table = SensitivityTable.load(tmp_path / "t.npz")
    res = solve(AllocationProblem.from_table(table, budget=4.5), "exhaustive")
    plan = res.to_plan()
    old = _old_to_plan(res, table).to_dict()
    new = plan.to_dict()
    # the library records the provenance the CLI used to copy
    assert new.pop("meta") == {"table": str(tmp_path / "t.npz"), "method": "fisher",
                               "dataset": "synthderm", "granularity": "channel"}
    assert old.pop("meta") == {}
    assert new == old
    assert plan.quantizer == "mse" and plan.model == "toy" and plan.bits == [2, 4, 8]
    assert res.to_plan(table).to_dict() == plan.to_dict()    # the old call still works
    used = res.to_plan(bits="used")
    assert used.bits == sorted(set(res.assignment.tolist()))
    assert res.to_plan(meta={"method": "x", "k": 1}).meta["method"] == "x"
    other = SensitivityTable(costs=table.costs[:3], bits=table.bits, sizes=table.sizes[:3],
                             units=table.units[:3], groups=table.groups,
                             group_counts=table.group_counts)
    with pytest.raises(UserError, match="not those the problem was built from"):
        res.to_plan(other)


def test_to_plan_of_a_hand_built_problem_needs_units():
    units, table = _table()
    p = AllocationProblem(costs=table.costs, bits=table.bits, sizes=table.sizes, budget=4.0)
    res = solve(p, "exhaustive")
    with pytest.raises(UserError, match="has no units"):
        res.to_plan()
    plan = res.to_plan(units)         # the old call: used bits only, maxabs, model unknown
    assert plan.bits == sorted(set(res.assignment.tolist())) and plan.model == "unknown"
    from_table = res.to_plan(table)   # the old call with the table: its units and provenance
    assert from_table.bits == [2, 4, 8] and from_table.model == "toy"
    assert from_table.quantizer == "mse" and from_table.assignments == plan.assignments


def test_one_tolerance_at_the_boundary(tiny_units):
    u = tiny_units
    N = u.quantized_params
    # a plan whose average bits, as a float, times N falls just below its integer usage
    bits, used = next((np.array(b), u.weight_bits(b))
                      for b in itertools.product(range(2, 9), repeat=3)
                      if (u.weight_bits(b) / N) * N < u.weight_bits(b))
    value = used / N
    assert u.fits(bits, "avg_bits", value)                     # equal to the budget: fits
    assert not u.fits(bits, "avg_bits", (used - 1) / N)         # one bit over: does not
    # the slack is BUDGET_RTOL, relative: just beyond it no longer fits
    assert not u.fits(bits, "avg_bits", value * (1 - 10 * BUDGET_RTOL))
    # the solver's cap and the export's check agree: a plan at its budget fits both
    p = AllocationProblem(costs=np.zeros((3, 1, 7)), bits=range(2, 9), sizes=u.sizes,
                          budget=value)
    assert p.cap == u.budget_cap("avg_bits", value) == used and p.is_feasible(bits)
    from fqopt.packed import budget_excess

    plan = AllocationPlan.from_unit_bits(u, bits, model="tiny",
                                         budget={"kind": "avg_bits", "value": value})
    assert budget_excess(plan, Tiny()) is None
    plan.budget = {"kind": "avg_bits", "value": value * (1 - 1e-9)}
    kind, actual, limit = budget_excess(plan, Tiny())
    assert kind == "avg_bits" and actual == value and limit == value * (1 - 1e-9)
    plan.budget = {"kind": "size_bytes", "value": u.size_bytes(bits)}
    assert budget_excess(plan, Tiny()) is None
    plan.budget = {"kind": "size_bytes", "value": u.size_bytes(bits) - 1}
    assert budget_excess(plan, Tiny())[1] == u.size_bytes(bits)


def test_within_budget_agrees_with_the_solvers_cap(tiny_units):
    u = tiny_units
    N = u.quantized_params
    for b in itertools.product(range(2, 9), repeat=3):
        used = u.weight_bits(b)
        avg = AllocationPlan.from_unit_bits(u, np.array(b), model="tiny").avg_bits
        # a plan's float avg_bits meets the budget it was solved at, and not one bit less
        assert within_budget(avg, used / N) and u.fits(np.array(b), "avg_bits", used / N)
        assert not within_budget(avg, (used - 1) / N)
    assert within_budget(4.0, 4.0) and within_budget(4.0 * (1 + BUDGET_RTOL / 2), 4.0)
    assert not within_budget(4.0 * (1 + 10 * BUDGET_RTOL), 4.0)


def test_bit_range_is_checked_in_one_place(capsys):
    assert (MIN_BITS, MAX_BITS) == (2, 8)
    assert [is_bit_width(b) for b in (2, 8, 4.0, np.int64(3))] == [True] * 4
    assert not any(is_bit_width(b) for b in (1, 9, 2.5, True, "4", float("nan"), 2 ** 70))
    with pytest.raises(UserError, match=r"^candidate bits \[1, 9\] outside the supported "
                                        r"range 2-8 \(integers\)$"):
        check_bits([1, 2, 9], what="candidate bits")
    with pytest.raises(UserError, match=r"allocation problem: bits \[16\] outside the supported"):
        AllocationProblem(costs=np.zeros((1, 1, 2)), bits=[8, 16], sizes=[1], budget=8)
    with pytest.raises(UserError, match=r"sensitivity table <memory>: bits \[9\] outside"):
        SensitivityTable(costs=np.zeros((1, 1, 2)), bits=[4, 9], sizes=[1], units=["a"],
                         groups=["g"], group_counts=[1])
    from fqopt.quantizers import fake_quantize

    with pytest.raises(UserError, match=r"bit-widths \[9.0\] outside the supported range 2-8"):
        fake_quantize(torch.ones(2, 3), 9, "maxabs")
    from fqopt.search._space import parse_budget_range

    with pytest.raises(UserError, match="2 ≤ LOW < HIGH ≤ 8"):
        parse_budget_range("1.5:7")
    from fqopt.cli._common import parse_bits

    assert parse_bits("8,2,4") == [2, 4, 8]
    with pytest.raises(UserError, match=r"--bits '2,9': bit-widths \[9\] outside"):
        parse_bits("2,9")
