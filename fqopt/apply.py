"""Apply an AllocationPlan to a model: fake-quantized weights, swapped in place (docs/design.md §3).

``quantized(model, plan)`` is a context manager: on entry it keeps a copy of the original weight
of every layer the plan quantizes (only those tensors, never a copy of the model) and writes the
fake-quantized weight into the same storage; on exit, also after an exception, it copies the
originals back, bit for bit. ``quantize_(model, plan)`` does the same permanently
(torchao-style verb).

A plan may be an :class:`~fqopt.plan.AllocationPlan`, a path to a plan JSON, or an ``int``
(every Conv2d/Linear weight at that many bits, stem and head included, as FairQuant's uniform
baselines do).

``method=None`` (the default) applies the plan's own quantizer (``plan.quantizer``; ``maxabs``
for an int plan and for plan files written before plans recorded it); a method given explicitly
overrides it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

import numpy as np
import torch
from torch import nn

from fqopt.discovery import discover_units, quantizable_layers
from fqopt.errors import UserError
from fqopt.plan import AllocationPlan
from fqopt.quantizers import QUANTIZERS, fake_quantize

__all__ = ["quantized", "quantize_", "quantized_layers", "resolve_plan", "load_plan",
           "plan_layer_bits", "quantized_weights"]


def load_plan(model: nn.Module, plan, *, units=None,
              model_name: str | None = None) -> tuple[AllocationPlan, str]:
    """``(plan, source)``: an :class:`AllocationPlan` validated against ``model``, and how
    messages name it (``"plan PATH"`` for a file, else ``"plan"``).

    ``plan``: an AllocationPlan, a path to a plan JSON, or an int (uniform bits, no pins).
    ``units``: the model's :class:`~fqopt.units.UnitSet` if already known (saves a module walk).
    ``model_name``: the model's name if known; a plan made for another model is refused, and a
    uniform plan is named after it (else after the model's class).
    A plan whose layers or weight shapes differ from the model's is a UserError naming the layer.
    """
    if units is None:
        # pins do not matter for validation: a plan names every quantizable layer either way
        units = discover_units(model, "layer", pin="none")
    if isinstance(plan, (bool, np.bool_)):
        raise UserError(f"plan must be an AllocationPlan, a plan file or an int, got {plan!r}")
    if isinstance(plan, (int, np.integer)):
        return (AllocationPlan.uniform(units, int(plan), model=model_name or type(model).__name__,
                                       respect_pins=False), "plan")
    source = "plan"
    if isinstance(plan, (str, os.PathLike)):
        source = f"plan {plan}"
        plan = AllocationPlan.load(plan)
    if not isinstance(plan, AllocationPlan):
        raise UserError(f"plan must be an AllocationPlan, a plan file or an int, "
                        f"got {type(plan).__name__}")
    try:
        plan.validate(units, model=model_name)
    except UserError as exc:
        if source == "plan":
            raise
        raise UserError(f"{source}: {exc}") from None
    return plan, source


def resolve_plan(model: nn.Module, plan, *, units=None) -> AllocationPlan:
    """The plan of :func:`load_plan`, validated against ``model``."""
    return load_plan(model, plan, units=units)[0]


def plan_method(plan, method: str | None) -> str:
    """The quantizer to apply: ``method`` if given, else the plan's own."""
    return plan.quantizer if method is None else method


def plan_layer_bits(plan, device=None) -> dict[str, int | torch.Tensor]:
    """Layer name -> bits: an int where the whole layer shares one bit-width (the fast path),
    else an int64 tensor ``[out_channels]``."""
    out: dict[str, int | torch.Tensor] = {}
    for name, b in plan.layer_bits().items():
        b = np.asarray(b, dtype=np.int64)
        if b.size and np.all(b == b[0]):
            out[name] = int(b[0])
        else:
            out[name] = torch.as_tensor(b, device=device)
    return out


def _checked(method: str) -> str:
    QUANTIZERS.get(method)
    return method


def _modules_by_name(model: nn.Module, names) -> dict[str, nn.Module]:
    found = dict(quantizable_layers(model))
    missing = [n for n in names if n not in found]
    if missing:
        raise UserError(f"model has no Conv2d/Linear layer named {missing[0]!r}")
    return {n: found[n] for n in names}


@contextlib.contextmanager
def quantized_layers(model: nn.Module, layer_bits: Mapping[str, int | torch.Tensor], *,
                     method: str = "maxabs") -> Iterator[nn.Module]:
    """Fake-quantize the named layers (layer name -> bits, int or ``[out_channels]`` tensor) for
    the duration of the block; unlisted layers keep their weights. Restores bit-exactly."""
    _checked(method)
    modules = _modules_by_name(model, list(layer_bits))
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    seen: set[int] = set()
    try:
        with torch.no_grad():
            for name, module in modules.items():
                w = module.weight
                if id(w) in seen:  # a weight shared by two modules is quantized once
                    continue
                seen.add(id(w))
                q = fake_quantize(w, layer_bits[name], method)
                saved.append((w, w.detach().clone()))
                # in place: the parameter object and its storage stay the same, so optimizers,
                # hooks and compiled graphs holding the tensor see the quantized values
                w.copy_(q)
        yield model
    finally:
        with torch.no_grad():
            for w, original in reversed(saved):
                w.copy_(original)


@contextlib.contextmanager
def quantized(model: nn.Module, plan, *, method: str | None = None,
              units=None) -> Iterator[nn.Module]:
    """Fake-quantize ``model``'s weights in place per ``plan`` inside a ``with`` block.

    ``plan``: AllocationPlan, plan JSON path, or int (uniform bits for every layer).
    ``method``: quantizer (``maxabs`` or ``mse``, docs/design.md §4.1); None: the plan's own.
    On exit, also after an exception, every weight is restored bit for bit. Only the plan's layer
    weights are copied (to restore them); biases and norm layers are untouched.

    >>> with fqopt.quantized(model, plan):          # doctest: +SKIP
    ...     logits = model(x)
    """
    plan = resolve_plan(model, plan, units=units)
    device = next(model.parameters()).device
    with quantized_layers(model, plan_layer_bits(plan, device), method=plan_method(plan, method)):
        yield model


def quantize_(model: nn.Module, plan, *, method: str | None = None, units=None) -> nn.Module:
    """Permanently replace ``model``'s weights by their fake-quantized values (returns model).
    ``method``: quantizer; None: the plan's own."""
    plan = resolve_plan(model, plan, units=units)
    method = _checked(plan_method(plan, method))
    device = next(model.parameters()).device
    modules = _modules_by_name(model, list(plan.assignments))
    with torch.no_grad():
        for name, bits in plan_layer_bits(plan, device).items():
            w = modules[name].weight
            w.copy_(fake_quantize(w, bits, method))
    return model


def quantized_weights(model: nn.Module, plan, *, method: str | None = None,
                      units=None) -> dict[str, torch.Tensor]:
    """Layer name -> fake-quantized weight tensor (a new tensor; the model is not touched).
    ``method``: quantizer; None: the plan's own."""
    plan = resolve_plan(model, plan, units=units)
    method = _checked(plan_method(plan, method))
    device = next(model.parameters()).device
    modules = _modules_by_name(model, list(plan.assignments))
    return {name: fake_quantize(modules[name].weight, bits, method)
            for name, bits in plan_layer_bits(plan, device).items()}
