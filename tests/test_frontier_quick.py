"""benchmarks/frontier.py: argument errors, the paired bootstrap, and a ``--quick`` smoke run."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "frontier.py"


def _load():
    spec = importlib.util.spec_from_file_location("frontier_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod   # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _run(*args, timeout=1800):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args", [["--budgets", "2.5,x"], ["--budgets", "9"],
                                  ["--families", "cnn,rnn"], ["--models", "0"],
                                  ["--rows", "nope"], ["--test-vi", "abc"], ["--bogus"]])
def test_bad_arguments_one_line_exit_2(args):
    r = _run(*args, timeout=120)
    assert r.returncode == 2
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr


def test_paired_bootstrap_independent_check():
    fb = _load()
    rng = np.random.default_rng(0)
    G, n = 3, 60
    groups = np.repeat(np.arange(G), n)
    a = [rng.random(G * n) < 0.8 for _ in range(3)]
    # identical rows: exactly zero, zero-width interval
    same = fb.paired_bootstrap(a, a, groups, G, 200, seed=1)
    assert same["diff"] == 0 and same["lo"] == 0 and same["hi"] == 0 and same["tie"]
    # b = a with every sample of group 2 wrong: worst of b is 0, so the difference is worst(a)
    b = [x.copy() for x in a]
    for x in b:
        x[groups == 2] = False
    res = fb.paired_bootstrap(a, b, groups, G, 500, seed=2)
    expect = np.mean([min(x[groups == g].mean() for g in range(G)) for x in a])
    assert res["diff"] == pytest.approx(expect)
    assert res["lo"] <= res["diff"] <= res["hi"] and res["lo"] > 0 and not res["tie"]


def test_fairquant_augment_keeps_shape():
    fb = _load()
    import torch

    x = torch.rand(4, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    y = fb._augment_fairquant(x, g)
    assert y.shape == x.shape and torch.isfinite(y).all()


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_quick_run_structure(tmp_path):
    out = tmp_path / "frontier.json"
    r = _run("--quick", "--cache", str(tmp_path / "cache"), "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "fqopt row − best baseline" in r.stdout
    res = json.loads(out.read_text())
    assert res["schema"] == "fqopt.bench-frontier/1"
    assert set(res["families"]) == {"cnn", "vit"}
    budgets = [f"{b:g}" for b in res["args"]["budgets"]]
    assert len(budgets) == 2
    compared = 0
    for name, fam in res["families"].items():
        assert len(fam["models"]) == 1 and fam["test"]["per_group"] == 150
        rows = fam["rows"]
        for row in ("fp32", "fqopt_default", "fqopt_search", "uniform_pinned", "uniform_all",
                    "fq_grad_max", "fq_grape_bal", "fq_grad_max_fqbits", "fq_grape_bal_fqbits",
                    "hawq_mean", "mct_wonly", "mct_default"):
            assert row in rows, (name, row)
        fp = rows["fp32"]["fp"]
        assert 0 <= fp["worst_acc"]["mean"] <= fp["avg_acc"]["mean"] <= 1
        for b in budgets:
            for row, cells in rows.items():
                if "fp" in cells:   # reference rows (FP32, the 8-bit ceiling): one cell
                    continue
                cell = cells[b]
                if "skipped" in cell:
                    continue
                assert cell["worst_acc"]["mean"] <= cell["avg_acc"]["mean"] + 1e-12
                if row.startswith(("fq_", "fqopt", "hawq", "mct")):
                    assert cell["avg_bits"]["mean"] <= float(b) + 1e-6, (name, row, b)
            comp = fam["comparisons"][b]
            for row, c in comp["vs"].items():
                compared += 1
                assert c["lo"] <= c["diff"] <= c["hi"], (name, b, row, c)
                assert c["tie"] == (c["lo"] <= 0 <= c["hi"])
                best = rows[comp["best_baseline"]][b]["worst_acc"]["mean"]
                mine = rows[row][b]["worst_acc"]["mean"]
                assert c["diff"] == pytest.approx(mine - best)
    assert compared > 0
