"""ONNX export: Conv/Linear weights stored as integers with DequantizeLinear (docs/design.md §4.8).

``export_onnx(model, plan, path)`` exports the float model with ``torch.onnx.export`` (the
torch.export-based exporter, without its graph optimiser: that folds BatchNorm into the
convolution weights, which would then no longer be the quantized weights), then replaces the
weight initializer of every quantized layer (``<layer>.weight``, consumed by Conv, Gemm or
Transpose→MatMul) by an integer initializer and a ``DequantizeLinear`` node with one float32
scale per output channel (``axis=0``) whose output keeps the weight's name:

- channels at ≤ 4 bits: ``INT4`` levels (opset 21), others ``INT8``;
- a layer whose channels mix both is split into an INT4 and an INT8 part, concatenated and
  put back in channel order with a ``Gather``.

Levels and scales are fqopt's (``choose_scale``/``quantize``), so the dequantized weights are the
fake-quantized ones bit for bit and onnxruntime's outputs match ``fqopt.quantized(model, plan)``
up to float summation order. Everything else stays float32.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from fqopt._io import atomic_path, check_writable
from fqopt.apply import resolve_plan
from fqopt.discovery import quantizable_layers
from fqopt.errors import UserError
from fqopt.models import input_hw
from fqopt.packed import check_budget
from fqopt.quantizers import QUANTIZERS, choose_scale, quantize

__all__ = ["OPSET", "OnnxInfo", "export_onnx", "onnx_fp32"]

OPSET = 21  # the first opset with INT4 DequantizeLinear


@dataclass
class OnnxInfo:
    path: str
    file_bytes: int
    layers: int          # quantized layers rewritten
    int4_channels: int
    int8_channels: int
    avg_bits: float
    quantizer: str

    def to_dict(self) -> dict:
        return asdict(self)


def _need_onnx():
    try:
        import onnx  # noqa: F401  # deferred: optional dependency, probed only
    except ImportError:
        raise UserError("ONNX export needs the onnx package: pip install 'fqopt[onnx]'") \
            from None


def _torch_to_onnx(model: nn.Module, image_size, *, opset: int):
    """The float model as an ONNX ModelProto with a dynamic batch dimension (input ``input``
    ``[N, 3, H, W]``, output ``logits``)."""
    import onnx  # deferred: optional dependency

    h, w = input_hw(model, image_size)
    p = next(model.parameters())
    x = torch.zeros(2, 3, h, w, dtype=p.dtype, device=p.device)
    modes = {m: m.training for m in model.modules()}   # restored as they were, mixed or not
    model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
                try:
                    prog = torch.onnx.export(
                        model, (x,), None, dynamo=True, opset_version=opset,
                        input_names=["input"], output_names=["logits"],
                        dynamic_shapes=({0: torch.export.Dim("batch")},), optimize=False,
                        verbose=False)
                except Exception:
                    # some models specialise the batch size: export a fixed batch of 1
                    prog = torch.onnx.export(
                        model, (x[:1],), None, dynamo=True, opset_version=opset,
                        input_names=["input"], output_names=["logits"], optimize=False,
                        verbose=False)
    except Exception as exc:
        raise UserError(f"torch.onnx.export cannot export model {type(model).__name__}: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    finally:
        for m, mode in modes.items():
            m.training = mode
    mp = prog.model_proto
    # the exporter annotates every node with its Python stack trace and FX names (~1 KB per
    # node, more than the INT4 weights of a small model): not needed to run the model
    for container in (mp.graph.node, mp.graph.value_info, mp.graph.input, mp.graph.output,
                      mp.graph.initializer):
        for item in container:
            del item.metadata_props[:]
            item.doc_string = ""
    del mp.graph.metadata_props[:]
    onnx.checker.check_model(mp)
    return mp


def onnx_fp32(model: nn.Module, path, *, image_size=None, opset: int = OPSET,
              force: bool = False) -> int:
    """The float32 ONNX model (no quantization), for comparisons; returns its size in bytes."""
    _need_onnx()
    path = check_writable(path, force, what="ONNX file")
    data = _torch_to_onnx(model, image_size, opset=opset).SerializeToString()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return len(data)


def export_onnx(model: nn.Module, plan, path, *, method: str | None = None, image_size=None,
                opset: int = OPSET, force: bool = False,
                allow_over_budget: bool = False) -> OnnxInfo:
    """Write ``model`` quantized per ``plan`` as ONNX with integer weights (module docstring).

    plan: AllocationPlan, plan JSON path or int (as :func:`fqopt.quantized`).
    method: quantizer; default the plan's own (``plan.quantizer``), else ``maxabs``.
    image_size: the input resolution traced (CNNs run at any size only if the exporter keeps
    the spatial dims symbolic; it does not: the graph is for ``image_size``).
    A layer whose weight the exported graph does not hold as ``<layer>.weight`` with its own
    shape (folded or transformed by the exporter), or an unexportable model, is a UserError.
    """
    _need_onnx()
    # deferred: onnx is an optional dependency
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    plan = resolve_plan(model, plan)
    method = method or getattr(plan, "quantizer", None) or "maxabs"
    QUANTIZERS.get(method)
    if opset < OPSET:
        raise UserError(f"ONNX opset {opset} has no INT4 DequantizeLinear; use {OPSET} or later")
    path = check_writable(path, force, what="ONNX file")
    if path.is_dir():
        raise UserError(f"ONNX file {path} is a folder; give a file name such as "
                        f"{path / 'model.onnx'}")
    check_budget(plan, model, image_size=image_size, allow_over_budget=allow_over_budget)
    mp = _torch_to_onnx(model, image_size, opset=opset)
    graph = mp.graph
    inits = {t.name: i for i, t in enumerate(graph.initializer)}
    modules = dict(quantizable_layers(model))
    layer_bits = plan.layer_bits()
    new_nodes, drop, n4, n8, done = [], set(), 0, 0, set()
    with torch.no_grad():
        for name, bits in layer_bits.items():
            mod = modules[name]
            key = f"{name}.weight"
            if id(mod.weight) in done:
                continue
            if key not in inits:
                raise UserError(f"cannot express layer {name!r} in ONNX: the exported graph "
                                f"has no initializer {key!r} (the exporter folded or renamed "
                                "its weight)")
            init = graph.initializer[inits[key]]
            if tuple(init.dims) != tuple(mod.weight.shape) or init.data_type != TensorProto.FLOAT:
                raise UserError(f"cannot express layer {name!r} in ONNX: its weight initializer "
                                f"is {TensorProto.DataType.Name(init.data_type)} "
                                f"{list(init.dims)}, not FLOAT {list(mod.weight.shape)}")
            done.add(id(mod.weight))
            w = mod.weight.detach().float().cpu()
            b = np.asarray(bits, dtype=np.int64)
            arg = int(b[0]) if np.all(b == b[0]) else torch.as_tensor(b)
            scale = choose_scale(w, arg, method)
            levels = quantize(w, scale, arg).numpy().astype(np.int8)
            scale = scale.reshape(-1).numpy().astype(np.float32)
            drop.add(inits[key])
            lo, hi = np.flatnonzero(b <= 4), np.flatnonzero(b > 4)
            n4, n8 = n4 + lo.size, n8 + hi.size
            parts = []
            for idx, dtype, tag in ((lo, TensorProto.INT4, "int4"), (hi, TensorProto.INT8,
                                                                      "int8")):
                if idx.size == 0:
                    continue
                whole = idx.size == b.size
                qname = f"{key}_{tag}"
                out = key if whole else f"{key}_{tag}_dq"
                q = levels if whole else levels[idx]
                graph.initializer.append(_int_tensor(qname, q, dtype))
                graph.initializer.append(numpy_helper.from_array(
                    scale if whole else scale[idx], f"{key}_{tag}_scale"))
                new_nodes.append(helper.make_node(
                    "DequantizeLinear", [qname, f"{key}_{tag}_scale"], [out], axis=0,
                    name=f"{key}_{tag}_dequantize"))
                parts.append((idx, out))
            if len(parts) == 2:
                order = np.concatenate([parts[0][0], parts[1][0]])
                graph.initializer.append(numpy_helper.from_array(
                    np.argsort(order).astype(np.int64), f"{key}_order"))
                new_nodes.append(helper.make_node("Concat", [parts[0][1], parts[1][1]],
                                                  [f"{key}_cat"], axis=0, name=f"{key}_concat"))
                new_nodes.append(helper.make_node("Gather", [f"{key}_cat", f"{key}_order"],
                                                  [key], axis=0, name=f"{key}_reorder"))
    kept = [t for i, t in enumerate(graph.initializer) if i not in drop]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for inp in list(graph.input):   # a weight may also be listed as a graph input
        if inp.name in {f"{n}.weight" for n in layer_bits}:
            graph.input.remove(inp)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes + nodes)   # dequantization first: topological order holds
    mp.producer_name = "fqopt"
    helper.set_model_props(mp, {"fqopt.quantizer": method,
                                "fqopt.avg_bits": f"{plan.avg_bits:.6f}",
                                "fqopt.model": str(plan.model)})
    try:
        onnx.checker.check_model(mp)
    except Exception as exc:
        raise UserError(f"the quantized ONNX graph is invalid: {str(exc).splitlines()[0]}") \
            from None
    data = mp.SerializeToString()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return OnnxInfo(path=str(path), file_bytes=len(data), layers=len(done),
                    int4_channels=int(n4), int8_channels=int(n8), avg_bits=float(plan.avg_bits),
                    quantizer=method)


def _int_tensor(name: str, q: np.ndarray, dtype: int):
    """An INT8 or INT4 initializer with raw data (INT4: two levels per byte, the first in the
    low nibble, as the ONNX spec packs them)."""
    from onnx import TensorProto, helper  # deferred: optional dependency

    flat = np.ascontiguousarray(q, dtype=np.int8).reshape(-1)
    if dtype == TensorProto.INT8:
        raw = flat.tobytes()
    else:
        nib = (flat.view(np.uint8) & 0x0F)
        if nib.size % 2:
            nib = np.concatenate([nib, np.zeros(1, np.uint8)])
        raw = (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8).tobytes()
    return helper.make_tensor(name, dtype, list(q.shape), raw, raw=True)


def run_onnx(path, x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Logits of an ONNX file on ``x`` ``[N, 3, H, W]`` with onnxruntime on CPU."""
    try:
        import onnxruntime as ort  # deferred: optional dependency
    except ImportError:
        raise UserError("running ONNX needs onnxruntime: pip install 'fqopt[onnx]'") from None
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    # dequantize the integer weights once, when the session loads, instead of at every call
    # (onnxruntime keeps DequantizeLinear for QDQ fusion otherwise: 1.4x slower at INT4,
    # benchmarks/RESULTS.md); same outputs
    opts.add_session_config_entry("session.disable_quant_qdq", "1")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]
