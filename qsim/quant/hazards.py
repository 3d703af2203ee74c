"""Where an inference engine's integer arithmetic is not exact: the u8 x s8 ``vpmaddubsw`` hazard.

This module owns the model of one engine defect and the detector for it. ONNX Runtime's MLAS
multiplies uint8 activations by int8 weights on x86 CPUs without VNNI with ``vpmaddubsw``,
which adds two adjacent u8 x s8 products and **saturates that pair sum to int16** before the
int32 accumulation. qsim computes the exact result (:mod:`qsim.quant.kernels`); this module
says which outputs such an engine gets wrong, by how much, and which operand pairs cause it,
and emulates what the engine returns.

Which pairs MLAS forms (onnxruntime, ``onnxruntime/core/mlas/lib``):

* ``x86_64/QgemmU8S8KernelAvx2.S``, ``MlasGemmU8S8CopyPackAAvx2``: each row of A is copied
  with ``CountK`` rounded up to a multiple of 4 (``lea r12,[r8+3]; and r12,NOT 3``), the tail
  zero-filled. ``MlasGemmU8S8CopyPackBAvx2`` interleaves four consecutive K rows of B per
  column (``vpunpcklbw``/``vpunpcklwd``), the missing rows filled with zero (``ymm9`` is 0 for
  signed B).
* ``x86_64/QgemmU8X8KernelAvx2.S``, ``ComputeBlockU8S8Avx2``: ``vpbroadcastd`` loads A[m,
  4q..4q+3], ``vpmaddubsw`` forms the int16-saturated sums ``a[4q]*b[4q] + a[4q+1]*b[4q+1]``
  and ``a[4q+2]*b[4q+2] + a[4q+3]*b[4q+3]``, and ``vpmaddwd`` with a vector of ones widens and
  adds them exactly into int32. The M = 1 kernel ``QgemvU8S8KernelAvx2.S`` uses the same
  quads. So the saturating pairs are K indices ``(2j, 2j + 1)``; an odd last element pairs
  with a zero and cannot saturate (``255 * -128 = -32640``).
* ``qgemm.h``, ``MlasGemmQuantOperation``: K is processed in slices of ``Strides.K = 128``
  (``PackedStrides.K = 384`` for prepacked B), multiples of 4, so the pairing is global.
  The pairs multiply the *raw* bytes: zero points are applied afterwards through exact int32
  row and column sums (``RowSumBuffer``, ``ColumnSumBuffer``), so the error of an output is
  ``sum_j (sat16(s_j) - s_j)`` whatever the zero points.
* ``platform.cpp``: with AVX-VNNI or AVX512-VNNI the u8s8 kernel becomes ``vpdpbusd(s)``
  (four products summed in int32, no int16 step) and AMX also accumulates in int32, so the
  hazard needs an x86 CPU with AVX2 (or AVX512BW) but without VNNI. u8 x u8 and s8 x s8 use
  other kernels (widening to int16 / a portable C loop) and are exact.
* ``providers/cpu/quantization/qlinearconv.cc``: QLinearConv reorders the filter to
  ``[kernel position][input channel][output channel]`` (``ReorderFilter``) and runs the GEMM
  on a channels-last im2col whose padding is the input zero point, so K is ordered (kernel
  tap, channel) with the channel fastest. One input and one output channel per group
  (depthwise) runs ``MlasConvDepthwiseKernelAvx2`` (``qdwconv_avx2.cpp``) or
  ``MlasConvSymDepthwiseKernelAvx2`` (``x86_64/ConvSymKernelAvx2.S``), which widen the bytes
  before ``vpmaddwd`` and are exact. The symmetric conv kernel ``MlasConvSymKernelAvx2`` uses
  ``vpmaddubsw`` on quads of input channels per kernel position, and ``convsym.cpp`` only
  selects it when the channel count is a multiple of 4: its pairs are then the GEMM's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qsim.errors import ConfigError
from qsim.numerics import INT32, wrap
from qsim.quant.isa import check_engine
from qsim.quant.kernels import (
    _conv_operands,
    _zero_point,
    conv_geometry,
    conv_integer,
    im2col,
    matmul_integer,
)

__all__ = [
    "INT16_MIN",
    "INT16_MAX",
    "SaturatedPair",
    "SaturationReport",
    "u8s8_saturation",
    "u8s8_conv_saturation",
    "matmul_u8s8_avx2",
    "conv_u8s8_avx2",
    "u8s8_matmul_correction",
    "u8s8_conv_correction",
    "DEPTHWISE_EXACT",
]

INT16_MIN = -(1 << 15)
INT16_MAX = (1 << 15) - 1

#: Upper bound on the elements of one (rows, pairs, columns) block of pair sums.
_BLOCK_ELEMENTS = 1 << 21


@dataclass(frozen=True)
class SaturatedPair:
    """One ``vpmaddubsw`` pair whose sum leaves int16.

    Attributes
    ----------
    output : tuple of int
        Index of the affected output element (``(..., m, n)`` for a matmul, ``(n, m, *o)``
        for a convolution).
    k : tuple of two tuples of int
        Where the two paired elements sit along the reduction: ``((k0,), (k1,))`` for a matmul,
        ``((c0, *tap0), (c1, *tap1))`` (channel, kernel position) for a convolution.
    a, b : tuple of int
        The raw activation bytes (uint8) and weight bytes (int8) of the two products.
    exact : int
        ``a[0] * b[0] + a[1] * b[1]``.
    saturated : int
        What ``vpmaddubsw`` keeps: ``exact`` clipped to [-32768, 32767].
    """

    output: tuple[int, ...]
    k: tuple[tuple[int, ...], tuple[int, ...]]
    a: tuple[int, int]
    b: tuple[int, int]
    exact: int
    saturated: int

    def describe(self) -> str:
        return (f"output {list(self.output)}: {self.a[0]}*{self.b[0]} + {self.a[1]}*{self.b[1]} "
                f"= {self.exact} at K {list(self.k[0])}, {list(self.k[1])} saturates to "
                f"{self.saturated}")


@dataclass(frozen=True, eq=False)
class SaturationReport:
    """What an AVX2 (no VNNI) u8 x s8 engine computes, next to the exact result.

    Attributes
    ----------
    exact : ndarray of int64
        The exact int32 result of the operator (with zero points).
    engine : ndarray of int64
        What the saturating engine returns (int32 values).
    affected : ndarray of bool
        Outputs where ``engine != exact``.
    saturating : ndarray of bool
        Outputs with at least one saturated pair (a superset of ``affected``: two saturations
        of opposite sign can cancel).
    saturated_pairs : int
        Number of (output, pair) combinations that saturate.
    examples : tuple of SaturatedPair
        The first few saturated pairs, in C order of the output index, then K.
    path : str
        The engine path modelled: ``"gemm"`` (pairs along K) or ``"depthwise"`` (exact).
    """

    exact: np.ndarray
    engine: np.ndarray
    affected: np.ndarray
    saturating: np.ndarray
    saturated_pairs: int
    examples: tuple[SaturatedPair, ...]
    path: str = "gemm"

    @property
    def count(self) -> int:
        """Number of outputs the engine gets wrong."""
        return int(np.count_nonzero(self.affected))

    @property
    def positions(self) -> np.ndarray:
        """Indices of the wrong outputs, one row per output (``numpy.argwhere`` layout)."""
        return np.argwhere(self.affected)

    @property
    def max_error(self) -> int:
        """Largest ``|engine - exact|`` over all outputs."""
        return int(np.abs(self.engine - self.exact).max(initial=0))

    def __bool__(self) -> bool:
        return self.saturated_pairs > 0

    def describe(self) -> str:
        """A one-paragraph summary with the first offending pairs."""
        total = self.exact.size
        head = (f"{self.count} of {total} outputs differ from the exact result "
                f"(max error {self.max_error}); {self.saturated_pairs} u8 x s8 pair sums "
                f"saturate int16")
        if not self.examples:
            return head
        return head + ": " + "; ".join(p.describe() for p in self.examples)


def _u8(name: str, value: object) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype != np.uint8:
        raise ConfigError(f"{name} must be a uint8 array, not dtype {array.dtype}")
    return array


def _s8(name: str, value: object) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype != np.int8:
        raise ConfigError(f"{name} must be an int8 array, not dtype {array.dtype}")
    return array


def _candidate_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pair indices j whose sum can leave int16 for some (row, column): a cheap exact filter.

    With a >= 0, the largest pair sum is at most ``max a0 * max(b0, 0) + max a1 * max(b1, 0)``
    and the smallest at least the same with the minima of b; pairs inside int16 on both
    bounds are skipped. Full-range weights pass the filter; weights in [-64, 63]
    (``reduce_range``) never do, which is why that setting avoids the hazard.
    """
    a_max = a.reshape(-1, a.shape[-1]).max(axis=0).astype(np.int64)  # per K
    b_flat = np.moveaxis(b, -2, 0).reshape(b.shape[-2], -1)
    b_max = np.maximum(b_flat.max(axis=1).astype(np.int64), 0)
    b_min = np.minimum(b_flat.min(axis=1).astype(np.int64), 0)
    high = a_max[0::2] * b_max[0::2] + a_max[1::2] * b_max[1::2]
    low = a_max[0::2] * b_min[0::2] + a_max[1::2] * b_min[1::2]
    return np.flatnonzero((high > INT16_MAX) | (low < INT16_MIN))


_Hit = tuple[tuple[int, ...], int, tuple[int, int], tuple[int, int], int, int]


def _pair_scan(a: np.ndarray, b: np.ndarray, limit: int
               ) -> tuple[np.ndarray, np.ndarray, int, list[_Hit]]:
    """Engine-minus-exact correction of ``a @ b``, raw u8 ``a`` (..., M, K), s8 ``b`` (..., K, N).

    Returns the per-output correction ``sum_j (sat16(s_j) - s_j)``, the per-output count of
    saturated pairs, the total count, and up to ``limit`` examples as ``(output index, pair j,
    a bytes, b bytes, pair sum, saturated sum)`` in C order of (output, j).
    """
    if a.shape[-1] % 2:  # MLAS zero-pads K; a zero element never saturates a pair
        a = np.concatenate([a, np.zeros(a.shape[:-1] + (1,), np.uint8)], axis=-1)
        b = np.concatenate([b, np.zeros(b.shape[:-2] + (1,) + b.shape[-1:], np.int8)], axis=-2)
    out_shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
    correction = np.zeros(out_shape, dtype=np.int64)
    per_output = np.zeros(out_shape, dtype=np.int64)
    pairs = _candidate_pairs(a, b)
    found: list[_Hit] = []
    total = 0
    if pairs.size == 0 or correction.size == 0:
        return correction, per_output, total, found
    step = max(1, _BLOCK_ELEMENTS // correction.size)
    a32 = a.astype(np.int32)
    b32 = b.astype(np.int32)
    for start in range(0, pairs.size, step):  # blocks of pairs, each vectorised over outputs
        j = pairs[start:start + step]
        a0 = a32[..., 2 * j][..., :, :, None]  # (..., M, J, 1)
        a1 = a32[..., 2 * j + 1][..., :, :, None]
        b0 = b32[..., 2 * j, :][..., None, :, :]  # (..., 1, J, N)
        b1 = b32[..., 2 * j + 1, :][..., None, :, :]
        sums = a0 * b0 + a1 * b1  # (..., M, J, N), exact in int32
        kept = np.clip(sums, INT16_MIN, INT16_MAX)
        hit = kept != sums
        if not hit.any():
            continue
        correction += (kept - sums).sum(axis=-2, dtype=np.int64)
        per_output += hit.sum(axis=-2, dtype=np.int64)
        total += int(np.count_nonzero(hit))
        if limit == 0:
            continue
        # The first `limit` (output, pair) hits of this block lie within its first `limit`
        # outputs that have any hit; the global first ones are among these of every block.
        for flat in np.flatnonzero(hit.any(axis=-2))[:limit]:
            index = tuple(int(v) for v in np.unravel_index(flat, out_shape))
            lead, n = index[:-1], index[-1]
            for jj in np.flatnonzero(hit[lead + (slice(None), n)])[:limit]:
                at = lead + (int(jj), n)
                values = [int(np.broadcast_to(v, sums.shape)[at]) for v in (a0, a1, b0, b1)]
                found.append((index, int(j[jj]), (values[0], values[1]), (values[2], values[3]),
                              int(sums[at]), int(kept[at])))
    found.sort(key=lambda hit: (np.ravel_multi_index(hit[0], out_shape), hit[1]))
    return correction, per_output, total, found[:limit]


def _check_limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0:
        raise ConfigError(f"limit must be a non-negative int, not {limit!r}")
    return int(limit)


def u8s8_saturation(a_u8: np.ndarray, b_s8: np.ndarray, *, k_axis: int = -1,
                    a_zero_point: object = 0, b_zero_point: object = 0,
                    limit: int = 5) -> SaturationReport:
    """Would a ``vpmaddubsw`` engine (ONNX Runtime without VNNI) saturate ``a_u8 @ b_s8``?

    Parameters
    ----------
    a_u8 : ndarray of uint8
        Activations; K lies along ``k_axis`` (the last axis by default) and the rows along the
        axis before it once K is moved last, as in ``MatMulInteger``.
    b_s8 : ndarray of int8
        Weights ``(..., K, N)``.
    k_axis : int
        Axis of ``a_u8`` that is the reduction axis.
    a_zero_point, b_zero_point : int or ndarray
        As in :func:`qsim.quant.kernels.matmul_integer`; they shift ``exact`` and ``engine``
        alike and do not change which pairs saturate (MLAS pairs the raw bytes).
    limit : int
        How many offending pairs to keep as examples.

    Returns
    -------
    SaturationReport
    """
    a = _u8("a_u8", a_u8)
    b = _s8("b_s8", b_s8)
    if isinstance(k_axis, bool) or not isinstance(k_axis, (int, np.integer)) \
            or not -a.ndim <= k_axis < max(a.ndim, 1):
        raise ConfigError(f"k_axis {k_axis!r} is out of range for a_u8 of shape {a.shape}")
    if a.ndim:
        a = np.moveaxis(a, k_axis, -1)
    limit = _check_limit(limit)
    exact = matmul_integer(a, b, a_zero_point, b_zero_point)
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    correction, per_output, total, found = _pair_scan(a2, b2, limit)
    # drop the unit axes numpy.matmul removes for 1-D operands
    drop = {len(correction.shape) - 2} if a.ndim == 1 else set()
    if b.ndim == 1:
        drop.add(len(correction.shape) - 1)
    if drop:
        correction = correction.squeeze(axis=tuple(drop))
        per_output = per_output.squeeze(axis=tuple(drop))
    engine = wrap(exact + correction, INT32)
    examples = tuple(
        SaturatedPair(tuple(i for axis, i in enumerate(index) if axis not in drop),
                      ((2 * j,), (2 * j + 1,)), a_pair, b_pair, pair_sum, kept)
        for index, j, a_pair, b_pair, pair_sum, kept in found)
    return SaturationReport(exact=exact, engine=engine, affected=engine != exact,
                            saturating=per_output > 0, saturated_pairs=total,
                            examples=examples)


def matmul_u8s8_avx2(a: np.ndarray, b: np.ndarray, a_zero_point: object = 0,
                     b_zero_point: object = 0) -> np.ndarray:
    """What MLAS's AVX2 u8 x s8 kernel returns for ``MatMulInteger(a, b, ...)``.

    Adjacent K pairs of raw products are saturated to int16, their sums accumulated in int32
    and the zero points applied exactly; see the module docstring for the sources.
    """
    return u8s8_saturation(a, b, a_zero_point=a_zero_point, b_zero_point=b_zero_point,
                           limit=0).engine


def _conv_pair_scan(x: np.ndarray, w: np.ndarray, x_zp: int, geometry, group: int, limit: int
                    ) -> tuple[np.ndarray, np.ndarray, int, list[SaturatedPair]]:
    """:func:`_pair_scan` of a grouped convolution lowered as ONNX Runtime lowers it.

    Per group, a channels-last im2col (K ordered by kernel tap, then channel; padding holds the
    raw ``x_zp``) times the reordered filter. Returns the correction and the per-output count
    in the layout ``(N, M, *output)``, the total count and up to ``limit`` examples.
    """
    cols = im2col(x, geometry, pad_value=x_zp)  # raw bytes: the engine sees the zero point
    n, channels = x.shape[:2]
    outputs = w.shape[0]
    cg, mg = channels // group, outputs // group
    taps = int(np.prod(geometry.kernel))
    positions = int(np.prod(geometry.output))
    tap_index = list(np.ndindex(*geometry.kernel))
    out_shape = (n, outputs) + tuple(geometry.output)
    correction = np.zeros(out_shape, dtype=np.int64)
    per_output = np.zeros(out_shape, dtype=np.int64)
    total = 0
    found: list[SaturatedPair] = []
    for g in range(group):
        # (N, Cg, *out, *k) -> (N*L, taps*Cg): kernel tap major, channel minor (NHWC im2col)
        field = cols[:, g * cg:(g + 1) * cg]
        field = np.moveaxis(field, 1, -1).reshape(n * positions, taps * cg)
        kernel = np.moveaxis(w[g * mg:(g + 1) * mg], 1, -1).reshape(mg, taps * cg).T
        corr, count, hits, pairs = _pair_scan(field, kernel, limit)
        shape = (n,) + tuple(geometry.output) + (mg,)
        correction[:, g * mg:(g + 1) * mg] = np.moveaxis(corr.reshape(shape), -1, 1)
        per_output[:, g * mg:(g + 1) * mg] = np.moveaxis(count.reshape(shape), -1, 1)
        total += hits
        for (row, col), j, a_pair, b_pair, pair_sum, kept in pairs:
            batch_n, pos = divmod(row, positions)
            out_pos = np.unravel_index(pos, geometry.output)
            output = (batch_n, g * mg + col) + tuple(int(v) for v in out_pos)
            where = []
            for kk in (2 * j, 2 * j + 1):  # (channel, *kernel tap); () for the zero padding
                if kk >= taps * cg:
                    where.append(())
                    continue
                t, c = divmod(kk, cg)
                where.append((g * cg + c,) + tuple(int(v) for v in tap_index[t]))
            found.append(SaturatedPair(output, (where[0], where[1]), a_pair, b_pair,
                                       pair_sum, kept))
    return correction, per_output, total, found


def u8s8_matmul_correction(a_u8: np.ndarray, b_s8: np.ndarray) -> np.ndarray | None:
    """What a ``vpmaddubsw`` engine adds to the exact ``a_u8 @ b_s8`` (M x K times K x N).

    ``None`` when no pair saturates (:func:`_pair_scan` skips the pairs that cannot), else the
    int64 (M x N) correction ``sum_j (sat16(s_j) - s_j)``, zero points not involved.
    """
    correction, _, total, _ = _pair_scan(_u8("a_u8", a_u8), _s8("b_s8", b_s8), 0)
    return correction if total else None


#: Per engine (:func:`qsim.quant.isa.check_engine`), whether its depthwise kernel is exact.
DEPTHWISE_EXACT = {"onnxruntime": True, "pytorch-fbgemm": False}


def _exact_depthwise(engine: object, channels: int, outputs: int, group: int) -> bool:
    """Whether ``engine`` runs this convolution in an exact depthwise kernel (one input and one
    output channel per group)."""
    return (DEPTHWISE_EXACT[check_engine(engine)]
            and channels // group == 1 and outputs // group == 1)


def u8s8_conv_correction(x_u8: np.ndarray, w_s8: np.ndarray, x_zero_point: int, geometry,
                         group: int, engine: str = "onnxruntime") -> np.ndarray | None:
    """What an AVX2 engine's u8 x s8 convolution adds to the exact accumulators ``(N, M, *output)``.

    ``engine="onnxruntime"`` (QLinearConv): ``None`` for depthwise convolutions, whose kernels
    widen to int16 and are exact. ``engine="pytorch-fbgemm"``: depthwise convolutions pair
    consecutive kernel taps of one channel (fbgemm's depthwise kernels), which is the same
    channels-last pairing with one channel per group. ``None`` when no pair saturates.
    """
    x, w = _u8("x_u8", x_u8), _s8("w_s8", w_s8)
    if _exact_depthwise(engine, x.shape[1], w.shape[0], group):
        return None
    correction, per_output, total, _ = _conv_pair_scan(x, w, int(x_zero_point), geometry, group, 0)
    return correction if total else None


def u8s8_conv_saturation(x_u8: np.ndarray, w_s8: np.ndarray, x_zero_point: object = 0,
                         w_zero_point: object = 0, *, strides: Sequence[int] | None = None,
                         pads: Sequence[int] | None = None,
                         dilations: Sequence[int] | None = None, group: int = 1,
                         auto_pad: str = "NOTSET", kernel_shape: Sequence[int] | None = None,
                         limit: int = 5, engine: str = "onnxruntime") -> SaturationReport:
    """The ``vpmaddubsw`` hazard of a u8 x s8 convolution: ONNX Runtime's QLinearConv or fbgemm's.

    The convolution is lowered as both engines do: per group, a channels-last im2col (K
    ordered by kernel tap, then channel; padding holds the raw ``x_zero_point``) times the
    reordered filter. Depthwise convolutions (one input and one output channel per group) run
    an exact int16-widening kernel in ONNX Runtime and are reported with ``path="depthwise"``;
    fbgemm's depthwise kernels pair consecutive kernel taps (``engine="pytorch-fbgemm"``).
    ONNX Runtime's ConvInteger is exact on every path (measured, onnxruntime 1.32 on AVX2).

    Parameters are those of :func:`qsim.quant.kernels.conv_integer`, plus ``limit`` (number of
    example pairs) and ``engine``. Positions and examples use the output layout ``(N, M, *output)``.
    """
    x = _u8("x_u8", x_u8)
    w = _s8("w_s8", w_s8)
    limit = _check_limit(limit)
    group = _conv_operands(x, w, group, kernel_shape)
    exact = conv_integer(x, w, x_zero_point, w_zero_point, strides=strides, pads=pads,
                         dilations=dilations, group=group, auto_pad=auto_pad)
    x_zp = int(_zero_point("x_zero_point", x_zero_point, "x", x).ravel()[0])
    geometry = conv_geometry(x.shape[2:], w.shape[2:], strides=strides, pads=pads,
                             dilations=dilations, auto_pad=auto_pad)
    if _exact_depthwise(engine, x.shape[1], w.shape[0], group):
        none = np.zeros(exact.shape, dtype=bool)
        return SaturationReport(exact=exact, engine=exact.copy(), affected=none,
                                saturating=none.copy(), saturated_pairs=0, examples=(),
                                path="depthwise")
    correction, per_output, total, found = _conv_pair_scan(x, w, x_zp, geometry, group, limit)
    found.sort(key=lambda p: (np.ravel_multi_index(p.output, exact.shape), p.k))
    engine = wrap(exact + correction, INT32)
    return SaturationReport(exact=exact, engine=engine, affected=engine != exact,
                            saturating=per_output > 0, saturated_pairs=total,
                            examples=tuple(found[:limit]))


def conv_u8s8_avx2(x: np.ndarray, w: np.ndarray, x_zero_point: object = 0,
                   w_zero_point: object = 0, **attributes: object) -> np.ndarray:
    """What ONNX Runtime's AVX2 u8 x s8 QLinearConv accumulates (see :func:`u8s8_conv_saturation`)."""
    return u8s8_conv_saturation(x, w, x_zero_point, w_zero_point, limit=0,
                                **attributes).engine  # type: ignore[arg-type]
