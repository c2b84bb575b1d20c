"""Quantization primitives (docs/design.md §4.1): pure tensor functions, no module walking.

Symmetric, uniform, per output channel: integer levels q in [-qmax, qmax] with
qmax = 2^(b-1) - 1 and scale s = c * max|w| / qmax. ``maxabs`` uses c = 1 (FairQuant's
quantizer); ``mse`` chooses c per output channel and bit-width from a small grid to minimise
||Q(w) - w||^2 (c = 1 is in the grid, so its error never exceeds maxabs's).

``bits`` may be an int or a ``[out_channels]`` integer tensor (per-channel bit-widths).
"""

from __future__ import annotations

import torch

from fqopt.errors import UserError
from fqopt.units import MAX_BITS, MIN_BITS, check_bits

METHODS = ("maxabs", "mse")
MSE_GRID = tuple(1.0 - 0.04 * i for i in range(16))  # c in {1.00, 0.96, ..., 0.40}
_EPS = 1e-12


def _bits_tensor(bits, w: torch.Tensor) -> torch.Tensor:
    """``[out_channels, 1, ...]`` float tensor of bits, broadcastable against ``w``."""
    shape = (w.shape[0],) + (1,) * (w.dim() - 1)
    if isinstance(bits, torch.Tensor):
        b = bits.to(device=w.device, dtype=w.dtype).reshape(-1)
        if b.numel() == 1:
            b = b.expand(w.shape[0])
        if b.numel() != w.shape[0]:
            raise UserError(f"{b.numel()} bit-widths for a weight with {w.shape[0]} output channels")
    else:
        b = torch.full((w.shape[0],), float(bits), device=w.device, dtype=w.dtype)
    if torch.any((b < MIN_BITS) | (b > MAX_BITS)) or torch.any(b != torch.round(b)):
        check_bits(sorted(set(b.tolist())), what="bit-widths")  # names the bad values
    return b.reshape(shape)


def qmax(bits) -> torch.Tensor | int:
    """Largest integer level, 2^(b-1) - 1."""
    if isinstance(bits, torch.Tensor):
        return torch.pow(2.0, bits - 1) - 1
    return 2 ** (int(bits) - 1) - 1


def channel_maxabs(w: torch.Tensor) -> torch.Tensor:
    """``[out_channels, 1, ...]`` max |w| over everything but the first dimension."""
    return w.detach().abs().reshape(w.shape[0], -1).amax(dim=1).reshape(
        (w.shape[0],) + (1,) * (w.dim() - 1))


def quantize(w: torch.Tensor, scale: torch.Tensor, bits) -> torch.Tensor:
    """Integer levels ``clamp(round(w / s), -qmax, qmax)`` (as w's dtype)."""
    qm = qmax(_bits_tensor(bits, w))
    return torch.clamp(torch.round(w / scale), -qm, qm)


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q * scale


def choose_scale(w: torch.Tensor, bits, method: str = "maxabs") -> torch.Tensor:
    """Per-output-channel scale ``[out_channels, 1, ...]`` for ``method``."""
    if method not in METHODS:
        raise UserError(f"unknown quantizer {method!r}; expected one of {', '.join(METHODS)}")
    w = w.detach()
    b = _bits_tensor(bits, w)
    qm = qmax(b)
    base = torch.clamp(channel_maxabs(w), min=_EPS) / qm
    if method == "maxabs":
        return base
    best_err = best_scale = None
    for c in MSE_GRID:
        s = base * c
        err = (torch.clamp(torch.round(w / s), -qm, qm) * s - w).pow(2)
        err = err.reshape(w.shape[0], -1).sum(dim=1)
        if best_err is None:
            best_err, best_scale = err, s.clone()
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_scale = torch.where(better.reshape(base.shape), s, best_scale)
    return best_scale


def fake_quantize(w: torch.Tensor, bits, method: str = "maxabs") -> torch.Tensor:
    """Q(w): quantize and dequantize (no gradient path through the rounding)."""
    scale = choose_scale(w, bits, method)
    return dequantize(quantize(w.detach(), scale, bits), scale)


def fake_quantize_ste(w: torch.Tensor, bits, method: str = "maxabs") -> torch.Tensor:
    """Q(w) in the forward pass, identity gradient to ``w`` (straight-through estimator)."""
    return w + (fake_quantize(w, bits, method) - w).detach()
