"""Bring your own model and data, leave with a model onnxruntime runs (issue #14).

    .venv/bin/python examples/bring_your_own.py [WORKDIR] [--small]

1. writes a small image dataset in fqopt's ``csv`` format (``path,label,group`` + JPEG files);
2. trains a timm ``test_resnet`` on it with a plain torch loop, outside fqopt, and saves it with
   ``torch.save(model.state_dict())``;
3. ``fqopt import`` → ``fqopt search`` → ``fqopt export --format onnx``;
4. checks that onnxruntime's predictions equal fqopt's fake-quantized model (outputs to 1e-4).

``--small`` (used by the test) shrinks every step to seconds.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CLASSES = ("nevus", "melanoma", "keratosis")
GROUPS = ("I-II", "III-IV", "V-VI")
SIZE = 32


def write_dataset(root: Path, n: int, seed: int = 0) -> Path:
    """JPEGs whose class is a blob's shape and whose group darkens the background."""
    rng = np.random.default_rng(seed)
    rows = []
    yy, xx = np.mgrid[0:48, 0:48] / 47.0 - 0.5
    for i in range(n):
        label, group = i % len(CLASSES), (i // len(CLASSES)) % len(GROUPS)
        skin = np.array([225, 190, 150])[None, None] * (1.0 - 0.25 * group)
        r = 0.18 + 0.05 * rng.standard_normal()
        if label == 0:
            mask = xx ** 2 + yy ** 2 < r ** 2
        elif label == 1:
            mask = (np.abs(xx) + np.abs(yy) < 1.4 * r) & (rng.random((48, 48)) < 0.8)
        else:
            mask = (np.abs(xx) < 1.6 * r) & (np.abs(yy) < 0.6 * r)
        img = np.broadcast_to(skin, (48, 48, 3)).copy()
        img[mask] *= 0.45
        img += rng.normal(0, 8, img.shape)
        path = root / "images" / f"img_{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=92)
        rows.append([f"images/{path.name}", CLASSES[label], GROUPS[group]])
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "group"])
        w.writerows(rows)
    return root / "labels.csv"


def load_images(csv_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The user's own pipeline: resize to SIZE, scale to [-1, 1] (mean = std = 0.5, fqopt's
    default normalisation for a run; give --mean/--std to fqopt import otherwise)."""
    xs, ys = [], []
    with open(csv_path) as fh:
        for row in csv.DictReader(fh):
            img = Image.open(csv_path.parent / row["path"]).convert("RGB")
            img = img.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
            xs.append(np.asarray(img, dtype=np.float32) / 255.0)
            ys.append(CLASSES.index(row["label"]))
    x = (torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2) - 0.5) / 0.5
    return x, torch.tensor(ys)


def train_outside_fqopt(csv_path: Path, out: Path, epochs: int) -> None:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=len(CLASSES))
    x, y = load_images(csv_path)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for i in torch.randperm(len(x)).split(32):
            loss = torch.nn.functional.cross_entropy(model(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.save(model.state_dict(), out)


def fqopt_cli(*args) -> None:
    cmd = [sys.executable, "-m", "fqopt", *map(str, args)]
    print("$ fqopt " + " ".join(map(str, args)), flush=True)
    subprocess.run(cmd, check=True)


def main(workdir: Path, small: bool = False) -> float:
    workdir.mkdir(parents=True, exist_ok=True)
    csv_path = write_dataset(workdir / "data", n=90 if small else 600)
    ckpt = workdir / "my_model.pt"
    train_outside_fqopt(csv_path, ckpt, epochs=2 if small else 15)

    run = workdir / "run"
    fqopt_cli("import", "--model", "test_resnet", "--checkpoint", ckpt, "--dataset", "csv",
              "--data-option", f"csv={csv_path}", "--image-size", SIZE, "--out", run, "--force")
    fqopt_cli("search", "--run", run, "--dataset", "csv", "--trials", 3 if small else 40,
              "--methods", "fisher", "--quantizers", "maxabs", "--budget-range", "3:6",
              "--refine-top", 0, "--no-report", "--force")
    plan = min((run / "plans").glob("pareto-*.json"))
    onnx_path = workdir / "model.onnx"
    fqopt_cli("export", "--run", run, "--plan", plan, "--format", "onnx", "--out", onnx_path,
              "--force")

    # onnxruntime against fqopt's fake-quantized model, on the run's own test images
    import fqopt
    from fqopt.onnx_export import run_onnx
    from fqopt.runs import Run

    r = Run.open(run)
    model, ds = r.model(), r.dataset()
    x, _, _ = ds.get_batch(ds.split("test")[:32])
    with torch.no_grad(), fqopt.quantized(model, str(plan)):
        want = model(x).numpy()
    got = run_onnx(onnx_path, x)
    diff = float(np.abs(got - want).max())
    same = float((got.argmax(1) == want.argmax(1)).mean())
    print(f"onnxruntime vs fqopt fake-quantized: max |Δ| = {diff:.2e}, same prediction on "
          f"{same:.0%} of {len(x)} test images; {onnx_path} ({onnx_path.stat().st_size:,} B)")
    assert diff <= 1e-4 and same == 1.0
    return diff


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(Path(args[0] if args else "runs/byo"), small="--small" in sys.argv)
