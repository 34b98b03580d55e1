"""Atomic file writes and JSON helpers: an interrupted run never leaves a half-written file."""
from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path, payload: bytes) -> Path:
    """Write bytes to `path` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def make_dirs(folder) -> Path:
    """mkdir -p; a file in the way is an OSError naming it ("Not a directory"), not "File exists"."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder)) from None
    return folder


def _try_temporary(folder: Path, prefix: str, named) -> None:
    """Create and remove a temporary file as atomic_write_bytes would; an OSError names `named`."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".part")
    except OSError as exc:   # the error would name the temporary, which the user never asked for
        raise OSError(exc.errno, exc.strerror, str(named)) from None
    os.close(fd)
    os.unlink(tmp)


def check_writable(path) -> Path:
    """Raise an OSError naming `path` unless atomic_write_bytes can write it: its folder exists or can be
    made, it is not a folder, its name is not too long; checked before long work whose result goes there."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    make_dirs(path.parent)
    _try_temporary(path.parent, f".{path.name}.", path)    # the very name atomic_write_bytes uses
    return path


def check_folder_writable(folder) -> Path:
    """Raise an OSError naming `folder` unless it is, or can be made, a folder that files can be written in."""
    folder = make_dirs(folder)
    _try_temporary(folder, ".sparsenet-check.", folder)
    return folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _default(obj):
    # numpy scalars and arrays appear in results; JSON gets plain Python values
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def write_json(path, obj: Any) -> Path:
    """Write `obj` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=_default, allow_nan=True)
    return atomic_write_bytes(path, (text + "\n").encode())


def named_folder(path) -> Path:
    """`path`, resolved when it names no folder itself ("." or "..", e.g. `sparsenet report .` inside a
    run folder): a run folder's name is its run id."""
    path = Path(path)
    return path.resolve() if path.name in ("", "..") else path


def read_json(path) -> Any:
    """Read a JSON file; a clear error names the file when it is not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
