"""The IDX file format (MNIST's): parse, check and write arrays of unsigned bytes, raw or gzipped.

A header is checked before its data is trusted (magic number, dtype byte, dimensions, the size it
declares), and gzip data is inflated only up to the size its IDX header declares, so a gzip bomb
costs at most one chunk more than an honest file. Every problem is a DataError naming the file.
Which files to read and where they come from is the business of sources, cache and offline.
"""
from __future__ import annotations

import gzip as _gzip
import math
import zlib
from pathlib import Path

import numpy as np

from sparsenet.files import atomic_write_bytes


class DataError(ValueError):
    """A data file or source is missing, corrupt or not the expected data set."""


_GZIP_MAGIC = b"\x1f\x8b"
_IDX_UBYTE = 0x08
_IDX_HEADER_MAX = 4 + 4 * 255   # the longest IDX header: 255 dimensions
_GUNZIP_CHUNK = 1 << 20         # bytes inflated at a time: the most read past a header's size


def decompress(payload: bytes, where) -> bytes:
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
    return parse_idx(read_uncompressed(path), path)


def read_uncompressed(path: Path) -> bytes:
    """The uncompressed content of a file, gzipped or raw; DataError names it when it cannot be read."""
    try:
        payload = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return decompress(payload, path)


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
