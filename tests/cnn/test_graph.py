"""Model YAML parsing: the shipped graphs, `from` references, canonical hashing, and one
clear UserError line for every kind of bad file."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from pipeline.cnn.graph import INPUT, load_graph, parse_graph
from pipeline.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "configs" / "models"
SRC = "models/x.yaml"


def spec(layers, input_shape=(3, 8, 8), classes=3, **extra):
    data = {"input": list(input_shape), "classes": [f"k{i}" for i in range(classes)]}
    data.update(extra)
    data["layers"] = layers
    return parse_graph(data, source=SRC)


def error(layers, **kw) -> str:
    with pytest.raises(UserError) as info:
        spec(layers, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{SRC}: ")
    return msg


HEAD = [{"type": "flatten"}, {"type": "dense", "units": 3}]


# ------------------------------------------------------------------ shipped graphs


def test_rgb32_shapes_and_parameter_count():
    g = load_graph(MODELS / "rgb32.yaml")
    assert g.input_shape == (3, 32, 32)
    assert len(g.classes) == 10
    shapes = {n.name: n.output_shape for n in g.nodes if n.named}
    assert shapes == {
        "conv1": (32, 32, 32),
        "conv2": (32, 32, 32),
        "conv3": (64, 16, 16),
        "conv4": (64, 16, 16),
        "fc1": (256,),
        "fc2": (10,),
    }
    expected = (
        (3 * 9 * 32 + 32)
        + (32 * 9 * 32 + 32)
        + (32 * 9 * 64 + 64)
        + (64 * 9 * 64 + 64)
        + (64 * 8 * 8 * 256 + 256)
        + (256 * 10 + 10)
    )
    assert sum(n.layer.n_params for n in g.nodes) == expected


def test_raw32_first_conv_sees_whole_bayer_tiles():
    g = load_graph(MODELS / "raw32.yaml")
    assert g.input_shape == (1, 32, 32)
    tile = g.node("tile")
    assert tile.args.kernel == (2, 2) and tile.args.stride == (2, 2)
    assert tile.output_shape == (32, 16, 16)
    assert g.nodes[-1].output_shape == (10,)


# ------------------------------------------------------------------ references


def test_from_by_name_negative_index_absolute_index_and_input():
    g = spec(
        [
            {"type": "conv2d", "filters": 4, "kernel": 3, "padding": 1, "name": "c1"},
            {"type": "relu"},
            {"type": "conv2d", "filters": 4, "kernel": 3, "padding": 1},
            {"type": "add", "from": [-1, "c1"]},
            {"type": "concat", "from": [3, "input"]},
            {"type": "global_avgpool"},
            {"type": "dense", "units": 3},
        ]
    )
    assert [n.inputs for n in g.nodes] == [(INPUT,), (0,), (1,), (2, 0), (3, INPUT), (4,), (5,)]
    assert g.nodes[4].output_shape == (7, 8, 8)
    assert g.nodes[1].name == "relu_1"  # generated names: type_index
    assert g.consumers[0] == (1, 3)


def test_trailing_softmax_is_the_output_activation():
    g = spec([*HEAD, {"type": "softmax"}])
    assert g.has_output_softmax and g.output_index == 1
    assert not spec(HEAD).has_output_softmax


def test_canonical_hash_ignores_spelling_but_not_structure():
    a = spec([{"type": "conv2d", "filters": 2, "kernel": 3, "padding": "valid"}, *HEAD], name="a")
    b = spec(
        [{"type": "conv2d", "filters": 2, "kernel": [3, 3], "padding": 0, "from": -1}, *HEAD],
        name="b",
        description="same network, other words",
    )
    c = spec([{"type": "conv2d", "filters": 3, "kernel": 3}, *HEAD])
    assert a.yaml_hash == b.yaml_hash
    assert a.yaml_hash != c.yaml_hash
    canon = a.canonical()
    assert canon["layers"][0]["from"] == ["input"]
    assert canon["layers"][0]["stride"] == [1, 1]
    assert parse_graph(yaml.safe_load(yaml.safe_dump(canon)), source=SRC).yaml_hash == a.yaml_hash


# ------------------------------------------------------------------ errors, one line each


def test_dense_on_feature_maps_names_file_layer_and_shapes():
    msg = error(
        [
            {"type": "conv2d", "filters": 64, "kernel": 3, "padding": 1},
            {"type": "relu"},
            {"type": "conv2d", "filters": 64, "kernel": 3, "padding": 1},
            {"type": "relu"},
            {"type": "dense", "units": 3, "name": "fc1"},
        ]
    )
    assert msg == f"{SRC}: layers[4] (fc1): dense expects 1-D input, got (64, 8, 8); add flatten"


def test_unknown_layer_type_with_did_you_mean():
    msg = error([{"type": "conv2", "filters": 2, "kernel": 3}, *HEAD])
    assert "layers[0] (conv2_0): unknown layer type 'conv2' (did you mean 'conv2d'?)" in msg


def test_unknown_argument_with_did_you_mean():
    msg = error([{"type": "conv2d", "filter": 2, "kernel": 3}, *HEAD])
    assert (
        "layers[0] (conv2d_0): conv2d: unknown argument 'filter' (did you mean 'filters'?)" in msg
    )
    assert "relu takes no arguments" in error([{"type": "relu", "alpha": 0.1}, *HEAD])


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"type": "conv2d", "kernel": 3}, "conv2d: missing argument 'filters'"),
        ({"type": "conv2d", "filters": 0, "kernel": 3}, "conv2d.filters: input should be greater"),
        ({"type": "conv2d", "filters": True, "kernel": 3}, "conv2d.filters"),
        (
            {"type": "conv2d", "filters": 2, "kernel": [3, 3, 3]},
            "conv2d.kernel: must be an integer",
        ),
        (
            {"type": "conv2d", "filters": 2, "kernel": 3, "padding": "full"},
            "conv2d.padding: must be",
        ),
        ({"type": "dropout", "rate": 1.0}, "dropout.rate: input should be less than 1"),
        (
            {"type": "maxpool2d", "size": 2, "stride": 0},
            "maxpool2d.stride: must be an integer >= 1",
        ),
    ],
)
def test_invalid_arguments(row, expected):
    assert expected in error([row, *HEAD])


def test_add_with_different_shapes_names_both_inputs():
    msg = error(
        [
            {"type": "conv2d", "filters": 4, "kernel": 3, "padding": 1, "name": "c1"},
            {"type": "conv2d", "filters": 5, "kernel": 3, "padding": 1, "name": "c2"},
            {"type": "add", "from": ["c1", "c2"], "name": "sum"},
            *HEAD,
        ]
    )
    assert msg.endswith(
        "layers[2] (sum): add expects inputs of one shape; got (4, 8, 8) from c1 and "
        "(5, 8, 8) from c2"
    )


def test_concat_mismatch():
    msg = error(
        [
            {"type": "conv2d", "filters": 4, "kernel": 3, "name": "c1"},
            {"type": "concat", "from": ["c1", "input"]},
            *HEAD,
        ]
    )
    assert "layers[1] (concat_1): concat expects inputs that differ only in channels" in msg
    assert "(4, 6, 6) from c1 and (3, 8, 8) from input" in msg


def test_kernel_larger_than_input_and_output_below_one():
    msg = error([{"type": "conv2d", "filters": 2, "kernel": 9, "name": "big"}, *HEAD])
    assert "layers[0] (big): conv2d: kernel 9×9 is larger than the input 8×8" in msg
    assert "(input (3, 8, 8) from input)" in msg
    msg = error([{"type": "conv2d", "filters": 2, "kernel": 3, "dilation": 4}, *HEAD])
    assert "dilated kernel (kernel 3×3) 9×9 is larger than the input 8×8" in msg
    msg = error([{"type": "maxpool2d", "size": 4}, {"type": "maxpool2d", "size": 4}, *HEAD])
    assert "layers[1] (maxpool2d_1): maxpool2d: window 4×4 is larger than the input 2×2" in msg


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("c11", "from: unknown layer 'c11' (did you mean 'c1'?)"),
        ("zz", "from: unknown layer 'zz' (choose from c1, input)"),
        (-3, "from: -3 points 3 layers back, before the model input (this is layer 1; at most -2)"),
        ("later", "from: 'later' refers to a later layer (layers[3]); a layer reads only earlier"),
        (2, "from: 2 refers to a later layer (layers[2])"),
        ("me", "from: 'me' refers to this layer itself"),
        (1, "from: 1 refers to this layer itself"),
        (True, "from: True is not a layer name or index"),
    ],
)
def test_bad_from_references_and_cycles(ref, expected):
    msg = error(
        [
            {"type": "conv2d", "filters": 3, "kernel": 1, "name": "c1"},
            {"type": "add", "from": ["c1", ref], "name": "me"},
            {"type": "relu"},
            {"type": "relu", "name": "later"},
            *HEAD,
        ]
    )
    assert "layers[1] (me): " + expected in msg


def test_duplicate_names():
    msg = error([{"type": "relu", "name": "a"}, {"type": "relu", "name": "a"}, *HEAD])
    assert "layers[1]: duplicate name 'a' (also layers[0])" in msg
    msg = error([{"type": "relu"}, {"type": "relu", "name": "relu_0"}, *HEAD])
    assert (
        "layers[0]: the automatic name of this layer, 'relu_0', is also given to layers[1]" in msg
    )
    assert "reserved for the model input" in error([{"type": "relu", "name": "input"}, *HEAD])


def test_class_count_must_match_last_layer():
    msg = error([{"type": "flatten"}, {"type": "dense", "units": 4, "name": "out"}])
    assert msg == f"{SRC}: layers[1] (out): the last layer gives 4 scores but classes lists 3 names"
    msg = error([{"type": "relu", "name": "out"}])
    assert (
        "layers[0] (out): the last layer must give one score per class (1-D), got (3, 8, 8)" in msg
    )


def test_unused_outputs_are_reported():
    msg = error([{"type": "relu", "name": "lost"}, {"type": "flatten", "from": "input"}, HEAD[1]])
    assert "layers[0] (lost): output is never used" in msg


def test_wrong_number_of_inputs():
    assert "add takes at least 2 input(s), `from` gives 1" in error([{"type": "add"}, *HEAD])
    assert "relu takes 1 input(s), `from` gives 2" in error(
        [{"type": "relu", "from": [-1, "input"]}, *HEAD]
    )


def test_top_level_errors():
    with pytest.raises(UserError, match="input: must be"):
        spec(HEAD, input_shape=(3, 8))
    with pytest.raises(UserError, match=r"unknown key \(did you mean 'layers'\?\)"):
        parse_graph({"input": [3], "classes": ["a", "b"], "layer": []}, source=SRC)
    with pytest.raises(UserError, match="missing key 'classes'"):
        parse_graph({"input": [3], "layers": []}, source=SRC)
    with pytest.raises(UserError, match=r"classes\[1\]: duplicate class name 'a'"):
        parse_graph({"input": [3], "classes": ["a", "a"], "layers": HEAD}, source=SRC)
    with pytest.raises(UserError, match=r"classes\[0\]: must be a non-empty name"):
        parse_graph({"input": [3], "classes": [False, "a"], "layers": HEAD}, source=SRC)
    with pytest.raises(UserError, match=r"layers\[0\]: missing layer type"):
        spec([{"units": 3}])


def test_file_errors(tmp_path):
    with pytest.raises(UserError, match="model file not found"):
        load_graph(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: [3, 8, 8\nclasses: [a]\n")
    with pytest.raises(UserError, match=r"bad.yaml: line \d+: invalid YAML"):
        load_graph(bad)
    code = tmp_path / "code.yaml"
    code.write_text("input: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(UserError, match="invalid YAML"):  # safe_load never builds objects
        load_graph(code)


def test_summary_lists_every_layer():
    g = load_graph(MODELS / "rgb32.yaml")
    text = g.summary()
    assert len(text.splitlines()) == len(g.nodes) + 2
    assert "fc1" in text and "1,116,970 parameters" in text
    assert math.prod(g.input_shape) == 3 * 32 * 32


def test_shipped_models_name_the_procedural_classes_in_label_order():
    from pipeline.datasets.procedural import CLASS_NAMES

    for stem in ("rgb32", "raw32"):
        assert load_graph(MODELS / f"{stem}.yaml").classes == CLASS_NAMES
