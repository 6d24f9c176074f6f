""".npz files read safely: every member checked from its .npy header before any data is read.

An .npz is a zip of .npy arrays (what np.savez writes). `inspect_npz` opens the zip's directory and
each member's .npy header only (a few hundred bytes each), so that everything that can be known
without the data (member names, dtypes, shapes, sizes, the memory the arrays need) is checked
before a byte of array data is decompressed: a zip bomb or a header that claims terabytes is
refused before it is read. `read_member` then reads one checked member, never unpickling.
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bnn_bench.errors import DataError

MAX_HEADER = 10_000  # np.load's own limit on the length of a .npy header


@dataclass(frozen=True)
class Member:
    """One .npy member of an .npz, as its header describes it."""

    name: str  # the array's name (the member's name without .npy)
    member: str  # the zip member's name
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def available_memory() -> int:
    """Bytes of memory this process can still use: MemAvailable (Linux), else physical memory."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**63


def fmt_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} bytes"  # unreachable


def inspect_npz(file: Path) -> dict[str, Member]:
    """Every member of `file` from the zip directory and the .npy headers (no array data read).

    Raises DataError (one line naming the file and the member) for a file that is not a zip of
    .npy arrays, a member that is not a .npy array, an object dtype (needs pickle), a duplicate
    name, or a member whose stored size does not match what its header declares.
    """
    with open(file, "rb") as fh:
        if fh.read(4) != b"PK\x03\x04":
            raise DataError(f"{file}: not an .npz file (a zip of .npy arrays, as np.savez writes)")
    members: dict[str, Member] = {}
    try:
        with zipfile.ZipFile(file) as zf:
            for info in zf.infolist():
                m = _inspect_member(file, zf, info)
                if m.name in members:
                    raise DataError(f"{file}: holds two arrays named '{m.name}'")
                members[m.name] = m
    except DataError:
        raise
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError) as exc:
        raise DataError(f"{file}: not a readable .npz file ({type(exc).__name__}: {exc})") from exc
    except NotImplementedError as exc:  # a compression method zipfile cannot read
        raise DataError(f"{file}: not a readable .npz file ({exc})") from exc
    return members


def _inspect_member(file: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Member:
    name = info.filename
    what = "an .npz holds only .npy arrays (as np.savez writes)"
    if info.is_dir() or not name.endswith(".npy"):
        raise DataError(f"{file}: member '{name}' is not a .npy array; {what}")
    with zf.open(info) as fp:
        head = fp.read(8)
        if len(head) < 8 or head[:6] != b"\x93NUMPY":
            raise DataError(f"{file}: member '{name}' is not a .npy array (no .npy header); {what}")
        version = (head[6], head[7])
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise DataError(f"{file}: member '{name}' has .npy format version {version}; {what}")
        # Versions 2.0 and 3.0 share the header layout (3.0 only allows UTF-8 field names).
        reader = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        try:
            shape, fortran, dtype = reader(fp, max_header_size=MAX_HEADER)
        except (ValueError, SyntaxError, TypeError) as exc:
            raise DataError(f"{file}: member '{name}' has a damaged .npy header ({exc})") from exc
        header_len = fp.tell()
    key = name[: -len(".npy")]
    if dtype.hasobject:
        raise DataError(
            f"{file}: holds object arrays ('{key}'), which need pickle (refused); save plain "
            "numeric arrays"
        )
    if any(n < 0 for n in shape):
        raise DataError(f"{file}: array '{key}' has a negative dimension in shape {shape}")
    m = Member(key, name, tuple(int(n) for n in shape), np.dtype(dtype))
    if info.file_size != header_len + m.nbytes:
        raise DataError(
            f"{file}: array '{key}' is damaged: its header declares shape {m.shape} {m.dtype} "
            f"({fmt_bytes(m.nbytes)}) but the zip entry holds "
            f"{fmt_bytes(info.file_size - header_len)} of data"
        )
    return m


def check_memory(file: Path, members: list[tuple[Member, int]]) -> None:
    """Refuse arrays that would not fit in memory, from their headers alone.

    Each member comes with the extra bytes one of its values costs while loading (the float
    copies made while normalising), on top of the stored array itself.
    """
    need = sum(m.nbytes + m.size * extra for m, extra in members)
    have = available_memory()
    if need > have:
        names = ", ".join(f"{m.name} {m.shape} {m.dtype}" for m, _ in members)
        raise DataError(
            f"{file}: loading {names} needs about {fmt_bytes(need)} of memory but "
            f"{fmt_bytes(have)} is available; use a smaller file"
        )


def read_member(file: Path, m: Member) -> np.ndarray:
    """Read one inspected member (never unpickling); DataError if its data is damaged."""
    try:
        with zipfile.ZipFile(file) as zf, zf.open(m.member) as fp:
            array = np.lib.format.read_array(fp, allow_pickle=False, max_header_size=MAX_HEADER)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error, RuntimeError) as exc:
        raise DataError(
            f"{file}: array '{m.name}' cannot be read ({type(exc).__name__}: {exc})"
        ) from exc
    if array.shape != m.shape or array.dtype != m.dtype:  # the file changed under us
        raise DataError(f"{file}: array '{m.name}' changed while it was read")
    return array
