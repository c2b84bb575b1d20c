"""Finding the units of a torch model: its Conv2d/Linear layers, default pins, MACs, float
parameters and buffers (docs/design.md §2). The result is a :class:`~fqopt.units.UnitSet`, which
needs no torch; this module is the one that walks modules."""

from __future__ import annotations

import torch
from torch import nn

from fqopt.errors import UserError
from fqopt.units import FLOAT_BYTES, GRANULARITIES, LayerInfo, UnitSet

QUANTIZABLE = (nn.Conv2d, nn.Linear)

__all__ = ["QUANTIZABLE", "buffer_bytes", "default_pins", "discover_units", "quantizable_layers"]


def quantizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv2d and Linear modules in registration order, with their qualified names."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, QUANTIZABLE)]


def _count_macs(model: nn.Module, input_size: tuple[int, int, int] | None) -> dict[str, int]:
    if input_size is None:
        return {}
    macs: dict[str, int] = {}
    hooks = []
    for name, m in quantizable_layers(model):
        def hook(mod, inp, out, name=name):
            # every output element of a conv/linear costs (weight numel / out_channels) MACs
            per_out = mod.weight.numel() // mod.weight.shape[0]
            macs[name] = macs.get(name, 0) + int(out.numel() // out.shape[0]) * per_out
        hooks.append(m.register_forward_hook(hook))
    # remember each module's own mode: model.train(flag) would overwrite mixed modes
    # (e.g. a training model with frozen BatchNorm layers)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        p = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return macs


def default_pins(model: nn.Module) -> list[str]:
    """The stem (first conv) and the classifier head, found the timm way when possible."""
    layers = quantizable_layers(model)
    if not layers:
        return []
    names = [n for n, _ in layers]
    pins = []
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    first = cfg.get("first_conv") if isinstance(cfg, dict) else None
    if isinstance(first, str) and first in names:
        pins.append(first)
    else:
        pins.append(names[0])
    head = None
    if hasattr(model, "get_classifier"):
        clf = model.get_classifier()
        for n, m in layers:
            if m is clf:
                head = n
        if head is None and isinstance(clf, nn.Module):
            inner = [n for n, m in layers if any(m is sub for sub in clf.modules())]
            head = inner[-1] if inner else None
    if head is None:
        head = names[-1]
    if head not in pins:
        pins.append(head)
    return pins


def discover_units(model: nn.Module, granularity: str = "layer", *, pin="default",
                   pin_bits: int = 8, ties=None, input_size=None) -> UnitSet:
    """Find the quantizable units of ``model``.

    pin: ``"default"`` (stem and head), ``"none"``, or a list of layer names (or a comma list).
    ties: lists of layer names that must share a bit-width.
    input_size: ``(C, H, W)`` of one sample, to count MACs per layer (else MACs are -1).
    """
    if granularity not in GRANULARITIES:
        raise UserError(f"unknown granularity {granularity!r}; expected one of "
                        f"{', '.join(GRANULARITIES)}")
    found = quantizable_layers(model)
    if not found:
        raise UserError(f"model {type(model).__name__} has no Conv2d or Linear layers to quantize")
    macs = _count_macs(model, input_size)
    layers = [LayerInfo(name=n, kind=type(m).__name__, shape=tuple(m.weight.shape),
                        macs=macs.get(n, -1)) for n, m in found]
    names = {layer.name for layer in layers}
    if pin is None or pin == "none" or pin == []:
        pin_list = []
    elif pin == "default":
        pin_list = default_pins(model)
    else:
        pin_list = [p.strip() for p in pin.split(",")] if isinstance(pin, str) else list(pin)
        unknown = [p for p in pin_list if p not in names]
        if unknown:
            raise UserError(f"cannot pin {unknown}: not a Conv2d/Linear layer of the model "
                            f"(e.g. {sorted(names)[:5]})")
    ties = [list(t) for t in (ties or [])]
    for t in ties:
        unknown = [n for n in t if n not in names]
        if unknown:
            raise UserError(f"cannot tie {unknown}: not a Conv2d/Linear layer of the model")
    weight_ids = {id(m.weight) for _, m in found}
    float_params = sum(p.numel() for p in model.parameters() if id(p) not in weight_ids)
    return UnitSet(granularity=granularity, layers=layers,
                   pinned={p: int(pin_bits) for p in pin_list}, ties=ties,
                   float_params=int(float_params), buffer_bytes=buffer_bytes(model))


def buffer_bytes(model: nn.Module) -> int:
    """Bytes of the model's state-dict buffers as an export stores them: float buffers
    (BatchNorm running statistics) at float32, integer ones (``num_batches_tracked``) at int64.
    Non-persistent buffers are not in the state dict and cost nothing."""
    params = {id(p) for p in model.parameters()}
    total = 0
    for t in model.state_dict(keep_vars=True).values():
        if id(t) in params:
            continue
        total += t.numel() * (FLOAT_BYTES if t.is_floating_point() else 8)
    return int(total)
