"""Image loading throughput of fqopt's file datasets (FileDataset.load_images).

Writes ``--n`` JPEGs of ``--width`` x ``--height`` (ISIC-like 1024 x 768 by default) to a temporary
folder, loads them through ``fqopt.data.load("csv", ...)`` at ``--size`` and prints images/s for:
full decode without DCT draft (the baseline a plain PIL/torchvision pipeline pays), fqopt's
decoder serially, with 2 and 4 threads, and a second pass served from the in-memory cache.
Ratios are against the baseline measured in the same run.

    python benchmarks/bench_data_decode.py [--n 64] [--size 224]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from fqopt.data import load


def full_decode(path: str, size: int) -> np.ndarray:
    """Baseline: decode every pixel, centre-crop, resize (no JPEG draft mode)."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        s = min(w, h)
        img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))


def timed(fn, repeat: int = 2) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--height", type=int, default=768)
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = []
        for i in range(args.n):
            coarse = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
            img = Image.fromarray(coarse).resize((args.width, args.height),
                                                 Image.Resampling.BICUBIC)
            noise = rng.integers(-12, 13, size=(args.height, args.width, 3))
            img = Image.fromarray(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8))
            img.save(root / f"{i:04d}.jpg", quality=90)
            rows.append([f"{i:04d}.jpg", str(i % 3), str(i % 2)])
        with open(root / "data.csv", "w", newline="") as fh:
            csv.writer(fh).writerows([["path", "label", "group"], *rows])
        idx = np.arange(args.n)

        def dataset(workers, cache=False):
            return load("csv", csv=root / "data.csv", image_size=args.size, workers=workers,
                        cache=cache)

        paths = dataset(0).paths
        results = [("full decode, serial (baseline)",
                    timed(lambda: [full_decode(p, args.size) for p in paths]))]
        for w in (0, 2, 4):
            ds = dataset(w)
            results.append((f"fqopt draft decode, {max(w, 1)} thread(s)",
                            timed(lambda ds=ds: ds.load_images(idx))))
            ds.close()
        cached = dataset(2, cache=True)
        cached.load_images(idx)  # first epoch fills the cache
        results.append(("fqopt, cached epoch", timed(lambda: cached.load_images(idx))))
        cached.close()

    base = results[0][1]
    print(f"{args.n} JPEGs {args.width}x{args.height} -> {args.size}x{args.size}")
    print(f"{'configuration':34s} {'images/s':>10s} {'speed-up':>9s}")
    for name, t in results:
        print(f"{name:34s} {args.n / t:10.1f} {base / t:8.1f}x")


if __name__ == "__main__":
    main()
