"""Image-file datasets: :class:`FileDataset` and the helpers the real-format loaders share.

The loaders (``fitzpatrick17k``, ``isic2019``, ``csv``) read a CSV with the standard library
(every cell a string, so a bad value is reported with its file, column and line instead of being
coerced), decide which rows to keep, and build a :class:`FileDataset`. Every row they leave out
is counted in ``dataset.info`` and announced with a :class:`DataWarning`; nothing is dropped
silently.

Image policy (all loaders): the file is decoded with PIL and converted to RGB (alpha dropped,
EXIF orientation *not* applied, as torchvision's ``ImageFolder`` loader does); the largest
centred square is cropped and resized to ``image_size`` x ``image_size`` with PIL's antialiased
bilinear filter. JPEGs are decoded at a reduced DCT scale (``Image.draft``) when the file is at
least twice the target size, which is several times faster for 1024-pixel ISIC images.
"""

from __future__ import annotations

import csv as _csv
import os
import sys
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from fqopt.data._base import SPLITS, FairDataset
from fqopt.errors import UserError

#: default in-memory cache budget (bytes of decoded uint8 pixels) when ``cache=None``
DEFAULT_CACHE_BYTES = 1 << 30
#: how many row ids a warning and ``info[...]['examples']`` name
EXAMPLES = 5
#: suffixes tried, in order, when ``<id>.jpg`` is absent from an image folder
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".JPG", ".JPEG", ".png", ".PNG")

RESIZE_POLICY = "centre crop to the largest square, then bilinear (antialiased) resize"


class DataWarning(UserWarning):
    """Rows were left out of a dataset (missing image, unknown attribute, ...)."""


# ---------------------------------------------------------------------------- decoding
def read_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Decode ``path`` to uint8 ``[size, size, 3]`` RGB (centre square crop, bilinear resize).

    Raises :class:`UserError` naming the file if it cannot be read or decoded.
    """
    try:
        with Image.open(path) as img:
            if img.format == "JPEG" and min(img.size) >= 2 * size:
                # DCT-domain downscaling keeps both sides >= size, so the crop below still
                # has at least size x size pixels
                img.draft("RGB", (size, size))
            img = img.convert("RGB")
            w, h = img.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            # crop first: resize(box=...) would let the filter read pixels outside the box
            img = img.crop((left, top, left + side, top + side))
            img = img.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise UserError(f"image file {path} does not exist (it was there when the dataset "
                        f"was loaded)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(f"cannot read image {path}: {err}") from None


class FileDataset(FairDataset):
    """A :class:`FairDataset` whose images are files on disk.

    ``paths[i]`` is the image of sample ``i`` and ``ids[i]`` its identifier in the source CSV
    (``md5hash``, ISIC ``image``, or the path column). :meth:`load_images` returns uint8
    ``[n, image_size, image_size, 3]`` (see the module docstring for the resize policy).

    ``cache``: ``None`` (default) keeps decoded images in memory up to
    :data:`DEFAULT_CACHE_BYTES`; ``True`` keeps all of them; ``False`` or ``0`` none; an int is a
    budget in bytes. The cache fills once and never evicts: training visits every image once
    per epoch in a new random order, so an LRU smaller than the dataset would evict each image
    before its next use, while a fixed subset gives a steady hit rate of budget / dataset size.

    ``workers``: threads decoding a batch (PIL releases the GIL while decoding);
    ``None`` = ``min(8, os.cpu_count())``, ``0`` or ``1`` = decode in the calling thread.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], *, ids: Sequence[str] | None = None,
                 cache: bool | int | None = None, workers: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.paths = [str(p) for p in paths]
        if len(self.paths) != len(self.labels):
            raise ValueError("paths and labels must have the same length")
        self.ids = [str(i) for i in ids] if ids is not None else list(self.paths)
        per_image = 3 * self.image_size * self.image_size
        if cache is None:
            budget = DEFAULT_CACHE_BYTES
        elif isinstance(cache, bool):
            budget = per_image * len(self.paths) if cache else 0
        elif isinstance(cache, int) and cache >= 0:
            budget = cache
        else:
            raise UserError(f"cache must be True, False, None or a number of bytes >= 0, "
                            f"got {cache!r}")
        self.cache_capacity = min(len(self.paths), budget // per_image)
        self._cache: dict[int, np.ndarray] = {}
        if workers is None:
            workers = min(8, os.cpu_count() or 1)
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
            raise UserError(f"workers must be an integer >= 0, got {workers!r}")
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._lock = threading.Lock()

    # a thread pool and a lock cannot be pickled (DataLoader workers with spawn pickle the
    # dataset); each process makes its own pool on first use
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_pool"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Shut the decoding threads down (they are restarted on the next use)."""
        if self._pool is not None and self._pool_pid == os.getpid():
            self._pool.shutdown(wait=True)
        self._pool = None

    def _executor(self) -> ThreadPoolExecutor:
        # a forked DataLoader worker inherits the pool object but not its threads: work
        # submitted to it would wait forever, so each process makes its own pool
        with self._lock:
            if self._pool is None or self._pool_pid != os.getpid():
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="fqopt-decode")
                self._pool_pid = os.getpid()
            return self._pool

    def load_images(self, indices) -> np.ndarray:
        """uint8 ``[n, image_size, image_size, 3]`` for sample ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        s = self.image_size
        out = np.empty((len(idx), s, s, 3), dtype=np.uint8)
        todo = []
        for pos, i in enumerate(idx.tolist()):
            hit = self._cache.get(i)
            if hit is None:
                todo.append((pos, i))
            else:
                out[pos] = hit
        if not todo:
            return out

        def decode(item):
            pos, i = item
            out[pos] = read_image(self.paths[i], s)

        if self.workers > 1 and len(todo) > 1:
            # list() re-raises the first decoding error (a UserError naming the file)
            list(self._executor().map(decode, todo))
        else:
            for item in todo:
                decode(item)
        for pos, i in todo:
            if len(self._cache) >= self.cache_capacity:
                break
            self._cache.setdefault(i, out[pos].copy())
        return out

    def describe(self) -> dict:
        d = super().describe()
        d["cache"] = {"capacity": self.cache_capacity, "cached": len(self._cache)}
        return d


# ---------------------------------------------------------------------------- CSV tables
@dataclass
class CsvTable:
    """A CSV read as strings: ``columns[name][i]`` is row ``i`` (file line ``i + 2``)."""

    path: Path
    header: list[str]
    columns: dict[str, list[str]]
    n: int
    lines: list[int] = field(default_factory=list)

    def col(self, name: str) -> list[str]:
        return self.columns[name]

    def line(self, i: int) -> int:
        """File line number (1-based, header = 1) of row ``i``."""
        return self.lines[i]

    def has(self, name: str) -> bool:
        return name in self.columns


def read_csv(path: str | os.PathLike, *, what: str, required: Sequence[str] = (),
             expected: Sequence[str] | None = None) -> CsvTable:
    """Read ``path`` as a table of stripped strings.

    Unnamed header cells (a pandas index column) are ignored. Raises :class:`UserError` if the
    file is missing or unreadable, or lacks a column of ``required``; the message names the file,
    the missing column(s) and ``expected`` (default: ``required``). ``what`` names the file's
    role in messages (``"Fitzpatrick17k CSV"``).
    """
    path = Path(path)
    if not path.is_file():
        where = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise UserError(f"{what} {path} {where}")
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(_csv.reader(fh))
    except (OSError, UnicodeDecodeError, _csv.Error) as err:
        raise UserError(f"cannot read {what} {path}: {err}") from None
    if not rows:
        raise UserError(f"{what} {path} is empty; expected a header with columns "
                        f"{', '.join(expected or required)}")
    header = [h.strip() for h in rows[0]]
    keep = [j for j, h in enumerate(header) if h and not h.startswith("Unnamed:")]
    names = [header[j] for j in keep]
    dup = sorted({h for h in names if names.count(h) > 1})
    if dup:
        raise UserError(f"{what} {path} has duplicate column(s) {', '.join(dup)}")
    missing = [c for c in required if c not in names]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        raise UserError(f"{what} {path} has no column{plural} {', '.join(map(repr, missing))}; "
                        f"expected columns {', '.join(expected or required)}; "
                        f"found {', '.join(names) or 'none'}")
    columns: dict[str, list[str]] = {h: [] for h in names}
    lines: list[int] = []
    for lineno, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank line (often a trailing one)
        if len(row) != len(header):
            raise UserError(f"{what} {path} line {lineno} has {len(row)} fields; its header "
                            f"has {len(header)}")
        for j, h in zip(keep, names):
            columns[h].append(row[j].strip())
        lines.append(lineno)
    return CsvTable(path=path, header=names, columns=columns, n=len(lines), lines=lines)


def parse_numbers(table: CsvTable, column: str, *, what: str, expected: str,
                  allow_empty: bool = False) -> np.ndarray:
    """float64 values of ``column``; empty cells are NaN if ``allow_empty``.

    Raises :class:`UserError` at the first cell that is not a number, naming the file, the
    column, the line, the value and ``expected`` (e.g. ``"an integer 1-6, or -1 for unknown"``).
    """
    out = np.empty(table.n, dtype=np.float64)
    for i, cell in enumerate(table.col(column)):
        if cell == "" and allow_empty:
            out[i] = np.nan
            continue
        try:
            out[i] = float(cell)
            if not np.isfinite(out[i]):
                raise ValueError
        except ValueError:
            raise UserError(f"{what} {table.path} column {column!r} line {table.line(i)}: "
                            f"{cell!r} is not {expected}") from None
    return out


def sorted_names(values: Sequence[str]) -> list[str]:
    """Distinct non-empty ``values``, in numeric order if all are integers, else sorted as text.

    So ``["10", "2", "1"]`` gives ``["1", "2", "10"]`` and ``["b", "a"]`` gives ``["a", "b"]``.
    """
    distinct = {v for v in values if v != ""}
    try:
        ints = {v: int(v) for v in distinct}
    except ValueError:
        return sorted(distinct)
    return sorted(distinct, key=lambda v: (ints[v], v))


# ---------------------------------------------------------------------------- images
def resolve_image_folder(folder: str | os.PathLike, *, what: str) -> Path:
    """``folder`` as a Path; :class:`UserError` if it is not an existing folder."""
    folder = Path(folder)
    if not folder.is_dir():
        where = "is a file, not a folder" if folder.exists() else "does not exist"
        raise UserError(f"{what} image folder {folder} {where}")
    return folder


def find_images(folder: Path, ids: Sequence[str]) -> list[str | None]:
    """Path of ``<id>.jpg`` in ``folder`` for each id (other suffixes of
    :data:`IMAGE_SUFFIXES` as fall-backs), or ``None`` where there is no such file.

    The folder is listed once instead of one ``stat`` per row (25k rows on a network disk).
    """
    try:
        names = set(os.listdir(folder))
    except OSError as err:
        raise UserError(f"cannot list image folder {folder}: {err}") from None
    out: list[str | None] = []
    for i in ids:
        hit = next((i + s for s in IMAGE_SUFFIXES if i + s in names), None) if i else None
        out.append(str(folder / hit) if hit is not None else None)
    return out


# ---------------------------------------------------------------------------- row accounting
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _outside_fqopt() -> int:
    """``stacklevel`` that attributes a warning to the first caller outside fqopt."""
    frame, level = sys._getframe(1), 1  # the caller of this function is warn()'s caller
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


class RowFilter:
    """Which CSV rows a loader keeps, and why it left the others out.

    Each :meth:`drop` counts the rows that ``mask`` marks among *all* rows (a row missing its
    image and with an unknown attribute is counted under both reasons), records up to
    :data:`EXAMPLES` ids in ``info['dropped'][reason]`` and issues one :class:`DataWarning`.
    """

    def __init__(self, dataset: str, ids: Sequence[str]):
        self.dataset = dataset
        self.ids = list(ids)
        self.keep = np.ones(len(self.ids), dtype=bool)
        self.dropped: dict[str, dict] = {}

    def drop(self, reason: str, mask, *, because: str, where: str, hint: str = "") -> int:
        """Leave out the rows where ``mask`` is true; ``because`` completes "N rows ..."."""
        mask = np.asarray(mask, dtype=bool)
        n = int(mask.sum())
        examples = [self.ids[i] for i in np.flatnonzero(mask)[:EXAMPLES]]
        self.dropped[reason] = {"count": n, "examples": examples, "where": where}
        if n:
            self.keep &= ~mask
            more = f" (and {n - len(examples)} more)" if n > len(examples) else ""
            tail = f"; {hint}" if hint else ""
            warnings.warn(f"{self.dataset}: left out {n} row{'s' if n != 1 else ''} {because} "
                          f"({where}): {', '.join(examples)}{more}{tail}",
                          DataWarning, stacklevel=_outside_fqopt())
        return n

    def kept(self) -> np.ndarray:
        """Indices of the kept rows; :class:`UserError` if none is left."""
        idx = np.flatnonzero(self.keep)
        if len(idx) == 0:
            why = "; ".join(f"{r}: {d['count']}" for r, d in self.dropped.items() if d["count"])
            raise UserError(f"{self.dataset}: no rows left after filtering {len(self.ids)} "
                            f"rows ({why or 'the CSV has no data rows'})")
        return idx

    def info(self) -> dict:
        return {"rows": {"csv": len(self.ids), "kept": int(self.keep.sum()),
                         "left_out": int((~self.keep).sum())},
                "dropped": self.dropped}


def drop_missing_images(rows: RowFilter, paths: Sequence[str | None], folder) -> dict:
    """Drop rows whose image was not found; returns ``info['missing_images']``."""
    missing = np.array([p is None for p in paths], dtype=bool)
    rows.drop("missing_image", missing, because="whose image file is missing",
              where=f"image folder {folder}")
    d = rows.dropped["missing_image"]
    return {"count": d["count"], "examples": d["examples"], "folder": str(folder)}


# ---------------------------------------------------------------------------- misc checks
def check_choice(value, choices, *, option: str, dataset: str) -> None:
    if value not in choices:
        raise UserError(f"{dataset}: unknown {option} {value!r}; valid: "
                        f"{', '.join(map(str, choices))}")


def check_image_size(image_size) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) \
            or image_size < 1:
        raise UserError(f"image_size must be a positive number of pixels, got {image_size!r}")
    return int(image_size)


def index_of(values: Sequence[str], names: Sequence[str]) -> np.ndarray:
    """int64 position of each value in ``names``."""
    pos = {n: k for k, n in enumerate(names)}
    return np.array([pos[v] for v in values], dtype=np.int64)


def remap_splits(splits: dict[str, np.ndarray], kept: np.ndarray) -> dict[str, np.ndarray]:
    """Splits given as CSV row numbers -> indices into the kept rows (dropped rows vanish)."""
    new_index = np.full(int(kept.max()) + 1 if len(kept) else 0, -1, dtype=np.int64)
    new_index[kept] = np.arange(len(kept))
    out = {}
    for name in SPLITS:
        rows = np.asarray(splits.get(name, []), dtype=np.int64)
        rows = rows[rows < len(new_index)]
        mapped = new_index[rows]
        out[name] = np.sort(mapped[mapped >= 0])
    return out


def check_ids(table: CsvTable, column: str, *, what: str, unique: bool) -> list[str]:
    """The id column; :class:`UserError` on an empty id (or a repeated one if ``unique``)."""
    ids = table.col(column)
    seen: dict[str, int] = {}
    for i, v in enumerate(ids):
        if v == "":
            raise UserError(f"{what} {table.path} column {column!r} line {table.line(i)} is "
                            f"empty; every row needs an id")
        if unique:
            if v in seen:
                raise UserError(f"{what} {table.path} column {column!r}: {v!r} appears on "
                                f"lines {table.line(seen[v])} and {table.line(i)}; ids must "
                                f"be unique")
            seen[v] = i
    return ids


def default_folder(root: Path, candidates: Sequence[str]) -> Path:
    """The first of ``root/<candidate>`` that is a folder, else ``root/<candidates[0]>``."""
    for c in candidates:
        if (root / c).is_dir():
            return root / c
    return root / candidates[0]


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"seed must be an integer >= 0, got {seed!r}")
    return int(seed)


def check_fractions(fractions) -> tuple[float, float, float]:
    """``(train, search, test)`` shares: three numbers >= 0 summing to 1, else UserError."""
    try:
        fr = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        fr = ()
    if len(fr) != 3 or min(fr) < 0 or not np.isclose(sum(fr), 1.0):
        raise UserError(f"split fractions must be three non-negative numbers (train, search, "
                        f"test) summing to 1, got {fractions!r}")
    return fr
