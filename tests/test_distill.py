"""Knowledge distillation in fixed-bit fine-tuning (``fqopt.refine(distill=...)``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fqopt.apply import quantized
from fqopt.baq import distillation_loss, refine
from fqopt.errors import UserError
from fqopt.plan import AllocationPlan
from fqopt.units import discover_units


def test_distillation_loss_matches_kl_div():
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(7, 5, generator=gen)
    teacher = torch.randn(7, 5, generator=gen)
    for t in (1.0, 3.0):
        # independent: torch's kl_div(input=log q, target=log p) summed over classes, × T²
        ref = torch.nn.functional.kl_div(torch.log_softmax(student / t, 1),
                                         torch.log_softmax(teacher / t, 1), reduction="none",
                                         log_target=True).sum(1) * t * t
        assert torch.allclose(distillation_loss(student, teacher, t), ref, atol=1e-6)
    assert torch.allclose(distillation_loss(teacher, teacher), torch.zeros(7), atol=1e-6)
    # by hand for one row at T = 1
    p = torch.softmax(teacher[0], 0)
    q = torch.softmax(student[0], 0)
    assert float(distillation_loss(student[:1], teacher[:1])[0]) == pytest.approx(
        float((p * (p / q).log()).sum()), rel=1e-5)


def test_distillation_loss_gradient_reaches_the_student_only():
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 3, requires_grad=True)
    distillation_loss(student, teacher, 2.0).sum().backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from fqopt.runs import Run

    path = tmp_path_factory.mktemp("distill") / "run"
    run = Run.create(path, dataset="synthderm", dataset_options={"n": 240, "image_size": 16},
                     model="test_resnet", seed=0)
    torch.manual_seed(0)
    model = run.new_model()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():   # timm zero-initialises residual BNs: give every layer a gradient
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
        model.get_classifier().weight.mul_(20.0)   # a confident teacher: something to distill
        # BatchNorm statistics of the data itself, so that fine-tuning (train mode) does not
        # move them and every change in the outputs comes from the loss
        ds = run.dataset()
        x, _, _ = ds.get_batch(ds.split("train"))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        model.train()(x)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 0.1
    torch.save(model.state_dict(), run.checkpoint_path)
    units = discover_units(run.model(), "layer")
    plan = AllocationPlan.uniform(units, 2, model=run.model_name)
    return run, plan


def _kl_to_fp(run, plan, checkpoint=None) -> float:
    """Mean KL(p_FP ‖ p_quantized) over the train split (independent of refine's code)."""
    fp = run.model().eval()
    student = run.model().eval()
    if checkpoint is not None:
        student.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    ds = run.dataset()
    x, _, _ = ds.get_batch(ds.split("train"))
    with torch.no_grad():
        p = torch.log_softmax(fp(x), 1)
        with quantized(student, plan, method=plan.quantizer):
            q = torch.log_softmax(student(x), 1)
    return float((p.exp() * (p - q)).sum(1).mean())


def test_pure_distillation_pulls_the_quantized_model_towards_fp(tiny, tmp_path):
    run, plan = tiny
    before = _kl_to_fp(run, plan)
    kw = dict(epochs=0, finetune_epochs=3, batch_size=32, lr=1e-3, lambda_fair=0.0,
              augment=False, evaluate=False)
    res = refine(run, plan, distill=1.0, out_dir=tmp_path / "kd", **kw)
    ce = refine(run, plan, out_dir=tmp_path / "ce", **kw)
    after = _kl_to_fp(run, res.plan, res.checkpoint)
    after_ce = _kl_to_fp(run, ce.plan, ce.checkpoint)
    assert before > 0.05, before
    assert after < 0.7 * before and after < after_ce, (before, after, after_ce)
    settings = json.loads((tmp_path / "kd" / "refine.json").read_text())["settings"]
    assert settings["distill"] == 1.0 and settings["distill_temperature"] == 1.0


def test_distill_changes_training_and_zero_is_the_old_fine_tune(tiny, tmp_path):
    run, plan = tiny
    kw = dict(epochs=0, finetune_epochs=1, batch_size=32, lr=3e-3, evaluate=False)
    a = refine(run, plan, out_dir=tmp_path / "a", **kw)
    b = refine(run, plan, out_dir=tmp_path / "b", distill=0.0, **kw)
    c = refine(run, plan, out_dir=tmp_path / "c", distill=0.5, **kw)
    sa, sb, sc = (torch.load(r.checkpoint, weights_only=True) for r in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)           # distill=0: unchanged
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
    # without distillation the settings (the resume fingerprint) are what they always were
    assert "distill" not in json.loads((tmp_path / "a" / "refine.json").read_text())["settings"]


@pytest.mark.parametrize("opts, match", [
    ({"distill": 1.5}, r"distill must be a number in \[0, 1\], got 1.5"),
    ({"distill": -0.1}, r"distill must be a number in \[0, 1\]"),
    ({"distill": "yes"}, r"distill must be a number"),
    ({"distill": 0.5, "distill_temperature": 0}, r"distill_temperature must be a positive"),
])
def test_bad_distill_options(tiny, tmp_path, opts, match):
    run, plan = tiny
    with pytest.raises(UserError, match=match):
        refine(run, plan, epochs=0, finetune_epochs=1, evaluate=False,
               out_dir=tmp_path / "bad", **opts)
    assert not (tmp_path / "bad").exists()


def test_cli_refine_distill(tiny, tmp_path, capsys):
    """``fqopt refine --distill`` reaches the refinement's settings; a bad value is one line
    and exit code 2 before any work."""
    from fqopt.cli import main

    run, plan = tiny
    path = tmp_path / "p.json"
    plan.save(path)
    out = tmp_path / "out"
    code = main(["refine", "--run", str(run.path), "--plan", str(path), "--epochs", "0",
                 "--finetune-epochs", "1", "--batch-size", "32", "--distill", "0.5",
                 "--distill-temperature", "2", "--out", str(out), "--format", "json"])
    _, err = capsys.readouterr()
    assert code == 0, err
    settings = json.loads((out / "refine.json").read_text())["settings"]
    assert settings["distill"] == 0.5 and settings["distill_temperature"] == 2.0
    code = main(["refine", "--run", str(run.path), "--plan", str(path), "--distill", "2",
                 "--out", str(tmp_path / "bad")])
    _, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--distill" in err, err
    assert not (tmp_path / "bad").exists()
