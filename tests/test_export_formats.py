"""The export format others read (docs/export-format.md) and ONNX export (issue #14)."""

import base64
import json
import zlib

import numpy as np
import pytest
import torch

from fqopt import models
from fqopt.apply import quantized
from fqopt.errors import UserError
from fqopt.packed import export, load_quantized
from fqopt.plan import AllocationPlan
from fqopt.quantizers import fake_quantize
from fqopt.units import discover_units, quantizable_layers
from tests.fixtures import Tiny, random_weight_run, randomize_batchnorm


def _spec_unpack(path):
    """docs/export-format.md's reader, written from the spec alone: safetensors + numpy."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    with safe_open(str(path), "np") as f:
        meta = f.metadata()
    assert meta["format"] == "fqopt.export/2"
    tensors = load_file(str(path))

    def dec(v):
        return json.loads(zlib.decompress(base64.b64decode(v)))

    plan, state = dec(meta["plan"]), dec(meta["state"])
    weights = {}
    for layer, shape in plan["shapes"].items():
        out, per = shape[0], int(np.prod(shape)) // shape[0]
        b = plan["assignments"][layer]
        bits = np.full(out, b) if isinstance(b, int) else np.asarray(b)
        raw = tensors[layer]
        assert raw.dtype == np.uint8 and raw.size == 4 * out + -(-per * int(bits.sum()) // 8)
        scales = raw[:4 * out].view("<f4")
        stream = np.unpackbits(raw[4 * out:], bitorder="little")
        levels, pos = np.empty((out, per), np.int64), 0
        for c in range(out):
            n = per * int(bits[c])
            chunk = stream[pos:pos + n].reshape(per, int(bits[c]))
            codes = (chunk.astype(np.int64) << np.arange(bits[c])).sum(axis=1)
            levels[c] = codes - (2 ** (int(bits[c]) - 1) - 1)
            pos += n
        assert not stream[pos:].any()          # zero padding
        w = levels.astype(np.float32) * scales[:, None]
        weights[layer + ".weight"] = w.reshape(shape)
    for blob, entries in ((":float", state["float"]), (":int", state["int"])):
        off = 0
        for key, shape in entries:
            n = int(np.prod(shape))
            weights[key] = tensors[blob][off:off + n].reshape(shape)
            off += n
    return weights


def _mixed_plan(model, name, seed=0):
    units = discover_units(model, "channel", pin="none")
    return AllocationPlan.from_unit_bits(
        units, np.random.default_rng(seed).integers(2, 9, size=len(units)), model=name)


@pytest.mark.parametrize("method", ["maxabs", "mse"])
def test_spec_reader_reproduces_dequantized_weights_exactly(tmp_path, method):
    torch.manual_seed(0)
    model = randomize_batchnorm(models.create("test_resnet", 4))
    plan = _mixed_plan(model, "test_resnet")
    path = tmp_path / "m.safetensors"
    export(model, plan, path, quantizer=method)
    got = _spec_unpack(path)
    state = model.state_dict()
    assert set(got) == set(state)
    lb = plan.layer_bits()
    for name, mod in quantizable_layers(model):
        want = fake_quantize(mod.weight, torch.as_tensor(lb[name]), method)
        assert np.array_equal(got[f"{name}.weight"], want.detach().numpy()), name
    for k, v in state.items():
        if k.removesuffix(".weight") not in lb:
            assert np.array_equal(got[k], v.numpy()), k
    # per-layer named tensors, plus the two state blobs
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        assert set(f.keys()) == set(lb) | {":float", ":int"}


def test_file_within_2pct_of_plan_size_on_default_model_at_3_bits(tmp_path):
    """Issue #11: the plan counts what the file holds (buffers included)."""
    torch.manual_seed(0)
    model = models.create(models.DEFAULT_MODEL, 4).eval()
    units = discover_units(model, "channel")
    rng = np.random.default_rng(0)
    pins = units.pinned_units()
    bits = np.array([pins.get(n, rng.choice([2, 3, 4], p=[.25, .5, .25]))
                     for n in units.names])
    plan = AllocationPlan.from_unit_bits(units, bits, model=models.DEFAULT_MODEL)
    assert 2.8 < plan.avg_bits < 3.4
    info = export(model, plan, tmp_path / "m.safetensors")
    assert plan.size_bytes <= info.file_bytes <= 1.02 * plan.size_bytes
    for b in (3, 4, 8):
        p = AllocationPlan.uniform(units, b, model=models.DEFAULT_MODEL)
        info = export(model, p, tmp_path / f"u{b}.safetensors")
        assert p.size_bytes <= info.file_bytes <= 1.02 * p.size_bytes, b


def test_load_quantized_is_torch_exportable(tmp_path):
    torch.manual_seed(0)
    model = randomize_batchnorm(models.create("test_resnet", 4))
    plan = _mixed_plan(model, "test_resnet")
    path = tmp_path / "m.safetensors"
    export(model, plan, path)
    loaded = load_quantized(path)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ep = torch.export.export(loaded, (x,))
    with torch.no_grad(), quantized(model, plan):
        want = model(x)
        assert torch.allclose(ep.module()(x), want, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------ ONNX
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _onnx_check(model, plan, tmp_path, size, *, method=None, n=3):
    from fqopt.onnx_export import export_onnx, run_onnx

    path = tmp_path / "m.onnx"
    info = export_onnx(model, plan, path, image_size=size, method=method, force=True)
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), quantized(model, plan, method=info.quantizer):
        want = model(x).numpy()
    got = run_onnx(path, x)
    assert np.abs(got - want).max() <= 1e-4
    return path, info


def _weight_inits(path):
    from onnx import TensorProto

    m = onnx.load(str(path))
    kinds = {}
    for t in m.graph.initializer:
        kinds[t.name] = TensorProto.DataType.Name(t.data_type)
    dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
    assert all(a.i == 0 for n in dq for a in n.attribute if a.name == "axis")
    return kinds, dq, m


def test_onnx_mixed_channel_plan_matches_fake_quantized(tmp_path):
    torch.manual_seed(0)
    model = randomize_batchnorm(models.create("test_resnet", 4))
    plan = _mixed_plan(model, "test_resnet")
    path, info = _onnx_check(model, plan, tmp_path, 32)
    kinds, _dq, m = _weight_inits(path)
    lb = plan.layer_bits()
    assert info.layers == len(lb)
    assert info.int4_channels == sum(int((b <= 4).sum()) for b in lb.values())
    for name, b in lb.items():
        assert f"{name}.weight" not in kinds          # no float copy of a quantized weight
        assert (f"{name}.weight_int4" in kinds) == bool((b <= 4).any())
        assert (f"{name}.weight_int8" in kinds) == bool((b > 4).any())
    assert {kinds[k] for k in kinds if k.endswith("_int4")} == {"INT4"}
    assert {kinds[k] for k in kinds if k.endswith("_int8")} == {"INT8"}
    assert m.opset_import[0].version >= 21


@pytest.mark.parametrize("bits", [3, 6])
def test_onnx_uniform_plans_and_mse(tmp_path, bits):
    torch.manual_seed(1)
    model = randomize_batchnorm(Tiny())
    plan = AllocationPlan.uniform(discover_units(model, "layer", pin="none"), bits,
                                  model="tiny")
    path, info = _onnx_check(model, plan, tmp_path, 16, method="mse")
    kinds, dq, _ = _weight_inits(path)
    want = "INT4" if bits <= 4 else "INT8"
    assert len(dq) == 3 and all(kinds[n.input[0]] == want for n in dq)
    assert info.quantizer == "mse"


def test_onnx_layer_it_cannot_express(tmp_path):
    from torch.nn.utils.parametrizations import weight_norm

    from fqopt.onnx_export import export_onnx

    model = Tiny().eval()
    model.head = weight_norm(model.head)   # the weight is computed, no initializer holds it
    with pytest.raises(UserError, match="cannot express layer 'head'"):
        export_onnx(model, 4, tmp_path / "m.onnx", image_size=16)
    assert not (tmp_path / "m.onnx").exists()


def test_cli_export_onnx(tmp_path, capsys):
    from fqopt.cli import main
    run = random_weight_run(tmp_path / "run", samples=60, image_size=24, seed=3, batchnorm=True)
    model = run.model()
    plan = _mixed_plan(model, "test_resnet", seed=3)
    plan.save(tmp_path / "p.json")
    out = tmp_path / "m.onnx"
    code = main(["export", "--run", str(run.path), "--plan", str(tmp_path / "p.json"),
                 "--format", "onnx", "--format", "json", "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    d = json.loads(stdout)
    assert d["onnxruntime_max_abs_diff"] <= 1e-4 and out.stat().st_size == d["file_bytes"]
    before = out.read_bytes()
    code = main(["export", "--run", str(run.path), "--uniform", "4", "--format", "onnx",
                 "--out", str(out)])
    _, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1 and "already exists" in err
    assert out.read_bytes() == before
    code = main(["export", "--run", str(run.path), "--uniform", "4", "--format", "onnx",
                 "--format", "safetensors"])
    _, err = capsys.readouterr()
    assert code == 2 and "one file format" in err
