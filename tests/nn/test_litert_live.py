"""qsim's ``litert*`` semantics against the real LiteRT interpreter, live, on this machine.

The goldens of ``tests/golden/litert.npz`` pin LiteRT's outputs on the machine that recorded
them; this test builds fresh seeded int8 models (``tests/nn/tflite_models.py``: FC, conv,
depthwise with 1, 3, 6, 8 and 13 input channels and multipliers 1, 2, 5 and 9, equal-shape adds
of 594 to 18,432 elements (ranks 4, 3 and 1; with and without a remainder of 16), a
broadcasting add, mul, both pools, pad, concat, softmax, mean, quantize/requantize/dequantize
and small networks with a reshape as an output; every multiplier next to, or at, a power of
two), runs them through ``ai-edge-litert`` in the three interpreter configurations qsim names,
and runs ``qsim infer`` (the CLI, ``qsim.cli.main``) on the same files. Every output must be
equal, value for value; where qsim refuses a model under ``litert-optimized`` (a quantized mul,
broadcasting add, mean, quantize, requantize or dequantize) the exact refusal message is
checked instead. Nothing is pinned to this CPU: both sides run here, whatever its instruction
set (XNNPACK and the optimized kernels pick their code paths from it).
"""

from __future__ import annotations

import numpy as np
import pytest

from qsim.cli import main
from qsim.nn.engine import first_not_exact_under_litert_optimized, run
from qsim.nn.tflite_import import load_tflite
from tests.nn import tflite_models as T

interpreter = pytest.importorskip("ai_edge_litert.interpreter")

MODES = ("litert", "litert-optimized", "litert-reference")
REFUSAL = ("is not modelled exactly under litert-optimized (LiteRT's builtin optimized quantize, "
           "requantize, dequantize, mean, mul, broadcasting add and non-int8 add and depthwise "
           "kernels round differently; measured against LiteRT 2.3); use litert or litert-reference")


def live_cases(seed: int = 7001) -> dict:
    """Small seeded models (a few thousand outputs each), multipliers next to powers of two."""
    rng = np.random.default_rng(seed)
    cases = {}
    for i, (per_channel, wmax) in enumerate(((False, 3), (True, 15), (True, 127))):
        n_in, n_out = int(rng.integers(4, 40)), int(rng.integers(8, 24))
        cases[f"fc_{i}"] = T.fully_connected(
            rng, batch=64, n_in=n_in, n_out=n_out, per_channel=per_channel, wmax=wmax,
            act=("none", "relu", "relu6")[i],
            scales=T._tie_scales(rng, n_in, wmax, n_out if per_channel else None))
    for i, (cin, kernel, padding) in enumerate(((3, (3, 3), "same"), (5, (1, 1), "valid"),
                                                (2, (5, 3), "same"))):
        cout, wmax = int(rng.integers(4, 12)), (1, 15, 127)[i]
        cases[f"conv_{i}"] = T.conv2d(
            rng, batch=2, hw=(9, 8), cin=cin, cout=cout, kernel=kernel, stride=(1 + i % 2, 1),
            padding=padding, act=("none", "relu", "relu_n1_to_1")[i], wmax=wmax,
            scales=T._tie_scales(rng, kernel[0] * kernel[1] * cin, wmax, cout))
    # depthwise: channel counts below, at and above the optimized kernel's 8-channel blocks
    for i, (cin, mult) in enumerate(((3, 1), (8, 1), (13, 1), (4, 2))):
        wmax = (3, 127, 15, 127)[i]
        cases[f"dw_{i}"] = T.depthwise(
            rng, batch=2, hw=(9, 8), cin=cin, multiplier=mult, stride=(1, 1 + i % 2),
            padding=("same", "valid")[i % 2], act=("none", "relu6", "relu", "none")[i], wmax=wmax,
            scales=T._tie_scales(rng, 9, wmax, cin * mult))
    for i in range(2):
        sa = T._scale(rng, -6, -2)
        sb = T._near(rng, sa * 2.0 ** int(rng.integers(-1, 2)))
        sy = T._near(rng, max(sa, sb) * 2.0 ** int(rng.integers(0, 3)))
        cases[f"add_{i}"] = T.binary(rng, T.Op.ADD, shape_a=(2, 8, 8, 8), scales=(sa, sb, sy),
                                     act=("none", "relu")[i])
    cases["mul"] = T.binary(rng, T.Op.MUL, shape_a=(2, 8, 8, 8), act="relu6")
    for i in range(2):
        cases[f"avgpool_{i}"] = T.pool(rng, T.Op.AVERAGE_POOL_2D, batch=2, hw=(12, 11), c=(3, 9)[i],
                                       kernel=((2, 2), (3, 2))[i], stride=((2, 2), (2, 1))[i],
                                       padding=("same", "valid")[i], act=("none", "relu")[i])
        cases[f"maxpool_{i}"] = T.pool(rng, T.Op.MAX_POOL_2D, batch=2, hw=(12, 11), c=(8, 5)[i],
                                       kernel=((3, 3), (2, 3))[i], stride=((1, 1), (2, 2))[i],
                                       padding=("valid", "same")[i], act=("relu", "none")[i])
    cases["pad"] = T.pad(rng)
    cases["concat"] = T.concat(rng, same=True)
    cases["softmax"] = T.softmax(rng, shape=(8, 10))
    cases["mean"] = T.mean(rng, keep_dims=True)
    cases["quantize"] = T.quantize(rng)
    cases["requantize"] = T.requantize_op(rng)
    cases["dequantize"] = T.dequantize(rng)
    cases["net"] = T.near_tie_net(rng, batch=2, hw=(8, 8))
    cases["net_dw"] = T.near_tie_net(rng, batch=2, hw=(8, 8), depthwise_layer=True)
    cases["small_cnn"] = T.small_cnn(rng)
    big = np.random.default_rng(seed + 3)  # larger tensors, drawn after the cases above
    # depthwise with one input channel: one group in the IR, LiteRT's depthwise kernel (its
    # reference rounding below 8 output channels, the vector rounding in blocks of 8)
    # (multipliers exactly 2**-k on the first and last: negative ties of the final rounding)
    for i, (mult, wmax) in enumerate(((2, 7), (5, 3), (9, 15))):
        k = T._tie_shift(9, wmax)
        exact = (2.0 ** -5, [2.0 ** -7] * mult, 2.0 ** (k - 12))
        cases[f"dw_1ch_{i}"] = T.depthwise(
            big, batch=4, hw=(24, 23), cin=1, multiplier=mult, stride=(1, 1 + i % 2),
            padding=("same", "valid")[i % 2], act=("none", "relu6", "none")[i], wmax=wmax,
            scales=T._tie_scales(big, 9, wmax, mult) if i == 1 else exact)
    # depthwise: 3, 8 and 13 channels and a multiplier of 2, near-tie scales
    for i, (cin, mult) in enumerate(((3, 1), (8, 1), (13, 1), (6, 2))):
        wmax = (1, 3, 15, 127)[i]
        cases[f"dw_big_{i}"] = T.depthwise(
            big, batch=4, hw=(20, 19), cin=cin, multiplier=mult, stride=(1 + i % 2, 1),
            padding=("valid", "same")[i % 2], act=("relu6", "none", "none", "relu_n1_to_1")[i], wmax=wmax,
            scales=T._tie_scales(big, 9, wmax, cin * mult))
    # equal-shape adds: element counts with and without a remainder of 16 (in NHWC order), ranks
    # 4, 3 and 1, an operand extended with a leading one (still element-wise in LiteRT)
    for i, (shape_a, shape_b) in enumerate((((4, 24, 24, 8), None), ((3, 17, 19, 7), None),
                                            ((5, 13, 11, 3), None), ((2, 33, 9), None),
                                            ((1021,), None), ((1, 9, 14, 5), (9, 14, 5)))):
        sa = T._scale(big, -6, -2)
        sb = T._near(big, sa * 2.0 ** int(big.integers(-1, 2)))
        sy = T._near(big, max(sa, sb) * 2.0 ** int(big.integers(0, 3)))
        cases[f"add_big_{i}"] = T.binary(big, T.Op.ADD, shape_a=shape_a, shape_b=shape_b,
                                         scales=(sa, sb, sy), act=("none", "relu")[i % 2])
    cases["add_broadcast"] = T.binary(big, T.Op.ADD, shape_a=(2, 8, 8, 8), shape_b=(1, 1, 1, 8))
    return cases


CASES = live_cases()


def litert_run(model: bytes, feeds: dict, mode: str) -> dict:
    """Outputs of the real interpreter: ``litert`` the default op resolver (XNNPACK delegate
    applied), ``litert-optimized`` the builtin optimized kernels without default delegates,
    ``litert-reference`` the builtin reference kernels."""
    kind = {"litert": interpreter.OpResolverType.AUTO,
            "litert-optimized": interpreter.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            "litert-reference": interpreter.OpResolverType.BUILTIN_REF}[mode]
    it = interpreter.Interpreter(model_content=model, experimental_op_resolver_type=kind)
    it.allocate_tensors()
    for detail in it.get_input_details():
        it.set_tensor(detail["index"], feeds[detail["name"]])
    it.invoke()
    return {d["name"]: it.get_tensor(d["index"]).copy() for d in it.get_output_details()}


def _refused_layer(model: bytes):
    return first_not_exact_under_litert_optimized(load_tflite(model))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("litert_live")
    for name, (model, feeds) in CASES.items():
        (path / f"{name}.tflite").write_bytes(model)
        np.savez(path / f"{name}.npz", **feeds)
    return path


@pytest.mark.parametrize("mode", MODES)
def test_qsim_infer_equals_live_litert(mode, workdir, capsys):
    compared, refused = 0, []
    for name, (model, feeds) in CASES.items():
        out = workdir / f"{name}.{mode}.npz"
        code = main(["infer", str(workdir / f"{name}.tflite"), "--inputs", str(workdir / f"{name}.npz"),
                     "--output", str(out), "--semantics", mode])
        err = capsys.readouterr().err
        layer = _refused_layer(model) if mode == "litert-optimized" else None
        if layer is not None:
            # refused, never approximated: the exact message naming the first such layer
            assert code != 0 and not out.exists(), name
            assert err.strip() == f"qsim: error: layer {layer.name!r} ({layer.kind}): {REFUSAL}", name
            refused.append(name)
            continue
        assert code == 0, (name, err)
        expected = litert_run(model, feeds, mode)
        with np.load(out) as result:
            ours = {key: result[key] for key in result.files}
        assert set(ours) == set(expected), name
        for key, value in expected.items():
            assert ours[key].dtype == value.dtype and ours[key].shape == value.shape, (name, key)
            assert np.array_equal(ours[key], value), (name, mode, key, int(np.sum(ours[key] != value)))
            compared += value.size
    # every case is compared under litert and litert-reference; under litert-optimized the
    # graphs with a quantized mul, broadcasting add, quantize, requantize, dequantize or mean
    # layer are refused (qsim does not reproduce those optimized kernels' rounding)
    expected_refused = [] if mode != "litert-optimized" else \
        ["mul", "mean", "quantize", "requantize", "dequantize", "small_cnn", "add_broadcast"]
    assert refused == expected_refused
    assert compared == {"litert": COMPARED, "litert-optimized": COMPARED_OPTIMIZED,
                        "litert-reference": COMPARED}[mode]


#: Values compared per mode: every case under litert and litert-reference, all but the refused
#: ones under litert-optimized.
COMPARED, COMPARED_OPTIMIZED = 110_976, 108_721


def test_depthwise_follows_the_tflite_operator():
    """A DEPTHWISE_CONV_2D with one input channel is a one-group convolution in the IR; under
    litert-optimized it keeps LiteRT's depthwise output stage (the reference rounding on
    channels outside complete blocks of 8), not ruy's CONV_2D rounding that its group count
    alone would give. Without the graph's TFLite operators (an ONNX-like graph) negative ties
    differ from the live interpreter."""
    differ = {}
    for name in ("dw_1ch_0", "dw_1ch_1", "dw_1ch_2"):
        model, feeds = CASES[name]
        graph = load_tflite(model)
        conv = next(layer for layer in graph.layers if layer.kind == "conv2d")
        assert conv.groups == 1 and graph.meta["tflite_ops"][conv.name] == "DEPTHWISE_CONV_2D"
        expected = litert_run(model, feeds, "litert-optimized")["y"]
        assert np.array_equal(run(graph, feeds, "litert-optimized").outputs["y"], expected), name
        bare = load_tflite(model)
        bare.meta = {k: v for k, v in bare.meta.items() if k != "tflite_ops"}
        differ[name] = int(np.sum(run(bare, feeds, "litert-optimized").outputs["y"] != expected))
    assert differ == DIFFER_AS_CONV


#: Values that ruy's CONV_2D rounding gets wrong: dw_1ch_0 (2 channels, multipliers exactly
#: 2**-k) on every negative tie, dw_1ch_2 (9 channels) on channel 8's only.
DIFFER_AS_CONV = {"dw_1ch_0": 324, "dw_1ch_1": 0, "dw_1ch_2": 13}


def test_optimized_add_rule_equals_live_litert():
    """qsim.quant.requant.litert_optimized_add (blocks of 16 elements with one rounding per
    input, the reference arithmetic on the leftover elements) against the live interpreter's
    litert-optimized ADD on near-tie scales (the engine's litert-optimized ADD of two inputs
    of one shape)."""
    from qsim.quant.requant import litert_optimized_add

    rng = np.random.default_rng(7002)
    compared = 0
    for i, shape in enumerate(((2, 8, 8, 8), (3, 7, 5, 3), (1, 9, 11, 7), (37,), (3, 5, 7, 4))):
        sa = T._scale(rng, -6, -2)
        sb = T._near(rng, sa * 2.0 ** int(rng.integers(-1, 2)))
        if i == 4:  # s_b / (2 s_a) below 2**-21: the vector path shifts b right, not left
            sb = float(np.float32(sa * 2.0 ** -23.5))
        sy = T._near(rng, max(sa, sb) * 2.0 ** int(rng.integers(0, 3)))
        model, feeds = T.binary(rng, T.Op.ADD, shape_a=shape, scales=(sa, sb, sy))
        graph = load_tflite(model)
        (pa, pb), py = next(layer for layer in graph.layers if layer.kind == "add").input_params, \
            next(layer for layer in graph.layers if layer.kind == "add").output_params
        ours = litert_optimized_add(feeds["a"].astype(np.int64) - int(pa.zero_point),
                                    feeds["b"].astype(np.int64) - int(pb.zero_point),
                                    pa.scale, pb.scale, py.scale, int(py.zero_point))
        expected = litert_run(model, feeds, "litert-optimized")["y"]
        assert np.array_equal(np.clip(ours, -128, 127), expected), (i, int(np.sum(np.clip(ours, -128, 127) != expected)))
        compared += expected.size
    assert compared == 1_024 + 315 + 693 + 37 + 420
