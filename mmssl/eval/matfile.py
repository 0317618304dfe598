"""A small reader of MATLAB level-5 MAT-files (versions 5 to 7.2), enough for JHMDB's `joint_positions.mat`.

scipy is not a dependency, so this reads the documented format ("MAT-File Format", MathWorks) directly:
a 128-byte header whose last two bytes give the byte order, then data elements, each a tag (type, byte count;
or the packed "small element" form for up to 4 bytes) and its data padded to 8 bytes. A variable is a
miMATRIX element (array flags, dimensions, name, real part, optional imaginary part), possibly wrapped in a
zlib-compressed miCOMPRESSED element. Numeric and char arrays are returned; cells, structs, objects and sparse
arrays are skipped. Version 7.3 files are HDF5 and are refused with a message.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

__all__ = ["read_mat"]

_MI_MATRIX, _MI_COMPRESSED = 14, 15
# data element types -> numpy scalar type
_MI_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8",
             16: "u1", 17: "u2", 18: "u4"}
# array classes -> numpy type of the returned array (4 is char)
_CLASSES = {6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4", 14: "i8", 15: "u8"}
_CHAR = 4


class _Stream:
    """Cursor over the bytes of a file or of a decompressed element."""

    def __init__(self, data: bytes, order: str, path: Path) -> None:
        self.data, self.pos, self.order, self.path = data, 0, order, path

    def done(self) -> bool:
        return self.pos + 8 > len(self.data)

    def element(self) -> tuple[int, bytes]:
        """Reads one data element: (type, payload bytes)."""
        if self.pos + 8 > len(self.data):
            raise ValueError(f"{self.path}: truncated MAT-file at byte {self.pos}")
        word = int(np.frombuffer(self.data, self.order + "u4", 1, self.pos)[0])
        if word >> 16:  # small element: byte count in the upper half, type in the lower, data in the next 4 bytes
            kind, size = word & 0xFFFF, word >> 16
            payload = self.data[self.pos + 4:self.pos + 4 + size]
            self.pos += 8
            return kind, payload
        kind = word
        size = int(np.frombuffer(self.data, self.order + "u4", 1, self.pos + 4)[0])
        start = self.pos + 8
        if start + size > len(self.data):
            raise ValueError(f"{self.path}: element at byte {self.pos} runs past the end of the file")
        payload = self.data[start:start + size]
        # compressed elements are not padded; every other element is padded to a multiple of 8 bytes
        self.pos = start + size + (0 if kind == _MI_COMPRESSED else (-size) % 8)
        return kind, payload

    def array(self) -> np.ndarray:
        kind, payload = self.element()
        if kind not in _MI_TYPES:
            raise ValueError(f"{self.path}: unexpected element type {kind} inside a matrix")
        return np.frombuffer(payload, self.order + _MI_TYPES[kind])


def _matrix(payload: bytes, order: str, path: Path) -> tuple[str, np.ndarray | str | None]:
    """(name, value) of a miMATRIX payload; value is None for array kinds this reader skips."""
    sub = _Stream(payload, order, path)
    if not payload:  # an empty matrix element
        return "", None
    flags = sub.array()
    cls, is_complex = int(flags[0]) & 0xFF, bool(int(flags[0]) & 0x0800)
    dims = tuple(int(d) for d in sub.array())
    name = sub.array().tobytes().decode("ascii", "replace")
    if cls == _CHAR:
        codes = sub.array().astype(np.uint32)
        chars = codes.reshape(dims, order="F") if codes.size == int(np.prod(dims)) else codes  # (rows, cols)
        if chars.ndim == 2:  # one string per row
            return name, "\n".join("".join(map(chr, row)) for row in chars)
        return name, "".join(map(chr, chars.ravel()))
    if cls not in _CLASSES:
        return name, None
    real = sub.array().astype(_CLASSES[cls])
    value = real + 1j * sub.array().astype(_CLASSES[cls]) if is_complex else real
    if value.size != int(np.prod(dims)):
        raise ValueError(f"{path}: variable {name!r} has {value.size} values for dimensions {dims}")
    return name, value.reshape(dims, order="F")  # MATLAB stores column-major


def read_mat(path: str | Path) -> dict[str, np.ndarray | str]:
    """Numeric and char variables of a level-5 MAT-file, by name (arrays keep MATLAB's shape)."""
    path = Path(path)
    data = path.read_bytes()
    if data[:8] == b"\x89HDF\r\n\x1a\n" or data[512:520] == b"\x89HDF\r\n\x1a\n":
        raise ValueError(f"{path}: MAT-file v7.3 (HDF5) is not supported; save it with -v7 or convert to .npy")
    if len(data) < 128 or data[126:128] not in (b"IM", b"MI"):
        raise ValueError(f"{path}: not a level-5 MAT-file (no byte-order mark in the 128-byte header)")
    order = "<" if data[126:128] == b"IM" else ">"
    stream = _Stream(data, order, path)
    stream.pos = 128
    out: dict[str, np.ndarray | str] = {}
    while not stream.done():
        kind, payload = stream.element()
        if kind == _MI_COMPRESSED:
            try:
                inner = _Stream(zlib.decompress(payload), order, path)
            except zlib.error as err:
                raise ValueError(f"{path}: corrupt compressed variable: {err}") from None
            kind, payload = inner.element()
        if kind != _MI_MATRIX:
            continue
        name, value = _matrix(payload, order, path)
        if value is not None:
            out[name] = value
    return out
