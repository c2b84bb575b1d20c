"""fqopt: fairness-aware mixed-precision quantization of image classifiers.

``import fqopt`` stays light: torch, solvers, Optuna and plotting load only when first used.
"""

from __future__ import annotations

import importlib

from fqopt._version import __version__
from fqopt.errors import UserError

# public name -> (module, attribute); resolved on first access (PEP 562)
_LAZY = {
    "AllocationPlan": ("fqopt.plan", "AllocationPlan"),
    "SensitivityTable": ("fqopt.sensitivity", "SensitivityTable"),
    "FairnessReport": ("fqopt.metrics", "FairnessReport"),
    "fairness_report": ("fqopt.metrics", "fairness_report"),
    "profile": ("fqopt.profiling", "profile"),
    "quantized": ("fqopt.apply", "quantized"),
    "evaluate": ("fqopt.evaluation", "evaluate"),
    "train": ("fqopt.training", "train"),
    "refine": ("fqopt.baq", "refine"),
    "export": ("fqopt.packed", "export"),
    "load_quantized": ("fqopt.packed", "load_quantized"),
    "export_onnx": ("fqopt.onnx_export", "export_onnx"),
    "quantize_": ("fqopt.apply", "quantize_"),
    "auto_quantize": ("fqopt.auto", "auto_quantize"),
}
_SUBMODULES = {"data", "models", "metrics", "quantizers", "units", "plan", "sensitivity",
               "profiling", "apply", "evaluation", "training", "runs", "baq", "packed",
               "onnx_export", "auto", "calibration",
               "solvers", "search"}

__all__ = ["__version__", "UserError", *_LAZY, *sorted(_SUBMODULES)]


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"fqopt.{name}")
    raise AttributeError(f"module 'fqopt' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
