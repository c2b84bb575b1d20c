"""Units and budgets: sets of weights that share one bit-width, and what they cost (docs/design.md §2).

A unit is a whole Conv2d/Linear weight (``layer`` granularity) or one output channel of it
(``channel``), named by the module's qualified name plus ``[c]`` for a channel
(``layer1.0.conv1[12]``). Weights only: biases and norm layers stay in floating point.
Pinned layers (default: the stem conv and the classifier head, at 8 bits) keep a fixed bit-width.

This module is the one place where budgets and sizes are computed (the solvers' integer caps,
plans' average bits and sizes, the export's budget check) and where the supported bit-width range
lives. It needs numpy only: finding the units of a torch model is :mod:`fqopt.discovery`
(``discover_units`` and its helpers are still importable from here).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from fqopt.errors import UserError

GRANULARITIES = ("layer", "channel")
SCALE_BYTES = 4  # one float32 scale per output channel of each quantized layer
FLOAT_BYTES = 4  # parameters left in floating point are stored as float32
#: the supported weight bit-widths, MIN_BITS..MAX_BITS inclusive
MIN_BITS, MAX_BITS = 2, 8
#: ``avg_bits``: parameter-weighted average bits; ``size_bytes``: an export's data bytes;
#: ``bops``: Σ MACs · weight bits · activation bits
BUDGET_KINDS = ("avg_bits", "size_bytes", "bops")
#: relative slack whenever a usage is compared with a budget value: keeps a budget equal to an
#: achievable value feasible despite float rounding (``avg_bits · Σ sizes`` is a float product),
#: far below one bit of any real model
BUDGET_RTOL = 1e-12

_UNIT_RE = re.compile(r"^(?P<layer>.+?)(?:\[(?P<channel>\d+)\])?$")
# names that walk a torch model; loaded from fqopt.discovery on first use (PEP 562)
_DISCOVERY = ("QUANTIZABLE", "buffer_bytes", "default_pins", "discover_units",
              "quantizable_layers")


# --------------------------------------------------------------------------- bit-widths
def is_bit_width(b) -> bool:
    """True for an integer (int, or a float/numpy number with an integer value) in
    ``MIN_BITS..MAX_BITS``; False for bools, strings, NaN and anything else."""
    if isinstance(b, (bool, np.bool_)) or not isinstance(b, (int, float, np.integer, np.floating)):
        return False
    try:
        f = float(b)  # a JSON integer may be huge (2**70): numpy cannot test it, float can
    except OverflowError:
        return False
    return math.isfinite(f) and f == int(f) and MIN_BITS <= f <= MAX_BITS


def check_bits(bits, what: str = "bit-width") -> None:
    """A UserError naming the values of ``bits`` that are not supported bit-widths."""
    bad = [b.item() if isinstance(b, np.generic) else b for b in bits if not is_bit_width(b)]
    if bad:
        raise UserError(f"{what} {bad} outside the supported range {MIN_BITS}-{MAX_BITS} "
                        "(integers)")


# --------------------------------------------------------------------------- budgets
def check_budget_kind(kind: str, where: str = "budget kind") -> str:
    if kind not in BUDGET_KINDS:
        raise UserError(f"unknown {where} {kind!r}; expected one of {', '.join(BUDGET_KINDS)}")
    return kind


def budget_weights(kind: str, sizes, macs=None, *, activation_bits: int = 8,
                   unit_names=None, source: str = "budget") -> np.ndarray:
    """``[U]`` int64 weight ``a_u`` of each unit in a budget: its usage is ``Σ a_u · b_u``.

    ``sizes`` (weights per unit) for ``avg_bits`` and ``size_bytes`` (usage in bits),
    ``macs · activation_bits`` for ``bops`` (every unit's MACs must be known, i.e. ≥ 0).
    """
    check_budget_kind(kind)
    if kind == "bops":
        m = None if macs is None else np.asarray(macs, dtype=np.int64).reshape(-1)
        if m is None or np.any(m < 0):
            u = 0 if m is None else int(np.argmax(m < 0))
            name = f"unit {u}" if unit_names is None else unit_names[u]
            raise UserError(f"{source}: a bops budget needs the MACs of every unit; "
                            f"unit {name!r} has none")
        return m * int(activation_bits)
    return np.asarray(sizes, dtype=np.int64).reshape(-1).copy()


def budget_cap(kind: str, value: float, *, total_size: int, overhead: int = 0) -> int:
    """The largest integer usage (``Σ a_u · b_u``, see :func:`budget_weights`) that meets a
    budget ``value`` in ``kind``'s unit, with the :data:`BUDGET_RTOL` slack.

    ``total_size``: weights over all units (``avg_bits``); ``overhead``: bytes a ``size_bytes``
    budget adds to the packed weights (scales, float parameters, buffers).
    """
    check_budget_kind(kind)
    value = float(value)
    if kind == "avg_bits":
        exact = value * int(total_size)
        return math.floor(exact + abs(exact) * BUDGET_RTOL)
    if kind == "size_bytes":
        return 8 * (math.floor(value + abs(value) * BUDGET_RTOL) - int(overhead))
    return math.floor(value + abs(value) * BUDGET_RTOL)


def within_budget(value: float, budget: float) -> bool:
    """Whether ``value`` (a plan's ``avg_bits``, bytes or BOPs) meets ``budget`` in the same
    unit, with the :data:`BUDGET_RTOL` slack :func:`budget_cap` gives the solvers: every
    comparison of a usage with a budget outside the integer arithmetic goes through here."""
    budget = float(budget)
    return float(value) <= budget + abs(budget) * BUDGET_RTOL


def usage_value(kind: str, usage: int, *, total_size: int, overhead: int = 0) -> float:
    """An integer usage (bits, or bit-MACs) in the budget's unit: average bits, bytes
    (``⌈usage / 8⌉ + overhead``) or BOPs."""
    check_budget_kind(kind)
    if kind == "avg_bits":
        return int(usage) / int(total_size)
    if kind == "size_bytes":
        return float(-(-int(usage) // 8) + int(overhead))
    return float(usage)


# --------------------------------------------------------------------------- units
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

    # ------------------------------------------------------------------ bits and budgets
    def unit_bits_of(self, layer_bits: dict) -> np.ndarray:
        """Layer name -> bits (a number, or ``[out_channels]``) as ``[U]`` bits in ``names``
        order; at layer granularity every channel of a layer must share its bit-width."""
        out = np.zeros(len(self), dtype=np.int64)
        for layer, sl in self.unit_slices().items():
            b = np.asarray(layer_bits[layer], dtype=np.int64).reshape(-1)
            if self.granularity == "layer":
                if np.any(b != b[0]):
                    raise UserError(f"layer {layer!r} has several bit-widths; it cannot be "
                                    "read at layer granularity")
                out[sl] = b[0]
            else:
                out[sl] = np.broadcast_to(b, (sl.stop - sl.start,))
        return out

    def budget_weights(self, kind: str, activation_bits: int = 8) -> np.ndarray:
        """``[U]`` int64 budget weight of each unit (see :func:`budget_weights`)."""
        return budget_weights(kind, self.sizes, self.macs, activation_bits=activation_bits,
                              unit_names=self.names, source="units")

    def weight_bits(self, unit_bits) -> int:
        """Bits of the packed weights: ``Σ_u sizes_u · b_u``."""
        return int(self.sizes @ np.asarray(unit_bits, dtype=np.int64).reshape(-1))

    def size_bytes(self, unit_bits) -> int:
        """Bytes of an export's data: packed weights + :attr:`overhead_bytes`. The file adds
        its header (tensor index and metadata, docs/design.md §4.8)."""
        return math.ceil(self.weight_bits(unit_bits) / 8) + self.overhead_bytes

    def integer_usage(self, unit_bits, kind: str, activation_bits: int = 8) -> int:
        """``Σ_u a_u · b_u``: what ``unit_bits`` ``[U]`` spends, in bits or bit-MACs."""
        w = self.budget_weights(kind, activation_bits)
        return int(w @ np.asarray(unit_bits, dtype=np.int64).reshape(-1))

    def usage(self, unit_bits, kind: str, activation_bits: int = 8) -> float:
        """What ``unit_bits`` ``[U]`` spends in the budget's unit (average bits, bytes, BOPs)."""
        return usage_value(kind, self.integer_usage(unit_bits, kind, activation_bits),
                           total_size=self.quantized_params, overhead=self.overhead_bytes)

    def budget_cap(self, kind: str, value: float) -> int:
        """The largest integer usage within budget ``value`` (see :func:`budget_cap`)."""
        return budget_cap(kind, value, total_size=self.quantized_params,
                          overhead=self.overhead_bytes)

    def fits(self, unit_bits, kind: str, value: float, activation_bits: int = 8) -> bool:
        """Whether ``unit_bits`` meets the budget ``value`` (with :data:`BUDGET_RTOL`)."""
        return (self.integer_usage(unit_bits, kind, activation_bits)
                <= self.budget_cap(kind, value))

    # ------------------------------------------------------------------ table meta
    def to_meta(self) -> dict:
        """What a :class:`~fqopt.sensitivity.SensitivityTable` records about its units in
        ``meta`` (granularity, layer shapes and kinds, pins, ties, float parameters, buffer
        bytes); :meth:`from_meta` reads it back."""
        return {"granularity": self.granularity, "shapes": self.shapes(),
                "kinds": {layer.name: layer.kind for layer in self.layers},
                "pinned": dict(self.pinned), "ties": [list(t) for t in self.ties],
                "float_params": int(self.float_params), "buffer_bytes": int(self.buffer_bytes)}

    @classmethod
    def from_meta(cls, meta: dict | None, *, units, sizes, macs=None,
                  source: str = "sensitivity table") -> "UnitSet":
        """The UnitSet whose unit names are ``units`` ``[U]`` and sizes ``sizes`` ``[U]``.

        ``meta`` is what :meth:`to_meta` wrote (``fqopt profile``'s tables); without layer
        shapes (a hand-written table) layers are inferred from the unit names (``name[c]`` units
        form one layer of that many channels) and sizes, with no pins. ``macs`` ``[U]`` (-1 where
        unknown) are summed per layer. A meta that contradicts ``units`` or ``sizes`` is a
        UserError naming ``source``.
        """
        meta = meta or {}
        units = [str(u) for u in units]
        sizes = np.asarray(sizes, dtype=np.int64).reshape(-1)
        granularity = meta.get("granularity")
        shapes = meta.get("shapes")
        parsed = [parse_unit_name(u) for u in units]
        if granularity is None:
            granularity = "channel" if all(c is not None for _, c in parsed) else "layer"
        macs_layer: dict[str, int] = {}
        if macs is not None:
            for (layer, _), m in zip(parsed, np.asarray(macs).reshape(-1).tolist()):
                macs_layer[layer] = -1 if (m < 0 or macs_layer.get(layer, 0) < 0) else \
                    macs_layer.get(layer, 0) + m
        layers = []
        if shapes:
            # layer order follows the units, whatever order the meta dict kept
            first_seen = list(dict.fromkeys(layer for layer, _ in parsed))
            missing = [n for n in first_seen if n not in shapes]
            if missing:
                raise UserError(f"{source}: meta has no shape for layer(s) {missing[:3]}")
            kinds = meta.get("kinds", {})
            for name in first_seen:
                layers.append(LayerInfo(name=name, kind=kinds.get(name, "?"),
                                        shape=tuple(int(s) for s in shapes[name]),
                                        macs=int(macs_layer.get(name, -1))))
        else:
            order: dict[str, list[int]] = {}
            for i, (layer, _) in enumerate(parsed):
                order.setdefault(layer, []).append(i)
            for layer, idx in order.items():
                n = len(idx) if granularity == "channel" else 1
                layers.append(LayerInfo(name=layer, kind="?", shape=(n, int(sizes[idx[0]])),
                                        macs=int(macs_layer.get(layer, -1))))
        out = cls(granularity=granularity, layers=layers,
                  pinned={k: int(v) for k, v in (meta.get("pinned") or {}).items()},
                  ties=[list(t) for t in (meta.get("ties") or [])],
                  float_params=int(meta.get("float_params", 0)),
                  buffer_bytes=int(meta.get("buffer_bytes", 0)))
        if out.names != units:
            raise UserError(f"{source}: unit names do not match the layer shapes in its meta "
                            f"(first units {units[:2]} vs {out.names[:2]})")
        if not np.array_equal(out.sizes, sizes):
            u = int(np.argmax(out.sizes != sizes))
            raise UserError(f"{source}: size of unit {units[u]!r} is {int(sizes[u])} but its "
                            f"layer shape gives {int(out.sizes[u])}")
        return out


def parse_unit_name(name: str) -> tuple[str, int | None]:
    """``'layer1.0.conv1[12]'`` -> ``('layer1.0.conv1', 12)``; ``'fc'`` -> ``('fc', None)``."""
    m = _UNIT_RE.match(name)
    if m is None:  # pragma: no cover - the regex matches any non-empty string
        raise UserError(f"bad unit name {name!r}")
    ch = m.group("channel")
    return m.group("layer"), (int(ch) if ch is not None else None)


def __getattr__(name: str):
    # discover_units & co. walk torch modules: import torch only when one of them is used
    if name in _DISCOVERY:
        from fqopt import discovery  # deferred: discovery imports torch, units stays torch-free

        return getattr(discovery, name)
    raise AttributeError(f"module 'fqopt.units' has no attribute {name!r}")
