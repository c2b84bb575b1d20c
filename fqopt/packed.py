"""Deployable export: packed low-bit weights in safetensors (docs/design.md §4.8).

``export(model, plan, path)`` writes every quantized Conv2d/Linear weight as integer levels packed
at its units' bit-widths with one float32 scale per output channel, in one tensor per layer named
by the layer, plus the model's other state (biases, norm parameters, BatchNorm statistics).
``load_quantized(path)`` rebuilds the model and gives outputs equal to the fake-quantized model's
(``fqopt.quantized(model, plan)``): levels and scales come from the same functions
(``choose_scale``/``quantize``), so the dequantized weights are bit-identical.

The format (``fqopt.export/2``) is specified, for readers without fqopt, in
``docs/export-format.md``. In short:

    <layer>  U8   one tensor per quantized layer, keyed by its qualified name: 4·out bytes of
                  float32 little-endian scales, then the packed levels (offset-binary codes
                  q + 2^(b_c-1) - 1 at the channel's bit-width b_c, bits least-significant first,
                  row-major weight order, one stream zero-padded to a whole byte).
    :float   F32  every other floating-point state-dict entry, flattened and concatenated.
    :int     I64  the integer entries (BatchNorm ``num_batches_tracked``), the same way.

Metadata (str → str): ``format``, ``model``, ``num_classes``, ``image_size``, ``quantizer``,
``fqopt_version``, ``plan`` and ``state`` (JSON, zlib-compressed, base64: the plan, and the
names and shapes of the entries in ``:float`` / ``:int``), ``checksum`` (``sha256:`` over the
tensor index, the other metadata and every data byte).

Why scales and levels share one tensor, and the other state two: a safetensors header costs
~80 bytes per tensor, and the file must stay within 2 % of the plan's ``size_bytes`` (which
counts packed weights, scales, float parameters and buffers, not the header) on the default
model at 3 bits; one tensor per layer part and per state entry would cost ~7 KB there (4.5 %).

One module (~700 lines) because writing, reading and ``--check`` all speak one file format: the
packing, the header and the checksum must change together, and a reader of the format finds
every direction of it here.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from safetensors.torch import load as _safetensors_load
from safetensors.torch import save as _safetensors_save

from fqopt import models
from fqopt._io import atomic_path, check_writable, json_default
from fqopt._version import __version__
from fqopt.apply import load_plan, quantized
from fqopt.discovery import discover_units, quantizable_layers
from fqopt.errors import UserError
from fqopt.plan import AllocationPlan
from fqopt.quantizers import QUANTIZERS, choose_scale, quantize
from fqopt.units import BUDGET_KINDS, SCALE_BYTES

__all__ = ["FORMAT", "ExportInfo", "ExportFile", "export", "load_quantized", "read_export",
           "verify", "check_same_plan", "pack_codes", "unpack_codes", "budget_excess",
           "check_budget", "theoretical_bytes"]

FORMAT = "fqopt.export/2"
FLOAT, INT = ":float", ":int"   # module names never hold ':', so no layer can be named so
DEFAULT_ATOL = 1e-5   # tolerance of verify(): loaded vs fake-quantized outputs


# ----------------------------------------------------------------------------- results
@dataclass
class ExportInfo:
    """Sizes of an export file, in bytes.

    ``theoretical_bytes = weight_bytes + scale_bytes + state_bytes`` where ``weight_bytes`` is
    ``Σ_u size_u · b_u / 8`` (not rounded), ``scale_bytes`` 4 per output channel and
    ``state_bytes`` the float parameters (4 bytes each) plus buffers (as stored: float32 / int64).
    ``buffer_bytes`` is the buffers' share (``None`` when read back without the model).
    ``ratio`` is file / theoretical; ``data_ratio`` leaves out the safetensors header.
    """

    path: str
    file_bytes: int
    header_bytes: int          # 8-byte length + JSON header (tensor index + metadata)
    weight_bytes: float
    scale_bytes: int
    state_bytes: int
    avg_bits: float
    plan_size_bytes: int
    quantizer: str
    model: str
    buffer_bytes: int | None = None
    checksum: str = ""

    @property
    def theoretical_bytes(self) -> float:
        return self.weight_bytes + self.scale_bytes + self.state_bytes

    @property
    def data_bytes(self) -> int:
        return self.file_bytes - self.header_bytes

    @property
    def ratio(self) -> float:
        return self.file_bytes / self.theoretical_bytes

    @property
    def data_ratio(self) -> float:
        return self.data_bytes / self.theoretical_bytes

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(theoretical_bytes=self.theoretical_bytes, data_bytes=self.data_bytes,
                 ratio=self.ratio, data_ratio=self.data_ratio)
        return d


@dataclass
class ExportFile:
    """An export file read and checked (format, checksum, plan), before any model is built."""

    path: Path
    metadata: dict[str, str]
    plan: object                      # AllocationPlan
    tensors: dict[str, torch.Tensor]
    header_bytes: int
    file_bytes: int
    state_index: dict = None          # "float"/"int" -> [(state-dict key, shape)] in order

    @property
    def model_name(self) -> str:
        return self.metadata.get("model", "")

    @property
    def num_classes(self) -> int | None:
        v = self.metadata.get("num_classes", "")
        return int(v) if v else None

    @property
    def image_size(self) -> int | None:
        v = self.metadata.get("image_size", "")
        return int(v) if v else None

    @property
    def quantizer(self) -> str:
        return self.metadata.get("quantizer", "maxabs")

    def info(self, buffer_bytes: int | None = None) -> ExportInfo:
        plan = self.plan
        weight_bytes, scale_bytes = _plan_bytes(plan)
        state = sum(t.numel() * t.element_size() for k, t in self.tensors.items()
                    if k in (FLOAT, INT))
        if buffer_bytes is None:
            buffer_bytes = int(plan.buffer_bytes) or None
        return ExportInfo(path=str(self.path), file_bytes=self.file_bytes,
                          header_bytes=self.header_bytes, weight_bytes=weight_bytes,
                          scale_bytes=scale_bytes, state_bytes=int(state),
                          avg_bits=float(plan.avg_bits), plan_size_bytes=int(plan.size_bytes),
                          quantizer=self.quantizer, model=self.model_name,
                          buffer_bytes=buffer_bytes, checksum=self.metadata.get("checksum", ""))


# ----------------------------------------------------------------------------- bit packing
def pack_codes(codes: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Pack unsigned codes ``[out, per]`` (row c at ``bits[c]`` bits each) into a uint8 stream.

    Bits are written least-significant first, rows one after the other with no padding between
    them; the stream is zero-padded to ``⌈Σ_c bits[c] · per / 8⌉`` bytes. Codes must fit their
    row's bit-width (not checked here).
    """
    bits = np.asarray(bits, dtype=np.int64).reshape(-1)
    codes = np.ascontiguousarray(codes, dtype=np.uint8).reshape(bits.size, -1)
    planes = np.unpackbits(codes[..., None], axis=-1, bitorder="little")   # [out, per, 8]
    if bits.size and np.all(bits == bits[0]):
        stream = planes[..., : int(bits[0])].reshape(-1)
    else:
        keep = np.arange(8)[None, None, :] < bits[:, None, None]
        stream = planes[np.broadcast_to(keep, planes.shape)]
    return np.packbits(stream, bitorder="little")


def unpack_codes(packed: np.ndarray, bits: np.ndarray, per: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: uint8 ``[out, per]`` codes from a packed stream.

    Raises ``ValueError`` if ``packed`` does not hold exactly ``⌈Σ bits · per / 8⌉`` bytes.
    """
    bits = np.asarray(bits, dtype=np.int64).reshape(-1)
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    total = int(bits.sum()) * int(per)
    if packed.size != (total + 7) // 8:
        raise ValueError(f"{packed.size} bytes for {total} bits")
    stream = np.unpackbits(packed, count=total, bitorder="little")
    planes = np.zeros((bits.size, int(per), 8), dtype=np.uint8)
    if bits.size and np.all(bits == bits[0]):
        planes[..., : int(bits[0])] = stream.reshape(bits.size, int(per), int(bits[0]))
    else:
        keep = np.arange(8)[None, None, :] < bits[:, None, None]
        planes[np.broadcast_to(keep, planes.shape)] = stream
    return np.packbits(planes, axis=-1, bitorder="little")[..., 0]


def _packed_nbytes(bits: np.ndarray, per: int) -> int:
    return (int(np.asarray(bits, dtype=np.int64).sum()) * int(per) + 7) // 8


def _qmax(bits: np.ndarray) -> np.ndarray:
    return (1 << (np.asarray(bits, dtype=np.int64) - 1)) - 1


# ----------------------------------------------------------------------------- model layout
@dataclass
class _Layout:
    """How a model's state maps onto the file's four tensors."""

    layers: list            # LayerInfo of the quantized layers, in file order
    modules: dict           # layer name -> module
    float_keys: list[str]   # state-dict keys stored in FLOAT, in order
    int_keys: list[str]     # state-dict keys stored in INT, in order
    state: dict             # state dict (tensors share storage with the model)
    float_param_bytes: int  # 4 per parameter that is not a quantized weight
    buffer_bytes: int       # buffers as stored (float32 / int64)


def _layout(model: nn.Module) -> _Layout:
    units = discover_units(model, "layer", pin="none")
    modules = dict(quantizable_layers(model))
    state = model.state_dict()
    weight_keys = {f"{layer.name}.weight" for layer in units.layers}
    missing = sorted(k for k in weight_keys if k not in state)
    if missing:
        raise UserError(f"cannot export: the model's state dict has no entry {missing[0]!r} "
                        "for a quantized layer's weight")
    float_keys, int_keys = [], []
    for key, t in state.items():
        if key in weight_keys:
            continue
        (float_keys if t.is_floating_point() else int_keys).append(key)
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    return _Layout(layers=list(units.layers), modules=modules, float_keys=float_keys,
                   int_keys=int_keys, state=state,
                   float_param_bytes=4 * sum(state[k].numel() for k in float_keys
                                             if k in params),
                   buffer_bytes=(4 * sum(state[k].numel() for k in float_keys
                                         if k not in params)
                                 + 8 * sum(state[k].numel() for k in int_keys)))


def theoretical_bytes(model: nn.Module, plan) -> dict:
    """The theoretical export size of ``model`` under ``plan``, in bytes, by part:
    ``weights`` (Σ size_u · b_u / 8), ``scales`` (4 per output channel), ``float_params`` (4 per
    parameter that is not a quantized weight), ``buffers`` (float32 / int64 as stored) and
    ``total`` (their sum)."""
    lay = _layout(model)
    weights, scales = _plan_bytes(plan)
    out = {"weights": weights, "scales": scales, "float_params": lay.float_param_bytes,
           "buffers": lay.buffer_bytes}
    out["total"] = weights + scales + lay.float_param_bytes + lay.buffer_bytes
    return out


def _plan_bytes(plan) -> tuple[float, int]:
    """``(packed weight bytes Σ size_u · b_u / 8, scale bytes)`` of a plan, from its shapes."""
    units = plan.unit_set()
    unit_bits = units.unit_bits_of(plan.layer_bits())
    return units.weight_bits(unit_bits) / 8, SCALE_BYTES * units.num_channels


# ----------------------------------------------------------------------------- budget
def check_budget(plan, model: nn.Module, *, image_size: int | None = None,
                 allow_over_budget: bool = False, source: str = "plan") -> None:
    """A UserError when ``plan`` breaks the budget it records, unless ``allow_over_budget``
    (every export format checks this before writing)."""
    if allow_over_budget:
        return
    over = budget_excess(plan, model, image_size=image_size)
    if over is not None:
        kind, actual, limit = over
        raise UserError(f"{source} is over its budget: {kind} is {actual:.6g}, the budget is "
                        f"{limit:.6g} (--allow-over-budget exports it anyway)")


def budget_excess(plan, model: nn.Module, *, image_size: int | None = None):
    """``(kind, actual, limit)`` if ``plan`` breaks the budget it records, else ``None``.

    The actual figure is recomputed from the plan's bits and the model (never read from the plan)
    by :meth:`fqopt.units.UnitSet.usage`, and compared as the solvers do
    (:meth:`~fqopt.units.UnitSet.fits`): ``avg_bits`` parameter-weighted, ``size_bytes`` the
    export's data bytes, ``bops`` = Σ_u MACs_u · b_u · activation_bits (MACs counted at
    ``image_size``).
    """
    budget = plan.budget
    if not budget:
        return None
    if not isinstance(budget, dict) or "kind" not in budget or "value" not in budget:
        raise UserError(f"plan budget {budget!r} must be an object with 'kind' and 'value'")
    kind = budget["kind"]
    try:
        limit = float(budget["value"])
    except (TypeError, ValueError):
        raise UserError(f"plan budget value {budget['value']!r} is not a number") from None
    if kind not in BUDGET_KINDS:
        raise UserError(f"plan budget kind {kind!r} is unknown; expected "
                        f"{', '.join(BUDGET_KINDS)}")
    input_size = (3, *models.input_hw(model, image_size)) if kind == "bops" else None
    units = discover_units(model, plan.granularity, pin="none", input_size=input_size)
    unit_bits = units.unit_bits_of(plan.layer_bits())
    act = int(budget.get("activation_bits", 8))
    if units.fits(unit_bits, kind, limit, act):
        return None
    return kind, units.usage(unit_bits, kind, act), limit


# ----------------------------------------------------------------------------- export
def export(model: nn.Module, plan, path, *, quantizer: str | None = None,
           model_name: str | None = None, num_classes: int | None = None,
           image_size: int | None = None, force: bool = False,
           allow_over_budget: bool = False) -> ExportInfo:
    """Write ``model``'s weights quantized per ``plan`` as packed integers to ``path``.

    plan: an AllocationPlan, a plan JSON path, or an int (every Conv2d/Linear at that many bits).
    quantizer: ``maxabs`` or ``mse`` (docs/design.md §4.1), as for ``fqopt.quantized``; None: the
        plan's own (``plan.quantizer``).
    model_name, num_classes, image_size: what :func:`load_quantized` passes to
    ``fqopt.models.create``; by default read from the timm model (``pretrained_cfg``,
    ``num_classes``, a ViT's ``patch_embed.img_size``).
    A plan that does not fit the model, or that exceeds the budget it records (unless
    ``allow_over_budget``), is a UserError. The file is written atomically and never over an
    existing one unless ``force``. Returns the sizes (:class:`ExportInfo`).
    """
    if quantizer is not None:
        QUANTIZERS.get(quantizer)   # an unknown name is a UserError listing the known ones
    path = check_writable(path, force, what="export")
    if path.is_dir():
        raise UserError(f"export {path} is a folder; give a file name such as "
                        f"{path / 'model.safetensors'}")
    known = model_name or _architecture(model)   # None for a model that is not from timm
    plan, source = load_plan(model, plan, model_name=known)
    if quantizer is None:  # the file's "quantizer" metadata records what was applied
        quantizer = plan.quantizer
    name = known or plan.model or type(model).__name__
    check_budget(plan, model, image_size=image_size, allow_over_budget=allow_over_budget,
                 source=source)
    lay = _layout(model)
    tensors = _pack(lay, plan, quantizer)
    if num_classes is None:
        num_classes = _num_classes(model)
    if image_size is None:
        pe = getattr(model, "patch_embed", None)
        if pe is not None and getattr(pe, "img_size", None):
            image_size = int(pe.img_size[0])
    metadata = {
        "format": FORMAT,
        "model": str(name),
        "num_classes": "" if num_classes is None else str(int(num_classes)),
        "image_size": "" if image_size is None else str(int(image_size)),
        "quantizer": quantizer,
        "fqopt_version": __version__,
        "plan": _encode_json(plan.to_dict()),
        "state": _encode_json(_state_index(lay)),
    }
    data = _serialize(tensors, metadata)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    ef = _parse(path, data)
    return ef.info(buffer_bytes=lay.buffer_bytes)


def _architecture(model: nn.Module) -> str | None:
    """The timm architecture name of ``model`` (``None`` if it is not a timm model)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    arch = cfg.get("architecture") if isinstance(cfg, dict) else None
    return str(arch) if arch else None


def _num_classes(model: nn.Module) -> int | None:
    n = getattr(model, "num_classes", None)
    if isinstance(n, int):
        return n
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    return int(head.out_features) if isinstance(head, nn.Linear) else None


def _pack(lay: _Layout, plan, quantizer: str) -> dict[str, torch.Tensor]:
    layer_bits = plan.layer_bits()
    tensors: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for layer in lay.layers:
            w = lay.modules[layer.name].weight.detach().float()
            b = np.asarray(layer_bits[layer.name], dtype=np.int64)
            # the same bits argument as fqopt.apply (int when uniform), so the same scale
            arg = int(b[0]) if np.all(b == b[0]) else torch.as_tensor(b, device=w.device)
            scale = choose_scale(w, arg, quantizer)
            q = quantize(w, scale, arg).reshape(w.shape[0], -1).cpu()
            codes = (q.numpy().astype(np.int64) + _qmax(b)[:, None]).astype(np.uint8)
            s = scale.reshape(-1).float().cpu().numpy().astype("<f4")
            tensors[layer.name] = torch.from_numpy(
                np.concatenate([s.view(np.uint8), pack_codes(codes, b)]))
    if lay.float_keys:
        tensors[FLOAT] = torch.cat([lay.state[k].detach().reshape(-1).float().cpu()
                                    for k in lay.float_keys])
    if lay.int_keys:
        tensors[INT] = torch.cat([lay.state[k].detach().reshape(-1).to(torch.int64).cpu()
                                  for k in lay.int_keys])
    return tensors


def _state_index(lay: _Layout) -> dict:
    """Names and shapes of the entries concatenated in ``:float`` and ``:int``, in order."""
    return {"float": [[k, list(lay.state[k].shape)] for k in lay.float_keys],
            "int": [[k, list(lay.state[k].shape)] for k in lay.int_keys]}


def _encode_json(obj) -> str:
    text = json.dumps(obj, separators=(",", ":"), default=json_default)
    return base64.b64encode(zlib.compress(text.encode(), 9)).decode("ascii")


def _decode_json(text: str):
    return json.loads(zlib.decompress(base64.b64decode(text, validate=True)).decode("utf-8"))


def layer_tensor(raw: np.ndarray, bits: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """``(levels int16 [shape], scales float32 [out])`` from one layer tensor's bytes."""
    bits = np.asarray(bits, dtype=np.int64)
    out = int(shape[0])
    per = int(np.prod(shape)) // out
    raw = np.asarray(raw, dtype=np.uint8).reshape(-1)
    if raw.size != 4 * out + _packed_nbytes(bits, per):
        raise ValueError(f"{raw.size} bytes, expected {4 * out + _packed_nbytes(bits, per)}")
    scales = raw[:4 * out].copy().view("<f4").astype(np.float32)
    codes = unpack_codes(raw[4 * out:], bits, per)
    levels = codes.astype(np.int16) - _qmax(bits)[:, None].astype(np.int16)
    return levels.reshape(tuple(int(x) for x in shape)), scales


def _serialize(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """safetensors bytes with ``metadata['checksum']`` over the index, metadata and data."""
    first = _safetensors_save(tensors, metadata=metadata)
    header, data_start = _split_header(first)
    checksum = _checksum(header, first, data_start)
    final = _safetensors_save(tensors, metadata={**metadata, "checksum": checksum})
    # the data section does not depend on the metadata, so the checksum holds for ``final``
    header2, start2 = _split_header(final)
    assert _checksum(header2, final, start2) == checksum
    return final


def _split_header(data: bytes) -> tuple[dict, int]:
    """(header JSON, offset of the data section); ValueError when malformed."""
    if len(data) < 8:
        raise ValueError(f"{len(data)} bytes, shorter than the 8-byte header length")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError(f"header of {n} bytes but only {len(data) - 8} bytes follow")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return header, 8 + n


def _checksum(header: dict, data: bytes, data_start: int) -> str:
    index = {k: v for k, v in header.items() if k != "__metadata__"}
    meta = {k: v for k, v in (header.get("__metadata__") or {}).items() if k != "checksum"}
    h = hashlib.sha256(json.dumps({"tensors": index, "metadata": meta}, sort_keys=True,
                                  separators=(",", ":")).encode())
    h.update(memoryview(data)[data_start:])
    return "sha256:" + h.hexdigest()


# ----------------------------------------------------------------------------- reading
def read_export(path) -> ExportFile:
    """Read and check an export file without building a model: format, checksum, plan, tensors.

    A missing, truncated or corrupt file, another format or a checksum mismatch is a UserError
    (one line, naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"export {path} does not exist")
    return _parse(path, path.read_bytes())


def _parse(path: Path, data: bytes) -> ExportFile:
    where = f"export {path}"
    try:
        header, start = _split_header(data)
    except ValueError as exc:
        raise UserError(f"{where} is truncated or corrupt: {exc}") from None
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        if found == "fqopt.export/1":
            raise UserError(f"{where} is in the older format {found!r} (one packed stream for "
                            f"all layers); export it again with this fqopt ({FORMAT!r})")
        raise UserError(f"{where} is not an fqopt export: format is {found!r}, expected "
                        f"{FORMAT!r}")
    if meta.get("checksum") != _checksum(header, data, start):
        raise UserError(f"{where} is corrupt: its content does not match its checksum "
                        f"({len(data)} bytes; truncated or modified?)")

    try:
        tensors = _safetensors_load(data)
    except Exception as exc:  # safetensors' own validation (offsets, dtypes)
        raise UserError(f"{where} is truncated or corrupt: "
                        f"{str(exc).splitlines()[0][:200]}") from None
    decoded = {}
    for key in ("plan", "state"):
        try:
            decoded[key] = _decode_json(meta.get(key, ""))
        except Exception as exc:
            raise UserError(f"{where}: the {key} in its metadata cannot be read "
                            f"({type(exc).__name__})") from None
    plan = AllocationPlan.from_dict(decoded["plan"], source=where)
    state = decoded["state"]
    if (not isinstance(state, dict) or not all(
            isinstance(state.get(k), list) and all(
                isinstance(e, list) and len(e) == 2 and isinstance(e[0], str)
                and isinstance(e[1], list) for e in state[k]) for k in ("float", "int"))):
        raise UserError(f"{where}: the state index in its metadata is malformed")
    unknown = sorted(set(tensors) - set(plan.assignments) - {FLOAT, INT})
    if unknown:
        raise UserError(f"{where}: unexpected tensor {unknown[0]!r} (not a layer of its plan)")
    return ExportFile(path=path, metadata=dict(meta), plan=plan, tensors=tensors,
                      header_bytes=start, file_bytes=len(data),
                      state_index={k: [(e[0], tuple(int(x) for x in e[1])) for e in state[k]]
                                   for k in ("float", "int")})


def load_quantized(path, *, dequantize: bool = True, plan=None, model: nn.Module | None = None,
                   device=None) -> nn.Module:
    """Rebuild the model of an export file; returns it in eval mode.

    The architecture comes from ``fqopt.models.create(model, num_classes, image_size=...)`` with
    the file's metadata, unless ``model`` (an instance to load into) is given.
    dequantize: ``True`` gives ordinary float32 weights (levels × scales); ``False`` keeps each
    quantized layer's weight as int8 levels (buffer ``weight_levels``) and float32 scales
    (``weight_scale``), dequantized at each forward call: ~4× less weight memory, same outputs.
    plan: an AllocationPlan or plan path the file must have been made from (a cross-check).
    Every mismatch (corrupt file, another plan, a model it does not fit) is a UserError.
    """
    ef = read_export(path)
    where = f"export {ef.path}"
    if plan is not None:
        check_same_plan(ef, plan)
    if model is None:
        if not models.is_architecture(ef.model_name):
            raise UserError(f"{where} holds model {ef.model_name!r}, which is not a timm "
                            "architecture; pass the model to load into as model=")
        if ef.num_classes is None:
            raise UserError(f"{where} does not record num_classes; pass model=")
        model = models.create(ef.model_name, ef.num_classes, image_size=ef.image_size)
    _load_into(ef, model, dequantize=dequantize)
    if device is not None:
        model.to(device)
    return model.eval()


def check_same_plan(ef: ExportFile, plan) -> None:
    """UserError unless ``plan`` (AllocationPlan or path) gives every unit of the export file
    ``ef`` the same bits and every layer the same shape (granularity may differ)."""
    source = f"plan {plan}" if isinstance(plan, (str, os.PathLike)) else "the given plan"
    if isinstance(plan, (str, os.PathLike)):
        plan = AllocationPlan.load(plan)
    where = f"export {ef.path} was made from another plan than {source}"
    mine, theirs = ef.plan.layer_bits(), plan.layer_bits()
    for name in mine:
        if name not in theirs:
            raise UserError(f"{where}: layer {name!r} is not in {source}")
        if list(ef.plan.shapes[name]) != list(plan.shapes.get(name, [])):
            raise UserError(f"{where}: layer {name!r} has shape {ef.plan.shapes[name]} in the "
                            f"file but {plan.shapes.get(name)} in {source}")
        a, b = mine[name], theirs[name]
        if not np.array_equal(a, b):
            if len(set(a.tolist())) == 1 and len(set(b.tolist())) == 1:
                raise UserError(f"{where}: layer {name!r} has {int(a[0])} bits in the file but "
                                f"{int(b[0])} in {source}")
            c = int(np.argmax(a != b))
            raise UserError(f"{where}: unit {name}[{c}] has {int(a[c])} bits in the file but "
                            f"{int(b[c])} in {source}")
    extra = [n for n in theirs if n not in mine]
    if extra:
        raise UserError(f"{where}: layer {extra[0]!r} of {source} is not in the file")


def _load_into(ef: ExportFile, model: nn.Module, *, dequantize: bool) -> None:
    where = f"export {ef.path}"
    try:
        lay = _layout(model)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    arch = _architecture(model) or type(model).__name__
    try:
        ef.plan.validate(discover_units(model, "layer", pin="none"))
    except UserError as exc:
        raise UserError(f"{where} does not fit model {arch!r}: {exc}") from None
    t = ef.tensors
    for blob, keys in ((FLOAT, lay.float_keys), (INT, lay.int_keys)):
        index = ef.state_index["float" if blob == FLOAT else "int"]
        mine = [(k, tuple(lay.state[k].shape)) for k in keys]
        if index != mine:
            c = next((i for i, (a, b) in enumerate(zip(index, mine)) if a != b),
                     min(len(index), len(mine)))
            got = index[c] if c < len(index) else None
            want = mine[c] if c < len(mine) else None
            raise UserError(f"{where} does not fit model {arch!r}: its state entry {c} is "
                            f"{got}, the model's is {want} (another architecture or timm "
                            "version?)")
        n = sum(int(np.prod(s)) for _, s in index)
        got = t.get(blob)
        want_dtype = torch.float32 if blob == FLOAT else torch.int64
        if (got is None and n) or (got is not None and (got.dim() != 1 or got.numel() != n
                                                        or got.dtype != want_dtype)):
            desc = "missing" if got is None else f"{got.dtype} {tuple(got.shape)}"
            raise UserError(f"{where} is corrupt: tensor {blob!r} is {desc}, expected "
                            f"{want_dtype} ({n},)")
    layer_bits = ef.plan.layer_bits()
    with torch.no_grad():
        for la in lay.layers:
            raw = t.get(la.name)
            if raw is None or raw.dtype != torch.uint8 or raw.dim() != 1:
                raise UserError(f"{where} is corrupt: layer tensor {la.name!r} is missing or "
                                "not a 1-D U8 tensor")
            try:
                levels, scale = layer_tensor(raw.numpy(), layer_bits[la.name], la.shape)
            except ValueError as exc:
                raise UserError(f"{where} is corrupt: layer tensor {la.name!r} has {exc}") \
                    from None
            scale = torch.from_numpy(scale).reshape((la.out_channels,) + (1,) * (len(la.shape) - 1))
            levels = torch.from_numpy(levels)
            module = lay.modules[la.name]
            if dequantize:
                # float levels × scale: the very product fake_quantize computes
                module.weight.copy_(levels.to(torch.float32) * scale)
            else:
                _keep_int8(module, levels.to(torch.int8), scale.clone())
        for blob, keys in ((FLOAT, lay.float_keys), (INT, lay.int_keys)):
            off = 0
            for k in keys:
                dst = lay.state[k]
                n = dst.numel()
                dst.copy_(t[blob][off:off + n].reshape(dst.shape).to(dst.dtype))
                off += n


def _keep_int8(module: nn.Module, levels: torch.Tensor, scale: torch.Tensor) -> None:
    """Replace ``module.weight`` by int8 levels + scales, dequantized around each forward."""
    device = module.weight.device
    del module.weight  # drop the float32 Parameter: only the int8 levels stay in memory
    module.register_buffer("weight_levels", levels.to(device))
    module.register_buffer("weight_scale", scale.to(device))
    module.register_forward_pre_hook(_dequantize_weight)
    module.register_forward_hook(_release_weight)


def _dequantize_weight(module, args):
    module.weight = module.weight_levels.to(module.weight_scale.dtype) * module.weight_scale


def _release_weight(module, args, output):
    module.__dict__.pop("weight", None)


# ----------------------------------------------------------------------------- verification
def verify(path, model: nn.Module, *, plan=None, quantizer: str | None = None,
           image_size: int | None = None, batch: int = 2, seed: int = 0,
           atol: float = DEFAULT_ATOL) -> float:
    """Largest |difference| between the outputs of ``load_quantized(path)`` and of ``model``
    fake-quantized with the file's plan and quantizer, on a seeded random batch
    ``[batch, 3, H, W]``. A difference above ``atol`` is a UserError (the file was made from
    other weights or another plan)."""
    ef = read_export(path)
    if plan is not None:
        check_same_plan(ef, plan)

    loaded = load_quantized(path, model=copy.deepcopy(model).float().cpu())
    h, w = models.input_hw(model, image_size or ef.image_size)
    p = next(model.parameters())
    x = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))
    model_mode = model.training
    model.eval()
    try:
        with torch.no_grad(), quantized(model, ef.plan, method=quantizer or ef.quantizer):
            want = model(x.to(device=p.device, dtype=p.dtype)).float().cpu()
        with torch.no_grad():
            got = loaded(x).float().cpu()
    finally:
        model.train(model_mode)
    diff = float((got - want).abs().max()) if got.numel() else 0.0
    if not diff <= atol:
        raise UserError(f"export {ef.path} does not reproduce the fake-quantized model: outputs "
                        f"differ by up to {diff:.3g} (> {atol:g}); was it made from other "
                        "weights?")
    return diff
