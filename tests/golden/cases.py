"""Models and operands that tell the x86 instruction paths of ONNX Runtime and fbgemm apart.

Shared by the parity tests, which run them against the engines live on the machine, and by
``record_isa.py``, which records the engines' outputs on one machine into golden files so
that the emulation of another instruction path is checked on any machine.

Every case uses full-range uint8 activations and int8 weights, where a kernel that adds pairs
of u8 x s8 products in saturating int16 (``vpmaddubsw``, x86 without VNNI) differs from
exact int32 accumulation in many outputs.
"""

from __future__ import annotations

import numpy as np

#: (channels, outputs, kernel, stride, pad, dilation, group) of the single-convolution cases:
#: plain, strided, 1x1, dilated, grouped, depthwise, depthwise with channel multiplier 2.
CONVS = [(8, 16, 3, 1, 1, 1, 1), (3, 8, 3, 2, 1, 1, 1), (16, 8, 1, 1, 0, 1, 1), (6, 6, 3, 1, 2, 2, 1),
         (8, 8, 3, 1, 1, 1, 2), (8, 8, 3, 1, 1, 1, 8), (8, 16, 3, 1, 1, 1, 8), (5, 5, 5, 1, 2, 1, 5)]

#: (M, K, N) of the matrix-product cases (odd K pairs its last element with a zero; M = 1
#: takes MLAS's GEMV kernel).
MATMULS = [(16, 64, 24), (7, 33, 5), (1, 100, 8)]


def conv_operands(case: tuple[int, ...], seed: int) -> dict[str, np.ndarray]:
    """Full-range operands of one :data:`CONVS` case (scales chosen so outputs stay in range)."""
    channels, outputs, kernel, _, _, _, group = case
    rng = np.random.default_rng(seed)
    return {"x": rng.integers(0, 256, (2, channels, 9, 9)).astype(np.uint8),
            "w": rng.integers(-128, 128, (outputs, channels // group, kernel, kernel)).astype(np.int8),
            "w_scale": rng.uniform(0.002, 0.004, outputs).astype(np.float32),
            "x_scale": np.float32(0.02), "x_zero_point": np.uint8(128),
            "y_scale": np.float32(0.9), "y_zero_point": np.uint8(100)}


def matmul_operands(case: tuple[int, int, int], seed: int) -> dict[str, np.ndarray]:
    m, k, n = case
    rng = np.random.default_rng(seed)
    return {"a": rng.integers(0, 256, (m, k)).astype(np.uint8),
            "b": rng.integers(-128, 128, (k, n)).astype(np.int8),
            "b_scale": rng.uniform(0.005, 0.01, n).astype(np.float32),
            "a_scale": np.float32(0.02), "a_zero_point": np.uint8(128),
            "y_scale": np.float32(0.8), "y_zero_point": np.uint8(100)}


def float_cnn(seed: int = 7):
    """A float CNN with full-range uint8 activations once quantized: conv, depthwise conv,
    strided conv, Gemm. Input ``x`` float32 [N, 4, 8, 8] in [0, 1); output ``y`` [N, 10]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int, scale: float = 0.3):
        return numpy_helper.from_array(rng.normal(0, scale, shape).astype(np.float32), name)

    node = helper.make_node
    nodes = [node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), node("Relu", ["c1"], ["r1"]),
             node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=8),
             node("Relu", ["c2"], ["r2"]),
             node("Conv", ["r2", "w3", "b3"], ["c3"], pads=[1, 1, 1, 1], strides=[2, 2]),
             node("Relu", ["c3"], ["r3"]), node("Flatten", ["r3"], ["f"]),
             node("Gemm", ["f", "w4", "b4"], ["y"], transB=1)]
    inits = [init("w1", 8, 4, 3, 3), init("b1", 8, scale=0.1), init("w2", 8, 1, 3, 3),
             init("b2", 8, scale=0.1), init("w3", 16, 8, 3, 3, scale=0.15), init("b3", 16, scale=0.1),
             init("w4", 10, 256, scale=0.05), init("b4", 10, scale=0.1)]
    graph = helper.make_graph(nodes, "fullrange_cnn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def cnn_inputs(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 4, 8, 8), dtype=np.float32)


def run_single_node(op: str, inputs, initializers: dict, feeds: dict, out_type: int, domain: str = "",
                    **attributes):
    """Run one node in ONNX Runtime, graph optimizations off (the node runs as written).

    Node inputs are the graph ``inputs`` (value infos) followed by the ``initializers``."""
    from onnx import helper, numpy_helper

    from qsim.nn.bench_infer import ort_run, ort_session

    names = [value.name for value in inputs] + list(initializers)
    graph = helper.make_graph([helper.make_node(op, names, ["y"], domain=domain, **attributes)], "op",
                              inputs, [helper.make_tensor_value_info("y", out_type, None)],
                              initializer=[numpy_helper.from_array(np.asarray(v), k)
                                           for k, v in initializers.items()])
    opsets = [helper.make_opsetid("", 21)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    return ort_run(ort_session(model, optimize=False), feeds)["y"]


#: (a_scale, a_zp, b_scale, b_zp, c_scale, c_zp) of the QLinearAdd cases: two parameter sets
#: found by search where the FMA kernel's roundings show, and a plain one.
ADDS = [(1.7985641956329346, 221, 0.20739217102527618, 14, 0.027972949668765068, 66),
        (0.5899961590766907, 215, 0.06468502432107925, 101, 0.4226696491241455, 211),
        (0.02, 128, 0.03, 120, 0.04, 130)]

#: (x_scale, x_zp, y_scale, y_zp) of the QLinearSigmoid cases (int8 codes).
SIGMOIDS = [(0.09273193776607513, 114, 1.3130731701949117e-07, -128), (0.05, 0, 1 / 256, -128),
            (0.3, -20, 0.004, -100)]


def add_grid() -> tuple[np.ndarray, np.ndarray]:
    """Every uint8 pair: a (256, 1) column and a (1, 256) row (ORT's input0-scalar loop)."""
    codes = np.arange(256, dtype=np.uint8)
    return codes.reshape(256, 1), codes.reshape(1, 256)


def logistic_inputs() -> np.ndarray:
    return np.concatenate([np.linspace(-20, 20, 20_001), [-18.0, 18.0, 0.0, -1e-8]]).astype(np.float32)
