"""fqopt train --init: fine-tune from local pretrained weights (issue #14)."""

import torch

from fqopt import models
from fqopt.cli import main
from fqopt.runs import Run


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_init_reinitialises_the_head_and_records_timm_normalisation(tmp_path, capsys):
    torch.manual_seed(0)
    pre = models.create("test_resnet", 1000)          # "ImageNet" weights, 1000 classes
    ckpt = tmp_path / "in1k.pth"
    torch.save({"model": pre.state_dict()}, ckpt)
    out = tmp_path / "run"
    code, stdout, err = _cli(capsys, "train", "--model", "test_resnet", "--samples", "60",
                             "--image-size", "24", "--epochs", "1", "--init", ckpt, "--out", out)
    assert code == 0, err
    assert "re-initialised" in stdout + err
    run = Run.open(out)
    assert run.config["init"]["reinitialised"] == ["fc.bias", "fc.weight"]
    cfg = models.pretrained_input("test_resnet")
    assert run.config["input"]["mean"] == cfg["mean"] and run.config["input"]["std"] == cfg["std"]
    assert run.dataset().mean == tuple(cfg["mean"])


def test_init_without_image_size_takes_timm_resolution(tmp_path):
    from fqopt.cli.train import _check_init

    pre = models.create("test_resnet", 4)
    torch.save(pre.state_dict(), tmp_path / "w.pt")
    _cfg, info, size = _check_init(tmp_path / "w.pt", "test_resnet", None)
    assert size == 160 and info["sha256"]


def test_incompatible_init_is_one_line_exit_2(tmp_path, capsys):
    torch.save(models.create("test_vit", 10, image_size=32).state_dict(), tmp_path / "vit.pt")
    out = tmp_path / "run"
    code, _, err = _cli(capsys, "train", "--model", "test_resnet", "--samples", "60",
                        "--image-size", "24", "--epochs", "1", "--init", tmp_path / "vit.pt",
                        "--out", out)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "does not fit" in err, err
    assert not out.exists()


def test_crop_pct_from_the_run_is_applied(tmp_path):
    run = Run.create(tmp_path / "run", dataset="synthderm",
                     dataset_options={"n": 30, "image_size": 32}, model="test_resnet",
                     input_config={"mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 0.8})
    ds = run.dataset()
    assert ds.image_size == 32 and run.image_size == 32
    x, _, _ = ds.get_batch([0, 1])
    assert x.shape == (2, 3, 32, 32)
    from fqopt import data

    full = data.load("synthderm", n=30, image_size=40, seed=0)
    assert (full.load_images([0])[0, 4:36, 4:36] == ds.load_images([0])[0]).all()
