"""Quantization primitives (docs/design.md §4.1, §4.7): pure tensor functions, no module walking.

Symmetric, uniform, per output channel: integer levels q in [-qmax, qmax] with
qmax = 2^(b-1) - 1 and scale s = c * max|w| / qmax. ``maxabs`` uses c = 1 (FairQuant's
quantizer); ``mse`` chooses c per output channel and bit-width from a small grid to minimise
||Q(w) - w||^2 (c = 1 is in the grid, so its error never exceeds maxabs's).

``bits`` may be an int or a ``[out_channels]`` integer tensor (per-channel bit-widths).

The quantizers are a registry (:data:`QUANTIZERS`): an unknown name is one lookup's UserError.
The differentiable forms that training uses (straight-through, and BAQ's FracBits interpolation
between two bit-widths, :func:`fractional_fake_quantize`) are here too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fqopt._registry import Registry
from fqopt.errors import UserError
from fqopt.units import MAX_BITS, MIN_BITS, check_bits

#: the quantizers, by name: ``name -> scale(w, base, qm)`` (a plan records one by name)
QUANTIZERS: Registry[Callable] = Registry("quantizer")
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
    """Per-output-channel scale ``[out_channels, 1, ...]`` for quantizer ``method``."""
    scale = QUANTIZERS.get(method)
    w = w.detach()
    qm = qmax(_bits_tensor(bits, w))
    return scale(w, torch.clamp(channel_maxabs(w), min=_EPS) / qm, qm)


@QUANTIZERS.register("maxabs")
def _maxabs_scale(w: torch.Tensor, base: torch.Tensor, qm: torch.Tensor) -> torch.Tensor:
    """``max|w| / qmax`` (FairQuant's quantizer)."""
    return base


@QUANTIZERS.register("mse")
def _mse_scale(w: torch.Tensor, base: torch.Tensor, qm: torch.Tensor) -> torch.Tensor:
    """``c · max|w| / qmax`` with c from :data:`MSE_GRID` minimising ``||Q(w) − w||²`` per
    channel."""
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


# ------------------------------------------------------------------ differentiable forms
def _quantize_at(w: torch.Tensor, maxabs: torch.Tensor, bits: torch.Tensor,
                 method: str) -> torch.Tensor:
    """Q_bits(w) for real-valued integer ``bits`` broadcastable to ``[C, 1, ...]``, no graph.

    The same operations as :func:`fake_quantize` (so the values are identical) without its
    per-call validation, and with ``maxabs`` computed once for both bit-widths."""
    if method != "maxabs":
        return fake_quantize(w, bits.expand(w.shape[0]) if bits.dim() == 0 else bits.reshape(-1),
                             method)
    qm = torch.pow(2.0, bits - 1) - 1
    scale = maxabs / qm
    return torch.clamp(torch.round(w / scale), -qm, qm) * scale


def _maxabs(w: torch.Tensor) -> torch.Tensor:
    return torch.clamp(channel_maxabs(w), min=_EPS)


def fractional_fake_quantize(w: torch.Tensor, bits: torch.Tensor, method: str = "maxabs", *,
                             min_bits: int = MIN_BITS, max_bits: int = MAX_BITS) -> torch.Tensor:
    """FracBits interpolation between the quantizers at ``⌊b⌋`` and ``⌊b⌋ + 1``.

    w: weight, output channels first. bits: real bit-widths, a 0-d tensor (one per layer) or
    ``[out_channels]``, within ``[min_bits, max_bits]``. Returns ŵ (same shape as w) with
    ``∂ŵ/∂w = 1`` (straight-through) and ``∂ŵ/∂b = Q_{lo+1}(w) − Q_lo(w)`` per channel.
    """
    b = bits.to(w.dtype)
    if b.dim():
        b = b.reshape((w.shape[0],) + (1,) * (w.dim() - 1))
    top = max(int(min_bits), int(max_bits) - 1)
    lo = torch.clamp(torch.floor(b.detach()), int(min_bits), top)
    hi = torch.clamp(lo + 1, max=int(max_bits))
    wd = w.detach()
    m = _maxabs(wd)
    q_lo = _quantize_at(wd, m, lo, method)
    q_hi = _quantize_at(wd, m, hi, method)
    # q_lo and q_hi carry no graph; ŵ = w + (q_lo − w)ᵀ + α·(q_hi − q_lo) with α = b − lo
    return w + (q_lo - w).detach() + (b - lo) * (q_hi - q_lo)


def fixed_fake_quantize_ste(w: torch.Tensor, bits, method: str = "maxabs") -> torch.Tensor:
    """Q_bits(w) with a straight-through gradient (int or ``[out_channels]`` bits), computed by
    the same kernel as :func:`fractional_fake_quantize` so step times compare fairly."""
    wd = w.detach()
    b = torch.as_tensor(bits, dtype=w.dtype, device=w.device)
    if b.dim():
        b = b.reshape((w.shape[0],) + (1,) * (w.dim() - 1))
    return w + (_quantize_at(wd, _maxabs(wd), b, method) - w).detach()

