"""AllocationPlan: the bit-width of every unit, as a versioned JSON contract (docs/design.md §2)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fqopt._io import read_json, write_json
from fqopt.errors import UserError
from fqopt.units import (GRANULARITIES, MAX_BITS, MIN_BITS, LayerInfo, UnitSet, check_bits,
                         is_bit_width, parse_unit_name)

__all__ = ["AllocationPlan", "SCHEMA", "SOLVER_STATUSES", "DEFAULT_QUANTIZER", "check_bits",
           "check_quantizer", "plan_size_bytes"]

SCHEMA = "fqopt.plan/1"
#: what a back-end of fqopt.solvers reports and a plan records in ``solver["status"]``
SOLVER_STATUSES = ("optimal", "feasible", "infeasible", "timeout")
#: quantizer of a plan that records none (plans written before the field existed)
DEFAULT_QUANTIZER = "maxabs"


def check_quantizer(name, where: str = "quantizer") -> str:
    """``name`` if it is a quantizer of :data:`fqopt.quantizers.QUANTIZERS`, else a UserError.

    Kept a free string checked against that registry (not an enum), so that a quantizer added
    there is accepted in plans without touching this module.
    """
    from fqopt.quantizers import QUANTIZERS  # deferred: quantizers need torch, plans do not

    if not isinstance(name, str) or name not in QUANTIZERS:
        raise UserError(f"{where} {name!r} is not a known quantizer; expected one of "
                        f"{', '.join(QUANTIZERS.names())}")
    return name


def plan_size_bytes(units: UnitSet, layer_bits: dict[str, np.ndarray]) -> int:
    """Bytes of an export's data (:meth:`UnitSet.size_bytes`) for layer name -> bits."""
    return units.size_bytes(units.unit_bits_of(layer_bits))


@dataclass
class AllocationPlan:
    """Bits per unit. ``assignments`` maps a layer name to its bits (layer granularity) or to one
    list of per-output-channel bits (channel granularity).

    ``quantizer`` is the quantizer the plan was made and evaluated with (a name of
    :data:`fqopt.quantizers.QUANTIZERS`, e.g. ``maxabs`` or ``mse``); ``fqopt.quantized``,
    ``fqopt.evaluate``, ``fqopt.export`` and ``fqopt.refine`` apply it unless told otherwise.
    Plan JSON written before the field existed has no ``quantizer`` key and loads as
    ``maxabs``, the quantizer every fqopt command used then (the schema stays
    ``fqopt.plan/1``: the field is optional)."""

    model: str
    granularity: str
    bits: list[int]
    assignments: dict[str, int | list[int]]
    shapes: dict[str, list[int]]
    avg_bits: float
    avg_bits_channel: float
    size_bytes: int
    float_params: int = 0
    buffer_bytes: int = 0               # buffers as exported (BatchNorm statistics)
    budget: dict | None = None          # {"kind": "avg_bits"|"size_bytes"|"bops", "value": x}
    objective: str | None = None
    predicted: dict[str, float] = field(default_factory=dict)   # group -> predicted cost
    solver: dict = field(default_factory=dict)  # backend, status, objective, bound, gap, seconds
    meta: dict = field(default_factory=dict)
    quantizer: str = DEFAULT_QUANTIZER
    schema: str = SCHEMA

    def __post_init__(self):
        check_quantizer(self.quantizer, where="plan quantizer")

    # ------------------------------------------------------------ constructors
    @classmethod
    def from_unit_bits(cls, units: UnitSet, unit_bits, *, model: str, bits=None,
                       budget=None, objective=None, predicted=None, solver=None,
                       meta=None, quantizer: str = DEFAULT_QUANTIZER) -> "AllocationPlan":
        """Build a plan from one bit-width per unit (``[U]`` in ``units.names`` order, or a dict
        unit name -> bits), to be applied with ``quantizer``."""
        if isinstance(unit_bits, dict):
            index = {n: i for i, n in enumerate(units.names)}
            arr = np.zeros(len(units), dtype=np.int64)
            seen = np.zeros(len(units), dtype=bool)
            for name, b in unit_bits.items():
                if name not in index:
                    raise UserError(f"unit {name!r} is not a unit of model {model!r}")
                arr[index[name]] = int(b)
                seen[index[name]] = True
            if not seen.all():
                raise UserError(f"no bit-width for unit {units.names[int(np.argmin(seen))]!r}")
            unit_bits = arr
        unit_bits = np.asarray(unit_bits, dtype=np.int64).reshape(-1)
        if unit_bits.shape[0] != len(units):
            raise UserError(f"{unit_bits.shape[0]} bit-widths given for {len(units)} units")
        layer_bits = {}
        slices = units.unit_slices()
        for layer in units.layers:
            b = unit_bits[slices[layer.name]]
            layer_bits[layer.name] = (np.full(layer.out_channels, b[0]) if units.granularity ==
                                      "layer" else b.copy())
        return cls._from_layer_bits(units, layer_bits, model=model, bits=bits, budget=budget,
                                    objective=objective, predicted=predicted, solver=solver,
                                    meta=meta, quantizer=quantizer)

    @classmethod
    def uniform(cls, units: UnitSet, bits: int, *, model: str, respect_pins: bool = True,
                meta=None, quantizer: str = DEFAULT_QUANTIZER) -> "AllocationPlan":
        """Every unit at ``bits`` (pinned layers keep their pinned bits unless told otherwise),
        to be applied with ``quantizer``."""
        check_bits([bits], what="uniform bit-width")
        layer_bits = {}
        for layer in units.layers:
            b = units.pinned.get(layer.name, bits) if respect_pins else bits
            layer_bits[layer.name] = np.full(layer.out_channels, b, dtype=np.int64)
        pinned_bits = set(units.pinned.values()) if respect_pins else set()
        return cls._from_layer_bits(units, layer_bits, model=model,
                                    bits=sorted({int(bits), *pinned_bits}),
                                    objective=f"uniform:{bits}", meta=meta,
                                    quantizer=quantizer)

    @classmethod
    def _from_layer_bits(cls, units, layer_bits, *, model, bits=None, budget=None,
                         objective=None, predicted=None, solver=None, meta=None,
                         quantizer=DEFAULT_QUANTIZER):
        all_bits = np.concatenate([np.asarray(v) for v in layer_bits.values()])
        check_bits(np.unique(all_bits).tolist(), what="plan bit-width")
        unit_bits = units.unit_bits_of(layer_bits)
        avg_bits = units.usage(unit_bits, "avg_bits")
        avg_bits_channel = float(all_bits.mean())
        if units.granularity == "layer":
            assignments = {n: int(b[0]) for n, b in layer_bits.items()}
        else:
            assignments = {n: [int(x) for x in b] for n, b in layer_bits.items()}
        if bits is None:
            bits = sorted(int(b) for b in np.unique(all_bits))
        _check_candidates(layer_bits, bits, f"plan for model {model!r}")
        return cls(model=model, granularity=units.granularity, bits=[int(b) for b in bits],
                   assignments=assignments, shapes=units.shapes(), avg_bits=float(avg_bits),
                   avg_bits_channel=avg_bits_channel,
                   size_bytes=units.size_bytes(unit_bits), float_params=units.float_params,
                   buffer_bytes=units.buffer_bytes,
                   budget=budget, objective=objective,
                   predicted={str(k): float(v) for k, v in (predicted or {}).items()},
                   solver=dict(solver or {}), meta=dict(meta or {}), quantizer=quantizer)

    # ------------------------------------------------------------------ views
    def layer_bits(self) -> dict[str, np.ndarray]:
        """Layer name -> ``[out_channels]`` int array of bits."""
        out = {}
        for name, b in self.assignments.items():
            n = self.shapes[name][0]
            out[name] = (np.full(n, int(b), dtype=np.int64) if isinstance(b, (int, np.integer))
                         else np.asarray(b, dtype=np.int64))
        return out

    def unit_bits(self, units: UnitSet) -> np.ndarray:
        """``[U]`` bits in ``units.names`` order (units may be of either granularity)."""
        self.validate(units)
        lb = self.layer_bits()
        out = np.zeros(len(units), dtype=np.int64)
        slices = units.unit_slices()
        for layer in units.layers:
            sl = slices[layer.name]
            b = lb[layer.name]
            if units.granularity == "layer":
                if len(set(b.tolist())) != 1:
                    raise UserError(f"plan gives layer {layer.name!r} several bit-widths; it "
                                    "cannot be read at layer granularity")
                out[sl] = b[0]
            else:
                out[sl] = b
        return out

    def validate(self, units: UnitSet, model: str | None = None) -> None:
        """Raise a UserError naming the first unit whose name or shape differs from ``units``."""
        where = f"plan for model {self.model!r}"
        if model is not None and self.model and model != self.model:
            raise UserError(f"{where} does not fit model {model!r}")
        expected = units.shapes()
        for name in self.assignments:
            if name not in expected:
                raise UserError(f"{where}: unit {name!r} is not a quantizable layer of this model")
        for name, shape in expected.items():
            if name not in self.assignments:
                raise UserError(f"{where}: no bit-width for layer {name!r}")
            if list(self.shapes.get(name, [])) != list(shape):
                raise UserError(f"{where}: layer {name!r} has weight shape "
                                f"{self.shapes.get(name)} in the plan but {shape} in the model")

    # --------------------------------------------------------------- JSON I/O
    def to_dict(self) -> dict:
        return {
            "schema": self.schema, "model": self.model, "granularity": self.granularity,
            "bits": self.bits, "avg_bits": self.avg_bits,
            "avg_bits_channel": self.avg_bits_channel, "size_bytes": self.size_bytes,
            "float_params": self.float_params, "buffer_bytes": self.buffer_bytes,
            "budget": self.budget, "objective": self.objective, "quantizer": self.quantizer,
            "predicted": self.predicted, "solver": self.solver,
            "meta": self.meta, "shapes": self.shapes, "assignments": self.assignments,
        }

    @classmethod
    def from_dict(cls, d: dict, source: str = "<dict>") -> "AllocationPlan":
        if not isinstance(d, dict):
            raise UserError(f"plan {source}: expected a JSON object")
        if d.get("schema") != SCHEMA:
            raise UserError(f"plan {source}: schema is {d.get('schema')!r}, expected {SCHEMA!r}")
        required = ("model", "granularity", "bits", "assignments", "shapes")
        missing = [k for k in required if k not in d]
        if missing:
            raise UserError(f"plan {source}: missing field(s) {missing}")
        if d["granularity"] not in GRANULARITIES:
            raise UserError(f"plan {source}: granularity is {d['granularity']!r}, expected one "
                            f"of {', '.join(GRANULARITIES)}")
        for key in ("assignments", "shapes"):
            if not isinstance(d[key], dict) or not d[key]:
                raise UserError(f"plan {source}: '{key}' must be a non-empty JSON object")
        for layer, shape in d["shapes"].items():
            if (not isinstance(shape, list) or not shape
                    or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0
                               for x in shape)):
                raise UserError(f"plan {source}: shape of layer {layer!r} must be a list of "
                                f"positive integers, got {shape!r}")
        if not isinstance(d["bits"], list):
            raise UserError(f"plan {source}: 'bits' must be a list of bit-widths")
        check_bits(d["bits"], what=f"plan {source}: candidate bits")
        assignments = {}
        for key, b in d["assignments"].items():
            layer, ch = parse_unit_name(key)
            if ch is None:
                assignments[layer] = ([_as_bits(x, source, key) for x in b] if isinstance(b, list)
                                      else _as_bits(b, source, key))
            else:  # per-channel keys 'layer[c]' are folded into one list per layer
                n = d["shapes"].get(layer, [0])[0]
                lst = assignments.setdefault(layer, [None] * n)
                if not isinstance(lst, list) or ch >= len(lst):
                    raise UserError(f"plan {source}: unit {key!r} does not fit layer {layer!r}")
                lst[ch] = _as_bits(b, source, key)
        for layer, b in assignments.items():
            if isinstance(b, list):
                if any(x is None for x in b):
                    raise UserError(f"plan {source}: layer {layer!r} misses some channels' bits")
                if layer in d["shapes"] and len(b) != d["shapes"][layer][0]:
                    raise UserError(f"plan {source}: layer {layer!r} has {len(b)} channel "
                                    f"bit-widths for {d['shapes'][layer][0]} output channels")
                check_bits(set(b), what=f"plan {source}: bit-width of {layer!r}")
            else:
                check_bits([b], what=f"plan {source}: bit-width of {layer!r}")
        missing_shapes = [n for n in assignments if n not in d["shapes"]]
        if missing_shapes:
            raise UserError(f"plan {source}: no shape for layer(s) {missing_shapes[:3]}")
        _check_candidates(assignments, d["bits"], f"plan {source}")
        quantizer = check_quantizer(d.get("quantizer", DEFAULT_QUANTIZER),
                                    where=f"plan {source}: quantizer")
        plan = cls(model=d["model"], granularity=d["granularity"], bits=list(d["bits"]),
                   assignments=assignments, shapes={k: list(v) for k, v in d["shapes"].items()},
                   avg_bits=float(d.get("avg_bits", float("nan"))),
                   avg_bits_channel=float(d.get("avg_bits_channel", float("nan"))),
                   size_bytes=int(d.get("size_bytes", -1)),
                   float_params=int(d.get("float_params", 0)),
                   buffer_bytes=int(d.get("buffer_bytes", 0)), budget=d.get("budget"),
                   objective=d.get("objective"), predicted=dict(d.get("predicted") or {}),
                   solver=dict(d.get("solver") or {}), meta=dict(d.get("meta") or {}),
                   quantizer=quantizer)
        plan._recompute()
        return plan

    def unit_set(self) -> UnitSet:
        """The plan's layers (from its ``shapes``) as channel units, with its float parameters
        and buffers: what its sizes are computed on when no model is at hand."""
        layers = [LayerInfo(name=name, kind="?", shape=tuple(int(x) for x in self.shapes[name]),
                            macs=-1) for name in self.assignments]
        return UnitSet(granularity="channel", layers=layers, float_params=int(self.float_params),
                       buffer_bytes=int(self.buffer_bytes))

    def _recompute(self) -> None:
        """Derive avg_bits, avg_bits_channel and size_bytes from assignments and shapes."""
        units = self.unit_set()
        unit_bits = units.unit_bits_of(self.layer_bits())
        self.avg_bits = units.usage(unit_bits, "avg_bits")
        self.avg_bits_channel = float(unit_bits.mean())
        self.size_bytes = units.size_bytes(unit_bits)

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AllocationPlan":
        return cls.from_dict(read_json(path, what="plan"), source=str(Path(path)))

    def __repr__(self) -> str:
        return (f"AllocationPlan(model={self.model!r}, granularity={self.granularity!r}, "
                f"avg_bits={self.avg_bits:.3f}, size_bytes={self.size_bytes}, "
                f"objective={self.objective!r})")


def _check_candidates(layer_bits: dict, candidates, where: str) -> None:
    """Every assigned bit-width must be one of the plan's candidate ``bits``: a plan that says
    it chooses among 2,3,4,6,8 and assigns 5 was edited by hand or made by a broken tool."""
    allowed = {int(b) for b in candidates}
    for layer, b in layer_bits.items():
        used = {int(x) for x in np.asarray(b).reshape(-1).tolist()}
        bad = sorted(used - allowed)
        if bad:
            raise UserError(f"{where}: layer {layer!r} is assigned {bad[0]} bits, which is not "
                            f"one of the plan's candidate bits {sorted(allowed)}")


def _as_bits(b, source: str, key: str) -> int:
    """A JSON bit-width as an int, or a UserError naming the unit."""
    if not is_bit_width(b):
        raise UserError(f"plan {source}: bit-width of unit {key!r} must be an integer "
                        f"{MIN_BITS}-{MAX_BITS}, got {b!r}")
    return int(b)
