"""What the timing stages need, saved in the run folder: the timed net and the images fed to it.

With these (and config.json) `sparsenet study --timing-only RESULTS` times any machine without the
data set and without training:

net.npz            the trained net of the first seed (checkpoint.save; its metadata names the seed).
                   The timings stage times it pruned by grid.pruned(net, method, k), a deterministic
                   pure function of the net, so this one file rebuilds every pruned net exactly
test-images.npy    the first test images (uint8, (N, 784)) that the timings stage cuts its batches
                   from, as float images / 255 (data.to_float)
checksums.json     {"files": {name: {"sha256": str, "bytes": int}}}: a file that fails its checksum
                   (changed, damaged, half-copied) is refused, never timed

Written once, after training: about 13 MB for the default net (9.5 MB net, 3.2 MB images).
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Optional

import numpy as np

from sparsenet import checkpoint
from sparsenet.files import atomic_write_bytes, read_json, write_json

NET = "net.npz"
IMAGES = "test-images.npy"
CHECKSUMS = "checksums.json"
FILES = (NET, IMAGES, CHECKSUMS)
N_IMAGES = 4096          # test images the timings stage feeds (a batch of 4096 is its largest default)


class TimingInputsError(ValueError):
    """The run folder lacks the saved net or images, or they fail their checksums."""


def _sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def saved(folder) -> bool:
    """Whether `folder` holds all three files (not whether they pass their checksums: load says)."""
    return all((Path(folder) / name).is_file() for name in FILES)


def save(folder, params, test_images, meta=None) -> None:
    """Write the net, the first N_IMAGES test images (uint8) and their checksums (last: a folder
    with checksums.json holds both files whole)."""
    folder = Path(folder)
    images = np.ascontiguousarray(np.asarray(test_images)[:N_IMAGES])
    if images.dtype != np.uint8:
        raise ValueError(f"test images must be uint8, got {images.dtype}")
    if images.ndim < 2 or not len(images):
        raise ValueError(f"test images must hold at least one image (N, pixels...), got shape {images.shape}")
    checkpoint.save(folder / NET, params, meta)
    buf = io.BytesIO()
    np.save(buf, images.reshape(len(images), -1), allow_pickle=False)
    atomic_write_bytes(folder / IMAGES, buf.getvalue())
    files = {}
    for name in (NET, IMAGES):
        payload = (folder / name).read_bytes()
        files[name] = {"sha256": _sha256(payload), "bytes": len(payload)}
    write_json(folder / CHECKSUMS, {"files": files})


def _checked_bytes(folder: Path, name: str, recorded: dict) -> bytes:
    """The bytes of `name`, which must match its recorded checksum."""
    path = folder / name
    if not path.is_file():
        raise TimingInputsError(f"{path} is missing: the folder holds no saved net to time (made before nets "
                            f"were saved?); run `sparsenet study` with its options once more to save it")
    payload = path.read_bytes()
    want = (recorded.get(name) or {}).get("sha256")
    if want != _sha256(payload):
        raise TimingInputsError(f"{path} fails its checksum in {CHECKSUMS} (changed or damaged since it was saved); "
                            f"copy the run folder again, or re-run `sparsenet study` with its options")
    return payload


def load(folder, expect: Optional[dict] = None):
    """(params, test_images uint8) from `folder`, each file checked against checksums.json first;
    TimingInputsError (one line, naming the file) when a file is missing or fails its checksum, or when
    the net's metadata differs from `expect` (e.g. {"seed": 0, "data_fingerprint": ...}: the run's
    config; a net and checksums copied from another run match each other, not the run)."""
    folder = Path(folder)
    sums = folder / CHECKSUMS
    if not sums.is_file():
        raise TimingInputsError(f"{sums} is missing: the folder holds no saved net to time (made before nets "
                            f"were saved?); run `sparsenet study` with its options once more to save it")
    try:
        recorded = read_json(sums)["files"]
    except (KeyError, TypeError):
        raise TimingInputsError(f"{sums}: not a checksums file (no 'files')") from None
    if not isinstance(recorded, dict) or not all(isinstance(recorded.get(n), dict) for n in (NET, IMAGES)):
        raise TimingInputsError(f"{sums}: not a checksums file ('files' must hold a {{'sha256': ...}} entry for "
                                f"{NET} and {IMAGES})")
    _checked_bytes(folder, NET, recorded)
    try:
        params, meta = checkpoint.load(folder / NET)
    except checkpoint.CheckpointError as exc:
        raise TimingInputsError(str(exc)) from None
    differ = {k: (meta.get(k), v) for k, v in (expect or {}).items() if v is not None and meta.get(k) != v}
    if differ:
        raise TimingInputsError(f"{folder / NET} is not this run's net: " + ", ".join(
            f"its {k} is {got!r}, the run's {want!r}" for k, (got, want) in differ.items()))
    try:
        images = np.load(io.BytesIO(_checked_bytes(folder, IMAGES, recorded)), allow_pickle=False)
    except TimingInputsError:
        raise
    except Exception as exc:
        raise TimingInputsError(f"{folder / IMAGES}: not a readable .npy ({type(exc).__name__}: {exc})") from None
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != params[0].weight.shape[1] or not len(images):
        raise TimingInputsError(f"{folder / IMAGES}: expected uint8 images (at least one) of "
                                f"{params[0].weight.shape[1]} pixels, got {images.dtype} {images.shape}")
    return params, images


def copy(src, dst) -> None:
    """Copy the three files from `src` to `dst`, each atomically, checksums.json last (as save writes them)."""
    for name in FILES:
        atomic_write_bytes(Path(dst) / name, (Path(src) / name).read_bytes())
