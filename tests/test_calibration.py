"""BatchNorm re-estimation (fqopt.calibration) against an independent computation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fqopt.calibration import (batchnorm_layers, batchnorm_recalibrated,
                               recalibrate_batchnorm)


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
                        nn.ReLU(), nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    with torch.no_grad():
        net[1].running_mean.fill_(5.0)
        net[1].running_var.fill_(9.0)
        net[1].weight.uniform_(0.5, 1.5)
    return net


def test_statistics_equal_the_conv_outputs_own():
    net = _net()
    batches = [torch.randn(8, 3, 6, 6) * (1 + i) + i for i in range(3)]
    assert recalibrate_batchnorm(net, batches) == 24
    bn = net[1]
    outs = [nn.functional.conv2d(x, net[0].weight, padding=1) for x in batches]
    # momentum=None: the cumulative average of the per-batch mean and unbiased variance
    means = torch.stack([o.mean(dim=(0, 2, 3)) for o in outs])
    vars_ = torch.stack([o.transpose(0, 1).reshape(4, -1).var(dim=1, unbiased=True)
                         for o in outs])
    torch.testing.assert_close(bn.running_mean, means.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.running_var, vars_.mean(0), rtol=1e-5, atol=1e-5)
    # modes and momentum are as they were (a model in training mode stays so)
    assert all(m.training for m in net.modules())
    assert bn.momentum == 0.1


def test_only_batchnorm_runs_in_training_mode():
    net = _net()
    net.eval()
    seen = []
    net[3].register_forward_hook(lambda m, i, o: seen.append(m.training))
    recalibrate_batchnorm(net, [(torch.randn(4, 3, 6, 6), torch.zeros(4))])
    assert seen == [False]               # dropout was off during the pass
    assert not net.training and not net[1].training


def test_context_restores_bit_for_bit():
    net = _net()
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with batchnorm_recalibrated(net, [torch.randn(4, 3, 6, 6)]):
        assert not torch.equal(net[1].running_mean, before["1.running_mean"])
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert net.training and net[1].training


def test_without_batchnorm_nothing_runs_and_empty_input_is_an_error():
    lin = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    assert batchnorm_layers(lin) == []
    assert recalibrate_batchnorm(lin, iter(())) == 0
    with pytest.raises(ValueError, match="no calibration images"):
        recalibrate_batchnorm(_net(), [])
    with pytest.raises(TypeError, match="image tensor"):
        recalibrate_batchnorm(_net(), [{"x": 1}])
