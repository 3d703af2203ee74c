"""Record ONNX Runtime's and fbgemm's outputs on this machine's instruction path.

    python tests/golden/record_isa.py [--out tests/golden/isa_<path>.npz]

Needs onnx, onnxruntime and (except on ``sse``, where fbgemm does not run) torch with fbgemm
in the running environment; the test suite does not run this script, it reads what the
script wrote. Run on an x86 CPU whose path (``qsim.quant.isa.detect_isa()``) is the one to
record, or under ``qemu-x86_64 -cpu NAME`` (Debian's qemu-user), which presents that CPU to
both the engines and the detector: the file is named after the path. Recorded so far:
``isa_avx2.npz`` (AMD EPYC, natively) and ``isa_sse.npz`` (``qemu-x86_64 -cpu Nehalem``). The golden file holds the operands, the quantized models as ONNX bytes, the engines'
outputs and where they came from (``meta``), so that
``tests/quant/test_isa_golden.py`` checks qsim's emulation of that path on any machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from qsim.nn.bench_infer import ort_run, ort_session, quantize  # noqa: E402
from qsim.quant.isa import detect_isa  # noqa: E402
from tests.golden.cases import (ADDS, CONVS, MATMULS, SIGMOIDS, add_grid,  # noqa: E402
                                cnn_inputs, conv_operands, float_cnn, logistic_inputs,
                                matmul_operands, run_single_node)


def record_ort(out: dict[str, np.ndarray]) -> None:
    from onnx import TensorProto, helper

    vi = helper.make_tensor_value_info
    for i, case in enumerate(CONVS):
        o = conv_operands(case, seed=sum(case))
        _, outputs, _, stride, pad, dilation, group = case
        out[f"ort/conv{i}"] = run_single_node(
            "QLinearConv", [vi("x", TensorProto.UINT8, o["x"].shape)],
            {"x_scale": o["x_scale"], "x_zero_point": o["x_zero_point"], "w": o["w"], "w_scale": o["w_scale"],
             "w_zero_point": np.zeros(outputs, np.int8), "y_scale": o["y_scale"],
             "y_zero_point": o["y_zero_point"]},
            {"x": o["x"]}, TensorProto.UINT8, strides=[stride] * 2, pads=[pad] * 4,
            dilations=[dilation] * 2, group=group)
    for i, case in enumerate(MATMULS):
        o = matmul_operands(case, seed=sum(case))
        out[f"ort/matmul_integer{i}"] = run_single_node(
            "MatMulInteger", [vi("a", TensorProto.UINT8, o["a"].shape)],
            {"b": o["b"], "a_zero_point": o["a_zero_point"]}, {"a": o["a"]}, TensorProto.INT32)
        out[f"ort/qgemm{i}"] = run_single_node(
            "QGemm", [vi("a", TensorProto.UINT8, o["a"].shape)],
            {"a_scale": o["a_scale"], "a_zero_point": o["a_zero_point"], "b": o["b"], "b_scale": o["b_scale"],
             "b_zero_point": np.zeros(case[2], np.int8), "c": np.zeros(case[2], np.int32),
             "y_scale": o["y_scale"], "y_zero_point": o["y_zero_point"]},
            {"a": o["a"]}, TensorProto.UINT8, domain="com.microsoft")
    a, b = add_grid()
    for i, (sa, za, sb, zb, sc, zc) in enumerate(ADDS):
        params = [("a_scale", np.float32(sa)), ("a_zero_point", np.uint8(za))]
        for shape_name, (left, right) in (("broadcast", (a, b)),
                                          ("full", (np.broadcast_to(a, (256, 256)).copy(),
                                                    np.broadcast_to(b, (256, 256)).copy()))):
            # node inputs: A, A_scale, A_zp, B, B_scale, B_zp, C_scale, C_zp (A and B graph inputs)
            from onnx import helper as h, numpy_helper as nh
            names = ["a", "a_scale", "a_zero_point", "b", "b_scale", "b_zero_point", "c_scale", "c_zero_point"]
            inits = dict(params + [("b_scale", np.float32(sb)), ("b_zero_point", np.uint8(zb)),
                                   ("c_scale", np.float32(sc)), ("c_zero_point", np.uint8(zc))])
            graph = h.make_graph([h.make_node("QLinearAdd", names, ["y"], domain="com.microsoft")], "add",
                                 [vi("a", TensorProto.UINT8, left.shape), vi("b", TensorProto.UINT8, right.shape)],
                                 [vi("y", TensorProto.UINT8, None)],
                                 initializer=[nh.from_array(np.asarray(v), k) for k, v in inits.items()])
            model = h.make_model(graph, opset_imports=[h.make_opsetid("", 21), h.make_opsetid("com.microsoft", 1)])
            model.ir_version = 10
            out[f"ort/add{i}_{shape_name}"] = ort_run(ort_session(model, optimize=False),
                                                     {"a": left, "b": right})["y"]
    codes = np.arange(-128, 128).astype(np.int8)
    for i, (sx, zx, sy, zy) in enumerate(SIGMOIDS):
        out[f"ort/sigmoid{i}"] = run_single_node(
            "QLinearSigmoid", [vi("x", TensorProto.INT8, codes.shape)],
            {"x_scale": np.float32(sx), "x_zero_point": np.int8(zx), "y_scale": np.float32(sy),
             "y_zero_point": np.int8(zy)}, {"x": codes}, TensorProto.INT8, domain="com.microsoft")
    values = logistic_inputs()
    out["ort/logistic"] = run_single_node("Sigmoid", [vi("x", TensorProto.FLOAT, values.shape)], {},
                                          {"x": values}, TensorProto.FLOAT)
    x = cnn_inputs(16, seed=2)
    for fmt in ("QOperator", "QDQ"):
        model = quantize(float_cnn(), cnn_inputs(64, seed=1), quant_format=fmt, activation="uint8",
                         weight="int8", per_channel=True, batch=32)
        out[f"ort/cnn_{fmt}/model"] = np.frombuffer(model.SerializeToString(), np.uint8)
        out[f"ort/cnn_{fmt}/y"] = ort_run(ort_session(model), {"x": x})["y"]
    out["ort/cnn_x"] = x


def record_fbgemm(out: dict[str, np.ndarray]) -> None:
    import torch

    torch.backends.quantized.engine = "fbgemm"

    def weights(w, scales):
        return torch._make_per_channel_quantized_tensor(
            torch.from_numpy(w), torch.from_numpy(scales.astype(np.float64)),
            torch.zeros(len(scales), dtype=torch.long), 0)

    def acts(x, scale, zero_point):
        return torch._make_per_tensor_quantized_tensor(torch.from_numpy(x), float(scale), int(zero_point))

    for i, case in enumerate(MATMULS):
        o = matmul_operands(case, seed=sum(case))
        packed = torch.ops.quantized.linear_prepack(weights(np.ascontiguousarray(o["b"].T), o["b_scale"]), None)
        y = torch.ops.quantized.linear(acts(o["a"], o["a_scale"], o["a_zero_point"]), packed,
                                       float(o["y_scale"]), int(o["y_zero_point"]))
        out[f"fbgemm/linear{i}"] = y.int_repr().numpy()
    for i, case in enumerate(CONVS):
        o = conv_operands(case, seed=sum(case))
        _, _, _, stride, pad, dilation, group = case
        packed = torch.ops.quantized.conv2d_prepack(weights(o["w"], o["w_scale"]), None, [stride] * 2,
                                                    [pad] * 2, [dilation] * 2, group)
        y = torch.ops.quantized.conv2d(acts(o["x"], o["x_scale"], o["x_zero_point"]), packed,
                                       float(o["y_scale"]), int(o["y_zero_point"]))
        out[f"fbgemm/conv{i}"] = y.int_repr().numpy()


def main() -> int:
    import onnxruntime

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    isa = detect_isa()
    path = args.out or Path(__file__).with_name(f"isa_{isa.replace('-', '_')}.npz")
    out: dict[str, np.ndarray] = {}
    record_ort(out)
    meta = {"isa": isa, "onnxruntime": onnxruntime.__version__}
    if isa != "sse":  # fbgemm needs AVX2
        import torch

        record_fbgemm(out)
        meta |= {"torch": torch.__version__, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    meta["cpu"] = cpu  # under qemu-x86_64 -cpu NAME: the host's name; isa is the emulated path
    out["meta"] = np.array(json.dumps(meta, sort_keys=True))
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({path.stat().st_size} bytes): {meta}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
