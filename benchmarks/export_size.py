"""Export size and speed: fqopt's packed safetensors file against its theoretical size.

    .venv/bin/python benchmarks/export_size.py [--models test_resnet,test_vit,resnet18,resnet50]

For each model (random weights) and plan (uniform 2/4/8 bits at layer granularity, and a random
per-channel plan over 2-8 bits), it exports, reloads, checks the outputs against the
fake-quantized model, and prints:

- file / theoretical: the whole file over Σ size·bits/8 + 4·channels + 4·float params + buffers;
- data / theoretical: the same without the safetensors header (8 bytes + JSON);
- header: the header's bytes; named overhead and named/theo: the bytes beyond the data, and the
  ratio, with one named tensor per layer part and per state entry
  (``<layer>.weight.qdata/.scale[/.bits]`` + every state-dict entry), a layout fqopt does not use;
- vs fp32: file size over the FP32 safetensors state dict;
- export / load seconds and the largest absolute difference of the outputs.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def named_layout_bytes(path: Path, model) -> int:
    """Size of the same payload written with one tensor per layer part and per state entry."""
    from safetensors.torch import save

    from fqopt.packed import read_export
    from fqopt.units import quantizable_layers

    ef = read_export(path)
    lb = ef.plan.layer_bits()
    q, s = ef.tensors["qweight"], ef.tensors["scale"]
    tensors, qo, so = {}, 0, 0
    weight_keys = set()
    for name, mod in quantizable_layers(model):
        b = lb[name]
        n = math.ceil(int(b.sum()) * mod.weight[0].numel() / 8)
        tensors[f"{name}.weight.qdata"] = q[qo:qo + n].clone()
        tensors[f"{name}.weight.scale"] = s[so:so + len(b)].clone()
        if len(set(b.tolist())) > 1:
            tensors[f"{name}.weight.bits"] = torch.as_tensor(b, dtype=torch.uint8)
        qo, so = qo + n, so + len(b)
        weight_keys.add(f"{name}.weight")
    for k, v in model.state_dict().items():
        if k not in weight_keys:
            tensors[k] = v.detach().contiguous().clone()
    return len(save(tensors, metadata=dict(ef.metadata)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="test_resnet,test_vit,resnet18,resnet50")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)

    from safetensors.torch import save

    from fqopt import models
    from fqopt.apply import quantized
    from fqopt.packed import export, load_quantized
    from fqopt.plan import AllocationPlan
    from fqopt.units import discover_units

    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="fqopt-export-"))
    for name in args.models.split(","):
        size = 32 if name.startswith("test_") else 224
        torch.manual_seed(0)
        model = models.create(name, 4, image_size=size if "vit" in name else None).eval()
        fp32 = len(save({k: v.contiguous() for k, v in model.state_dict().items()}))
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        layer_units = discover_units(model, "layer", pin="none")
        chan_units = discover_units(model, "channel", pin="none")
        rng = np.random.default_rng(0)
        plans = [(f"uniform {b}", AllocationPlan.uniform(layer_units, b, model=name))
                 for b in (2, 4, 8)]
        plans.append(("channel mix 2-8", AllocationPlan.from_unit_bits(
            chan_units, rng.integers(2, 9, size=len(chan_units)), model=name)))
        for label, plan in plans:
            path = tmp / f"{name}.safetensors"
            t0 = time.perf_counter()
            info = export(model, plan, path, force=True)
            t1 = time.perf_counter()
            loaded = load_quantized(path)
            t2 = time.perf_counter()
            with torch.no_grad():
                got = loaded(x)
                with quantized(model, plan):
                    want = model(x)
            diff = float((got - want).abs().max())
            named = named_layout_bytes(path, model)
            theo = info.theoretical_bytes
            rows.append([name, label, f"{plan.avg_bits:.2f}", f"{info.file_bytes:,}",
                         f"{theo:,.0f}", f"{info.ratio:.4f}", f"{info.data_ratio:.5f}",
                         f"{info.header_bytes:,}", f"{named - info.data_bytes:,}",
                         f"{named / theo:.4f}", f"{info.file_bytes / fp32:.3f}",
                         f"{t1 - t0:.2f}", f"{t2 - t1:.2f}", f"{diff:.1e}"])
            os.unlink(path)
    header = ["model", "plan", "avg bits", "file B", "theoretical B", "file/theo",
              "data/theo", "header B", "named overhead B", "named/theo", "vs fp32", "export s",
              "load s", "max abs diff"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
