"""Atomic file writes and the never-overwrite-without-force rule."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from fqopt.errors import UserError


def check_writable(path: str | os.PathLike, force: bool, what: str = "output") -> Path:
    """Refuse to overwrite ``path`` unless ``force``; create its parent folder."""
    path = Path(path)
    if path.is_dir():  # --force replaces a file, never a folder (and all it holds)
        raise UserError(f"{what} {path} is a folder; give a file name (e.g. "
                        f"{path / ('out' + (path.suffix or '.json'))})")
    if path.exists() and not force:
        raise UserError(f"{what} {path} already exists; pass --force to overwrite it")
    if path.parent.exists() and not path.parent.is_dir():
        raise UserError(f"{what} {path}: {path.parent} is a file, not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, default=json_default) + "\n")


def read_json(path, what: str = "JSON file") -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} {path} is not valid JSON: {exc}") from None


def json_default(o):
    """``json.dumps`` fallback for numpy scalars and arrays."""
    # a numpy object exists only once numpy is loaded: no import (the CLI reads _io at startup)
    np = sys.modules.get("numpy")
    if np is None:
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
