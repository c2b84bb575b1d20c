"""Bad input as a new user (or an attacker) gives it: one line on stderr, exit code 2, nothing
overwritten or lost, no secret printed (issue 11's list, one test per case)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
import torch

from fqopt.cli import main
from fqopt.errors import UserError
from fqopt.plan import AllocationPlan
from fqopt.runs import Run
from fqopt.sensitivity import SensitivityTable
from fqopt.units import discover_units
from tests.fixtures import expect_user_error, random_weight_run

TINY = {"n": 150, "image_size": 16}


def _err(capsys, argv, *needles, absent=()):
    return expect_user_error(capsys, argv, *needles, absent=absent)


def _snapshot(folder):
    """{relative path: bytes} of every file under ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def rand_run(tmp_path_factory):
    """A run with an untrained (random) model: enough to apply, evaluate and export plans."""
    return random_weight_run(tmp_path_factory.mktemp("runs") / "r", samples=TINY["n"],
                             image_size=TINY["image_size"])


@pytest.fixture
def plan_file(rand_run, tmp_path):
    path = tmp_path / "p4.json"
    AllocationPlan.uniform(discover_units(rand_run.model(), "layer"), 4,
                           model=rand_run.model_name).save(path)
    return path


def _table(path, costs=None):
    rng = np.random.default_rng(0)
    costs = rng.random((3, 2, 2)) if costs is None else costs
    SensitivityTable(costs=costs, bits=[4, 8], sizes=[8, 8, 8], units=["a", "b", "c"],
                     groups=["light", "dark"], group_counts=[5, 5], meta={"model": "m"}
                     ).save(path)
    return path


# ------------------------------------------------------------------------ 1. tracebacks
@pytest.mark.parametrize("device", ["cuda:7", "bogus"])
def test_train_with_an_unavailable_device_writes_nothing(tmp_path, capsys, device):
    out = tmp_path / "runs" / "d"
    _err(capsys, ["train", "--out", out, "--samples", "150", "--device", device],
         f"--device {device}" if device != "bogus" else "--device 'bogus'")
    assert not (tmp_path / "runs").exists()  # no config.json, no folder


def test_allocate_on_a_truncated_table(tmp_path, capsys):
    good = _table(tmp_path / "t.npz")
    bad = tmp_path / "trunc.npz"
    bad.write_bytes(good.read_bytes()[:200])
    _err(capsys, ["allocate", "--table", bad, "--budget", "6", "--out", tmp_path / "p.json"],
         "trunc.npz", "not a readable .npz")
    assert not (tmp_path / "p.json").exists()


def test_allocate_force_never_replaces_a_folder(tmp_path, capsys):
    table = _table(tmp_path / "t.npz")
    folder = tmp_path / "plans"
    folder.mkdir()
    (folder / "keep.json").write_text("{}")
    _err(capsys, ["allocate", "--table", table, "--budget", "6", "--out", folder, "--force"],
         "plans", "is a folder")
    assert (folder / "keep.json").read_text() == "{}"


@pytest.mark.parametrize("bits, needle", [(2 ** 70, str(2 ** 70)), (5, "5 bits")])
def test_plan_with_an_impossible_or_non_candidate_bit_width(rand_run, plan_file, tmp_path,
                                                            capsys, bits, needle):
    d = json.loads(plan_file.read_text())
    layer = sorted(d["assignments"])[1]
    d["assignments"][layer] = bits
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(d))
    before = _snapshot(rand_run.path)
    _err(capsys, ["evaluate", "--run", rand_run.path, "--plan", bad], "bad.json", layer, needle)
    _err(capsys, ["export", "--run", rand_run.path, "--plan", bad, "--out",
                  tmp_path / "x.safetensors"], "bad.json", layer, needle)
    assert _snapshot(rand_run.path) == before and not (tmp_path / "x.safetensors").exists()


def _half_trained(path, **train):
    """A run whose first ``fqopt train`` stopped: config.json written, no model."""
    from fqopt.training import TrainConfig

    run = Run.create(path, dataset="synthderm", dataset_options=TINY, model="test_resnet")
    if train:
        run.config["train"] = asdict(TrainConfig(**train))
        run.save_config()
    return run


@pytest.mark.parametrize("kind", ["truncated", "malicious"])
def test_damaged_train_state_on_resume(tmp_path, capsys, kind):
    run = _half_trained(tmp_path / "r")
    if kind == "truncated":
        torch.save({"model": {"w": torch.zeros(1000)}}, run.train_state_path)
        run.train_state_path.write_bytes(run.train_state_path.read_bytes()[:300])
    else:  # a pickle that would build arbitrary objects: refused, never executed
        torch.save({"x": argparse.Namespace(a=1)}, run.train_state_path)
    before = run.train_state_path.read_bytes()
    _err(capsys, ["train", "--out", run.path, "--samples", "150", "--image-size", "16"],
         "train_state.pt", "cannot be read safely", "--force")
    assert run.train_state_path.read_bytes() == before  # nothing lost
    assert (run.path / "config.json").is_file()


def test_search_on_a_truncated_table(rand_run, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "s"
    shutil.copytree(rand_run.path, run_dir)
    tables = run_dir / "tables"
    tables.mkdir()
    (tables / "fisher-layer.npz").write_bytes(b"PK\x03\x04 truncated")
    _err(capsys, ["search", "--run", run_dir, "--trials", "1", "--granularity", "layer",
                  "--methods", "fisher", "--refine-top", "0", "--no-report"],
         "fisher-layer.npz", "not a readable .npz")
    assert (tables / "fisher-layer.npz").read_bytes() == b"PK\x03\x04 truncated"


def test_zero_byte_checkpoint(rand_run, plan_file, tmp_path, capsys):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    _err(capsys, ["export", "--run", rand_run.path, "--plan", plan_file, "--checkpoint", empty,
                  "--out", tmp_path / "x.safetensors"], "empty.pt", "empty")
    assert not (tmp_path / "x.safetensors").exists()


def test_run_config_without_model(rand_run, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "r"
    shutil.copytree(rand_run.path, run_dir)
    cfg = json.loads((run_dir / "config.json").read_text())
    del cfg["model"]
    (run_dir / "config.json").write_text(json.dumps(cfg))
    _err(capsys, ["evaluate", "--run", run_dir], "config.json", "'model'", "--force")


# --------------------------------------------------------------------- 2. overwritten
def test_evaluate_keeps_an_existing_report(rand_run, plan_file, capsys):
    argv = ["evaluate", "--run", str(rand_run.path), "--plan", str(plan_file), "--split",
            "search", "--format", "json"]
    assert main(argv) == 0
    capsys.readouterr()
    report = rand_run.reports_dir / "eval_p4_search.json"
    before = report.read_bytes()
    _err(capsys, argv, "eval_p4_search.json", "already exists", "--force")
    assert report.read_bytes() == before
    assert main([*argv, "--force"]) == 0


def test_refine_keeps_a_finished_refinement(rand_run, plan_file, tmp_path, capsys):
    out = tmp_path / "refined"
    out.mkdir()
    for name, data in (("refine.json", b"{}"), ("plan.json", b"{}"), ("model.pt", b"weights")):
        (out / name).write_bytes(data)
    before = _snapshot(out)
    _err(capsys, ["refine", "--run", rand_run.path, "--plan", plan_file, "--out", out],
         "refined", "finished refinement", "--force")
    assert _snapshot(out) == before


# ----------------------------------------------------------------------- 3. stale resume
def test_rerun_with_other_options_names_the_option(tmp_path, capsys):
    run = _half_trained(tmp_path / "r", epochs=1)
    before = _snapshot(run.path)
    _err(capsys, ["train", "--out", run.path, "--samples", "300", "--image-size", "16"],
         "--samples 150", "--samples 300", "--force")
    _err(capsys, ["train", "--out", run.path, "--samples", "150"],
         "--image-size 16", "does not give --image-size")
    _err(capsys, ["train", "--out", run.path, "--dataset", "csv"], "--dataset synthderm")
    _err(capsys, ["train", "--out", run.path, "--samples", "150", "--image-size", "16",
                  "--epochs", "2"], "--epochs 1", "--epochs 2", "--force")
    assert _snapshot(run.path) == before


# ------------------------------------------------------------------------ 4. secrets
def test_storage_passwords_are_masked_everywhere(rand_run, capsys):
    from fqopt.search._storage import masked_url, scrub

    url = "postgresql+psycopg://user:hunter2@127.0.0.1:1/db?sslmode=disable&password=hunter3"
    assert masked_url(url) == ("postgresql+psycopg://user:***@127.0.0.1:1/db?sslmode=disable"
                               "&password=***")
    assert masked_url("mysql://u@h/db?PWD=x1y2&x=1") == "mysql://u@h/db?PWD=***&x=1"
    assert "hunter" not in scrub(f"could not connect with {url}: hunter3 refused", url)
    assert masked_url("sqlite:////tmp/a/study.db") == "sqlite:////tmp/a/study.db"
    for storage in (url, "postgresql+psycopg://user@127.0.0.1:1/db?password=hunter3"):
        _err(capsys, ["search", "--run", rand_run.path, "--storage", storage], "***",
             absent=("hunter2", "hunter3"))
        _err(capsys, ["show", "--run", rand_run.path, "--storage", storage], "***",
             absent=("hunter2", "hunter3"))


# ------------------------------------------------------------- 5. accepted without a word
def test_infinite_costs_are_rejected_naming_the_unit(tmp_path, capsys):
    costs = np.ones((3, 2, 2))
    costs[1, 1, 0] = np.inf
    np.savez(tmp_path / "inf.npz", costs=costs, bits=[4, 8], sizes=[8, 8, 8],
             units=["a", "b", "c"], groups=["light", "dark"], group_counts=[5, 5])
    _err(capsys, ["allocate", "--table", tmp_path / "inf.npz", "--budget", "6", "--out",
                  tmp_path / "p.json"], "inf.npz", "+inf", "unit 'b'", "group 'dark'", "4 bits")


def _image_csv(folder, labels, groups):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (lab, grp) in enumerate(zip(labels, groups)):
        Image.new("RGB", (8, 8), (i * 7 % 256, 40, 90)).save(folder / f"{i}.png")
        rows.append(f"{i}.png,{lab},{grp}\n")
    (folder / "data.csv").write_text("path,label,group\n" + "".join(rows))
    return folder / "data.csv"


def test_single_class_dataset_is_refused_and_leaves_no_folder(tmp_path, capsys):
    csv = _image_csv(tmp_path / "img", ["mel"] * 20, ["a", "b"] * 10)
    out = tmp_path / "runs" / "one"
    _err(capsys, ["train", "--out", out, "--dataset", "csv", "--data-option", f"csv={csv}"],
         "data.csv", "column 'label'", "only class 'mel'")
    assert not (tmp_path / "runs").exists()


def test_group_missing_from_a_split_is_a_warning_line(tmp_path, capsys):
    groups = ["rare"] + ["a", "b"] * 16
    csv = _image_csv(tmp_path / "img", (["x", "y"] * 17)[:33], groups)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--dataset", "csv", "--data-option", f"csv={csv}",
                 "--image-size", "8", "--epochs", "1", "--format", "json"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("fqopt: warning:")]
    assert warnings and all("'rare'" in w and "split" in w for w in warnings)


# --------------------------------------------------------- 6. checked after expensive work
def test_search_checks_quantizers_and_methods_before_training(tmp_path, capsys):
    out = tmp_path / "new"
    _err(capsys, ["search", "--run", out, "--quantizers", "maxabs,nosuch"], "--quantizers",
         "'nosuch'", "maxabs, mse")
    _err(capsys, ["search", "--run", out, "--methods", "nosuch"], "--methods", "'nosuch'",
         "fisher")
    assert not out.exists()


def test_search_checks_the_storage_once_before_training(tmp_path, capsys, monkeypatch):
    """`fqopt search` checks the storage and an existing study once (in run_pipeline), and
    before the run folder is created or anything trained."""
    from fqopt.search import _pipeline

    calls = []
    real = _pipeline.precheck

    def counting(*args, **kwargs):
        calls.append(kwargs.get("storage"))
        return real(*args, **kwargs)

    def no_training(*args, **kwargs):
        raise UserError("stopped before training")

    monkeypatch.setattr(_pipeline, "precheck", counting)
    monkeypatch.setattr(_pipeline, "ensure_trained", no_training)
    out = tmp_path / "new"
    _err(capsys, ["search", "--run", out, "--storage", "nosuchdb"], "not a database URL")
    assert calls == ["nosuchdb"] and not out.exists()
    calls.clear()
    url = f"sqlite:///{tmp_path / 'study.db'}"
    _err(capsys, ["search", "--run", out, "--storage", url], "stopped before training")
    assert calls == [url] and not out.exists()


# ------------------------------------------------------------------------ 7. --dataset
def test_search_on_a_csv_run_without_dataset(tmp_path, capsys):
    from fqopt.search._pipeline import TrainOptions, ensure_trained

    csv = _image_csv(tmp_path / "img", ["x", "y"] * 12, ["a", "b", "b", "a"] * 6)
    run = Run.create(tmp_path / "c", dataset="csv", dataset_options={"csv": str(csv)},
                     image_size=8)
    torch.save(run.new_model().state_dict(), run.checkpoint_path)
    same, trained = ensure_trained(run.path, TrainOptions())  # no --dataset: the run's own
    assert same.path == run.path and not trained
    _err(capsys, ["search", "--run", run.path, "--dataset", "synthderm", "--trials", "1"],
         "'csv'", "--dataset")


# ------------------------------------------------------------- 8. lock, strays, --force
def test_a_second_train_of_one_run_is_refused_while_the_first_runs(tmp_path, capsys):
    from fqopt.runs import LOCK_NAME, train_lock

    out = tmp_path / "r"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_NAME).write_text(f"{sleeper.pid} {os.uname().nodename}")
        _err(capsys, ["train", "--out", out, "--samples", "150"], str(sleeper.pid),
             LOCK_NAME)
        assert not (out / "config.json").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    # the holder died without removing its lock: the next training takes the run over
    with train_lock(out) as lock:
        assert lock.read_text().split()[0] == str(os.getpid())
    assert not (out / LOCK_NAME).exists()


def test_study_of_older_weights_names_search_force(rand_run, tmp_path, capsys):
    import shutil

    import optuna

    from fqopt.search._storage import (ATTR_IDENTITY, ATTR_READY, DIRECTIONS,
                                       default_storage_url)
    from fqopt.search._study import default_study_name, run_identity

    run_dir = tmp_path / "r"
    shutil.copytree(rand_run.path, run_dir)
    run = Run.open(run_dir)
    study = optuna.create_study(storage=default_storage_url(run_dir),
                                study_name=default_study_name(run.model_name, "channel"),
                                directions=list(DIRECTIONS))
    # the study was searched before `fqopt train --force` replaced model.pt
    study.set_user_attr(ATTR_IDENTITY, {**run_identity(run), "checkpoint": "0" * 64})
    study.set_user_attr(ATTR_READY, True)
    for cmd in ("show", "report"):
        _err(capsys, [cmd, "--run", run_dir], "other trained weights",
             f"fqopt search --run {run_dir} --force")


def test_failed_force_retrain_keeps_the_old_run(rand_run, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "r"
    shutil.copytree(rand_run.path, run_dir)
    before = _snapshot(run_dir)
    _err(capsys, ["train", "--out", run_dir, "--force", "--data-option", "colour=red"],
         "no option 'colour'")
    assert _snapshot(run_dir) == before  # model.pt and config.json untouched
