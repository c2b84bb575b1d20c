"""``Config``: the base of the typed settings dataclasses (``RefineConfig``, ``PipelineConfig``).

A subclass is a frozen dataclass that validates in ``__post_init__`` and names its ``SCHEMA`` and
what it configures (``OPTION``, for messages). The base gives the keyword form,
``build(config, **overrides)``, and the JSON form, ``to_dict()`` / ``from_dict()``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import ClassVar

import numpy as np

from fqopt.errors import UserError


class Config:
    """Mixin of a frozen settings dataclass: keyword overrides and a schema'd JSON form."""

    SCHEMA: ClassVar[str] = ""
    #: ``"refine"`` -> "unknown refine option(s) [...]", "a refine config is ..."
    OPTION: ClassVar[str] = ""

    @classmethod
    def build(cls, config=None, **overrides):
        """``config`` (default: the defaults) with ``overrides`` of its fields; an unknown name
        is a UserError."""
        if config is not None and not isinstance(config, cls):
            raise UserError(f"config must be a {cls.__name__}, got {type(config).__name__}")
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise UserError(f"unknown {cls.OPTION} option(s) {unknown}")
        if config is None:
            return cls(**overrides)
        return dataclasses.replace(config, **overrides) if overrides else config

    def to_dict(self) -> dict:
        """JSON-able fields with ``schema``; :meth:`from_dict` reads it back."""
        return {"schema": self.SCHEMA,
                **{f.name: to_json(getattr(self, f.name)) for f in dataclasses.fields(self)}}

    @classmethod
    def from_dict(cls, d: dict):
        if not isinstance(d, dict):
            raise UserError(f"a {cls.OPTION} config is a JSON object, got {type(d).__name__}")
        d = dict(d)
        schema = d.pop("schema", cls.SCHEMA)
        if schema != cls.SCHEMA:
            raise UserError(f"{cls.OPTION} config schema {schema!r} is not {cls.SCHEMA!r}")
        return cls.build(None, **cls._fields_from_json(d))

    @classmethod
    def _fields_from_json(cls, d: dict) -> dict:
        """Field values from their JSON form (a subclass turns nested dicts into objects)."""
        return d


def to_json(v):
    """The JSON form of a field value: numpy scalars as Python numbers, tuples as lists, paths
    as strings, dataclasses as dicts."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (tuple, list)):
        return [to_json(x) for x in v]
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {k: to_json(x) for k, x in dataclasses.asdict(v).items()}
    return v
