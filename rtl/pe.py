"""One processing element of the weight-stationary array."""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from rtl.checks import reject

__all__ = ["ProcessingElement", "OutputStationaryPE", "pe_shapes", "product_bits"]


class ProcessingElement(wiring.Component):
    """Multiply-accumulate cell with a double-buffered stationary weight.

    Each cycle the PE multiplies the activation arriving from the left by its current weight
    and registers the product (:func:`product_bits` wide); the product registered in the
    cycle before is added to the partial sum arriving from above and the sum registered for
    the PE below. The multiplier's operands are registers and the multiplier and the adder
    are in different cycles (on an FPGA the multiplier is a DSP block with slow routing to
    the fabric); every column sum leaves the array one cycle later than without the product
    register (:func:`qsim.hw.pe_product_stages`).

    The current weight is a register too: each cycle it takes the buffer that ``sel_in``
    names, as that buffer will read after this cycle's write (``sel_in`` selects the weight
    for the activation of the *next* cycle, so it runs one cycle ahead of ``a_in``). The
    activation and the selector are registered for the PE to the right. While one buffer is
    in use, the other can be written through ``w_data`` and ``w_we``; the selector travels
    with the activations, so the switch to a new weight tile happens in each PE exactly when
    the first activation of that tile reaches it.

    Ports
    -----
    a_in : In(signed(input_bits))
        Activation from the left neighbour (or the input skew for column 0).
    sel_in : In(1)
        Weight buffer used for the next cycle's ``a_in``.
    psum_in : In(signed(acc_bits))
        Partial sum from the PE above (zero for row 0).
    w_data : In(signed(weight_bits))
        Weight to store.
    w_we : In(2)
        Write enable of buffer 0 and buffer 1; the write takes effect at the next edge.
    a_out, sel_out : Out
        ``a_in`` and ``sel_in`` delayed by 1 cycle.
    psum_out : Out(signed(acc_bits))
        ``psum_in`` plus the product of the previous cycle's ``a_in * w[sel_in]``, delayed by
        1 cycle, wrapped to ``acc_bits``.
    """

    def __init__(self, input_bits: int, weight_bits: int, acc_bits: int, products: int = 1) -> None:
        check_pe_widths(self, input_bits, weight_bits, acc_bits, products)
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
        # the weight of the next cycle: the selected buffer after this cycle's write
        weight = Signal(w_shape)
        m.d.sync += weight.eq(Mux(self.sel_in, Mux(self.w_we[1], self.w_data, w1),
                                  Mux(self.w_we[0], self.w_data, w0)))
        if self.products == 1:
            pairs = [(self.a_in, weight)]
        else:
            pairs = [(self.a_in[j], weight[j]) for j in range(self.products)]
        product = Signal(signed(product_bits(self.input_bits, self.weight_bits, self.products,
                                             self.acc_bits)))
        m.d.sync += [
            self.a_out.eq(self.a_in),
            self.sel_out.eq(self.sel_in),
            product.eq(sum(a * w for a, w in pairs)),
            # Truncation to acc_bits is the two's-complement wrap of the hardware adder.
            self.psum_out.eq(self.psum_in + product),
        ]
        return m


def product_bits(input_bits: int, weight_bits: int, products: int, acc_bits: int) -> int:
    """Width of a PE's registered product: one signed product, or the sum of ``products``,
    at most ``acc_bits`` (the adder wraps to ``acc_bits``, so higher bits never matter)."""
    return min(input_bits + weight_bits + (products - 1).bit_length(), acc_bits)


def check_pe_widths(component, input_bits: int, weight_bits: int, acc_bits: int,
                    products: int) -> None:
    """Reject ``component`` unless the widths are ints of at least 2 (``products`` at least 1)
    and the accumulator holds one product."""
    for name, value in (("input_bits", input_bits), ("weight_bits", weight_bits),
                        ("acc_bits", acc_bits), ("products", products)):
        low = 1 if name == "products" else 2
        if not isinstance(value, int) or value < low:
            reject(component, TypeError(f"{name} must be an integer of at least {low}, not {value!r}"))
    if acc_bits < input_bits + weight_bits:
        reject(component, ValueError(
            f"acc_bits must be at least input_bits + weight_bits = "
            f"{input_bits + weight_bits}, not {acc_bits}"
        ))


def pe_shapes(input_bits: int, weight_bits: int, products: int):
    """Shapes of a PE's activation and weight ports: one signed value each, or ``products``
    of them (``ArrayLayout``) when the PE multiplies several pairs per cycle."""
    if products == 1:
        return signed(input_bits), signed(weight_bits)
    return (data.ArrayLayout(signed(input_bits), products),
            data.ArrayLayout(signed(weight_bits), products))


class OutputStationaryPE(wiring.Component):
    """Multiply-accumulate cell of the output-stationary array: the output stays, operands move.

    Each cycle the PE multiplies the activation arriving from the left by the weight arriving
    from above and adds the product to accumulator ``x[sel_in]``; both operands, the
    selector and the ``last`` flag are registered for the neighbours (right and below). Two
    accumulators let one tile's results wait for the drain while the next tile accumulates.

    The drain register ``d`` shifts up the column (``d <= d_in``, from the PE below) except
    in a cycle with ``load`` set, when it takes accumulator ``x[load_sel]`` and that
    accumulator is cleared (the load has priority over a MAC into it, which only happens
    with a zero product). The array sets ``load`` for a whole column at once, one cycle after
    the last reduction step of a tile has reached the column's bottom PE.

    Ports
    -----
    a_in, sel_in, last_in : In
        Activation, accumulator selector and last-step flag from the left.
    w_in : In
        Weight from above.
    d_in : In(signed(acc_bits))
        Drain register of the PE below (zero for the bottom row).
    load, load_sel : In(1)
        Copy accumulator ``load_sel`` into the drain register and clear it.
    a_out, sel_out, last_out, w_out : Out
        The inputs delayed by 1 cycle.
    d_out : Out(signed(acc_bits))
        The drain register.
    """

    def __init__(self, input_bits: int, weight_bits: int, acc_bits: int, products: int = 1) -> None:
        check_pe_widths(self, input_bits, weight_bits, acc_bits, products)
        self.input_bits, self.weight_bits = input_bits, weight_bits
        self.acc_bits, self.products = acc_bits, products
        a_shape, w_shape = pe_shapes(input_bits, weight_bits, products)
        super().__init__({
            "a_in": In(a_shape),
            "sel_in": In(1),
            "last_in": In(1),
            "w_in": In(w_shape),
            "d_in": In(signed(acc_bits)),
            "load": In(1),
            "load_sel": In(1),
            "a_out": Out(a_shape),
            "sel_out": Out(1),
            "last_out": Out(1),
            "w_out": Out(w_shape),
            "d_out": Out(signed(acc_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        x = [Signal(signed(self.acc_bits), name=f"x{b}") for b in range(2)]
        if self.products == 1:
            product = self.a_in * self.w_in
        else:
            product = sum(self.a_in[j] * self.w_in[j] for j in range(self.products))
        for b in range(2):
            with m.If(self.load & (self.load_sel == b)):
                m.d.sync += x[b].eq(0)
            with m.Elif(self.sel_in == b):
                m.d.sync += x[b].eq(x[b] + product)  # wraps to acc_bits
        with m.If(self.load):
            m.d.sync += self.d_out.eq(Mux(self.load_sel, x[1], x[0]))
        with m.Else():
            m.d.sync += self.d_out.eq(self.d_in)
        m.d.sync += [
            self.a_out.eq(self.a_in),
            self.sel_out.eq(self.sel_in),
            self.last_out.eq(self.last_in),
            self.w_out.eq(self.w_in),
        ]
        return m
