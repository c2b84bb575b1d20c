"""fqopt.auto_quantize / fqopt.quantize_: any model, any loader of (images, labels, groups)."""

import pytest
import torch
from torch import nn

import fqopt
from fqopt.errors import UserError
from fqopt.units import quantizable_layers


def _loader(n=48, size=32, classes=3, groups=("light", "dark"), batch=16, seed=0):
    """A DataLoader over a TensorDataset-like list: groups as strings (default collate keeps
    them as a list of str) or integers."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    grp = [groups[i % len(groups)] for i in range(n)]

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return n

        def __getitem__(self, i):
            return x[i], y[i], grp[i]

    return torch.utils.data.DataLoader(DS(), batch_size=batch)


class Small(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8),
                                      nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(16, classes)

    def forward(self, x):
        return self.classifier(self.features(x))


@pytest.mark.parametrize("groups", [("light", "dark"), (0, 1, 2)])
def test_hand_written_module_groups_as_strings_and_ints(groups):
    torch.manual_seed(0)
    model = Small().eval()
    before = {n: m.weight.detach().clone() for n, m in quantizable_layers(model)}
    plan = fqopt.auto_quantize(model, _loader(groups=groups), budget=4.0, objective="worst")
    assert plan.avg_bits <= 4.0 + 1e-9
    assert set(plan.predicted) == {str(g) for g in groups}
    assert plan.meta["groups"] == sorted(str(g) for g in groups)
    # not applied unless asked
    assert all(torch.equal(m.weight, before[n]) for n, m in quantizable_layers(model))
    fqopt.quantize_(model, plan)
    assert any(not torch.equal(m.weight, before[n]) for n, m in quantizable_layers(model))


def test_torchvision_resnet18_applied_in_place():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    plan = fqopt.auto_quantize(model, _loader(n=24, size=32, batch=12), budget=3.0,
                               objective="worst", granularity="layer", apply=True)
    assert plan.avg_bits <= 3.0 + 1e-9 and plan.solver["status"] in ("optimal", "feasible")
    # applied: every quantized weight has at most 2^b - 1 distinct levels per channel
    lb = plan.layer_bits()
    for name, m in quantizable_layers(model):
        b = int(lb[name][0])
        w = m.weight.detach().reshape(m.weight.shape[0], -1)
        assert max(len(torch.unique(r)) for r in w) <= 2 ** b - 1
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


def test_batches_without_groups_are_one_clear_error():
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 3, (8,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    with pytest.raises(UserError, match=r"\(images, labels, groups\).*2-tuple"):
        fqopt.auto_quantize(Small(), loader)


def test_over_tight_budget_is_a_user_error():
    with pytest.raises(UserError):
        fqopt.auto_quantize(Small(), _loader(), budget=1.0)


def test_mismatched_groups_length():
    x, y = torch.randn(4, 3, 16, 16), torch.zeros(4, dtype=torch.long)
    with pytest.raises(UserError, match="4 images but 3 groups"):
        fqopt.auto_quantize(Small(), [(x, y, ["a", "b", "a"])])


def test_quantize_is_top_level():
    assert fqopt.quantize_ is fqopt.apply.quantize_
    assert "auto_quantize" in dir(fqopt) and "quantize_" in dir(fqopt)
