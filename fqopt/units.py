"""Units: sets of weights that share one bit-width (docs/design.md §2).

A unit is a whole Conv2d/Linear weight (``layer`` granularity) or one output channel of it
(``channel``), named by the module's qualified name plus ``[c]`` for a channel
(``layer1.0.conv1[12]``). Weights only: biases and norm layers stay in floating point.
Pinned layers (default: the stem conv and the classifier head, at 8 bits) keep a fixed bit-width.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fqopt.errors import UserError

GRANULARITIES = ("layer", "channel")
QUANTIZABLE = (nn.Conv2d, nn.Linear)
SCALE_BYTES = 4  # one float32 scale per output channel of each quantized layer
FLOAT_BYTES = 4  # parameters left in floating point are stored as float32

_UNIT_RE = re.compile(r"^(?P<layer>.+?)(?:\[(?P<channel>\d+)\])?$")


@dataclass(frozen=True)
class LayerInfo:
    name: str                 # module qualified name
    kind: str                 # "Conv2d" | "Linear"
    shape: tuple[int, ...]    # weight shape, output channels first
    macs: int                 # multiply-accumulates per sample (-1 if unknown)

    @property
    def out_channels(self) -> int:
        return self.shape[0]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def per_channel(self) -> int:
        return self.numel // self.out_channels


@dataclass
class UnitSet:
    """The units of a model at one granularity, with pins and ties.

    ``names``/``sizes``/``macs`` are ``[U]``; ``layer_of[u]`` is the index of unit u's layer in
    ``layers`` and ``channel_of[u]`` its output channel (-1 for a whole layer).
    """

    granularity: str
    layers: list[LayerInfo]
    pinned: dict[str, int] = field(default_factory=dict)    # layer name -> bits
    ties: list[list[str]] = field(default_factory=list)     # groups of layer names
    float_params: int = 0                                   # parameters kept in float
    buffer_bytes: int = 0                                   # buffers as exported (BN stats)

    def __post_init__(self):
        if self.granularity not in GRANULARITIES:
            raise UserError(f"unknown granularity {self.granularity!r}; expected one of "
                            f"{', '.join(GRANULARITIES)}")
        names, sizes, macs, layer_of, channel_of = [], [], [], [], []
        for li, layer in enumerate(self.layers):
            if self.granularity == "layer":
                names.append(layer.name)
                sizes.append(layer.numel)
                macs.append(layer.macs)
                layer_of.append(li)
                channel_of.append(-1)
            else:
                n = layer.out_channels
                names.extend(f"{layer.name}[{c}]" for c in range(n))
                sizes.extend([layer.per_channel] * n)
                macs.extend([layer.macs // n if layer.macs >= 0 else -1] * n)
                layer_of.extend([li] * n)
                channel_of.extend(range(n))
        self.names = names
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.macs = np.asarray(macs, dtype=np.int64)
        self.layer_of = np.asarray(layer_of, dtype=np.int64)
        self.channel_of = np.asarray(channel_of, dtype=np.int64)
        self._layer_index = {layer.name: i for i, layer in enumerate(self.layers)}

    def __len__(self) -> int:
        return len(self.names)

    def layer(self, name: str) -> LayerInfo:
        try:
            return self.layers[self._layer_index[name]]
        except KeyError:
            raise UserError(f"no quantizable layer named {name!r} in the model") from None

    def has_layer(self, name: str) -> bool:
        return name in self._layer_index

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def quantized_params(self) -> int:
        return int(sum(layer.numel for layer in self.layers))

    @property
    def num_channels(self) -> int:
        return int(sum(layer.out_channels for layer in self.layers))

    @property
    def overhead_bytes(self) -> int:
        """Bytes an export holds beyond the packed weights: one float32 scale per output
        channel, the float parameters at float32 and the buffers as stored."""
        return (SCALE_BYTES * self.num_channels + FLOAT_BYTES * self.float_params
                + int(self.buffer_bytes))

    def unit_slices(self) -> dict[str, slice]:
        """Layer name -> slice of its units in ``names`` (one unit per layer, or one per channel)."""
        out, start = {}, 0
        for layer in self.layers:
            n = 1 if self.granularity == "layer" else layer.out_channels
            out[layer.name] = slice(start, start + n)
            start += n
        return out

    def pinned_units(self) -> dict[str, int]:
        """Unit name -> pinned bits."""
        sl = self.unit_slices()
        return {self.names[i]: bits for layer, bits in self.pinned.items()
                for i in range(sl[layer].start, sl[layer].stop)}

    def tied_units(self) -> list[list[str]]:
        """Groups of unit names that must share a bit-width (layer ties; channels tie by index)."""
        if self.granularity == "layer":
            return [list(t) for t in self.ties]
        sl = self.unit_slices()
        groups = []
        for t in self.ties:
            n = {self.layer(name).out_channels for name in t}
            if len(n) != 1:
                raise UserError(f"cannot tie layers {t} at channel granularity: their output "
                                f"channel counts differ ({sorted(n)})")
            for c in range(n.pop()):
                groups.append([self.names[sl[name].start + c] for name in t])
        return groups

    def shapes(self) -> dict[str, list[int]]:
        return {layer.name: list(layer.shape) for layer in self.layers}


def parse_unit_name(name: str) -> tuple[str, int | None]:
    """``'layer1.0.conv1[12]'`` -> ``('layer1.0.conv1', 12)``; ``'fc'`` -> ``('fc', None)``."""
    m = _UNIT_RE.match(name)
    if m is None:  # pragma: no cover - the regex matches any non-empty string
        raise UserError(f"bad unit name {name!r}")
    ch = m.group("channel")
    return m.group("layer"), (int(ch) if ch is not None else None)


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
