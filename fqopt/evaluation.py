"""Predict and evaluate: a model (optionally under a quantization plan) on a dataset split."""

from __future__ import annotations

import numpy as np
import torch

from fqopt.apply import quantized
from fqopt.data import iter_batches
from fqopt.errors import UserError
from fqopt.metrics import fairness_report


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda``, ``cuda:N``, ``mps``, ...

    A name torch does not know, or a device this machine does not have, is a UserError (checked
    without initialising CUDA, so commands call this before they write anything).
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"--device {str(device)!r} is not a device; expected auto, cpu, cuda, "
                        "cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: no CUDA GPU is available on this machine; use "
                            "--device cpu (or auto)")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise UserError(f"--device {device}: this machine has {count} CUDA GPU"
                            f"{'s' if count != 1 else ''} (cuda:0"
                            f"{f'..cuda:{count - 1}' if count > 1 else ''})")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UserError(f"--device {device}: MPS is not available on this machine; use "
                            "--device cpu (or auto)")
    elif dev.type != "cpu":
        raise UserError(f"--device {device}: fqopt runs on cpu, cuda or mps")
    return dev


@torch.no_grad()
def predict(model, dataset, indices, *, batch_size: int = 256, device=None,
            callback=None) -> dict[str, np.ndarray]:
    """Run ``model`` in eval mode over ``indices``.

    Returns ``y_true [n]``, ``y_pred [n]``, ``groups [n]``, ``y_prob [n, C]`` (softmax) and
    ``loss [n]`` (per-sample cross-entropy).
    """
    device = resolve_device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    idx = np.asarray(indices, dtype=np.int64)
    ys, gs, probs, losses = [], [], [], []
    done = 0
    try:
        for x, y, g in iter_batches(dataset, idx, batch_size):
            logits = model(x.to(device, non_blocking=True)).float()
            y_dev = y.to(device)
            losses.append(torch.nn.functional.cross_entropy(logits, y_dev, reduction="none").cpu())
            probs.append(torch.softmax(logits, dim=1).cpu())
            ys.append(y)
            gs.append(g)
            done += len(y)
            if callback is not None:
                callback("evaluate", done, len(idx))
    finally:
        model.train(was_training)
    if not ys:
        C = dataset.num_classes
        return {"y_true": np.zeros(0, np.int64), "y_pred": np.zeros(0, np.int64),
                "groups": np.zeros(0, np.int64), "y_prob": np.zeros((0, C)),
                "loss": np.zeros(0)}
    prob = torch.cat(probs).numpy().astype(np.float64)
    return {"y_true": torch.cat(ys).numpy(), "y_pred": prob.argmax(axis=1),
            "groups": torch.cat(gs).numpy(), "y_prob": prob, "loss": torch.cat(losses).numpy()}


def report_from_predictions(pred: dict, dataset, *, bootstrap: int = 0, seed: int = 0):
    return fairness_report(pred["y_true"], pred["y_pred"], pred["groups"], y_prob=pred["y_prob"],
                           group_names=dataset.group_names, class_names=dataset.class_names,
                           bootstrap=bootstrap, seed=seed)


def evaluate(model, dataset, indices="test", *, plan=None, quantizer: str | None = None,
             batch_size: int = 256, bootstrap: int = 0, seed: int = 0, device=None,
             callback=None):
    """FairnessReport of ``model`` on ``indices`` (an index array or a split name).

    With ``plan`` (an AllocationPlan, or an int for uniform bits), weights are fake-quantized in
    place for the duration of the evaluation and restored afterwards, with ``quantizer`` (None:
    the plan's own, ``plan.quantizer``).
    """
    if isinstance(indices, str):
        indices = dataset.split(indices)
    if plan is None:
        pred = predict(model, dataset, indices, batch_size=batch_size, device=device,
                       callback=callback)
    else:
        with quantized(model, plan, method=quantizer):
            pred = predict(model, dataset, indices, batch_size=batch_size, device=device,
                           callback=callback)
    return report_from_predictions(pred, dataset, bootstrap=bootstrap, seed=seed)
