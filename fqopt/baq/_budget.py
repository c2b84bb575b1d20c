"""BAQ's budget while learning (an augmented Lagrangian) and its rounding costs.

The rounding cost of unit u at ``x`` bits, ``a_u·(4^(b*_u − x) − 1)/ln 4``, is explained in
:mod:`fqopt.baq` (the package docstring).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class AugmentedLagrangian:
    """PHR augmented Lagrangian for one inequality ``g ≤ 0``: penalty
    ``(max(0, μ + ρ·g)² − μ²)/(2ρ)`` (gradient ``max(0, μ + ρg)·∇g``), update
    ``μ ← max(0, μ + ρ·g)``. ``rho = 0`` switches the term off."""

    rho: float
    mu: float = 0.0

    def penalty(self, g: torch.Tensor) -> torch.Tensor:
        if self.rho <= 0:
            return g * 0.0
        return (torch.clamp(self.mu + self.rho * g, min=0.0) ** 2 - self.mu ** 2) / (2 * self.rho)

    def update(self, g: float) -> None:
        if self.rho > 0:
            self.mu = max(0.0, self.mu + self.rho * float(g))


def rounding_costs(continuous: np.ndarray, bits, weights: np.ndarray) -> np.ndarray:
    """``[U, 1, K]`` solver costs of rounding unit u from ``continuous[u]`` bits to ``bits[k]``:
    ``weights[u]·(4^(b*_u − bits[k]) − 1)/ln 4`` (see the module docstring)."""
    b = np.asarray(continuous, dtype=np.float64).reshape(-1, 1)
    k = np.asarray(bits, dtype=np.float64).reshape(1, -1)
    a = np.asarray(weights, dtype=np.float64).reshape(-1, 1)
    return (a * np.expm1((b - k) * math.log(4.0)) / math.log(4.0))[:, None, :]

