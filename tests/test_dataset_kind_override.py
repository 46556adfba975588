"""``--set dataset.kind=K`` switches the dataset kind; a misspelt kind is one line with a
did-you-mean."""

from __future__ import annotations

import pytest
from conftest import ROOT, sensorlab

from pipeline.config import load_config
from pipeline.errors import UserError

DEFAULT = ROOT / "configs" / "default.yaml"


def test_switching_kind_drops_the_keys_the_new_kind_lacks():
    loaded = load_config(DEFAULT, ["dataset.kind=digits", "dataset.limit=3"])
    assert loaded.raw["dataset"] == {"kind": "digits", "split": "test", "limit": 3}
    assert loaded.config.dataset.kind == "digits"


def test_a_key_set_alongside_the_new_kind_is_still_checked():
    with pytest.raises(UserError) as info:
        load_config(DEFAULT, ["dataset.kind=digits", "dataset.n=5"])
    assert info.value.key == "dataset.n" and info.value.message.startswith("unknown key")


def test_the_same_kind_keeps_every_key():
    with pytest.raises(UserError) as info:
        load_config({"dataset": {"kind": "digits", "n": 4}}, ["dataset.kind=digits"])
    assert info.value.key == "dataset.n"


def test_sensorlab_run_with_another_kind(tmp_path):
    proc = sensorlab(
        "run", str(DEFAULT), "--set", "dataset.kind=digits", "--set", "dataset.limit=4",
        "--set", "model=null", "-q", "--out", "runs", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "4 images" in proc.stdout.splitlines()[0]


def test_a_misspelt_kind_is_one_line_with_did_you_mean(tmp_path):
    proc = sensorlab("run", str(DEFAULT), "--set", "dataset.kind=folders", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"sensorlab: error: {DEFAULT}: dataset.kind: unknown kind 'folders' "
        "(did you mean 'folder'?)"
    )


def test_a_missing_kind_lists_the_kinds():
    with pytest.raises(UserError) as info:
        load_config({"dataset": {"split": "test"}})
    assert str(info.value) == (
        "<dict>: dataset.kind: required key is missing "
        "(choose from cifar10, digits, folder, npz, procedural)"
    )
