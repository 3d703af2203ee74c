"""The post-processing unit: bias, requantization, zero point and clamp for one accumulator word.

Every lane computes what :func:`qsim.program.requantize_lanes` defines, in
:func:`qsim.hw.ppu_stages` register stages. The lane parameters (bias, scale, and the
``qctl`` word with the right shift, zero point and clamp bounds) come straight from the
parameter memories' read ports, which hold one word for the whole of a REQUANT command, so
only the data is pipelined.

``fixed-point`` (2 stages)::

    1: v = wrap(acc + bias);  p = v * scale                       (a 32 x 31-bit multiplier)
    2: y = (p + 2**(n-1)) >> n;  out = clamp(sat(y) + zp, lo, hi)

``float32`` (3 stages), exactly ONNX Runtime's ``MlasRequantizeOutput``: with
``scale = 2**(e-150) * S`` (``S`` the 24-bit significand, implicit bit included)::

    1: v = wrap(acc + bias);  a = rne24(|v|)                     (int32 -> float32 rounding)
    2: q = a * S                                                 (exact, at most 58 bits)
    3: y = rne(rne24(q) / 2**(150-e));  out = clamp(sat(±y) + zp, lo, hi)

``rne24`` rounds to 24 significant bits, to nearest with ties to even: the float32 rounding
of the product, which the second rounding (to an integer) must see. ``sat`` limits
magnitudes to :data:`qsim.hw.PPU_SATURATE`, beyond which every zero point and bound clamps
the same way.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from qsim.config import AcceleratorConfig, RequantMode
from qsim.hw import PPU_SATURATE, ppu_stages
from qsim.program import _QCTL_FIELDS, QCTL_FORMAT
from rtl.checks import reject, require_config

__all__ = ["PostProcessor"]


def _qctl_field(word, name: str):
    for field_name, offset, width, signed_ in _QCTL_FIELDS:
        if field_name == name:
            bits = word[offset : offset + width]
            return bits.as_signed() if signed_ else bits
    raise KeyError(name)


def _round_shift_even(m: Module, value, width: int, shift, max_shift: int, name: str):
    """``value / 2**shift`` (unsigned ``value`` of ``width`` bits, ``0 <= shift <=
    max_shift``) rounded to nearest, ties to even."""
    kept = Signal(width, name=f"{name}_kept")
    rest = Signal(width, name=f"{name}_rest")
    half = Signal(max_shift + 1, name=f"{name}_half")
    m.d.comb += [
        kept.eq(value >> shift),
        rest.eq(value & ((Const(1, max_shift + 1) << shift) - 1)),
        half.eq((Const(1, max_shift + 1) << shift) >> 1),
    ]
    up = (shift != 0) & ((rest > half) | ((rest == half) & kept[0]))
    return kept + up


def _round_sig(m: Module, value, width: int, keep: int, name: str):
    """``value`` (unsigned, ``width`` bits) rounded to ``keep`` significant bits, ties to even.

    Returns a Signal of ``width + 1`` bits (the rounding may carry into a new top bit).
    """
    drop = Signal(range(max(width - keep, 0) + 1), name=f"{name}_drop")
    # Highest set bit at position keep - 1 + d means d bits are dropped.
    for d in range(1, width - keep + 1):
        with m.If(value[keep - 1 + d]):
            m.d.comb += drop.eq(d)
    out = Signal(width + 1, name=f"{name}_rounded")
    m.d.comb += out.eq(_round_shift_even(m, value, width, drop, width - keep, name) << drop)
    return out


class PostProcessor(wiring.Component):
    """``cols`` lanes of the post-processing datapath for ``config.requant``.

    Ports
    -----
    acc : In(ArrayLayout(signed(acc_bits), cols))
        Accumulator word (the read port's data).
    bias : In(ArrayLayout(signed(32), cols))
    scale : In(ArrayLayout(signed(32), cols))
        Q31 multipliers (fixed-point) or float32 bit patterns (float32).
    qctl : In(ArrayLayout(unsigned(33), cols))
        Right shift, zero point and clamp bounds (:data:`qsim.program.QCTL_FORMAT`).
    out : Out(ArrayLayout(unsigned(input_bits), cols))
        Low ``input_bits`` bits of each lane's result, ``stages`` cycles after ``acc``.
    """

    def __init__(self, config: AcceleratorConfig) -> None:
        self.config = require_config(self, config)
        if config.requant is RequantMode.NONE:
            reject(self, ValueError("a PostProcessor needs requant fixed-point or float32, not none"))
        self.stages = ppu_stages(config)
        cols = config.cols
        super().__init__({
            "acc": In(data.ArrayLayout(signed(config.acc_bits), cols)),
            "bias": In(data.ArrayLayout(signed(32), cols)),
            "scale": In(data.ArrayLayout(signed(32), cols)),
            "qctl": In(data.ArrayLayout(unsigned(QCTL_FORMAT.bits), cols)),
            "out": Out(data.ArrayLayout(unsigned(config.input_format.bits), cols)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        for lane in range(cfg.cols):
            if cfg.requant is RequantMode.FIXED_POINT:
                magnitude = self._fixed_point(m, lane)
            else:
                magnitude = self._float32(m, lane)
            qctl = self.qctl[lane]
            zp, lo, hi = (_qctl_field(qctl, f) for f in ("zero_point", "lo", "hi"))
            total = Signal(signed(12), name=f"l{lane}_total")
            m.d.comb += total.eq(magnitude + zp)
            clamped = Signal(signed(12), name=f"l{lane}_clamped")
            m.d.comb += clamped.eq(Mux(total > hi, hi, Mux(total < lo, lo, total)))
            m.d.sync += self.out[lane].eq(clamped[: cfg.input_format.bits])
        return m

    @staticmethod
    def _saturate(m: Module, value, name: str):
        sat = Signal(signed(11), name=name)
        m.d.comb += sat.eq(Mux(value > PPU_SATURATE, PPU_SATURATE,
                               Mux(value < -PPU_SATURATE, -PPU_SATURATE, value)))
        return sat

    def _biased(self, m: Module, lane: int):
        v = Signal(signed(self.config.acc_bits), name=f"l{lane}_v")
        m.d.comb += v.eq(self.acc[lane] + self.bias[lane])  # truncation: the adder wraps
        return v

    def _fixed_point(self, m: Module, lane: int):
        v = self._biased(m, lane)
        scale = self.scale[lane].as_unsigned()[:31]  # validated non-negative
        product = Signal(signed(self.config.acc_bits + 32), name=f"l{lane}_product")
        m.d.sync += product.eq(v * scale)
        n = _qctl_field(self.qctl[lane], "shift")
        rounding = Signal(63, name=f"l{lane}_half")
        m.d.comb += rounding.eq((Const(1, 64) << n) >> 1)
        shifted = Signal(signed(self.config.acc_bits + 33), name=f"l{lane}_shifted")
        m.d.comb += shifted.eq((product + rounding) >> n)
        return self._saturate(m, shifted, f"l{lane}_sat")

    def _float32(self, m: Module, lane: int):
        v = self._biased(m, lane)
        # stage 1: sign and |v| rounded to a float32 significand
        sign1 = Signal(name=f"l{lane}_sign1")
        magnitude = Signal(33, name=f"l{lane}_abs")
        m.d.comb += magnitude.eq(Mux(v < 0, -v, v))
        a_rounded = _round_sig(m, magnitude, 33, 24, f"l{lane}_a")
        a1 = Signal(34, name=f"l{lane}_a1")
        m.d.sync += [sign1.eq(v < 0), a1.eq(a_rounded)]
        # stage 2: exact product with the scale's significand
        bits = self.scale[lane].as_unsigned()
        exponent = bits[23:31]
        significand = Cat(bits[:23], exponent != 0)
        sign2 = Signal(name=f"l{lane}_sign2")
        q2 = Signal(58, name=f"l{lane}_q")
        m.d.sync += [sign2.eq(sign1), q2.eq(a1 * significand)]
        # stage 3: float32 rounding, then rounding to an integer by 2**(150 - e)
        q_rounded = _round_sig(m, q2, 58, 24, f"l{lane}_p")
        e = Mux(exponent == 0, 1, exponent)
        shift = Signal(signed(10), name=f"l{lane}_sh")
        m.d.comb += shift.eq(150 - e)
        integer = _round_shift_even(m, q_rounded, 59, shift[:6], 59, f"l{lane}_y")
        result = Signal(unsigned(11), name=f"l{lane}_mag")
        with m.If(q_rounded == 0):
            m.d.comb += result.eq(0)
        with m.Elif(shift <= 0):
            m.d.comb += result.eq(PPU_SATURATE)
        with m.Elif(shift >= 60):
            m.d.comb += result.eq(0)
        with m.Else():
            m.d.comb += result.eq(Mux(integer > PPU_SATURATE, PPU_SATURATE, integer))
        signed_result = Signal(signed(12), name=f"l{lane}_y")
        m.d.comb += signed_result.eq(Mux(sign2, -result, result))
        return signed_result
