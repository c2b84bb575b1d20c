"""Models: timm architectures built without hub weights, checkpoints loaded safely.

``create(name, num_classes, checkpoint=None, image_size=None)``. Checkpoints are read with
``torch.load(weights_only=True)`` (``.pt``/``.pth``) or safetensors, never from a hub.
"""

from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from torch import nn

from fqopt.errors import UserError

DEFAULT_MODEL = "test_resnet"
# architectures fqopt is tested with; any other timm architecture is accepted too
SUPPORTED = ("test_resnet", "test_vit", "resnet18", "resnet50", "deit_tiny_patch16_224",
             "tiny_vit_5m_224")
# native input resolution of the supported models (synthderm default for the tiny ones)
NATIVE_SIZE = {"resnet18": 224, "resnet50": 224, "deit_tiny_patch16_224": 224,
               "tiny_vit_5m_224": 224}


def available() -> list[str]:
    return timm.list_models()


def is_architecture(name: str) -> bool:
    """Whether timm builds architecture ``name``."""
    return timm.is_model(name)


def check_name(name: str) -> None:
    """UserError listing the tested models unless ``name`` is a timm architecture."""
    if not is_architecture(name):
        raise UserError(f"unknown model {name!r}; tested models: {', '.join(SUPPORTED)} "
                        "(or any architecture in timm.list_models())")


def create(name: str = DEFAULT_MODEL, num_classes: int = 4, *, checkpoint=None,
           image_size: int | None = None, **kwargs) -> nn.Module:
    """Build timm model ``name`` with random weights (``pretrained=False``; nothing is fetched).

    image_size: input resolution for models that are built for one (ViTs); ignored by CNNs.
    checkpoint: a state dict file (``.pt``/``.pth`` via ``weights_only=True``, or
    ``.safetensors``) to load; a mismatch is a UserError naming the first offending key.
    """
    check_name(name)
    kw = dict(pretrained=False, num_classes=int(num_classes), **kwargs)
    model = None
    if image_size is not None:
        try:
            model = timm.create_model(name, img_size=int(image_size), **kw)
        except TypeError:  # CNNs take any resolution and no img_size argument
            model = None
    if model is None:
        model = timm.create_model(name, **kw)
    if checkpoint is not None:
        load_weights(model, checkpoint, name=name)
    return model


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, read without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, empty or unsafe pickles all end here
        # the first sentence only: torch's message goes on to advise weights_only=False, which
        # would run arbitrary code from an untrusted file
        detail = (str(exc).strip().splitlines() or [""])[0].split(". ")[0][:200]
        empty = " (the file is empty)" if path.stat().st_size == 0 else ""
        raise UserError(f"checkpoint {path} cannot be read safely{empty}: "
                        f"{type(exc).__name__}" + (f": {detail}" if detail else "")) from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"checkpoint {path} is not a state dict of tensors")
    return state


_PREFIXES = ("module.", "_orig_mod.")   # DataParallel/DDP, torch.compile


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (torch.compile) prefixes that
    every key of a wrapped model's state dict carries."""
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def head_key(model: nn.Module) -> str | None:
    """State-dict key of the classifier's weight (``fc.weight``, ``head.weight``), found the
    timm way (``get_classifier``), else the last Linear layer's."""
    clf = model.get_classifier() if hasattr(model, "get_classifier") else None
    names = {id(m): n for n, m in model.named_modules()}
    if isinstance(clf, nn.Module):
        linears = [m for m in clf.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        if linears and id(linears[-1]) in names:
            return f"{names[id(linears[-1])]}.weight"
    last = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return f"{last[-1]}.weight" if last else None


def checkpoint_classes(name: str, state: dict[str, torch.Tensor], where: str) -> int:
    """Number of classes a checkpoint's classifier head produces, for timm architecture
    ``name`` (a UserError if the head is not in the checkpoint)."""
    probe = create(name, 7)
    key = head_key(probe)
    if key is None or key not in state:
        raise UserError(f"{where} does not fit model {name}: it has no classifier head "
                        f"{key!r} (keys e.g. {list(state)[:3]})")
    return int(state[key].shape[0])


def load_weights(model: nn.Module, checkpoint, name: str | None = None) -> nn.Module:
    """Load a checkpoint file (or a state dict) into ``model`` strictly."""
    where = f"checkpoint {checkpoint}" if not isinstance(checkpoint, dict) else "state dict"
    state = read_state_dict(checkpoint) if not isinstance(checkpoint, dict) else checkpoint
    state = strip_prefixes(state)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    label = name or type(model).__name__
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) e.g. {missing[0]!r}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) e.g. {unexpected[0]!r}")
        raise UserError(f"{where} does not fit model {label}: {'; '.join(parts)}")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise UserError(f"{where} does not fit model {label}: {k!r} has shape "
                            f"{tuple(state[k].shape)} in the checkpoint but {tuple(v.shape)} "
                            "in the model")
    model.load_state_dict(state, strict=True)
    return model


def init_from(model: nn.Module, checkpoint, name: str | None = None) -> list[str]:
    """Load pretrained weights (e.g. timm ImageNet weights on disk) into ``model`` for
    fine-tuning; returns the keys left at their fresh initialisation: the classifier head's,
    when its class count differs. Any other missing, unexpected or differently shaped tensor
    is a UserError naming the first."""
    where = f"--init {checkpoint}"
    state = strip_prefixes(read_state_dict(checkpoint) if not isinstance(checkpoint, dict)
                           else checkpoint)
    label = name or type(model).__name__
    hk = head_key(model)
    head = {hk, hk[: -len(".weight")] + ".bias"} if hk else set()
    own = model.state_dict()
    for k, v in own.items():
        if k in head:
            continue
        if k not in state:
            raise UserError(f"{where} does not fit model {label}: no tensor {k!r} "
                            f"(keys e.g. {list(state)[:2]}; weights of another architecture?)")
        if tuple(state[k].shape) != tuple(v.shape):
            raise UserError(f"{where} does not fit model {label}: {k!r} has shape "
                            f"{tuple(state[k].shape)} in the file but {tuple(v.shape)} in the "
                            "model")
    extra = [k for k in state if k not in own and k not in head]
    if extra:
        raise UserError(f"{where} does not fit model {label}: unexpected tensor {extra[0]!r}")
    fresh = [k for k in sorted(head & set(own))
             if k not in state or tuple(state[k].shape) != tuple(own[k].shape)]
    load = {k: v for k, v in state.items() if k in own and k not in fresh}
    model.load_state_dict(load, strict=False)
    return fresh


def pretrained_input(name: str) -> dict:
    """timm's pretrained data config of architecture ``name``: mean, std, input size, crop."""
    check_name(name)
    cfg = timm.create_model(name, pretrained=False).pretrained_cfg or {}
    out = {"mean": [float(v) for v in cfg.get("mean", (0.5, 0.5, 0.5))],
           "std": [float(v) for v in cfg.get("std", (0.5, 0.5, 0.5))],
           "source": f"timm pretrained config of {name}"}
    if cfg.get("input_size"):
        out["image_size"] = int(cfg["input_size"][-1])
    for key in ("crop_pct", "crop_mode", "interpolation"):
        if cfg.get(key) is not None:
            out[key] = cfg[key]
    return out


def input_hw(model: nn.Module, image_size: int | None) -> tuple[int, int]:
    """The input height and width of ``model``: ``image_size`` if given, else the ViT's patch
    embedding size, else timm's ``pretrained_cfg``, else 224 x 224."""
    if image_size:
        return int(image_size), int(image_size)
    pe = getattr(model, "patch_embed", None)
    if pe is not None and getattr(pe, "img_size", None):
        return tuple(int(x) for x in pe.img_size)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if isinstance(cfg, dict) and cfg.get("input_size"):
        return tuple(int(x) for x in cfg["input_size"][1:])
    return 224, 224
