"""examples/bring_your_own.py at small size: outside-trained model → import → search → ONNX."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")


def test_bring_your_own_example(tmp_path):
    path = Path(__file__).resolve().parent.parent / "examples" / "bring_your_own.py"
    spec = importlib.util.spec_from_file_location("bring_your_own", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    diff = mod.main(tmp_path, small=True)
    assert diff <= 1e-4
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "run" / "model.pt").is_file()
