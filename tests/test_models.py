import subprocess
import sys

import pytest
import torch

from fqopt import models
from fqopt.errors import UserError


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "deit_tiny_patch16_224",
                                  "tiny_vit_5m_224"])
def test_supported_models_forward_at_native_resolution(name):
    m = models.create(name, num_classes=3, image_size=models.NATIVE_SIZE[name]).eval()
    with torch.no_grad():
        out = m(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 3)


def test_default_model_small_input():
    m = models.create(models.DEFAULT_MODEL, num_classes=4).eval()
    with torch.no_grad():
        assert m(torch.randn(2, 3, 40, 40)).shape == (2, 4)


def test_unknown_model_lists_valid_ones():
    with pytest.raises(UserError, match="unknown model 'resnet9000'.*resnet18"):
        models.create("resnet9000")


def test_checkpoint_roundtrip_and_mismatch(tmp_path):
    m = models.create("test_resnet", num_classes=4)
    torch.save(m.state_dict(), tmp_path / "ok.pt")
    m2 = models.create("test_resnet", num_classes=4, checkpoint=tmp_path / "ok.pt")
    for (k, a), b in zip(m.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(UserError, match="does not fit model test_resnet: 'fc.weight' has shape"):
        models.create("test_resnet", num_classes=5, checkpoint=tmp_path / "ok.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot be read safely"):
        models.create("test_resnet", num_classes=4, checkpoint=tmp_path / "bad.pt")
    # a pickle holding arbitrary objects is refused by weights_only loading
    import argparse

    torch.save({"x": argparse.Namespace(a=1)}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="cannot be read safely"):
        models.create("test_resnet", num_classes=4, checkpoint=tmp_path / "evil.pt")


def test_import_fqopt_is_light():
    code = ("import sys, fqopt, fqopt.cli; heavy = [m for m in ('ortools', 'cvxpy', 'optuna', "
            "'matplotlib', 'torch', 'timm', 'fqopt.solvers', 'fqopt.search') if m in sys.modules];"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_using_fqopt_does_not_initialise_cuda():
    code = ("import torch, fqopt, fqopt.models, fqopt.units, fqopt.plan, fqopt.sensitivity;"
            "m = fqopt.models.create('test_resnet', 4); fqopt.units.discover_units(m, 'channel');"
            "print(torch.cuda.is_initialized())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
