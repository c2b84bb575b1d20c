"""fqopt.mct: Sony MCT as a baseline (optional dependency)."""

import sys

import numpy as np
import pytest
import torch

from fqopt import mct, models


@pytest.mark.parametrize("dynamic", [True, False])
def test_traceable_vit_matches_timm(dynamic):
    torch.manual_seed(0)
    vit = models.create("test_vit", 4, image_size=32, dynamic_img_size=dynamic).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(mct.TraceableViT(vit)(x), vit(x), atol=1e-5)


def test_traceable_vit_refuses_other_pooling():
    vit = models.create("test_vit", 4, image_size=32, global_pool="avg").eval()
    with pytest.raises(mct.MCTFailed, match="class token"):
        mct.TraceableViT(vit)


def test_missing_mct_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "model_compression_toolkit", None)   # import fails
    assert not mct.available()
    model = models.create("test_resnet", 4, image_size=16).eval()
    with pytest.raises(mct.MCTUnavailable, match=r"pip install 'fqopt\[bench\]'"):
        mct.mct_quantize(model, [torch.zeros(2, 3, 16, 16)], avg_bits=4)


@pytest.mark.slow
def test_mct_quantize_meets_its_memory_budget():
    pytest.importorskip("model_compression_toolkit")
    torch.manual_seed(0)
    model = models.create("test_resnet", 4, image_size=16).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [torch.randn(8, 3, 16, 16) for _ in range(2)]
    res = mct.mct_quantize(model, batches, avg_bits=4.0)
    n_w = sum(m.weight.numel() for m in model.modules()
              if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    assert res.n_weights == n_w
    assert res.avg_bits <= 4.0 + 1e-6
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        out = res.model(x)
        ref = model(x)
    out = out[0] if isinstance(out, (list, tuple)) else out
    assert out.shape == ref.shape and np.isfinite(out.numpy()).all()
