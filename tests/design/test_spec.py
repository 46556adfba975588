"""The design file: cells, overrides, defaults."""

from __future__ import annotations

import yaml
from conftest import ROOT

from pipeline.design.spec import DesignCell, load_design


def test_every_light_noise_and_bits_is_a_cell_with_its_overrides(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "base": str(ROOT / "configs" / "default.yaml"),
                "lights": [20, 2000],
                "bits": [2, 4],
                "noise": {"quiet": {"sensor.photodetector.read_noise_e": 0.5}, "loud": {}},
            },
            sort_keys=False,
        )
    )
    plan = load_design(path, out=tmp_path / "o")
    assert [c.id for c in plan.cells][:4] == [
        "light20-bits2-quiet",
        "light20-bits4-quiet",
        "light20-bits2-loud",
        "light20-bits4-loud",
    ]
    assert len(plan.cells) == 8 and plan.folder == tmp_path / "o" / "d"
    raw = plan.cell_raw(DesignCell(20.0, 4, "quiet"))
    assert raw["sensor"][0]["mean_photons"] == 20.0
    assert raw["sensor"][2]["read_noise_e"] == 0.5 and raw["sensor"][3]["bits"] == 4
    assert plan.spec.validation.split == "val" and plan.spec.test.split == "test"
    assert plan.spec.initial == ["linear", "log", "sqrt", "equal_probability", "lloyd_max"]
