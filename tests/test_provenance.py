"""Every recorded image traces to its source: labels, dataset image keys and file names in
manifest.json and arrays.zarr; ``split: all`` reads in stored order."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import yaml
import zarr
from conftest import ROOT

from pipeline.datasets import FolderDataset, ProceduralDataset, open_dataset
from pipeline.runner import run


def _folder(root: Path) -> Path:
    """Three classes of four 6×5 PNGs; every image has its own grey level."""
    for c, name in enumerate(("ant", "bee", "cat")):
        (root / name).mkdir(parents=True)
        for k in range(4):
            grey = np.full((6, 5, 3), 20 * c + 3 * k + 1, np.uint8)
            assert cv2.imwrite(str(root / name / f"{k:02d}.png"), grey)
    return root


def _config(tmp_path: Path, dataset: dict) -> Path:
    cfg = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text(encoding="utf-8"))
    cfg["dataset"] = dataset
    cfg["model"] = None
    cfg["run"] = {"out": str(tmp_path / "runs"), "name": "r", "batch_size": 3}
    cfg["run"]["record"] = {"stages": ["dataset", "raw"], "images": 5}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_split_all_reads_the_store_in_order(tmp_path):
    root = _folder(tmp_path / "imgs")
    files = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.png"))
    ds = FolderDataset(root, split="all")
    assert ds.sources(0, len(ds)) == files
    np.testing.assert_array_equal(ds.image_keys(0, len(ds)), np.arange(12))
    x = np.arange(7 * 2 * 2 * 3, dtype=np.uint8).reshape(7, 2, 2, 3)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(7) % 2)
    npz = open_dataset({"kind": "npz", "path": "d.npz", "split": "all"}, base_dir=tmp_path)
    np.testing.assert_array_equal(npz.read(0, 7)[0], x)


def test_a_folder_run_records_file_names_labels_and_keys(tmp_path):
    root = _folder(tmp_path / "imgs")
    dataset = {"kind": "folder", "path": str(root), "split": "train", "test_fraction": 0.25}
    result = run(_config(tmp_path, dataset), progress=False)
    manifest = json.loads((result.path / "manifest.json").read_text(encoding="utf-8"))
    prov = manifest["provenance"]
    assert prov["images"] == 5 and prov["path"] == "arrays.zarr/provenance"
    group = zarr.open_group(str(result.path / "arrays.zarr"), mode="r")
    assert list(group["provenance/files"][:]) == prov["files"]
    np.testing.assert_array_equal(group["provenance/labels"][:], prov["labels"])
    np.testing.assert_array_equal(group["provenance/image_keys"][:], prov["image_keys"])
    classes = ["ant", "bee", "cat"]
    for i, name in enumerate(prov["files"]):  # each recorded image is its file, its class
        on_disk = cv2.imread(str(root / name))[..., ::-1]
        np.testing.assert_array_equal(group["dataset"][i], on_disk)
        assert classes[prov["labels"][i]] == name.split("/")[0]
    keys = [sorted(root.glob("*/*.png")).index(root / name) for name in prov["files"]]
    assert prov["image_keys"] == keys


def test_a_procedural_run_records_labels_and_keys_without_files(tmp_path):
    dataset = {"kind": "procedural", "n": 7, "size": 16, "split": "val", "seed": 3}
    result = run(_config(tmp_path, dataset), progress=False)
    prov = result.manifest["provenance"]
    ds = ProceduralDataset(n=7, size=(16, 16), split="val", seed=3)
    assert prov["files"] is None
    assert prov["labels"] == ds.read(0, 5)[1].tolist()
    assert prov["image_keys"] == ds.image_keys(0, 5).tolist()
    group = zarr.open_group(str(result.path / "arrays.zarr"), mode="r")
    assert "files" not in group["provenance"]
