"""SensitivityTable: per-unit, per-group, per-bit-width predicted loss increase (docs/design.md §2).

The ``.npz`` contract (``allow_pickle=False``):

- ``costs``  float64 ``[U, G, K]``: predicted rise of group g's mean loss when unit u alone is
  quantized to ``bits[k]``; finite numbers (NaN and ±inf are rejected at load, naming the unit:
  an infinite loss rise is an overflow, not a measurement; exclude a choice with the solver's
  pins or min/max bits, or with ``+inf`` in an ``AllocationProblem`` built in Python)
- ``bits``   int ``[K]``, strictly increasing, each in 2..8
- ``sizes``  int64 ``[U]``: weights per unit
- ``units``  str ``[U]``, ``groups`` str ``[G]``
- ``group_counts`` int64 ``[G]``: calibration samples per group
- ``macs``   int64 ``[U]`` (optional; -1 where unknown)
- ``meta``   a JSON string (model, dataset, method, granularity, seed, fqopt version)
- any other numeric array is an optional extra, kept in ``extras`` (``fqopt profile`` writes
  ``scores`` ``[U, G]`` and ``scores_max``/``scores_mean``/``scores_balanced`` ``[U]``, FairQuant's
  unit importance scores, for the ``gradient`` and ``grape`` methods)

A table can be written by hand or by another tool and still be solved.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fqopt._io import atomic_path
from fqopt.errors import UserError
from fqopt.units import MAX_BITS, MIN_BITS, UnitSet, check_bits

__all__ = ["SensitivityTable", "CostsShape", "table_unit_set", "table_provenance", "MIN_BITS",
           "MAX_BITS"]
_REQUIRED = ("costs", "bits", "sizes", "units", "groups", "group_counts")
_RESERVED = (*_REQUIRED, "macs", "meta")


class CostsShape:
    """The sizes of a ``costs`` array ``[U, G, K]`` (units, groups, bit-widths), as a table, a
    problem and its reduction (``[V, G, K]``) name them."""

    costs: np.ndarray

    @property
    def num_units(self) -> int:
        return self.costs.shape[0]

    @property
    def num_groups(self) -> int:
        return self.costs.shape[1]

    @property
    def num_bits(self) -> int:
        return self.costs.shape[2]


@dataclass
class SensitivityTable(CostsShape):
    costs: np.ndarray          # float64 [U, G, K]
    bits: np.ndarray           # int64 [K]
    sizes: np.ndarray          # int64 [U]
    units: list[str]           # [U]
    groups: list[str]          # [G]
    group_counts: np.ndarray   # int64 [G]
    macs: np.ndarray | None = None   # int64 [U], -1 where unknown
    meta: dict = field(default_factory=dict)
    source: str = "<memory>"   # where it was loaded from, for error messages
    extras: dict = field(default_factory=dict)  # optional numeric arrays (name -> array)

    def __post_init__(self):
        self.costs = np.asarray(self.costs, dtype=np.float64)
        self.bits = np.asarray(self.bits, dtype=np.int64).reshape(-1)
        self.sizes = np.asarray(self.sizes, dtype=np.int64).reshape(-1)
        self.units = [str(u) for u in self.units]
        self.groups = [str(g) for g in self.groups]
        self.group_counts = np.asarray(self.group_counts, dtype=np.int64).reshape(-1)
        if self.macs is not None:
            self.macs = np.asarray(self.macs, dtype=np.int64).reshape(-1)
        self.extras = {str(k): np.asarray(v) for k, v in (self.extras or {}).items()}
        self.validate()

    def validate(self) -> None:
        src = self.source
        if self.costs.ndim != 3:
            raise UserError(f"sensitivity table {src}: 'costs' must have shape [U, G, K], "
                            f"got {self.costs.ndim} dimensions {tuple(self.costs.shape)}")
        U, G, K = self.costs.shape
        if U == 0 or G == 0 or K == 0:
            raise UserError(f"sensitivity table {src}: 'costs' is empty, shape {(U, G, K)}")
        for name, arr, n in (("bits", self.bits, K), ("sizes", self.sizes, U),
                             ("group_counts", self.group_counts, G)):
            if arr.shape != (n,):
                raise UserError(f"sensitivity table {src}: '{name}' has shape {arr.shape}, "
                                f"expected ({n},) to match costs {(U, G, K)}")
        if len(self.units) != U:
            raise UserError(f"sensitivity table {src}: 'units' has {len(self.units)} names, "
                            f"expected {U} to match costs")
        if len(self.groups) != G:
            raise UserError(f"sensitivity table {src}: 'groups' has {len(self.groups)} names, "
                            f"expected {G} to match costs")
        if len(set(self.units)) != U:
            dup = sorted({u for u in self.units if self.units.count(u) > 1})[:3]
            raise UserError(f"sensitivity table {src}: duplicate unit names {dup}")
        if self.macs is not None and self.macs.shape != (U,):
            raise UserError(f"sensitivity table {src}: 'macs' has shape {self.macs.shape}, "
                            f"expected ({U},)")
        check_bits(self.bits.tolist(), what=f"sensitivity table {src}: bits")
        if np.any(np.diff(self.bits) <= 0):
            raise UserError(f"sensitivity table {src}: 'bits' must be strictly increasing, "
                            f"got {self.bits.tolist()}")
        if np.any(self.sizes <= 0):
            u = int(np.argmax(self.sizes <= 0))
            raise UserError(f"sensitivity table {src}: unit {self.units[u]!r} has size "
                            f"{int(self.sizes[u])}; sizes must be positive weight counts")
        if np.isnan(self.costs).any():
            u, g, k = np.argwhere(np.isnan(self.costs))[0]
            raise UserError(f"sensitivity table {src}: cost is NaN for unit {self.units[u]!r}, "
                            f"group {self.groups[g]!r}, {int(self.bits[k])} bits")
        if np.isinf(self.costs).any():
            u, g, k = np.argwhere(np.isinf(self.costs))[0]
            sign = "+" if self.costs[u, g, k] > 0 else "-"
            raise UserError(f"sensitivity table {src}: cost is {sign}inf for unit "
                            f"{self.units[u]!r}, group {self.groups[g]!r}, {int(self.bits[k])} "
                            "bits; costs must be finite (exclude a bit-width with --pin or "
                            "--min-bits/--max-bits instead)")
        if np.any(self.group_counts < 0):
            raise UserError(f"sensitivity table {src}: negative group_counts")
        if not isinstance(self.meta, dict):
            raise UserError(f"sensitivity table {src}: 'meta' must be a JSON object")
        for name, arr in self.extras.items():
            if name in _RESERVED:
                raise UserError(f"sensitivity table {src}: extra array {name!r} clashes with a "
                                "required array")
            if not np.issubdtype(arr.dtype, np.number):
                raise UserError(f"sensitivity table {src}: extra array {name!r} must be "
                                f"numeric, got dtype {arr.dtype}")

    # --------------------------------------------------------------- file I/O
    def save(self, path: str | os.PathLike) -> None:
        """Write the ``.npz`` atomically (``allow_pickle=False`` readable)."""
        arrays = dict(costs=self.costs, bits=self.bits, sizes=self.sizes,
                      units=np.array(self.units, dtype=np.str_),
                      groups=np.array(self.groups, dtype=np.str_),
                      group_counts=self.group_counts,
                      meta=np.array(json.dumps(self.meta)))
        if self.macs is not None:
            arrays["macs"] = self.macs
        arrays.update(self.extras)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SensitivityTable":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"sensitivity table {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except Exception as exc:  # truncated, corrupt or not a zip (BadZipFile, zlib.error, ...)
            detail = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise UserError(f"sensitivity table {path} is not a readable .npz file "
                            f"(truncated or damaged?): {detail}") from None
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise UserError(f"sensitivity table {path}: missing array(s) {missing}; expected "
                            f"{list(_REQUIRED)} (+ optional macs, meta)")
        for k in ("units", "groups"):
            if data[k].dtype.kind == "S":  # bytes written by another tool
                data[k] = np.char.decode(data[k], "utf-8")
        meta = {}
        if "meta" in data:
            try:
                meta = json.loads(str(data["meta"]))
            except json.JSONDecodeError:
                raise UserError(f"sensitivity table {path}: 'meta' is not a JSON string") from None
        for k in ("costs", "bits", "sizes", "group_counts", "macs"):
            if k in data and not np.issubdtype(data[k].dtype, np.number):
                raise UserError(f"sensitivity table {path}: '{k}' must be numeric, "
                                f"got dtype {data[k].dtype}")
        extras = {k: v for k, v in data.items() if k not in _RESERVED}
        return cls(costs=data["costs"], bits=data["bits"], sizes=data["sizes"],
                   units=data["units"].tolist(), groups=data["groups"].tolist(),
                   group_counts=data["group_counts"], macs=data.get("macs"), meta=meta,
                   source=str(path), extras=extras)

    def __repr__(self) -> str:
        return (f"SensitivityTable(units={self.num_units}, groups={self.groups}, "
                f"bits={self.bits.tolist()}, method={self.meta.get('method')!r})")


def table_unit_set(table: SensitivityTable) -> UnitSet:
    """The :class:`~fqopt.units.UnitSet` a table describes (:meth:`UnitSet.from_meta` of its
    ``meta``, unit names, sizes and MACs)."""
    return UnitSet.from_meta(table.meta, units=table.units, sizes=table.sizes, macs=table.macs,
                             source=f"sensitivity table {table.source}")


#: the table's meta keys a plan made from it records in its own meta
PROVENANCE_KEYS = ("method", "dataset", "granularity")


def table_provenance(table: SensitivityTable) -> dict:
    """Where a plan solved from ``table`` comes from: ``model`` and ``quantizer`` (when the
    table's meta records them) and ``meta``, what the plan's meta records: the table's file
    (``table``, when it was loaded from one) and its ``method``, ``dataset`` and
    ``granularity``."""
    meta = table.meta or {}
    out: dict = {k: meta[k] for k in ("model", "quantizer") if meta.get(k)}
    plan_meta = {} if table.source == "<memory>" else {"table": str(table.source)}
    plan_meta.update({k: meta[k] for k in PROVENANCE_KEYS if k in meta})
    out["meta"] = plan_meta
    return out
