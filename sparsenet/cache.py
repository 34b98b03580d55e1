"""The local cache: where it is, how files are written to it, and what sparsenet may delete there.

Files fetched from the network or an offline copy are written to `<cache>/<data set>/` atomically
and listed in a marker (`source.json`), written last, so the next load reads them from disk. A
cached file that fails its md5 check is deleted only if sparsenet wrote it (the marker lists it);
other files in the cache folder are left alone and the data is then not cached. A cached file that
cannot be read is reported unreadable and kept: a failed read is no proof of a bad copy.
"""
from __future__ import annotations

import os
from pathlib import Path

from sparsenet.files import atomic_write_bytes, read_json, write_json
from sparsenet.idx import DataError, read_uncompressed
from sparsenet.sources import FILES, DatasetSpec, find_file, md5, probe

# written last into a cache folder; it lists the files sparsenet wrote there, the only ones it
# ever deletes or replaces (a cache_dir may point at a folder holding the user's own files)
CACHE_MARKER = "source.json"


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


def from_cache(folder: Path, spec: DatasetSpec) -> tuple:
    """(raws, names) of the cached files; a bad file sparsenet wrote is deleted so that it is fetched again."""
    if not probe(folder, Path.is_dir):
        raise DataError("no cached files yet")
    ours, raws, names, bad = _ours(folder), {}, {}, []
    for file in FILES:
        path = find_file(folder, file)
        if path is None:
            bad.append(f"{file} missing")
            continue
        try:
            raw = read_uncompressed(path)
        except DataError as exc:
            # kept: a file that cannot be read (e.g. no permission) is no proof of a bad copy
            bad.append(f"{path.name} is unreadable (left in place): {exc}")
            continue
        if md5(raw) != spec.md5[file]:
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


def store(folder: Path, raws: dict, label: str) -> str:
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
    """The files sparsenet did not write that store would replace, or shadow (a .gz copy)."""
    ours, foreign = _ours(folder), []
    for file in FILES:
        for name in (file, file + ".gz"):
            # an identical copy is what an interrupted store leaves before its marker: replacing it
            # loses nothing
            if name not in ours and (folder / name).exists() and not _holds(folder / name, raws[file]):
                foreign.append(name)
    if not ours and (folder / CACHE_MARKER).exists():
        foreign.append(CACHE_MARKER)
    return foreign


def _holds(path: Path, raw: bytes) -> bool:
    """Whether the file at `path` (raw or gzipped) holds exactly `raw`."""
    try:
        return read_uncompressed(path) == raw
    except DataError:
        return False


def filled_from(folder: Path) -> str:
    """What filled a cache folder, as its marker says; "unknown" without a readable marker."""
    try:
        return read_json(folder / CACHE_MARKER)["filled_from"]
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"
