"""IDX files (the MNIST format), raw or gzip-compressed, with magic and size checks.

An IDX file is: two zero bytes, a type code, the number of dimensions, one big-endian uint32
per dimension, then the values in big-endian row-major order. Gzip is detected by its magic
bytes (1f 8b), not by the file name.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from bnn_bench.data.npz import available_memory, fmt_bytes
from bnn_bench.errors import DataError

# IDX type codes -> big-endian numpy dtypes.
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# numpy kind+size ("u1", "f4", ...) -> IDX type code, whatever the byte order of the array.
_CODES = {np.dtype(v).str[1:]: k for k, v in IDX_TYPES.items()}


def _open(path: Path):
    """The file's byte stream, decompressed when it starts with the gzip magic."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - returned to a with-block
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if fh.read(2) == b"\x1f\x8b":
        fh.seek(0)
        return gzip.GzipFile(fileobj=fh, mode="rb"), fh
    fh.seek(0)
    return fh, fh


def _read(stream, n: int, path: Path) -> bytes:
    try:
        return stream.read(n)
    except EOFError as exc:
        raise DataError(f"{path}: truncated gzip file (the compressed stream ends early)") from exc
    except (OSError, zlib.error) as exc:
        raise DataError(f"{path}: damaged gzip file ({exc})") from exc


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a native-endian array; DataError if it is malformed.

    The header is read first and the size it declares is checked against the memory available
    before the data is read (or decompressed): a gzip bomb is refused after a few bytes.
    """
    path = Path(path)
    stream, raw = _open(path)
    with raw, stream:
        magic = _read(stream, 4, path)
        if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in IDX_TYPES:
            shown = magic.hex() if magic else "(empty file)"
            raise DataError(
                f"{path}: not an IDX file (magic 0x{shown}; expected 0x0000 then a type code "
                f"({', '.join(f'0x{c:02X}' for c in IDX_TYPES)}) and ndim)"
            )
        dtype, ndim = np.dtype(IDX_TYPES[magic[2]]), magic[3]
        header = 4 + 4 * ndim
        dims_raw = _read(stream, 4 * ndim, path)
        if len(dims_raw) < 4 * ndim:
            raise DataError(
                f"{path}: truncated IDX file: the header of a {ndim}-D array needs {header} "
                f"bytes, found {4 + len(dims_raw)}"
            )
        dims = struct.unpack(f">{ndim}I", dims_raw)
        expected = math.prod(dims) * dtype.itemsize
        have = available_memory()
        if 2 * expected > have:  # the bytes read and the native-endian copy
            raise DataError(
                f"{path}: its header declares shape {tuple(dims)} ({fmt_bytes(expected)}), "
                f"more than the {fmt_bytes(have)} of memory available"
            )
        data = _read(stream, expected, path)
        trailing = len(_read(stream, 1, path)) if len(data) == expected else 0
    if len(data) != expected or trailing:
        problem = "IDX file has trailing bytes" if trailing else "truncated IDX file"
        found = f"more than {expected}" if trailing else str(len(data))
        raise DataError(
            f"{path}: {problem}: expected {expected} bytes of data for shape {tuple(dims)}, "
            f"found {found}"
        )
    array = np.frombuffer(data, dtype).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write `array` as an IDX file: gzip when `compress`, or (if None) when the name ends .gz."""
    path = Path(path)
    array = np.asarray(array)
    code = _CODES.get(array.dtype.str[1:])
    if code is None:
        allowed = ", ".join(str(np.dtype(v).newbyteorder("=")) for v in IDX_TYPES.values())
        raise ValueError(f"IDX cannot store dtype {array.dtype}; use one of: {allowed}")
    if array.ndim > 255 or any(n >= 2**32 for n in array.shape):
        raise ValueError(f"IDX cannot store shape {array.shape} (at most 255 dims < 2**32)")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, IDX_TYPES[code]).tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        payload = gzip.compress(payload)
    path.write_bytes(payload)
