"""fqopt import: a run from a trained checkpoint (issue #14)."""

import json

import pytest
import torch

from fqopt import models
from fqopt.cli import main
from fqopt.runs import Run
from tests.fixtures import make_image_csv


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def csv_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("csvdata")
    fx = make_image_csv(root, n=48, labels=("nevus", "melanoma", "bcc"), groups=("I-II", "V-VI"),
                        n_missing=0)
    return fx


def _args(fx, ckpt, out, *more):
    return ("import", "--model", "test_resnet", "--checkpoint", ckpt, "--dataset", "csv",
            "--data-option", f"csv={fx.csv}", "--image-size", "24", "--out", out, *more)


def test_import_wrapped_checkpoint_then_evaluate_and_export(csv_data, tmp_path, capsys):
    torch.manual_seed(0)
    net = models.create("test_resnet", 3)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}
    ckpt = tmp_path / "trained.pth"
    torch.save(wrapped, ckpt)
    out = tmp_path / "run"
    code, stdout, err = _cli(capsys, *_args(csv_data, ckpt, out, "--format", "json"))
    assert code == 0, err
    assert json.loads(stdout)["n"]
    run = Run.open(out)
    assert run.num_classes == 3 and run.config["imported"]["num_classes"] == 3
    assert (out / "reports" / "fp_test.json").is_file()
    got = run.model().state_dict()
    assert all(torch.equal(got[k], v) for k, v in net.state_dict().items())
    code, _, err = _cli(capsys, "export", "--run", out, "--uniform", "4", "--out",
                        tmp_path / "m.safetensors")
    assert code == 0, err
    code, _, err = _cli(capsys, "evaluate", "--run", out, "--uniform", "4")
    assert code == 0, err
    # a second import does not overwrite without --force
    before = (out / "model.pt").read_bytes()
    code, _, err = _cli(capsys, *_args(csv_data, ckpt, out))
    assert code == 2 and "already holds a run" in err and len(err.strip().splitlines()) == 1
    assert (out / "model.pt").read_bytes() == before


def test_safetensors_checkpoint_and_normalisation(csv_data, tmp_path, capsys):
    from safetensors.torch import save_file

    net = models.create("test_resnet", 3)
    ckpt = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(ckpt))
    out = tmp_path / "run"
    code, _, err = _cli(capsys, *_args(csv_data, ckpt, out, "--mean", "0.485,0.456,0.406",
                                       "--std", "0.229,0.224,0.225"))
    assert code == 0, err
    run = Run.open(out)
    ds = run.dataset()
    assert ds.mean == (0.485, 0.456, 0.406) and ds.std == (0.229, 0.224, 0.225)


@pytest.mark.parametrize("case", ["arch", "classes", "garbage", "missing"])
def test_bad_checkpoints_are_one_line_exit_2(csv_data, tmp_path, capsys, case):
    ckpt = tmp_path / "bad.pt"
    if case == "arch":
        torch.save(models.create("test_vit", 3, image_size=32).state_dict(), ckpt)
        words = ("does not fit model test_resnet",)
    elif case == "classes":
        torch.save(models.create("test_resnet", 5).state_dict(), ckpt)
        words = ("5-class head", "3 classes")
    elif case == "garbage":
        ckpt.write_bytes(b"not a checkpoint")
        words = ("cannot be read safely",)
    else:
        ckpt = tmp_path / "nowhere.pt"
        words = ("does not exist",)
    out = tmp_path / "run"
    code, _, err = _cli(capsys, *_args(csv_data, ckpt, out))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    assert not out.exists()


def test_first_mismatching_tensor_is_named(tmp_path, csv_data, capsys):
    net = models.create("test_resnet", 3)
    state = net.state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(5, 5, 3, 3)
    ckpt = tmp_path / "shape.pt"
    torch.save(state, ckpt)
    code, _, err = _cli(capsys, *_args(csv_data, ckpt, tmp_path / "run"))
    assert code == 2 and "'layer1.0.conv1.weight'" in err, err
