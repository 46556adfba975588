"""Config loading, overrides and error locations."""

from __future__ import annotations

import pytest
import yaml
from conftest import ROOT, toy_config

from pipeline.config import apply_overrides, load_config, parse_override
from pipeline.errors import UserError


def test_parse_override_reads_yaml_values():
    assert parse_override("sensor.adc.bits=4") == ("sensor.adc.bits", 4)
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a=null") == ("a", None)
    assert parse_override("a=log") == ("a", "log")
    with pytest.raises(UserError):
        parse_override("novalue")


def test_overrides_address_stages_by_name_or_index():
    raw = {"sensor": [{"stage": "a", "x": 1}, {"stage": "b", "x": 2}, {"stage": "a", "x": 3}]}
    assert apply_overrides(raw, {"sensor.b.x": 5})["sensor"][1]["x"] == 5
    assert apply_overrides(raw, {"sensor[2].x": 6})["sensor"][2]["x"] == 6
    assert apply_overrides(raw, {"sensor.-1.x": 7})["sensor"][2]["x"] == 7
    assert apply_overrides(raw, {"run.batch_size": 3})["run"] == {"batch_size": 3}
    assert raw["sensor"][1]["x"] == 2  # the input is not changed
    with pytest.raises(UserError, match="stage 'a' appears 2 times; use its index"):
        apply_overrides(raw, {"sensor.a.x": 1})
    with pytest.raises(UserError, match=r"index 5 out of range \(3 rows\)"):
        apply_overrides(raw, {"sensor[5].x": 1})


def test_yaml_file_with_overrides_and_relative_paths(tmp_path, toy_registry, npz_dataset):
    cfg = toy_config(npz_dataset.name, tmp_path / "runs")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    loaded = load_config(
        tmp_path / "c.yaml", ["sensor.toy_adc.bits=3", "run.batch_size=5"], registry=toy_registry
    )
    assert loaded.config.sensor[2].bits == 3
    assert loaded.config.run.batch_size == 5
    assert loaded.resolve(loaded.config.dataset.path) == npz_dataset
    assert loaded.file.endswith("c.yaml")


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"seed": -1}, "<dict>: seed: must be greater than or equal to 0, got -1"),
        ({"sensor": "scene"}, "<dict>: sensor: must be a list of stages, got str"),
        ({"sensor": [{"bits": 3}]}, "<dict>: sensor[0]: missing 'stage: NAME'"),
        (
            {"sensor": [{"stage": "toy_adc", "bits": 0}]},
            "<dict>: sensor[0].toy_adc.bits: must be between 1 and 16, got 0",
        ),
        ({"sensor": [{"stage": "toy_adc", "bits": 2.5}]}, "<dict>: sensor[0].toy_adc.bits: "),
        (
            {"sensor": [{"stage": "toy_adc", "bitz": 2}]},
            "<dict>: sensor[0].toy_adc.bitz: unknown key (did you mean 'bits'?)",
        ),
        ({"run": {"record": {"images": -2}}}, "<dict>: run.record.images: "),
        ({"dataset": {"kind": "npz"}}, "<dict>: dataset.path: required key is missing"),
        (
            {"dataset": {"kind": "npz", "path": "x", "limt": 3}},
            "<dict>: dataset.limt: unknown key (did you mean 'limit'?)",
        ),
        ({"modle": {}}, "<dict>: modle: unknown key (did you mean 'model'?)"),
    ],
)
def test_validation_messages(toy_registry, patch, expected):
    raw = {"dataset": {"kind": "npz", "path": "x.npz"}, **patch}
    with pytest.raises(UserError) as info:
        load_config(raw, registry=toy_registry)
    message = str(info.value)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_overrides_on_a_loaded_config_name_its_file():
    from pipeline.config import with_overrides

    loaded = load_config(ROOT / "configs" / "default.yaml")
    assert with_overrides(loaded, []) is loaded
    changed = with_overrides(loaded, {"sensor.adc.bits": 4})
    assert changed.config.sensor[3].bits == 4 and changed.file == loaded.file
    with pytest.raises(UserError) as info:
        with_overrides(loaded, ["sensor.adc.bitz=4"])
    assert str(info.value).startswith(f"{loaded.file}: sensor[3].adc.bitz: unknown key")
