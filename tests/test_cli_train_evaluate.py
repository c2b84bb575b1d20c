"""fqopt train / evaluate as a user runs them: outputs, resumption, one-line errors."""

import json

import numpy as np
import pytest
import torch

from fqopt.cli import main
from fqopt.errors import UserError
from fqopt.runs import Run
from fqopt.training import TrainConfig, train
from tests.fixtures import expect_user_error

SMALL = ["--samples", "300", "--image-size", "16", "--epochs", "1"]


def _one_line_error(capsys, argv, *needles):
    return expect_user_error(capsys, argv, *needles)


def test_train_writes_run_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["train", "--out", str(out), *SMALL, "--format", "json"]) == 0
    stdout = capsys.readouterr().out
    report = json.loads(stdout)
    assert set(report["group_accuracy"]) == {"I", "II", "III", "IV", "V", "VI"}
    assert (out / "model.pt").is_file() and (out / "config.json").is_file()
    assert (out / "reports" / "fp_test.json").is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == {"name": "test_resnet", "num_classes": 4, "image_size": 16}
    _one_line_error(capsys, ["train", "--out", str(out), *SMALL], "already", "--force")
    assert main(["train", "--out", str(out), *SMALL, "--force"]) == 0


def test_bad_names_are_one_line(tmp_path, capsys):
    _one_line_error(capsys, ["train", "--out", str(tmp_path / "a"), "--dataset", "mnist"],
                    "unknown dataset 'mnist'", "synthderm", "fitzpatrick17k")
    _one_line_error(capsys, ["train", "--out", str(tmp_path / "b"), "--model", "resnet9000"],
                    "unknown model 'resnet9000'", "resnet18")
    _one_line_error(capsys, ["train", "--out", str(tmp_path / "c"), "--data-option", "nokey"],
                    "KEY=VALUE")
    _one_line_error(capsys, ["train", "--out", str(tmp_path / "d"), "--data-option",
                             "colour=red", "--samples", "50"], "no option 'colour'")
    _one_line_error(capsys, ["evaluate", "--run", str(tmp_path / "none")], "not a run folder")
    _one_line_error(capsys, ["train", "--epochs", "0"], "--epochs")


def test_csv_missing_column_names_column_and_file(tmp_path, capsys):
    from PIL import Image

    for i in range(4):
        Image.new("RGB", (8, 8), (i * 40, 10, 10)).save(tmp_path / f"{i}.jpg")
    csv = tmp_path / "data.csv"
    csv.write_text("path,label\n" + "".join(f"{i}.jpg,a\n" for i in range(4)))
    err = _one_line_error(capsys, ["train", "--out", str(tmp_path / "r"), "--dataset", "csv",
                                   "--data-option", f"csv={csv}"], "group")
    assert "data.csv" in err


def test_resume_after_interruption_continues_where_it_stopped(tmp_path):
    run = Run.create(tmp_path / "r", dataset_options={"n": 240, "image_size": 16})
    cfg = TrainConfig(epochs=2, patience=5)

    def stop_after_first_epoch(stage, done, total, **info):
        if stage == "epochs" and done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(run, cfg, callback=stop_after_first_epoch)
    first = torch.load(run.train_state_path, weights_only=True)["state"]["history"]
    assert len(first) == 1
    result = train(run, cfg)
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    assert result["history"][0] == first[0]
    # an uninterrupted run with the same seed ends with the same weights
    run2 = Run.create(tmp_path / "r2", dataset_options={"n": 240, "image_size": 16})
    straight = train(run2, cfg)
    assert straight["history"][-1]["search_loss"] == pytest.approx(
        result["history"][-1]["search_loss"], rel=1e-5)
    # a saved state from other settings is never silently mixed in
    with pytest.raises(UserError, match="other training settings"):
        train(run, TrainConfig(epochs=3, lr=1e-2))


def test_evaluate_fp_uniform_and_plan_checks(tiny_run, tmp_path, capsys):
    d = str(tiny_run.path)
    assert main(["evaluate", "--run", d, "--format", "json", "--split", "search"]) == 0
    fp = json.loads(capsys.readouterr().out)
    assert 0 <= fp["worst_acc"] <= fp["avg_acc"] <= 1
    assert main(["evaluate", "--run", d, "--uniform", "8", "--format", "json"]) == 0
    u8 = json.loads(capsys.readouterr().out)
    assert main(["evaluate", "--run", d, "--format", "json"]) == 0
    fp_test = json.loads(capsys.readouterr().out)
    # 8-bit weights barely move predictions
    assert abs(u8["accuracy"] - fp_test["accuracy"]) <= 0.03
    assert (tiny_run.reports_dir / "eval_uniform8_test.json").is_file()
    _one_line_error(capsys, ["evaluate", "--run", d, "--uniform", "9"], "--uniform")
    # a plan made for another architecture
    from fqopt import models
    from fqopt.plan import AllocationPlan
    from fqopt.units import discover_units

    other = models.create("test_vit", num_classes=4, image_size=16)
    p = AllocationPlan.uniform(discover_units(other, "layer"), 4, model="test_vit")
    p.save(tmp_path / "vit.json")
    _one_line_error(capsys, ["evaluate", "--run", d, "--plan", str(tmp_path / "vit.json")],
                    "test_vit")
    (tmp_path / "broken.json").write_text("{not json")
    _one_line_error(capsys, ["evaluate", "--run", d, "--plan", str(tmp_path / "broken.json")],
                    "broken.json", "not valid JSON")


def test_group_balanced_sampler_equalises_groups():
    from fqopt.training import epoch_order

    groups = np.array([0] * 900 + [1] * 100)
    order = epoch_order(groups, np.arange(1000), 0, 0, balanced=True)
    share = np.bincount(groups[order]) / len(order)
    assert abs(share[1] - 0.5) < 0.06
    plain = epoch_order(groups, np.arange(1000), 0, 0, balanced=False)
    assert sorted(plain.tolist()) == list(range(1000))
