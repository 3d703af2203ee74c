"""Conversion between lane arrays and the flat integer words stored in RTL memories.

A memory word with ``lanes`` elements of ``bits`` bits holds lane ``i`` in bits
``[i*bits, (i+1)*bits)`` (two's complement), exactly as Amaranth lays out an ``ArrayLayout``.
"""

from __future__ import annotations

import numpy as np

from qsim.numerics import IntFormat, wrap

__all__ = ["pack_words", "unpack_words"]


def pack_words(image: np.ndarray, bits: int) -> list[int]:
    """Rows of ``image`` (words x lanes, signed values) as unsigned integers."""
    image = np.asarray(image, dtype=np.int64)
    if image.ndim != 2:
        raise ValueError(f"a memory image must be 2-D (words x lanes), not {image.shape}")
    if bits in (8, 16, 32, 64):
        raw = image.astype(f"<i{bits // 8}").view(f"<u{bits // 8}")
        return [int.from_bytes(row.tobytes(), "little") for row in raw]
    mask = (1 << bits) - 1
    out = []
    for row in image.tolist():
        word = 0
        for lane, value in enumerate(row):
            word |= (value & mask) << (lane * bits)
        out.append(word)
    return out


def unpack_words(words: list[int], lanes: int, bits: int, signed: bool = True) -> np.ndarray:
    """Inverse of :func:`pack_words`: ``len(words)`` x ``lanes`` int64 array."""
    if bits in (8, 16, 32, 64):
        size = bits // 8
        raw = b"".join(int(w).to_bytes(lanes * size, "little") for w in words)
        dtype = f"<{'i' if signed else 'u'}{size}"
        return np.frombuffer(raw, dtype=dtype).reshape(len(words), lanes).astype(np.int64)
    mask = (1 << bits) - 1
    fields = np.array([[(int(w) >> (lane * bits)) & mask for lane in range(lanes)] for w in words],
                      dtype=np.int64).reshape(len(words), lanes)
    return wrap(fields, IntFormat(bits, True)) if signed else fields
