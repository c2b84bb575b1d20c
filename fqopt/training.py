"""Full-precision baseline training (``fqopt train``).

AdamW with a warm-up then cosine schedule, optional group-balanced sampling, flips and right-angle
rotations as augmentation, early stopping on the search split's ``avg_acc`` (mean of group
accuracies), a checkpoint every epoch and resumption after an interruption.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

from fqopt import models
from fqopt._io import atomic_path
from fqopt.errors import UserError
from fqopt.evaluation import predict, resolve_device
from fqopt.metrics import fairness_report
from fqopt.runs import train_lock


@dataclass
class TrainConfig:
    epochs: int = 25
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    balanced: bool = False        # sample groups equally often (with replacement)
    patience: int = 8             # epochs without a better search avg_acc before stopping
    label_smoothing: float = 0.0
    augment: bool = True
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        if self.epochs < 1:
            raise UserError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise UserError(f"learning rate must be positive, got {self.lr}")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


#: settings a resumed training may change: where it runs does not change what it computes
RESUMABLE_SETTINGS = ("device",)
_STATE_KEYS = ("model", "optimizer", "scheduler", "state", "config")


def config_difference(saved: dict, wanted: dict):
    """``(key, saved value, wanted value)`` of the first training setting that differs between
    two ``asdict(TrainConfig)`` dicts (``device`` aside), or None."""
    for key in sorted(set(saved) | set(wanted)):
        if key in RESUMABLE_SETTINGS:
            continue
        if saved.get(key) != wanted.get(key):
            return key, saved.get(key), wanted.get(key)
    return None


def read_train_state(path) -> dict:
    """A ``train_state.pt`` checkpoint, read with ``weights_only=True``; a truncated, damaged or
    unsafe file (a pickle that would run code) is a UserError naming it."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, refused global: all the same to a user
        detail = (str(exc).strip().splitlines() or [""])[0][:160]
        if "weights only" in detail.lower():  # never suggest loading it unsafely
            detail = "it holds Python objects that a weights-only load refuses"
        raise UserError(f"training state {path} cannot be read safely ({type(exc).__name__}"
                        f"{': ' + detail if detail else ''}); delete it or pass --force to start "
                        "the training over") from None
    if (not isinstance(saved, dict) or any(k not in saved for k in _STATE_KEYS)
            or not isinstance(saved["state"], dict) or not isinstance(saved["config"], dict)):
        raise UserError(f"training state {path} is not an fqopt training state (expected "
                        f"{', '.join(_STATE_KEYS)}); delete it or pass --force to start the "
                        "training over")
    return saved


def augment_batch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal/vertical flips and right-angle rotations (lesions have no up)."""
    n = x.shape[0]
    flip_h = torch.rand(n, generator=gen) < 0.5
    flip_v = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip_h.view(-1, 1, 1, 1).to(x.device), x.flip(3), x)
    x = torch.where(flip_v.view(-1, 1, 1, 1).to(x.device), x.flip(2), x)
    if x.shape[2] == x.shape[3]:
        rot = torch.rand(n, generator=gen) < 0.5
        x = torch.where(rot.view(-1, 1, 1, 1).to(x.device), x.transpose(2, 3), x)
    return x


def epoch_order(groups: np.ndarray, indices: np.ndarray, epoch: int, seed: int,
                balanced: bool) -> np.ndarray:
    """Sample order for one epoch (deterministic in ``seed`` and ``epoch``)."""
    rng = np.random.default_rng([seed, epoch])
    if not balanced:
        return indices[rng.permutation(len(indices))]
    g = groups[indices]
    counts = np.bincount(g)
    w = 1.0 / counts[g]
    return rng.choice(indices, size=len(indices), replace=True, p=w / w.sum())


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def train(run, config: TrainConfig | None = None, *, callback=None, resume: bool = True) -> dict:
    """Train ``run``'s model on its train split; keep the best search-split ``avg_acc``.

    Writes ``model.pt`` (best weights) whenever the search ``avg_acc`` improves and
    ``train_state.pt`` after every epoch; with ``resume`` an unfinished run continues from its
    last epoch. Returns the history (one dict per epoch) and the best epoch. The run folder is
    locked meanwhile (:func:`fqopt.runs.train_lock`): a second training of it is a UserError.
    """
    with train_lock(run.path):
        return _train(run, config, callback=callback, resume=resume)


def _train(run, config, *, callback, resume):
    config = config or TrainConfig()
    ds = run.dataset()
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model = run.new_model().to(device)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    train_idx, search_idx = ds.split("train"), ds.split("search")
    steps_per_epoch = max(1, len(train_idx) // config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = int(config.warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, total, warmup))
    use_amp = device.type == "cuda"

    state = {"epoch": 0, "best": -1.0, "best_epoch": -1, "history": [], "bad_epochs": 0,
             "finished": False}
    init = run.config.get("init")
    if init and not (resume and run.train_state_path.is_file()):
        models.init_from(model, init["path"], name=run.model_name)  # checked at creation
    if resume and run.train_state_path.is_file():
        saved = read_train_state(run.train_state_path)
        differ = config_difference(saved["config"], asdict(config))
        if differ is not None:
            key, old, new = differ
            raise UserError(f"{run.train_state_path} was written with other training settings "
                            f"({key} {old!r}, now {new!r}); pass --force to start over")
        try:
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            sched.load_state_dict(saved["scheduler"])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise UserError(f"training state {run.train_state_path} does not fit this run's "
                            f"model ({type(exc).__name__}); pass --force to start over") from None
        state = saved["state"]
        state["history"] = list(state["history"])
    run.config["train"] = asdict(config)
    run.save_config()

    gen = torch.Generator().manual_seed(config.seed)
    start = time.perf_counter()
    while state["epoch"] < config.epochs and not state["finished"]:
        epoch = state["epoch"]
        gen.manual_seed(config.seed * 1000 + epoch)
        model.train()
        order = epoch_order(ds.groups, train_idx, epoch, config.seed, config.balanced)
        loss_sum = 0.0
        for step in range(steps_per_epoch):
            batch = order[step * config.batch_size:(step + 1) * config.batch_size]
            x, y, _ = ds.get_batch(batch)
            x, y = x.to(device, non_blocking=True), y.to(device)
            if config.augment:
                x = augment_batch(x, gen)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = torch.nn.functional.cross_entropy(
                    model(x), y, label_smoothing=config.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach())
            if callback is not None:
                callback(f"epoch {epoch + 1}/{config.epochs}", step + 1, steps_per_epoch,
                         loss=loss_sum / (step + 1))
        pred = predict(model, ds, search_idx, device=device)
        rep = fairness_report(pred["y_true"], pred["y_pred"], pred["groups"],
                              group_names=ds.group_names, class_names=ds.class_names)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / steps_per_epoch,
               "search_loss": float(pred["loss"].mean()), "avg_acc": rep.avg_acc,
               "worst_acc": rep.worst_acc, "balanced_accuracy": rep.balanced_accuracy,
               "seconds": time.perf_counter() - start}
        state["history"].append(row)
        state["epoch"] = epoch + 1
        if rep.avg_acc > state["best"]:
            state.update(best=rep.avg_acc, best_epoch=epoch + 1, bad_epochs=0)
            with atomic_path(run.checkpoint_path) as tmp:
                torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
        else:
            state["bad_epochs"] += 1
            if state["bad_epochs"] >= config.patience:
                state["finished"] = True
        if state["epoch"] >= config.epochs:
            state["finished"] = True
        with atomic_path(run.train_state_path) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "state": state,
                        "config": asdict(config)}, tmp)
        if callback is not None:
            callback("epochs", epoch + 1, config.epochs, avg_acc=rep.avg_acc,
                     worst_acc=rep.worst_acc)
    return {"history": state["history"], "best_epoch": state["best_epoch"],
            "best_avg_acc": state["best"], "finished": state["finished"]}
