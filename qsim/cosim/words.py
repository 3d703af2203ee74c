"""Conversion between lane arrays and the flat integer words stored in RTL memories.

A memory word with ``lanes`` elements of ``bits`` bits holds lane ``i`` in bits
``[i*bits, (i+1)*bits)`` (two's complement), exactly as Amaranth lays out an ``ArrayLayout``.
"""

from __future__ import annotations

import numpy as np

from qsim.numerics import IntFormat

__all__ = ["pack_words", "unpack_words"]


def pack_words(image: np.ndarray, bits: int) -> list[int]:
    """Rows of ``image`` (words x lanes, signed values) as unsigned integers."""
    from qsim.program import image_to_words

    image = np.asarray(image, dtype=np.int64)
    if image.ndim != 2:
        raise ValueError(f"a memory image must be 2-D (words x lanes), not {image.shape}")
    return image_to_words(image, IntFormat(bits, True))


def unpack_words(words: list[int], lanes: int, bits: int, signed: bool = True) -> np.ndarray:
    """Inverse of :func:`pack_words`: ``len(words)`` x ``lanes`` int64 array."""
    from qsim.program import words_to_image

    return words_to_image(words, lanes, IntFormat(bits, signed))


def program_images(program) -> dict[str, list[int]]:
    """Every memory a Program loads, as packed words from address 0 (``cmd`` included).

    Keys are the Program's memory names (``act``, ``weight``, ``acc``, the parameter memories,
    ``cmd``); :func:`qsim.hw.memory_names` maps them to RTL instances.
    """
    formats = program.memory_formats()
    images = {key: pack_words(image, formats[key].bits)
              for key, image in program.initial_images().items()}
    images["cmd"] = [int(w) for w in program.encoded()]
    return images


def readback_words(program) -> dict[str, int]:
    """Words to read back after the run, per memory: the accumulator memory's footprint, and
    the activation memory's when the program writes it (a REQUANT) or has outputs there."""
    footprint = program.footprint()
    words = {"acc": int(footprint["acc"])}
    if any(True for _ in program.requants) or any(
            lay.memory == "act" for lay in program.outputs.values()):
        words["act"] = int(footprint["act"])
    return words


def unpack_memory(program, key: str, words: list[int]) -> np.ndarray:
    """Words read back from memory ``key`` of ``program``'s configuration, as lanes."""
    fmt = program.memory_formats()[key]
    return unpack_words(words, program.memory_lanes()[key], fmt.bits, fmt.signed)
