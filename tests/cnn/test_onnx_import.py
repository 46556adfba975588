"""ONNX import: export -> import -> export keeps every layer type's outputs (and the graph's
hash where the YAML was explicit); ONNX graphs written by hand (Constant nodes, auto_pad,
MatMul + Add, Gemm with transB=0 and alpha/beta, Reshape, Sum, ...) against onnxruntime;
unsupported operators and attributes refused in one line."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from pipeline.cnn.model import load_model
from pipeline.cnn.onnx_export import INPUT_NAME, LOGITS_NAME, export_onnx
from pipeline.cnn.onnx_import import import_onnx, load_onnx, write_imported
from pipeline.errors import UserError
from pipeline.export import quantize_int8
from tests.cnn.test_onnx_export import (
    LAYER_CASES,
    SENSOR,
    TOL,
    case_model,
    chain_for,
    max_diff,
    run_onnxruntime,
)

# the exporter writes "same" padding as explicit pads and a dilated depthwise kernel as an
# undilated one: the network (and its outputs) is the same, its YAML (and hash) is not
REWRITTEN = {"conv2d", "conv2d_same_stride2", "conv2d_depthwise_dilated"}


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_export_import_export_round_trips(case):
    model = case_model(LAYER_CASES[case])
    proto = export_onnx(model)
    imported = import_onnx(proto)
    back = imported.model
    assert [(n.name, n.type) for n in back.spec.nodes] == [
        (n.name, n.type) for n in model.spec.nodes
    ]
    assert back.class_names == model.class_names and back.input_shape == model.input_shape
    assert (back.yaml_hash == model.yaml_hash) == (case not in REWRITTEN)
    x = np.random.default_rng(0).random((3, 3, 8, 8), dtype=np.float32)
    assert max_diff(back.forward(x), model.forward(x)) <= TOL
    again = export_onnx(back)
    for a, b in zip(
        run_onnxruntime(proto, {INPUT_NAME: x}),
        run_onnxruntime(again, {INPUT_NAME: x}),
        strict=True,
    ):
        assert max_diff(a, b) <= 1e-6


def test_import_of_a_raw_front_model_starts_at_the_cnn_input(tmp_path):
    front, _, nchw = chain_for(tmp_path, SENSOR)
    model = case_model(LAYER_CASES["add"], input_shape=nchw.shape[1:])
    imported = import_onnx(export_onnx(model, front=front, with_front=True))
    assert imported.dropped_front and imported.metadata["sensor"]["bits"] == 10
    assert imported.model.yaml_hash == model.yaml_hash
    assert max_diff(imported.model.forward(nchw), model.forward(nchw)) <= TOL


def test_written_files_load_as_a_model(tmp_path):
    model = case_model(LAYER_CASES["concat"])
    path = tmp_path / "m.onnx"
    path.write_bytes(export_onnx(model).SerializeToString())
    yaml_path, npz_path = write_imported(import_onnx(path, name="mine"), tmp_path / "out")
    assert (yaml_path.name, npz_path.name) == ("mine.yaml", "mine.npz")
    data = yaml.safe_load(yaml_path.read_text())
    assert data["name"] == "mine" and data["classes"] == ["a", "b", "c"]
    loaded = load_model(yaml_path)  # finds mine.npz beside it; checks the hash inside
    x = np.random.default_rng(1).random((2, 3, 8, 8), dtype=np.float32)
    assert max_diff(loaded.forward(x), model.forward(x)) <= TOL
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["mine.npz", "mine.yaml"]


def test_a_feature_vector_model_round_trips_and_runs_compiled():
    """A (D,)-input model: export -> import -> forward (the compiled evaluator) agrees with
    the model and with onnxruntime; an MLP written as MatMul + Add imports and runs too."""
    from pipeline.cnn import fast

    model = case_model(
        [{"type": "dense", "units": 8}, {"type": "tanh"}, {"type": "dense", "units": 3}],
        input_shape=(6,),
    )
    x = np.random.default_rng(2).random((5, 6), dtype=np.float32)
    proto = export_onnx(model)
    back = import_onnx(proto).model
    assert back.input_shape == (6,)
    y = back.forward(x)
    assert back in fast._compiled  # the compiled path ran
    assert max_diff(y, model.forward(x)) <= TOL
    assert max_diff(y, run_onnxruntime(proto, {INPUT_NAME: x})[0]) <= TOL
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"]),
    ]
    inits = {"w1": _rand(6, 8), "b1": _rand(8), "w2": _rand(8, 3)}
    mlp = _model(nodes, inits, (3,), in_shape=(6,))
    imported = import_onnx(mlp).model
    assert [n.type for n in imported.spec.nodes] == ["dense", "relu", "dense"]
    assert max_diff(imported.forward(x), run_onnxruntime(mlp, {"x": x})[0]) <= TOL


# ---------------------------------------------------------------------- graphs by hand


def _const_node(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))


def _model(nodes, inits, out_shape, opset=17, in_shape=(3, 8, 8)) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "foreign",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *in_shape])],
        [
            helper.make_tensor_value_info(
                "y", TensorProto.FLOAT, None if out_shape is None else ["batch", *out_shape]
            )
        ],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _rand(*shape, seed=0):
    return np.random.default_rng(seed + sum(shape)).normal(0, 0.5, shape).astype(np.float32)


def test_a_hand_written_graph_imports_with_the_same_outputs():
    """Constant-node weights, auto_pad SAME_UPPER with stride 2, MaxPool, Reshape to
    (0, -1), MatMul + Add bias, LeakyRelu's default alpha, Gemm with transB=0, alpha and
    beta, Identity; compared with onnxruntime on the original graph."""
    nodes = [
        _const_node("w1", _rand(4, 3, 3, 3)),
        _const_node("b1", _rand(4)),
        helper.make_node(
            "Conv",
            ["x", "w1", "b1"],
            ["c1"],
            auto_pad="SAME_UPPER",
            strides=[2, 2],
            kernel_shape=[3, 3],
        ),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["p1", "shape"], ["f1"]),
        helper.make_node("MatMul", ["f1", "wm"], ["m1"]),
        helper.make_node("Add", ["m1", "bm"], ["a1"]),
        helper.make_node("LeakyRelu", ["a1"], ["l1"]),
        helper.make_node("Gemm", ["l1", "wg", "bg"], ["g1"], alpha=0.5, beta=2.0),
        helper.make_node("Identity", ["g1"], ["y"]),
    ]
    inits = {
        "shape": np.array([0, -1], np.int64),
        "wm": _rand(16, 5),
        "bm": _rand(5),
        "wg": _rand(5, 3),
        "bg": _rand(1, 3),
    }
    proto = _model(nodes, inits, (3,))
    imported = import_onnx(proto)
    types = [n.type for n in imported.model.spec.nodes]
    assert types == ["conv2d", "relu", "maxpool2d", "flatten", "dense", "leaky_relu", "dense"]
    assert imported.data["classes"] == ["c0", "c1", "c2"]
    x = np.random.default_rng(2).random((4, 3, 8, 8), dtype=np.float32)
    expected = run_onnxruntime(proto, {"x": x})[0]
    assert max_diff(imported.model.forward(x), expected) <= TOL


def test_a_second_hand_written_graph():
    """BatchNormalization, AveragePool (count_include_pad=0, pads), GlobalAveragePool +
    Flatten, Sum of three, Concat on axis -1 of features, Dropout with a ratio input,
    Sigmoid, Tanh, Softmax as the graph's output (the model's output activation)."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("BatchNormalization", ["c1", "s", "b", "m", "v"], ["n1"], epsilon=1e-3),
        helper.make_node("Tanh", ["n1"], ["t1"]),
        helper.make_node(
            "AveragePool",
            ["t1"],
            ["ap"],
            kernel_shape=[3, 3],
            strides=[1, 1],
            pads=[1, 1, 1, 1],
            count_include_pad=0,
        ),
        helper.make_node("Sum", ["ap", "t1", "c1"], ["s1"]),
        helper.make_node("GlobalAveragePool", ["s1"], ["g"]),
        helper.make_node("Flatten", ["g"], ["gf"], axis=1),
        helper.make_node("Dropout", ["gf", "ratio"], ["d1"]),
        helper.make_node("Gemm", ["d1", "wd", "bd"], ["fc"], transB=1),
        helper.make_node("Sigmoid", ["fc"], ["sg"]),
        helper.make_node("Concat", ["sg", "gf"], ["cat"], axis=-1),
        helper.make_node("Gemm", ["cat", "wo"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["y"], axis=-1),
    ]
    inits = {
        "w1": _rand(4, 3, 3, 3),
        "s": _rand(4) + 1,
        "b": _rand(4),
        "m": _rand(4),
        "v": np.abs(_rand(4)) + 0.5,
        "ratio": np.array(0.25, np.float32),
        "wd": _rand(6, 4),
        "bd": _rand(6),
        "wo": _rand(3, 10),
    }
    proto = _model(nodes, inits, (3,))
    imported = import_onnx(proto)
    spec = imported.model.spec
    assert [n.type for n in spec.nodes] == [
        "conv2d",
        "batchnorm2d",
        "tanh",
        "avgpool2d",
        "add",
        "global_avgpool",
        "dropout",
        "dense",
        "sigmoid",
        "concat",
        "dense",
        "softmax",
    ]
    assert spec.nodes[4].args and len(spec.nodes[4].inputs) == 3  # one add of three
    assert spec.has_output_softmax
    x = np.random.default_rng(3).random((3, 3, 8, 8), dtype=np.float32)
    expected = run_onnxruntime(proto, {"x": x})[0]
    assert max_diff(imported.model.predict_proba(x), expected) <= TOL


def _tiny_graph(extra_nodes, extra_inits=None, out_shape=(3, 8, 8)):
    nodes = [helper.make_node("Relu", ["x"], ["r"]), *extra_nodes]
    return _model(nodes, extra_inits or {}, out_shape)


def test_unsupported_operators_are_all_named_in_one_line():
    proto = _tiny_graph(
        [
            helper.make_node("Erf", ["r"], ["e"]),
            helper.make_node("Resize", ["e", "", "scales"], ["z"], mode="nearest"),
            helper.make_node("Erf", ["z"], ["y"]),
        ],
        {"scales": np.array([1, 1, 1, 1], np.float32)},
    )
    with pytest.raises(UserError) as err:
        import_onnx(proto)
    msg = str(err.value)
    assert "unsupported ONNX operators: Erf, Resize" in msg and "\n" not in msg


def test_an_operator_of_another_domain_is_named():
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("FusedConv", ["r", "w"], ["y"], domain="com.microsoft"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(_rand(2, 3, 1, 1), "w")],
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    with pytest.raises(UserError, match=r"unsupported ONNX operator: com\.microsoft\.FusedConv"):
        import_onnx(proto)


@pytest.mark.parametrize(
    ("node", "message"),
    [
        (
            helper.make_node(
                "MaxPool", ["r"], ["y"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1
            ),
            "ceil_mode=1",
        ),
        (
            helper.make_node(
                "AveragePool",
                ["r"],
                ["y"],
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                count_include_pad=1,
            ),
            "count_include_pad=1",
        ),
        (
            helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[3, 3], pads=[0, 0, 1, 1]),
            "asymmetric pads",
        ),
        (helper.make_node("Add", ["r", "c"], ["y"]), "constant"),
        (helper.make_node("Mul", ["r", "c"], ["y"]), r"by a \(C, 1, 1\) constant"),
        (helper.make_node("Mul", ["r", "r"], ["y"]), "per-channel constant"),
    ],
)
def test_attributes_sensorlab_cannot_express_are_refused(node, message):
    proto = _tiny_graph([node], {"c": np.ones((1, 3, 8, 8), np.float32)}, ("C", "H", "W"))
    with pytest.raises(UserError, match=message) as err:
        import_onnx(proto)
    assert "\n" not in str(err.value)


def test_an_int8_model_names_its_quantisation_operators(tmp_path):
    model = case_model(LAYER_CASES["relu"])
    x = np.random.default_rng(4).random((16, 3, 8, 8), dtype=np.float32)
    q = quantize_int8(export_onnx(model, opset=19), [x])
    with pytest.raises(UserError, match="DequantizeLinear, QuantizeLinear"):
        import_onnx(q)


def test_unreadable_files(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00not a protobuf at all\xff" * 10)
    with pytest.raises(UserError, match="not a readable ONNX model"):
        load_onnx(bad)
    with pytest.raises(UserError, match="ONNX file not found"):
        load_onnx(tmp_path / "missing.onnx")


def test_the_logits_output_of_an_export_is_the_first_output():
    model = case_model(LAYER_CASES["softmax_output"])
    proto = export_onnx(model)
    assert proto.graph.output[0].name == LOGITS_NAME
    back = import_onnx(proto).model
    assert back.spec.has_output_softmax and back.yaml_hash == model.yaml_hash
