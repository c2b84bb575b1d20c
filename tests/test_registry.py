"""fqopt._registry.Registry, and the registries built on it."""

from __future__ import annotations

import pytest
import torch

from fqopt import data, profiling
from fqopt._registry import Registry
from fqopt.baq import make_fairness
from fqopt.errors import UserError
from fqopt.quantizers import choose_scale
from fqopt.search import build_plan, make_sampler
from fqopt.solvers import get_solver


def test_register_lookup_and_order():
    reg = Registry("widget", name_attr="name")

    @reg.register("b")
    class B:
        pass

    def a():
        return "a"

    assert reg.register("a", a) is a          # the plain form returns the entry
    assert reg.get("b") is B and reg["a"] is a
    assert B.name == "b" and a.name == "a"    # name_attr set on the entry
    assert reg.names() == ["b", "a"] and list(reg) == ["b", "a"] and len(reg) == 2
    assert "a" in reg and "c" not in reg and ["unhashable"] not in reg
    assert reg.items() == [("b", B), ("a", a)]


def test_unknown_name_lists_the_known_ones():
    reg = Registry("widget", hint="(see the docs)")
    reg.register("x", 1)
    reg.register("y", 2)
    with pytest.raises(UserError, match=r"^unknown widget 'z'; expected one of x, y \(see the "
                                        r"docs\)$"):
        reg.get("z")
    with pytest.raises(UserError, match="unknown widget"):
        reg.get(["x"])   # an unhashable name is unknown, not a TypeError


def test_duplicate_registration_is_an_error_unless_replaced():
    reg = Registry("widget")
    first, second = object(), object()
    reg.register("w", first)
    reg.register("w", first)   # the same entry again (a re-imported module) is fine
    with pytest.raises(UserError, match=r"widget 'w' is already registered.*replace=True"):
        reg.register("w", second)
    assert reg.get("w") is first
    reg.register("w", second, replace=True)
    assert reg.get("w") is second
    assert reg.unregister("w") is second and "w" not in reg
    assert reg.unregister("w") is None
    with pytest.raises(UserError, match="non-empty name"):
        reg.register("", first)


def test_load_runs_once_before_the_first_lookup():
    calls = []

    def load():
        calls.append(1)
        reg.register("late", "entry")   # loading registers entries without recursing

    reg = Registry("widget", load=load)
    reg.register("early", "e")
    assert calls == []
    assert reg.names() == ["early", "late"] and reg.get("late") == "entry"
    assert "late" in reg and len(reg) == 2
    assert calls == [1]


@pytest.mark.parametrize("lookup, message", [
    (lambda: get_solver("gurobi"), "unknown solver 'gurobi'; expected one of auto, lagrange"),
    (lambda: profiling.METHODS.get("taylor"),
     "unknown sensitivity method 'taylor'; expected one of fisher"),
    (lambda: choose_scale(torch.ones(2, 3), 4, "lsq"),
     "unknown quantizer 'lsq'; expected one of maxabs, mse$"),
    (lambda: make_fairness("gini", 3),
     r"unknown fairness term 'gini'; expected one of range, worst, cvar, dro \(cvar and dro"),
    (lambda: data.load("mnist"),
     "unknown dataset 'mnist'; expected one of synthderm, fitzpatrick17k, isic2019, csv$"),
    (lambda: build_plan(None, "nope", {}),
     "unknown plan builder 'nope'; expected one of solver, uniform, quantile, direct$"),
    (lambda: make_sampler("grid", seed=0), "unknown sampler 'grid'; expected one of nsga2, tpe$"),
])
def test_every_registry_reports_unknown_names_alike(lookup, message):
    with pytest.raises(UserError, match=message):
        lookup()


def test_a_second_dataset_under_a_taken_name_is_refused():
    with pytest.raises(UserError, match="dataset 'csv' is already registered"):
        data.register_dataset("csv", "somewhere:else")
    assert data.DATASETS.get("csv") == "fqopt.data._csv:load_csv"
