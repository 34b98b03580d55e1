"""Save and load trained parameters as .npz (no pickle) with JSON metadata, checked on load."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from sparsenet import __version__
from sparsenet.checks import is_integer
from sparsenet.files import atomic_write_bytes
from sparsenet.model import Layer, layer_sizes

FORMAT = 1          # bump when the layout below changes
_META = "meta_json"  # 0-d unicode array holding the metadata as JSON


class CheckpointError(ValueError):
    """A checkpoint file is unreadable or does not match what was recorded or expected."""


def _jsonable(obj):
    """The value JSON would give back (tuples -> lists, numpy scalars -> Python)."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def save(path, params: Sequence[Layer], meta: Optional[dict] = None) -> Path:
    """Write params (arrays w0, b0, w1, ...) and metadata to `path` atomically; returns the path.

    Recorded on top of `meta`: sizes, bias, n_layers, sparsenet_version, format.
    """
    has_bias = {layer.bias is not None for layer in params}
    if len(has_bias) != 1:
        raise ValueError("either every layer has a bias or none has")
    meta = _jsonable(dict(meta or {}))
    meta.update(sizes=list(layer_sizes(params)), bias=has_bias.pop(), n_layers=len(params),
                sparsenet_version=__version__, format=FORMAT)
    arrays = {_META: np.array(json.dumps(meta, allow_nan=True))}
    for i, layer in enumerate(params):
        arrays[f"w{i}"] = np.asarray(layer.weight, dtype=np.float32)
        if layer.bias is not None:
            arrays[f"b{i}"] = np.asarray(layer.bias, dtype=np.float32)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def _meta_problem(meta) -> Optional[str]:
    """What is wrong with the metadata's shape and types ("" when nothing): load may raise only
    CheckpointError, so a caller such as cached_train can retrain instead of crashing."""
    if not isinstance(meta, dict):
        return f"metadata is not a JSON object (got {type(meta).__name__})"
    for key in ("sizes", "bias", "n_layers"):
        if key not in meta:
            return f"metadata lacks {key!r}"
    sizes, bias, n_layers = meta["sizes"], meta["bias"], meta["n_layers"]
    if not isinstance(sizes, list) or not all(is_integer(s, 1) for s in sizes):
        return f"metadata 'sizes' must be a list of integers >= 1, got {sizes!r}"
    if not isinstance(bias, bool):
        return f"metadata 'bias' must be true or false, got {bias!r}"
    if not is_integer(n_layers, 1):
        return f"metadata 'n_layers' must be an integer >= 1, got {n_layers!r}"
    if len(sizes) != n_layers + 1:
        return f"sizes {sizes} do not describe {n_layers} layers"
    return ""


def load(path, expect: Optional[dict] = None):
    """Read (params, meta) from `path`, checking every array against the recorded sizes.

    expect: metadata that must match, e.g. {"dataset": "mnist", "sizes": [784, ..., 10]}.
    Raises CheckpointError naming the file and the first mismatch.
    """
    path = Path(path)

    def fail(msg):
        return CheckpointError(f"{path}: {msg}")

    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise fail("no such file") from None
    except Exception as exc:                   # not a zip, truncated, object arrays (pickle)...
        raise fail(f"not a readable .npz checkpoint ({type(exc).__name__}: {exc})") from None
    if _META not in arrays:
        raise fail(f"no metadata array {_META!r}")
    try:
        meta = json.loads(str(arrays.pop(_META)))
    except (ValueError, RecursionError) as exc:   # RecursionError: nested too deep for the parser
        raise fail(f"metadata is not valid JSON ({type(exc).__name__}: {exc})") from None
    problem = _meta_problem(meta)
    if problem:
        raise fail(problem)
    sizes, bias = meta["sizes"], meta["bias"]
    params = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        names = [(f"w{i}", (n_out, n_in))] + ([(f"b{i}", (n_out,))] if bias else [])
        got = []
        for name, shape in names:
            if name not in arrays:
                raise fail(f"array {name!r} is missing")
            a = arrays.pop(name)
            if a.dtype != np.float32:
                raise fail(f"array {name!r} has dtype {a.dtype}, expected float32")
            if a.shape != shape:
                raise fail(f"array {name!r} has shape {a.shape}, expected {shape} from sizes {sizes}")
            got.append(a)
        params.append(Layer(got[0], got[1] if bias else None))
    if arrays:
        raise fail(f"unexpected arrays {sorted(arrays)}")
    for key, want in _jsonable(dict(expect or {})).items():
        if key not in meta:
            raise fail(f"metadata lacks {key!r} (expected {want!r})")
        if meta[key] != want:
            raise fail(f"metadata {key!r} is {meta[key]!r}, expected {want!r}")
    return tuple(params), meta
