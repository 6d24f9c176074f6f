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

from bnn_bench.errors import DataError

# IDX type codes -> big-endian numpy dtypes.
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# numpy kind+size ("u1", "f4", ...) -> IDX type code, whatever the byte order of the array.
_CODES = {np.dtype(v).str[1:]: k for k, v in IDX_TYPES.items()}


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError as exc:
        raise DataError(f"{path}: truncated gzip file (the compressed stream ends early)") from exc
    except (OSError, zlib.error) as exc:
        raise DataError(f"{path}: damaged gzip file ({exc})") from exc


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a native-endian array; DataError if it is malformed."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES:
        magic = data[:4].hex() if data else "(empty file)"
        raise DataError(
            f"{path}: not an IDX file (magic 0x{magic}; expected 0x0000 then a type code "
            f"({', '.join(f'0x{c:02X}' for c in IDX_TYPES)}) and ndim)"
        )
    dtype, ndim = np.dtype(IDX_TYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(
            f"{path}: truncated IDX file: the header of a {ndim}-D array needs {header} bytes, "
            f"found {len(data)}"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(dims) * dtype.itemsize
    found = len(data) - header
    if found != expected:
        problem = "truncated IDX file" if found < expected else "IDX file has trailing bytes"
        raise DataError(
            f"{path}: {problem}: expected {expected} bytes of data for shape {tuple(dims)}, "
            f"found {found}"
        )
    array = np.frombuffer(data, dtype, offset=header).reshape(dims)
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
