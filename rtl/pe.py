"""One processing element of the weight-stationary array."""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from rtl.checks import reject

__all__ = ["ProcessingElement", "pe_shapes"]


class ProcessingElement(wiring.Component):
    """Multiply-accumulate cell with a double-buffered stationary weight.

    Each cycle the PE multiplies the activation arriving from the left by the weight held in
    the buffer that ``sel_in`` names, adds the partial sum arriving from above, and registers
    the result for the PE below. The activation and its buffer selector are registered for the
    PE to the right. While one buffer is in use, the other can be written through ``w_data``
    and ``w_we``; the selector travels with the activations, so the switch to a new weight tile
    happens in each PE exactly when the first activation of that tile reaches it.

    Ports
    -----
    a_in : In(signed(input_bits))
        Activation from the left neighbour (or the input skew for column 0).
    sel_in : In(1)
        Weight buffer used for ``a_in``.
    psum_in : In(signed(acc_bits))
        Partial sum from the PE above (zero for row 0).
    w_data : In(signed(weight_bits))
        Weight to store.
    w_we : In(2)
        Write enable of buffer 0 and buffer 1; the write takes effect at the next edge.
    a_out, sel_out : Out
        ``a_in`` and ``sel_in`` delayed by 1 cycle.
    psum_out : Out(signed(acc_bits))
        ``psum_in + a_in * w[sel_in]`` delayed by 1 cycle, wrapped to ``acc_bits``.
    """

    def __init__(self, input_bits: int, weight_bits: int, acc_bits: int, products: int = 1) -> None:
        for name, value in (("input_bits", input_bits), ("weight_bits", weight_bits),
                            ("acc_bits", acc_bits), ("products", products)):
            low = 1 if name == "products" else 2
            if not isinstance(value, int) or value < low:
                reject(self, TypeError(f"{name} must be an integer of at least {low}, not {value!r}"))
        if acc_bits < input_bits + weight_bits:
            reject(self, ValueError(
                f"acc_bits must be at least input_bits + weight_bits = "
                f"{input_bits + weight_bits}, not {acc_bits}"
            ))
        self.input_bits = input_bits
        self.weight_bits = weight_bits
        self.acc_bits = acc_bits
        self.products = products
        a_shape, w_shape = pe_shapes(input_bits, weight_bits, products)
        super().__init__({
            "a_in": In(a_shape),
            "sel_in": In(1),
            "psum_in": In(signed(acc_bits)),
            "w_data": In(w_shape),
            "w_we": In(2),
            "a_out": Out(a_shape),
            "sel_out": Out(1),
            "psum_out": Out(signed(acc_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        _, w_shape = pe_shapes(self.input_bits, self.weight_bits, self.products)
        w0 = Signal(w_shape)
        w1 = Signal(w_shape)
        with m.If(self.w_we[0]):
            m.d.sync += w0.eq(self.w_data)
        with m.If(self.w_we[1]):
            m.d.sync += w1.eq(self.w_data)
        if self.products == 1:
            pairs = [(self.a_in, Mux(self.sel_in, w1, w0))]
        else:
            pairs = [(self.a_in[j], Mux(self.sel_in, w1[j], w0[j])) for j in range(self.products)]
        m.d.sync += [
            self.a_out.eq(self.a_in),
            self.sel_out.eq(self.sel_in),
            # Truncation to acc_bits is the two's-complement wrap of the hardware adder.
            self.psum_out.eq(self.psum_in + sum(a * w for a, w in pairs)),
        ]
        return m


def pe_shapes(input_bits: int, weight_bits: int, products: int):
    """Shapes of a PE's activation and weight ports: one signed value each, or ``products``
    of them (``ArrayLayout``) when the PE multiplies several pairs per cycle."""
    if products == 1:
        return signed(input_bits), signed(weight_bits)
    return (data.ArrayLayout(signed(input_bits), products),
            data.ArrayLayout(signed(weight_bits), products))
