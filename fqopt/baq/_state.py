"""BAQ's checkpoints: what a resumable refinement writes after every epoch and how a new call
decides whether it may continue from it (same plan, same
settings: :meth:`~fqopt.baq.RefineConfig.fingerprint`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fqopt._io import atomic_path
from fqopt.errors import UserError

STATE_SCHEMA = "fqopt.baq_state/1"


def plan_fingerprint(plan) -> str:
    """Hash of what a plan assigns (model, granularity, shapes, bits): 16 hex digits."""
    d = {"model": plan.model, "granularity": plan.granularity, "shapes": plan.shapes,
         "assignments": {k: (int(v) if isinstance(v, (int, np.integer)) else [int(x) for x in v])
                         for k, v in plan.assignments.items()}}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def cpu_state(module: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def save_state(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def read_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or corrupt files all end here
        raise UserError(f"refine checkpoint {path} cannot be read ({type(exc).__name__}); "
                        "pass --force to start over") from None
    if not isinstance(state, dict) or state.get("schema") != STATE_SCHEMA:
        raise UserError(f"refine checkpoint {path} is not a BAQ checkpoint "
                        f"(schema {STATE_SCHEMA!r}); pass --force to start over")
    return state


def check_same(path: Path, state: dict, settings: dict) -> None:
    old = state.get("settings") or {}
    if old.get("plan") != settings["plan"]:
        raise UserError(f"refine checkpoint {path} was written for another plan "
                        f"({old.get('plan')}, this plan is {settings['plan']}); pass --force "
                        "to start over or choose another output folder")
    diff = [k for k in settings if old.get(k) != settings[k]]
    if diff:
        k = diff[0]
        raise UserError(f"refine checkpoint {path} was written with other settings ({k} = "
                        f"{old.get(k)!r}, now {settings[k]!r}); pass --force to start over")


def load_state(path: Path, settings: dict, resume: bool) -> dict | None:
    if not path.is_file():
        return None
    state = read_state(path)
    check_same(path, state, settings)
    if not resume:
        raise UserError(f"refine checkpoint {path} exists and resuming is off; pass --force "
                        "to start over")
    return state


def load_finetune(path: Path, settings: dict, base: dict) -> dict | None:
    """The fine-tune checkpoint if it continues this exact rounding, else None (stale)."""
    if not path.is_file():
        return None
    state = read_state(path)
    check_same(path, state, settings)
    return state if state.get("base") == base else None

