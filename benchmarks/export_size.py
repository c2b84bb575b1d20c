"""Export size and speed: fqopt's safetensors file against the plan's size, and ONNX.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/export_size.py \
        [--models test_resnet,test_vit,resnet18,resnet50] [--onnx-models test_resnet,resnet18]
        [--repeats 20]

Table 1: for each model (random weights) and plan (uniform 2/3/4/8 bits at layer granularity,
a random per-channel plan over 2-8 bits, and a ~3-bit per-channel plan with the stem and head
pinned at 8 bits, what a search returns), it exports (``fqopt.export/2``: one tensor per
layer), reloads, checks the outputs against the fake-quantized model, and prints:

- file / plan: the whole file over the plan's ``size_bytes`` (packed weights + scales + float
  parameters + buffers as stored), the bound of issue #11 (≤ 1.02);
- data / plan: the same without the safetensors header (8 bytes + JSON);
- header: the header's bytes (tensor index ~80 B per tensor, compressed plan and state index);
- vs fp32: file size over the FP32 safetensors state dict;
- export / load seconds and the largest absolute difference of the outputs.

Table 2 (ONNX): for each model at its size (default model at synthderm's 40 px, resnet18 at
224 px), the FP32 ONNX model and ``fqopt export --format onnx`` files for uniform 4 (INT4), uniform
8 (INT8) and a random per-channel 2-8 plan (INT4 + INT8 parts): file size over FP32 ONNX size,
and onnxruntime latency (CPU, one thread, batch 1) over FP32 ONNX latency, with onnxruntime's
default session (DequantizeLinear runs at every call, kept for QDQ fusion) and with
``session.disable_quant_qdq=1`` (the dequantization is constant-folded when the session loads:
a small file, float speed). Latencies are measured in the same run, interleaved: each repeat
times a block of runs of the FP32 model and of each quantized session; a ratio is the median of
the per-repeat ratios with a 95 % bootstrap interval over repeats.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def onnx_rows(names, repeats: int, tmp: Path) -> list[list[str]]:
    import onnxruntime as ort

    from fqopt import models
    from fqopt.apply import quantized
    from fqopt.onnx_export import export_onnx, onnx_fp32
    from fqopt.plan import AllocationPlan
    from fqopt.units import discover_units

    def session(path, fold=False):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        if fold:  # treat DequantizeLinear as an ordinary op: folded into float weights at load
            opts.add_session_config_entry("session.disable_quant_qdq", "1")
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def ratio(r):
        r = np.asarray(r)
        boot = np.median(rng.choice(r, size=(2000, len(r))), axis=1)
        lo, hi = np.percentile(boot, [2.5, 97.5])
        return f"{np.median(r):.3f} [{lo:.3f}, {hi:.3f}]"

    def block(sess, x, k):
        t0 = time.perf_counter()
        for _ in range(k):
            sess.run(None, {"input": x})
        return (time.perf_counter() - t0) / k

    rows = []
    rng = np.random.default_rng(0)
    for name in names:
        size = 40 if name.startswith("test_") else 224
        torch.manual_seed(0)
        model = models.create(name, 4, image_size=size if "vit" in name else None).eval()
        fp_path = tmp / f"{name}-fp32.onnx"
        fp_bytes = onnx_fp32(model, fp_path, image_size=size, force=True)
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        xn = x.numpy()
        fp = session(fp_path)
        k = 20 if size <= 64 else 3
        layer_units = discover_units(model, "layer", pin="none")
        chan_units = discover_units(model, "channel", pin="none")
        plans = [(f"uniform {b}", AllocationPlan.uniform(layer_units, b, model=name))
                 for b in (4, 8)]
        plans.append(("channel mix 2-8", AllocationPlan.from_unit_bits(
            chan_units, rng.integers(2, 9, size=len(chan_units)), model=name)))
        for label, plan in plans:
            path = tmp / f"{name}.onnx"
            t0 = time.perf_counter()
            info = export_onnx(model, plan, path, image_size=size, force=True)
            t_export = time.perf_counter() - t0
            q, qf = session(path), session(path, fold=True)
            got = q.run(None, {"input": xn})[0]
            with torch.no_grad(), quantized(model, plan):
                want = model(x).numpy()
            diff = float(np.abs(got - want).max())
            diff = max(diff, float(np.abs(qf.run(None, {"input": xn})[0] - want).max()))
            for _ in range(3):   # warm-up
                block(fp, xn, 1), block(q, xn, 1), block(qf, xn, 1)
            t_fp, t_q, t_qf = [], [], []
            for _ in range(repeats):
                t_fp.append(block(fp, xn, k))
                t_q.append(block(q, xn, k))
                t_qf.append(block(qf, xn, k))
            t_fp, t_q, t_qf = map(np.asarray, (t_fp, t_q, t_qf))
            rows.append([name, f"{size}", label, f"{plan.avg_bits:.2f}",
                         f"{info.int4_channels:,} / {info.int8_channels:,}", f"{fp_bytes:,}",
                         f"{info.file_bytes:,}", f"{info.file_bytes / fp_bytes:.3f}",
                         f"{1e3 * np.median(t_fp):.2f}", f"{1e3 * np.median(t_q):.2f}",
                         ratio(t_q / t_fp), ratio(t_qf / t_fp), f"{t_export:.1f}",
                         f"{diff:.1e}"])
            os.unlink(path)
        os.unlink(fp_path)
    return rows


def _print(header, rows):
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="test_resnet,test_vit,resnet18,resnet50")
    ap.add_argument("--onnx-models", default="test_resnet,resnet18",
                    help="models of the ONNX table ('' skips it)")
    ap.add_argument("--repeats", type=int, default=20, help="latency repeats (ONNX table)")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2") or 2))

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
                 for b in (2, 3, 4, 8)]
        plans.append(("channel mix 2-8", AllocationPlan.from_unit_bits(
            chan_units, rng.integers(2, 9, size=len(chan_units)), model=name)))
        # what a search at ~3 bits returns: stem and head pinned at 8, channels at 2/3/4
        pinned = discover_units(model, "channel")
        pins = pinned.pinned_units()
        plans.append(("channel 2-4, pinned", AllocationPlan.from_unit_bits(pinned, [
            pins.get(u, rng.choice([2, 3, 4], p=[.25, .5, .25])) for u in pinned.names],
            model=name)))
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
            rows.append([name, label, f"{plan.avg_bits:.2f}", f"{info.file_bytes:,}",
                         f"{plan.size_bytes:,}", f"{info.file_bytes / plan.size_bytes:.4f}",
                         f"{info.data_bytes / plan.size_bytes:.5f}", f"{info.header_bytes:,}",
                         f"{info.file_bytes / fp32:.3f}", f"{t1 - t0:.2f}", f"{t2 - t1:.2f}",
                         f"{diff:.1e}"])
            os.unlink(path)
    _print(["model", "plan", "avg bits", "file B", "plan size_bytes", "file/plan",
            "data/plan", "header B", "vs fp32", "export s", "load s", "max abs diff"], rows)
    if args.onnx_models:
        print()
        _print(["model", "px", "plan", "avg bits", "INT4 / INT8 channels", "FP32 ONNX B",
                "ONNX B", "size ratio", "FP32 ms", "quantized ms",
                "latency ratio [95% CI]", "DQ folded: latency ratio [95% CI]", "export s",
                "max abs diff"],
               onnx_rows(args.onnx_models.split(","), args.repeats, tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
