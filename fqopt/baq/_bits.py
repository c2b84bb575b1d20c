"""BAQ's learned bit-widths: one real ``b_u`` per unit, used through FracBits interpolation.

:class:`BitWidths` holds the bits of a :class:`~fqopt.units.UnitSet` (a parameter per learned
layer, a buffer per pinned one) and gives the weights of a forward pass
(:func:`~fqopt.quantizers.fractional_fake_quantize`); :func:`fixed_bit_weights` gives those of
fixed-bit fine-tuning.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fqopt.errors import UserError
from fqopt.quantizers import fixed_fake_quantize_ste, fractional_fake_quantize
from fqopt.units import MAX_BITS, MIN_BITS


class BitWidths(nn.Module):
    """Continuous bit-widths of a :class:`~fqopt.units.UnitSet`, one real per unit.

    A learnable layer holds a parameter of shape ``[]`` (layer granularity) or ``[out_channels]``
    (channel); a fixed layer (pinned) keeps integer bits ``[out_channels]`` as a buffer.
    ``init``: ``[U]`` starting bits in ``units.names`` order. ``fixed``: layer names that stay at
    their starting bits. ``budget_weights``: ``[U]`` weight ``a_u`` of each unit in the budget.
    """

    def __init__(self, units, init, *, fixed=(), budget_weights=None, min_bits: int = MIN_BITS,
                 max_bits: int = MAX_BITS):
        super().__init__()
        init = np.asarray(init, dtype=np.float64).reshape(-1)
        if init.shape != (len(units),):
            raise UserError(f"{init.size} starting bit-widths for {len(units)} units")
        self.units = units
        self.min_bits, self.max_bits = int(min_bits), int(max_bits)
        self.layer_names = list(units.layer_names)
        self.slices = units.unit_slices()
        fixed = set(fixed)
        self.learnable = [name not in fixed for name in self.layer_names]
        self.params = nn.ParameterList()
        self._param_of: dict[str, int] = {}
        for name, learn in zip(self.layer_names, self.learnable):
            b = torch.as_tensor(init[self.slices[name]], dtype=torch.float32)
            if learn:
                value = b[0].clone() if units.granularity == "layer" else b.clone()
                self._param_of[name] = len(self.params)
                self.params.append(nn.Parameter(value))
            else:
                n = units.layer(name).out_channels
                full = b.expand(n).clone() if units.granularity == "layer" else b.clone()
                self.register_buffer(_buffer_name(name), full.round().to(torch.int64))
        weights = np.asarray(units.sizes if budget_weights is None else budget_weights,
                             dtype=np.float64)
        self.register_buffer("budget_weights", torch.as_tensor(weights, dtype=torch.float64))
        self.project_()

    # ------------------------------------------------------------------ views
    def layer_bits(self, name: str) -> torch.Tensor:
        """Real bits of layer ``name``: ``[]`` or ``[out_channels]`` (learnable), or int64
        ``[out_channels]`` (fixed)."""
        if name in self._param_of:
            return self.params[self._param_of[name]]
        return getattr(self, _buffer_name(name))

    def unit_bits(self) -> torch.Tensor:
        """``[U]`` float64 bits in ``units.names`` order (differentiable in the parameters)."""
        parts = []
        for name in self.layer_names:
            b = self.layer_bits(name).to(torch.float64).reshape(-1)
            if name not in self._param_of and self.units.granularity == "layer":
                b = b[:1]
            parts.append(b)
        return torch.cat(parts)

    def average_bits(self) -> torch.Tensor:
        """``Σ_u a_u·b_u / Σ_u a_u`` (0-d float64, differentiable)."""
        a = self.budget_weights
        return (a * self.unit_bits()).sum() / a.sum()

    def learnable_mask(self) -> np.ndarray:
        """``[U]`` bool: units whose bits are learned."""
        mask = np.zeros(len(self.units), dtype=bool)
        for name, learn in zip(self.layer_names, self.learnable):
            mask[self.slices[name]] = learn
        return mask

    @torch.no_grad()
    def project_(self) -> None:
        """Clamp every learnable bit-width into ``[min_bits, max_bits]`` (projected gradient)."""
        for p in self.params:
            p.clamp_(self.min_bits, self.max_bits)

    # ------------------------------------------------------------------ weights
    def quantized_weights(self, modules: dict[str, nn.Module], method: str = "maxabs"
                          ) -> dict[str, torch.Tensor]:
        """``{'<layer>.weight': ŵ}`` for :func:`torch.func.functional_call`: fractional for
        learnable layers, straight-through fixed-bit for the others."""
        out = {}
        for name in self.layer_names:
            w = modules[name].weight
            if name in self._param_of:
                out[f"{name}.weight"] = fractional_fake_quantize(
                    w, self.layer_bits(name), method, min_bits=self.min_bits,
                    max_bits=self.max_bits)
            else:
                out[f"{name}.weight"] = fixed_fake_quantize_ste(w, self.layer_bits(name),
                                                                method)
        return out


def _buffer_name(layer: str) -> str:
    return "fixed_" + layer.replace(".", "__")


def fixed_bit_weights(modules: dict[str, nn.Module], layer_bits: dict, method: str = "maxabs"
                      ) -> dict[str, torch.Tensor]:
    """``{'<layer>.weight': Q(w)}`` with straight-through gradients (fixed-bit training)."""
    return {f"{name}.weight": fixed_fake_quantize_ste(m.weight, layer_bits[name], method)
            for name, m in modules.items()}

