"""``qsim infer``: outputs equal ONNX Runtime's, every user error is one message, and a failing
run never leaves an output file behind."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from qsim.cli import main
from qsim.errors import ConfigError
from qsim.nn.bench_infer import CALIBRATION, HELD_OUT, digits, digits_cnn, ort_run, ort_session, quantize
from qsim.nn.infer import infer, infer_command, read_inputs, write_outputs
from qsim.nn.onnx_import import load_onnx

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A QOperator digits CNN, a two-input float model and input files, in one directory."""
    root = tmp_path_factory.mktemp("infer")
    images = digits()[0]
    model = quantize(digits_cnn(), images[CALIBRATION], quant_format="QOperator",
                     activation="int8", weight="int8", per_channel=True)
    onnx.save(model, root / "cnn.onnx")
    x = images[HELD_OUT][:20]
    np.savez(root / "x.npz", x=x)
    np.save(root / "x.npy", x)
    two = helper.make_model(helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["s"])], "two",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3]) for n in ("a", "b")],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 3])]),
        opset_imports=[helper.make_opsetid("", 17)])
    two.ir_version = 8
    onnx.save(two, root / "two.onnx")
    return {"root": root, "model": model, "x": x}


def qsim(*args: str) -> int:
    return main(["infer", *map(str, args)])


def test_outputs_equal_onnxruntime(files, capsys):
    root = files["root"]
    out = root / "y.npz"
    assert qsim(root / "cnn.onnx", "--inputs", root / "x.npz", "--output", out) == 0
    assert capsys.readouterr().out == (f"y: float32[20x10]\n"
                                       f"wrote {out} (qoperator model, onnxruntime semantics)\n")
    with np.load(out) as result:
        assert result.files == ["y"]
        theirs = ort_run(ort_session(files["model"]), {"x": files["x"]})["y"]
        assert np.array_equal(result["y"], theirs)
    # a bare .npy feeds a single-input model
    assert qsim(root / "cnn.onnx", "--inputs", root / "x.npy", "--output", root / "y2.npz") == 0
    with np.load(root / "y2.npz") as again:
        assert np.array_equal(again["y"], theirs)
    assert not [p for p in os.listdir(root) if p.endswith(".tmp")]


def test_intermediates_and_semantics(files, capsys):
    root = files["root"]
    out = root / "all.npz"
    assert qsim(root / "cnn.onnx", "--inputs", root / "x.npz", "--output", out, "--intermediates",
                "--semantics", "tflite") == 0  # the old name of litert-reference
    assert capsys.readouterr().out.splitlines()[-1] == (f"wrote {out} (qoperator model, litert-reference "
                                                        f"semantics, 8 tensors)")
    with np.load(out) as result:
        produced = {o for n in files["model"].graph.node for o in n.output}
        assert set(result.files) == produced | {"x"}
        assert result["x_quantized"].dtype == np.int8
        onnxruntime = infer(root / "cnn.onnx", {"x": files["x"]})["y"]
        # TFLite's integer requantization differs from ORT's float32 one by at most one step
        step = float(onnx.numpy_helper.to_array(
            next(i for i in files["model"].graph.initializer if i.name == "y_scale")))
        assert np.abs(result["y"] - onnxruntime).max() <= step * 1.0001


def test_python_api(files):
    graph = load_onnx(files["root"] / "cnn.onnx")
    ours = infer(graph, {"x": files["x"]})
    assert list(ours) == ["y"]
    keep = infer(files["model"], {"x": files["x"]}, "onnxruntime", keep=True)
    assert np.array_equal(keep["y"], ours["y"]) and "x_quantized" in keep


def _garbage(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case, message", [
    ("missing model", "cannot read {root}/nope.onnx: No such file or directory"),
    ("garbage model", "{root}/garbage.onnx is not a valid ONNX model: Error parsing message with "
                      "type 'onnx.ModelProto': Wire format was corrupt"),
    ("truncated model", "{root}/truncated.onnx is not a valid ONNX model: Error parsing message with "
                        "type 'onnx.ModelProto': Wire format was corrupt"),
    ("unsupported op", "unsupported operator 'Sin' in node 'sin' (supported: Abs, Add, "
                       "AveragePool, BatchNormalization, Cast, Ceil, Clip, Concat, Constant, Conv, "
                       "ConvInteger, DequantizeLinear, Div, Dropout, DynamicQuantizeLinear, Equal, "
                       "Erf, Flatten, Floor, Gather, Gelu, Gemm, GlobalAveragePool, Greater, "
                       "GreaterOrEqual, Identity, LayerNormalization, "
                       "Less, LessOrEqual, MatMul, MatMulInteger, Max, MaxPool, Min, Mul, Neg, "
                       "QLinearConv, QLinearMatMul, QuantizeLinear, Reciprocal, ReduceMax, "
                       "ReduceMin, Relu, Reshape, Round, Shape, Softmax, Sqrt, Squeeze, Sub, "
                       "Transpose, Unsqueeze, Where, com.microsoft.QGemm, com.microsoft.QLinearAdd, "
                       "com.microsoft.QLinearAveragePool, com.microsoft.QLinearConcat, "
                       "com.microsoft.QLinearGlobalAveragePool, com.microsoft.QLinearLeakyRelu, "
                       "com.microsoft.QLinearMul, com.microsoft.QLinearReduceMean, "
                       "com.microsoft.QLinearSigmoid, com.microsoft.QLinearSoftmax)"),
    ("missing inputs file", "cannot read inputs {root}/nope.npz: No such file or directory"),
    ("garbage inputs", "cannot read inputs {root}/garbage.npz: not an .npz or .npy file (it starts "
                       "with neither signature)"),
    ("truncated npz", "cannot read inputs {root}/truncated.npz: not a valid .npz file (File is not "
                      "a zip file)"),
    ("missing input", "graph 'digits_cnn': missing input(s) x (inputs: x)"),
    ("unknown input", "graph 'digits_cnn': unknown input(s) image (inputs: x)"),
    ("wrong shape", "input 'x' has shape (20, 64), expected float32[Nx1x8x8]"),
    ("wrong dtype", "input 'x' has dtype int64, expected float32"),
    ("npy for two inputs", "inputs {root}/x.npy holds one array, but the model has 2 inputs (a, b); "
                           "use an .npz keyed by input name"),
    ("bad semantics", "requantization semantics must be one of onnx, onnxruntime, litert, litert-reference, litert-optimized, "
                      "tflite-single-rounding, pytorch-fbgemm, fixed-point (or tflite, an alias of litert-reference), not 'exact'"),
    ("missing directory", "cannot write {root}/no/such/dir/y.npz: No such file or directory "
                          "({root}/no/such/dir)"),
    ("zero batch", "inputs {root}/zero.npz: input 'x' has batch size 0 (shape (0, 1, 8, 8)); at least "
                   "one sample is needed"),
    ("zero-batch calibration", "inputs {root}/zero.npz: input 'x' has batch size 0 (shape (0, 1, 8, 8)); "
                               "at least one sample is needed"),
    ("bad isa", "--isa must be one of auto, sse, avx2, avx512bw, avx-vnni, avx512-vnni, amx-int8, exact, "
                "not 'bogus'"),
    ("output is a directory", "cannot write {root}: Is a directory"),
])
def test_user_errors_exit_2_with_one_message_and_no_output(case, message, files, capsys):
    root = files["root"]
    model, inputs, output, extra = root / "cnn.onnx", root / "x.npz", root / f"{case}.npz", []
    x = files["x"]
    if case == "missing model":
        model = root / "nope.onnx"
    elif case == "garbage model":
        model = _garbage(root / "garbage.onnx", b"\x08\x07\x12\xff not protobuf at all")
    elif case == "truncated model":
        data = (root / "cnn.onnx").read_bytes()
        model = _garbage(root / "truncated.onnx", data[:len(data) // 2])
    elif case == "unsupported op":
        sin = helper.make_model(helper.make_graph(
            [helper.make_node("Sin", ["x"], ["y"], name="sin")], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]),
            opset_imports=[helper.make_opsetid("", 17)])
        sin.ir_version = 8
        onnx.save(sin, root / "sin.onnx")
        model = root / "sin.onnx"
    elif case == "missing inputs file":
        inputs = root / "nope.npz"
    elif case == "garbage inputs":
        inputs = _garbage(root / "garbage.npz", b"x,y\n1,2\n")
    elif case == "truncated npz":
        data = (root / "x.npz").read_bytes()
        inputs = _garbage(root / "truncated.npz", data[:100])
    elif case == "missing input":
        np.savez(root / "other.npz", image=x)
        inputs = root / "other.npz"
    elif case == "unknown input":
        np.savez(root / "extra.npz", x=x, image=x)
        inputs = root / "extra.npz"
    elif case == "wrong shape":
        np.savez(root / "flat.npz", x=x.reshape(20, 64))
        inputs = root / "flat.npz"
    elif case == "wrong dtype":
        np.savez(root / "ints.npz", x=(x * 16).astype(np.int64))
        inputs = root / "ints.npz"
    elif case == "npy for two inputs":
        model, inputs = root / "two.onnx", root / "x.npy"
    elif case == "bad semantics":
        extra = ["--semantics", "exact"]
    elif case == "missing directory":
        output = root / "no" / "such" / "dir" / "y.npz"
    elif case in ("zero batch", "zero-batch calibration"):
        np.savez(root / "zero.npz", x=x[:0])
        if case == "zero batch":
            inputs = root / "zero.npz"
        else:
            model, extra = root / "float.onnx", ["--calibration", root / "zero.npz"]
            onnx.save(digits_cnn(), model)
    elif case == "bad isa":
        extra = ["--isa", "bogus"]
    elif case == "output is a directory":
        output = root
    before = set(os.listdir(root))
    assert qsim(model, "--inputs", inputs, "--output", output, *extra) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"qsim: error: {message.format(root=root)}\n"
    assert output == root or not output.exists()
    assert set(os.listdir(root)) - before <= {p.name for p in (model, inputs) if p.parent == root}


def test_a_failing_run_leaves_an_existing_output_untouched(files, capsys):
    root = files["root"]
    output = root / "keep.npz"
    output.write_bytes(b"previous result")
    np.savez(root / "bad.npz", x=files["x"][:, :, :4])
    assert qsim(root / "cnn.onnx", "--inputs", root / "bad.npz", "--output", output) == 2
    assert "expected float32[Nx1x8x8]" in capsys.readouterr().err
    assert output.read_bytes() == b"previous result"


def test_write_outputs_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "y.npz"
    write_outputs(target, {"file": np.arange(3), "allow_pickle": np.ones(2)})  # savez's own names
    with np.load(target) as data:
        assert data.files == ["file", "allow_pickle"] and data["file"].tolist() == [0, 1, 2]

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np.lib.format, "write_array", broken)
    with pytest.raises(ConfigError) as err:
        write_outputs(tmp_path / "z.npz", {"y": np.zeros(3)})
    assert str(err.value) == f"cannot write {tmp_path / 'z.npz'}: No space left on device"
    assert sorted(os.listdir(tmp_path)) == ["y.npz"]  # no z.npz, no temporary file


def test_read_inputs_checks_only_the_file(files, tmp_path):
    graph = load_onnx(files["root"] / "cnn.onnx")
    assert list(read_inputs(files["root"] / "x.npz", graph)) == ["x"]
    np.save(tmp_path / "o.npy", np.array([object()], dtype=object))
    with pytest.raises(ConfigError) as err:
        read_inputs(tmp_path / "o.npy", graph)
    assert str(err.value) == (f"cannot read inputs {tmp_path / 'o.npy'}: not a valid .npy file "
                              f"(Object arrays cannot be loaded when allow_pickle=False)")
    with zipfile.ZipFile(tmp_path / "bad.npz", "w") as archive:
        archive.writestr("x.npy", b"\x93NUMPY broken")
    with pytest.raises(ConfigError) as err:
        read_inputs(tmp_path / "bad.npz", graph)
    assert str(err.value).startswith(f"cannot read inputs {tmp_path / 'bad.npz'}: not a valid .npz "
                                      f"file (")
    (tmp_path / "part.npy").write_bytes((files["root"] / "x.npy").read_bytes()[:200])
    with pytest.raises(ConfigError) as err:
        read_inputs(tmp_path / "part.npy", graph)
    assert str(err.value) == (f"cannot read inputs {tmp_path / 'part.npy'}: not a valid .npy file "
                              f"(Failed to read all data for array. Expected (20, 1, 8, 8) = 1280 "
                              f"elements, could only read 18 elements. (file seems not fully "
                              f"written?))")
    assert infer_command is not None


def test_float_model_quantized_with_calibration(tmp_path, capsys):
    """qsim infer --calibration: float ONNX + calibration data -> qsim PTQ -> integer inference."""
    from qsim.cli import main
    from qsim.nn.engine import run
    from qsim.nn.examples import digits_data, digits_mlp
    from qsim.nn.onnx_export import export_onnx
    from qsim.nn.ptq import quantize_graph

    x_train, _, x_test, _ = digits_data()
    model = tmp_path / "mlp.onnx"
    model.write_bytes(export_onnx(digits_mlp()).SerializeToString())
    graph = digits_mlp()
    (name,) = graph.inputs
    np.savez(tmp_path / "cal.npz", **{name: x_train[:128]})
    np.savez(tmp_path / "x.npz", **{name: x_test[:20]})
    out = tmp_path / "y.npz"
    assert main(["infer", str(model), "--inputs", str(tmp_path / "x.npz"), "--output", str(out),
                 "--calibration", str(tmp_path / "cal.npz"), "--weight-bits", "4"]) == 0
    capsys.readouterr()
    expected = run(quantize_graph(graph, {name: x_train[:128]}, weight_bits=4), {name: x_test[:20]})
    (output_name,) = expected.outputs
    with np.load(out) as got:
        assert list(got) == [output_name]
        assert np.array_equal(got[output_name], expected.outputs[output_name])


@pytest.mark.parametrize("isa", ["exact", "avx2", "auto"])
def test_isa_is_accepted_and_reaches_the_engine(isa, files, capsys, monkeypatch):
    from qsim.nn import engine

    seen = []
    real = engine.run

    def spy(*args, **kwargs):
        seen.append(kwargs.get("isa"))
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "run", spy)
    root = files["root"]
    out = root / f"isa-{isa}.npz"
    assert qsim(root / "cnn.onnx", "--inputs", root / "x.npz", "--output", out, "--isa", isa) == 0
    assert seen == [isa]
    with np.load(out) as result:  # int8 activations: no instruction path saturates
        assert np.array_equal(result["y"], infer(root / "cnn.onnx", {"x": files["x"]}, isa="exact")["y"])


def test_output_to_devices_links_and_fifos(files, capsys, tmp_path):
    import io
    import stat
    import threading

    root = files["root"]
    args = (root / "cnn.onnx", "--inputs", root / "x.npz", "--output")
    assert qsim(*args, "/dev/null") == 0
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert capsys.readouterr().out.splitlines()[-1] == "wrote /dev/null (qoperator model, onnxruntime semantics)"
    target = tmp_path / "real.npz"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    link = tmp_path / "link.npz"
    link.symlink_to(target)
    assert qsim(*args, link) == 0
    assert link.is_symlink() and stat.S_IMODE(os.stat(target).st_mode) == 0o640
    with np.load(target) as result:
        assert result.files == ["y"]
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    assert qsim(*args, fifo) == 0
    reader.join(10)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    with np.load(io.BytesIO(received[0])) as streamed, np.load(target) as saved:
        assert streamed.files == ["y"] and np.array_equal(streamed["y"], saved["y"])
    assert sorted(os.listdir(tmp_path)) == ["link.npz", "pipe", "real.npz"]
