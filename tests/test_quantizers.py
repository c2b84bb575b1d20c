"""Quantization primitives (docs/design.md §4.1): levels, error bounds, mse vs maxabs, STE."""

import pytest
import torch

from fqopt.errors import UserError
from fqopt.quantizers import (MSE_GRID, choose_scale, dequantize, fake_quantize,
                              fake_quantize_ste, qmax, quantize)

BITS = range(2, 9)


def _weights(shape=(12, 5, 3, 3), seed=0):
    """Conv-shaped weights whose channels differ in scale and tail weight."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    scales = torch.logspace(-3, 1, shape[0]).reshape(-1, *([1] * (len(shape) - 1)))
    w = w * scales
    # heavy-tailed channels: a few large outliers, where clipping (mse) pays off
    flat = w.view(w.shape[0], -1)
    flat[::3, ::7] *= 8
    return w


def _per_channel(t):
    return t.reshape(t.shape[0], -1)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("method", ["maxabs", "mse"])
def test_at_most_2b_minus_1_levels_per_channel(bits, method):
    w = _weights()
    q = fake_quantize(w, bits, method)
    for c, row in enumerate(_per_channel(q)):
        assert row.unique().numel() <= 2 ** bits - 1, (c, bits)
    # and the integer levels lie in [-qmax, qmax]
    s = choose_scale(w, bits, method)
    levels = quantize(w, s, bits)
    assert torch.equal(levels, torch.round(levels))
    assert levels.abs().max() <= qmax(bits)


@pytest.mark.parametrize("bits", BITS)
def test_maxabs_error_at_most_half_a_step(bits):
    w = _weights(seed=bits)
    s = choose_scale(w, bits, "maxabs")
    err = (fake_quantize(w, bits, "maxabs") - w).abs()
    # s is max|w| / qmax per channel (FairQuant's quantizer), computed independently here
    expect = _per_channel(w).abs().amax(1) / (2 ** (bits - 1) - 1)
    torch.testing.assert_close(s.reshape(-1), expect)
    assert torch.all(err <= s / 2 * (1 + 1e-5) + 1e-12)
    # the largest weight of each channel is a level: it is reproduced (nearly) exactly
    idx = _per_channel(w).abs().argmax(1)
    rows = torch.arange(w.shape[0])
    torch.testing.assert_close(_per_channel(fake_quantize(w, bits))[rows, idx],
                               _per_channel(w)[rows, idx])


@pytest.mark.parametrize("bits", BITS)
def test_mse_error_not_above_maxabs(bits):
    w = _weights(seed=10 + bits)
    e_mse = _per_channel(fake_quantize(w, bits, "mse") - w).pow(2).sum(1)
    e_max = _per_channel(fake_quantize(w, bits, "maxabs") - w).pow(2).sum(1)
    assert torch.all(e_mse <= e_max * (1 + 1e-6))


def test_mse_strictly_better_on_heavy_tails_and_matches_grid_brute_force():
    torch.manual_seed(3)
    w = torch.distributions.StudentT(2.0).sample((8, 64))
    bits = 3
    e_mse = (fake_quantize(w, bits, "mse") - w).pow(2).sum()
    e_max = (fake_quantize(w, bits, "maxabs") - w).pow(2).sum()
    assert e_mse < 0.9 * e_max
    # brute force: for each channel, the best clipping factor of the grid
    qm = 2 ** (bits - 1) - 1
    for c in range(w.shape[0]):
        row = w[c]
        best = min(((torch.clamp(torch.round(row / (cf * row.abs().max() / qm)), -qm, qm)
                     * (cf * row.abs().max() / qm) - row).pow(2).sum().item())
                   for cf in MSE_GRID)
        got = (fake_quantize(w, bits, "mse")[c] - row).pow(2).sum().item()
        assert got == pytest.approx(best, rel=1e-5)


@pytest.mark.parametrize("method", ["maxabs", "mse"])
def test_per_channel_bits_equal_channelwise_quantization(method):
    w = _weights()
    bits = torch.tensor([2, 3, 4, 5, 6, 7, 8, 2, 4, 8, 3, 6])
    q = fake_quantize(w, bits, method)
    for c in range(w.shape[0]):
        alone = fake_quantize(w[c:c + 1], int(bits[c]), method)
        assert torch.equal(q[c:c + 1], alone)


def test_quantize_dequantize_compose_to_fake_quantize():
    w = _weights(shape=(6, 10))
    for bits in BITS:
        s = choose_scale(w, bits)
        assert torch.equal(dequantize(quantize(w, s, bits), s), fake_quantize(w, bits))


def test_zero_channel_and_input_untouched():
    w = _weights(shape=(4, 9))
    w[1] = 0
    before = w.clone()
    for method in ("maxabs", "mse"):
        q = fake_quantize(w, 4, method)
        assert torch.isfinite(q).all()
        assert torch.equal(q[1], torch.zeros(9))
    assert torch.equal(w, before)
    assert fake_quantize(w.double(), 4).dtype == torch.float64


def test_8_bits_is_finer_than_2_bits():
    w = _weights()
    errs = [(fake_quantize(w, b) - w).pow(2).sum().item() for b in BITS]
    assert all(a > b for a, b in zip(errs, errs[1:]))


@pytest.mark.parametrize("bad", [1, 9, 0, 3.5, torch.tensor([4, 9, 4, 4]),
                                 torch.tensor([4.0, 4.5, 4.0, 4.0])])
def test_bits_outside_2_8_or_fractional_rejected(bad):
    with pytest.raises(UserError, match="2-8"):
        fake_quantize(_weights(shape=(4, 3)), bad)


def test_wrong_channel_count_and_unknown_method_rejected():
    w = _weights(shape=(4, 3))
    with pytest.raises(UserError, match="3 bit-widths for a weight with 4 output channels"):
        fake_quantize(w, torch.tensor([2, 3, 4]))
    with pytest.raises(UserError, match="unknown quantizer 'lsq'"):
        fake_quantize(w, 4, "lsq")


def test_ste_forward_is_quantized_and_gradient_is_identity():
    w = _weights(shape=(5, 7)).requires_grad_(True)
    out = fake_quantize_ste(w, 3)
    torch.testing.assert_close(out, fake_quantize(w, 3))
    (out * torch.arange(35.0).reshape(5, 7)).sum().backward()
    assert torch.equal(w.grad, torch.arange(35.0).reshape(5, 7))
