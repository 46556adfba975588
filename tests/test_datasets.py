"""Tests of pipeline.datasets: the interface, splits, and every reader's data and errors."""

from __future__ import annotations

import hashlib
import pickle
import sys
import tracemalloc
import types
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from pipeline.datasets import (
    ArrayDataset,
    Cifar10Config,
    Cifar10Dataset,
    Dataset,
    DatasetConfig,
    DigitsConfig,
    FolderConfig,
    FolderDataset,
    NpzConfig,
    ProceduralConfig,
    ProceduralDataset,
    open_dataset,
)
from pipeline.datasets.procedural import CLASS_NAMES, COLOURS, SHAPES, encode
from pipeline.datasets.splits import split_indices
from pipeline.errors import UserError
from pipeline.stage import SignalInfo, Unit
from sensors.colour import linear_to_srgb, srgb_to_linear

LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)


# -- helpers -----------------------------------------------------------------------------
def user_error(fn, key: str, *fragments: str) -> UserError:
    """Call ``fn``, expect a one-line UserError with ``key`` whose message has ``fragments``."""
    with pytest.raises(UserError) as info:
        fn()
    err = info.value
    assert err.key == key, str(err)
    assert "\n" not in str(err)
    for fragment in fragments:
        assert fragment in err.message, err.message
    return err


def read_all(ds: Dataset) -> tuple[np.ndarray, np.ndarray | None]:
    return ds.read(0, len(ds))


def digest(img: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(img).tobytes()).hexdigest()


def write_image(path: Path, rgb: np.ndarray) -> Path:
    """Write an RGB (or gray) array with OpenCV, which expects BGR."""
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = rgb[..., ::-1] if rgb.ndim == 3 and rgb.shape[2] == 3 else rgb
    assert cv2.imwrite(str(path), np.ascontiguousarray(bgr))
    return path


def make_folder(root: Path, counts: dict[str, int], hw=(6, 5), dtype=np.uint8) -> Path:
    """Class folders of PNGs; image k of class c has every pixel = (c*40 + k) (distinct)."""
    for c, (name, n) in enumerate(counts.items()):
        for k in range(n):
            img = np.full((*hw, 3), c * 40 + k, dtype)
            img[0, 0] = (c, k, 7)  # makes each file distinct and traceable
            write_image(root / name / f"img{k:03d}.png", img)
    return root


# -- the interface and ArrayDataset --------------------------------------------------------
@pytest.mark.parametrize(
    ("dtype", "encoding"),
    [(np.uint8, "srgb8"), (np.uint16, "linear16"), (np.float32, "float")],
)
def test_array_dataset_read_info_and_encoding(dtype, encoding):
    rng = np.random.default_rng(0)
    x = (rng.random((7, 4, 5, 3)) * 200).astype(dtype)
    y = np.array([0, 1, 2, 0, 1, 2, 0])
    ds = ArrayDataset(x, y, class_names=["a", "b", "c"])
    assert len(ds) == 7 and ds.image_shape == (4, 5, 3) and ds.dtype == np.dtype(dtype)
    assert ds.encoding == encoding and ds.class_names == ("a", "b", "c")
    xs, ys = ds.read(2, 5)
    np.testing.assert_array_equal(xs, x[2:5])
    assert ys.dtype == np.int64 and ys.tolist() == [2, 0, 1]
    info = ds.info()
    assert info == SignalInfo(Unit.IMAGE, (4, 5, 3), np.dtype(dtype), {"encoding": encoding})


def test_array_dataset_defaults_and_float64():
    x = np.linspace(0, 1, 2 * 3 * 3 * 3).reshape(2, 3, 3, 3)  # float64
    ds = ArrayDataset(x, [0, 3])
    assert ds.dtype == np.float32 and ds.encoding == "float"
    assert ds.class_names == ("c0", "c1", "c2", "c3")
    xs, _ = ds.read(0, 2)
    assert xs.dtype == np.float32
    np.testing.assert_allclose(xs, x, rtol=1e-7)
    unlabelled = ArrayDataset(x)
    assert unlabelled.read(0, 1)[1] is None and unlabelled.class_names == ()


def test_array_dataset_bad_input():
    good = np.zeros((4, 3, 3, 3), np.uint8)
    user_error(lambda: ArrayDataset(np.zeros((4, 3))), None, "(N, H, W, 3)", "(4, 3)")
    user_error(lambda: ArrayDataset(np.zeros((4, 3, 3, 2))), None, "(N, H, W, 1)", "(4, 3, 3, 2)")
    user_error(lambda: ArrayDataset(good.astype(np.int32)), None, "uint8, uint16 or float32")
    user_error(lambda: ArrayDataset(good, encoding="linear16"), None, "needs uint16")
    user_error(lambda: ArrayDataset(good, [0, 1, 2]), None, "shape (4,)")
    user_error(lambda: ArrayDataset(good, [0, 1, 2, 3], ["a", "b"]), None, "label 2 at image 2")
    user_error(lambda: ArrayDataset(good, [0, -1, 0, 0]), None, "label -1 at image 1")
    user_error(lambda: ArrayDataset(good, [0.0, 1.0, 0.0, 0.0]), None, "integer labels")
    bad = np.zeros((5, 2, 2, 3), np.float32)
    bad[3, 1, 0, 2] = np.nan
    err = user_error(lambda: ArrayDataset(bad), None)
    assert str(err) == "x contains NaN at image 3"
    bad[3] = 0
    bad[4, 0, 0, 0] = np.inf
    user_error(lambda: ArrayDataset(bad), None, "inf at image 4")


def test_read_range_checked():
    ds = ArrayDataset(np.zeros((3, 2, 2, 3), np.uint8))
    with pytest.raises(IndexError):
        ds.read(2, 4)
    with pytest.raises(IndexError):
        ds.read(2, 1)
    assert ds.read(3, 3)[0].shape == (0, 2, 2, 3)
    with pytest.raises(ValueError, match="batch_size"):
        next(ds.batches(0))


# -- splits ---------------------------------------------------------------------------------
def test_split_indices_disjoint_covering_stratified_and_stable():
    labels = np.repeat(np.arange(4), [50, 30, 20, 7])
    kw = {"seed": 3, "val_fraction": 0.1, "test_fraction": 0.2}
    parts = {s: split_indices(labels, len(labels), split=s, **kw) for s in ("train", "val", "test")}
    every = np.concatenate(list(parts.values()))
    assert len(every) == len(labels) and len(np.unique(every)) == len(labels)  # disjoint, covering
    for label, n in enumerate([50, 30, 20, 7]):  # stratified: each class split by the fractions
        assert np.sum(labels[parts["test"]] == label) == round(0.2 * n)
        assert np.sum(labels[parts["val"]] == label) == round(0.1 * n)
    again = split_indices(labels, len(labels), split="test", **kw)
    np.testing.assert_array_equal(again, parts["test"])  # stable
    other = split_indices(labels, len(labels), split="test", **{**kw, "seed": 4})
    assert set(other) != set(parts["test"])  # the dataset seed decides
    assert sorted(split_indices(labels, len(labels), split="all", **kw)) == list(range(107))
    # read order is shuffled (classes mixed in a prefix), but a fixed permutation of the split
    assert not np.all(np.diff(parts["train"]) > 0)


def test_fraction_validation():
    with pytest.raises(ValidationError, match="at most 1"):
        NpzConfig(kind="npz", path="x.npz", val_fraction=0.6, test_fraction=0.5)


# -- procedural -----------------------------------------------------------------------------
def test_procedural_determinism_and_seed():
    a = ProceduralDataset(n=30, split="train", seed=5)
    b = ProceduralDataset(n=30, split="train", seed=5)
    c = ProceduralDataset(n=30, split="train", seed=6)
    xa, ya = read_all(a)
    xb, yb = read_all(b)
    xc, _ = read_all(c)
    assert xa.tobytes() == xb.tobytes() and ya.tolist() == yb.tolist()
    assert not np.array_equal(xa, xc)
    assert all(not np.array_equal(xa[i], xc[i]) for i in range(30))
    # image i does not depend on n, the limit, or where a read starts
    bigger = ProceduralDataset(n=100, split="train", seed=5, limit=40)
    np.testing.assert_array_equal(bigger.read(10, 30)[0], xa[10:30])


def test_procedural_splits_disjoint_and_all_is_their_concatenation():
    n = 40
    parts = [read_all(ProceduralDataset(n=n, split=s, seed=1)) for s in ("train", "val", "test")]
    hashes = [{digest(img) for img in x} for x, _ in parts]
    assert all(len(h) == n for h in hashes)
    assert (
        not (hashes[0] & hashes[1]) and not (hashes[0] & hashes[2]) and not (hashes[1] & hashes[2])
    )
    x_all, y_all = read_all(ProceduralDataset(n=n, split="all", seed=1))
    np.testing.assert_array_equal(x_all, np.concatenate([x for x, _ in parts]))
    np.testing.assert_array_equal(y_all, np.concatenate([y for _, y in parts]))


def test_procedural_class_balance_and_names():
    ds = ProceduralDataset(n=1000, size=(8, 8), split="val")
    _, y = read_all(ds)
    assert np.bincount(y, minlength=10).tolist() == [100] * 10
    assert all(np.bincount(y[k : k + 10], minlength=10).tolist() == [1] * 10 for k in (0, 500))
    assert ds.class_names == CLASS_NAMES and len(set(CLASS_NAMES)) == 10
    assert {f"{c}_{s}" for c in COLOURS for s in SHAPES} == set(CLASS_NAMES)
    assert "red_disk" in CLASS_NAMES and "blue_square" in CLASS_NAMES


@pytest.fixture(scope="module")
def procedural_sample():
    """800 float (linear) test images with their shape coverage."""
    ds = ProceduralDataset(n=800, split="test", seed=0, encoding="float")
    return ds.read_with_coverage(0, len(ds))


def test_procedural_colour_decides_between_classes_sharing_a_shape(procedural_sample):
    x, y, cov = procedural_sample
    inside = cov > 0.99
    # Chromaticity of the shape: log(R/B) of its mean linear colour.
    rgb = np.stack([(x[i][inside[i]]).mean(axis=0) for i in range(len(x))])
    log_rb = np.log(rgb[:, 0] / rgb[:, 2])
    colour = y // len(SHAPES)
    for s in range(len(SHAPES)):
        red, blue = log_rb[(y % 5 == s) & (colour == 0)], log_rb[(y % 5 == s) & (colour == 1)]
        assert red.min() > 0 > blue.max(), SHAPES[s]  # every red shape redder than every blue
    # and the shape's colour does not depend on the shape: same family, same distribution
    for c in range(len(COLOURS)):
        means = [log_rb[(colour == c) & (y % 5 == s)].mean() for s in range(len(SHAPES))]
        assert np.ptp(means) < 0.25 * abs(np.mean(means))


def _shape_descriptor(cov: np.ndarray) -> np.ndarray:
    """Rotation/translation/scale-invariant (area / max radius², second moment / area²)."""
    yy, xx = np.mgrid[: cov.shape[1], : cov.shape[2]] + 0.5
    area = cov.sum(axis=(1, 2))
    cx = (cov * xx).sum(axis=(1, 2)) / area
    cy = (cov * yy).sum(axis=(1, 2)) / area
    r2 = (xx - cx[:, None, None]) ** 2 + (yy - cy[:, None, None]) ** 2
    max_r2 = np.where(cov > 0.5, r2, 0).max(axis=(1, 2))
    moment = (cov * r2).sum(axis=(1, 2)) / area**2
    return np.stack([area / max_r2, 10 * moment], axis=1)


def test_procedural_shape_decides_between_classes_sharing_a_colour(procedural_sample):
    _, y, cov = procedural_sample
    # Shapes that leave the frame have truncated outlines; judge those inside it.
    whole = (cov[:, 0].max(1) == 0) & (cov[:, -1].max(1) == 0)
    whole &= (cov[:, :, 0].max(1) == 0) & (cov[:, :, -1].max(1) == 0)
    d, shape, colour = _shape_descriptor(cov)[whole], (y % 5)[whole], (y // 5)[whole]
    # Nearest centroid on the outline descriptor tells the five shapes apart within a colour...
    for c in range(2):
        sel = colour == c
        centroids = np.stack([d[sel & (shape == s)].mean(0) for s in range(5)])
        guess = np.argmin(((d[sel, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
        assert np.mean(guess == shape[sel]) > 0.85
    # ...and the outlines of the two colours of a shape are alike.
    for s in range(5):
        red, blue = d[(shape == s) & (colour == 0)], d[(shape == s) & (colour == 1)]
        assert np.all(np.abs(red.mean(0) - blue.mean(0)) < 0.1 * np.abs(red.mean(0)))


def test_procedural_variation_illumination_and_contrast(procedural_sample):
    x, _, cov = procedural_sample
    peak = x.reshape(len(x), -1).max(axis=1)
    assert peak.max() <= 1.0 and peak.min() > 10**-1.5 * 0.5
    assert np.quantile(peak, 0.95) / np.quantile(peak, 0.05) > 10  # over a decade of light
    lum = x @ LUMA
    fg = np.array([lum[i][cov[i] > 0.99].mean() for i in range(len(x))])
    bg = np.array([lum[i][cov[i] == 0].mean() for i in range(len(x))])
    contrast = np.abs(np.log(fg / bg))
    assert np.mean(contrast < 0.4) > 0.1  # low-contrast shapes are common
    assert np.mean(contrast > 1.0) > 0.1  # and so are bold ones
    assert np.mean(fg > bg) == pytest.approx(0.5, abs=0.1)  # lighter or darker than the background
    # position, scale and rotation vary: the shapes' centroids and areas spread out
    area = cov.sum(axis=(1, 2))
    assert np.quantile(area, 0.9) / np.quantile(area, 0.1) > 1.8


def test_procedural_encodings_agree():
    kw = {"n": 20, "split": "test", "seed": 2}
    xf, yf = read_all(ProceduralDataset(encoding="float", **kw))
    x8, y8 = read_all(ProceduralDataset(encoding="srgb8", **kw))
    x16, y16 = read_all(ProceduralDataset(encoding="linear16", **kw))
    assert x8.dtype == np.uint8 and x16.dtype == np.uint16 and xf.dtype == np.float32
    assert yf.tolist() == y8.tolist() == y16.tolist()
    np.testing.assert_allclose(x16 / 65535.0, xf, atol=0.5 / 65535 + 1e-7)
    # sRGB curve from its definition (IEC 61966-2-1), written out independently
    v = xf.astype(np.float64)
    ref = np.where(v <= 0.0031308, 12.92 * v, 1.055 * v ** (1 / 2.4) - 0.055)
    assert np.abs(x8.astype(np.float64) - ref * 255).max() <= 0.5 + 1e-3
    assert ProceduralDataset(encoding="linear16", **kw).info().attrs["encoding"] == "linear16"


def test_srgb8_encoding_clips_and_uses_the_one_srgb_curve():
    v = np.linspace(0, 1, 1001, dtype=np.float32)
    np.testing.assert_allclose(srgb_to_linear(linear_to_srgb(v)), v, atol=2e-6)
    assert linear_to_srgb(np.float32(0.18)) == pytest.approx(0.4614, abs=2e-4)  # mid-grey
    np.testing.assert_array_equal(encode(np.array([0.0, 1.0], np.float32), "srgb8"), [0, 255])
    # out-of-range light clips to the ends of the 8-bit code range at the call site
    np.testing.assert_array_equal(encode(np.array([-0.2, 1.5], np.float32), "srgb8"), [0, 255])


def test_procedural_generates_a_reasonable_size_and_any_resolution():
    ds = ProceduralDataset(n=2000, split="train")
    seen = []
    for x, _, index in ds.batches(500):
        assert x.shape[1:] == (32, 32, 3) and x.dtype == np.uint8 and len(x) == len(index)
        seen.append(index)
    assert np.concatenate(seen).tolist() == list(range(2000))
    big = ProceduralDataset(n=4, size=(48, 80), split="test", encoding="float")
    x, _ = read_all(big)
    assert x.shape == (4, 48, 80, 3) and np.all((x >= 0) & (x <= 1))


# -- batches() equals read() ------------------------------------------------------------------
def _datasets_for_batching(tmp_path: Path) -> list[Dataset]:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 65535, (23, 4, 3, 3), dtype=np.uint16)
    npz = tmp_path / "d.npz"
    np.savez(npz, x=x, y=np.arange(23) % 3)
    folder = make_folder(tmp_path / "f", {"a": 6, "b": 5, "c": 4})
    return [
        ArrayDataset(x, np.arange(23) % 3),
        ProceduralDataset(n=17, size=(12, 12), split="val"),
        open_dataset({"kind": "npz", "path": "d.npz", "split": "train"}, base_dir=tmp_path),
        FolderDataset(folder, split="all"),
        Cifar10Dataset(write_fake_cifar(tmp_path / "cifar"), split="all"),
    ]


@pytest.mark.parametrize("batch_size", [1, 3, 7, 64])
def test_batches_equal_read(tmp_path, batch_size):
    for ds in _datasets_for_batching(tmp_path):
        x, y = read_all(ds)
        got = list(ds.batches(batch_size))
        assert all(len(b[0]) <= batch_size for b in got)
        np.testing.assert_array_equal(np.concatenate([b[0] for b in got]), x)
        np.testing.assert_array_equal(np.concatenate([b[1] for b in got]), y)
        index = np.concatenate([b[2] for b in got])
        assert index.dtype == np.int64 and index.tolist() == list(range(len(ds)))
        empty, labels = ds.read(len(ds), len(ds))
        assert empty.shape == (0, *ds.image_shape) and empty.dtype == ds.dtype
        assert labels.shape == (0,)


_PROCEDURAL_SMALL = ProceduralDataset(n=40, size=(8, 10), split="all", seed=4)
_PROCEDURAL_SMALL_X, _PROCEDURAL_SMALL_Y = read_all(_PROCEDURAL_SMALL)


@settings(max_examples=30, deadline=None)
@given(start=st.integers(0, 120), length=st.integers(0, 40))
def test_any_read_range_is_the_slice_of_the_whole(start, length):
    stop = min(start + length, len(_PROCEDURAL_SMALL))
    x, y = _PROCEDURAL_SMALL.read(start, stop)
    np.testing.assert_array_equal(x, _PROCEDURAL_SMALL_X[start:stop])
    np.testing.assert_array_equal(y, _PROCEDURAL_SMALL_Y[start:stop])


# -- folder -----------------------------------------------------------------------------------
def test_folder_bgr_to_rgb_red_png(tmp_path):
    red_bgr = np.zeros((4, 4, 3), np.uint8)
    red_bgr[..., 2] = 255  # OpenCV's channel order: B, G, R
    (tmp_path / "red").mkdir()
    assert cv2.imwrite(str(tmp_path / "red" / "r.png"), red_bgr)
    x, _ = read_all(FolderDataset(tmp_path, split="all"))
    assert x.shape == (1, 4, 4, 3)
    assert x[0, 0, 0].tolist() == [255, 0, 0]  # red is channel 0


def test_folder_16bit_kept_and_formats(tmp_path):
    rgb16 = np.zeros((5, 6, 3), np.uint16)
    rgb16[..., 0], rgb16[..., 1], rgb16[..., 2] = 60000, 1234, 7
    write_image(tmp_path / "a" / "x.png", rgb16)
    write_image(tmp_path / "b" / "y.tif", rgb16[::-1].copy())
    ds = FolderDataset(tmp_path, split="all")
    assert ds.dtype == np.uint16 and ds.encoding == "linear16"
    assert ds.info().attrs["encoding"] == "linear16"
    x, y = read_all(ds)
    order = np.argsort(y)
    np.testing.assert_array_equal(x[order[0]], rgb16)
    np.testing.assert_array_equal(x[order[1]], rgb16[::-1])


def test_folder_gray_alpha_and_jpeg(tmp_path):
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5) * 10
    write_image(tmp_path / "gray" / "gray.png", gray)
    bgra = np.zeros((4, 5, 4), np.uint8)
    bgra[..., 1], bgra[..., 3] = 200, 17  # green, mostly transparent
    (tmp_path / "alpha").mkdir()
    assert cv2.imwrite(str(tmp_path / "alpha" / "alpha.png"), bgra)
    blue = np.zeros((4, 5, 3), np.uint8)
    blue[..., 2] = 250
    write_image(tmp_path / "blue" / "blue.jpg", blue)
    ds = FolderDataset(tmp_path, split="all")
    x, y = read_all(ds)
    assert len(ds) == 3 and ds.class_names == ("alpha", "blue", "gray")
    imgs = {ds.class_names[label]: img for img, label in zip(x, y, strict=True)}  # one per class
    assert np.all(imgs["gray"] == gray[..., None])  # three equal channels
    assert imgs["alpha"][0, 0].tolist() == [0, 200, 0]  # alpha dropped, RGB order
    r, g, b = imgs["blue"].reshape(-1, 3).mean(0)
    assert b > 200 and r < 40 and g < 40


def test_folder_class_names_and_labels(tmp_path):
    root = make_folder(tmp_path, {"cat": 3, "ant": 2, "bee": 4})
    ds = FolderDataset(root, split="all")
    assert ds.class_names == ("ant", "bee", "cat")
    x, y = read_all(ds)
    # pixel value c*40+k was written by make_folder with c the insertion order cat, ant, bee
    written_class = {0: "cat", 1: "ant", 2: "bee"}
    for img, label in zip(x, y, strict=True):
        assert ds.class_names[label] == written_class[int(img[0, 0, 0])]
    explicit = FolderDataset(root, classes=["cat", "bee", "ant", "dog"], split="all")
    assert explicit.class_names == ("cat", "bee", "ant", "dog")
    x2, y2 = read_all(explicit)
    for img, label in zip(x2, y2, strict=True):
        assert explicit.class_names[label] == written_class[int(img[0, 0, 0])]


def test_folder_splits_disjoint_covering_stable(tmp_path):
    root = make_folder(tmp_path, {"a": 20, "b": 10})

    def images(ds: FolderDataset) -> list[tuple[int, ...]]:
        """Each image's identity, read from its pixels: make_folder's (class, k, 7)."""
        return [tuple(int(v) for v in img[0, 0]) for img in read_all(ds)[0]]

    files = {}
    for split in ("train", "val", "test"):
        files[split] = images(FolderDataset(root, split=split, seed=9))
    assert len(files["test"]) == 6 and len(files["val"]) == 3 and len(files["train"]) == 21
    every = files["train"] + files["val"] + files["test"]
    assert len(set(every)) == 30
    assert set(every) == {(0, k, 7) for k in range(20)} | {(1, k, 7) for k in range(10)}
    assert images(FolderDataset(root, split="test", seed=9)) == files["test"]
    limited = FolderDataset(root, split="train", seed=9, limit=5)
    assert images(limited) == files["train"][:5]


def test_folder_errors(tmp_path):
    key = "dataset.path"
    user_error(lambda: FolderDataset(tmp_path / "nope"), key, "does not exist", "nope")
    (tmp_path / "empty").mkdir()
    user_error(lambda: FolderDataset(tmp_path / "empty"), key, "no class sub-folders")
    write_image(tmp_path / "flat" / "a.png", np.zeros((2, 2, 3), np.uint8))
    user_error(lambda: FolderDataset(tmp_path / "flat"), key, "own sub-folder")
    (tmp_path / "hollow" / "cls").mkdir(parents=True)
    user_error(lambda: FolderDataset(tmp_path / "hollow"), key, "has no images", "cls")
    root = make_folder(tmp_path / "labels", {"cat": 1, "dgo": 1})
    err = user_error(
        lambda: FolderDataset(root, classes=["cat", "dog"]), "dataset.classes", "unknown label"
    )
    assert "'dgo'" in err.message and "did you mean 'dog'" in err.message
    write_image(tmp_path / "bad" / "c" / "broken.png", np.zeros((2, 2, 3), np.uint8))
    (tmp_path / "bad" / "c" / "broken.png").write_bytes(b"not a png")
    user_error(lambda: FolderDataset(tmp_path / "bad"), key, "cannot decode", "broken.png")


def test_folder_mixed_sizes_and_depths(tmp_path):
    write_image(tmp_path / "m" / "a" / "0.png", np.zeros((8, 8, 3), np.uint8))
    write_image(tmp_path / "m" / "a" / "1.png", np.zeros((10, 6, 3), np.uint8))
    ds = FolderDataset(tmp_path / "m", split="all")
    err = user_error(lambda: read_all(ds), "dataset.path", "1.png", "10x6", "0.png", "8x8")
    assert "resize" in err.message
    resized = FolderDataset(tmp_path / "m", resize=(5, 7), split="all")
    x, _ = read_all(resized)
    assert x.shape == (2, 5, 7, 3) and resized.image_shape == (5, 7, 3)
    write_image(tmp_path / "d" / "a" / "0.png", np.zeros((4, 4, 3), np.uint8))
    write_image(tmp_path / "d" / "a" / "1.png", np.zeros((4, 4, 3), np.uint16))
    deep = FolderDataset(tmp_path / "d", split="all")
    user_error(lambda: read_all(deep), "dataset.path", "1.png", "16-bit", "8-bit")


# -- npz --------------------------------------------------------------------------------------
@pytest.mark.parametrize("compressed", [False, True])
def test_npz_keeps_values_and_keys_images_by_store_position(tmp_path, compressed):
    rng = np.random.default_rng(0)
    x = rng.random((30, 4, 5, 3), dtype=np.float32)
    y = np.arange(30) % 3
    path = tmp_path / "d.npz"
    (np.savez_compressed if compressed else np.savez)(
        path, x=x, y=y, class_names=np.array(["u", "v", "w"])
    )
    ds = open_dataset(NpzConfig(kind="npz", path="d.npz", split="all"), base_dir=tmp_path)
    assert ds.class_names == ("u", "v", "w") and ds.encoding == "float"
    xs, ys = read_all(ds)
    keys = ds.image_keys(0, len(ds))  # each image's row in the file
    assert sorted(keys.tolist()) == list(range(30))
    np.testing.assert_array_equal(xs, x[keys])
    np.testing.assert_array_equal(ys, y[keys])
    test = open_dataset({"kind": "npz", "path": str(path), "split": "test"}, base_dir=Path("/"))
    assert len(test) == 6 and np.bincount(read_all(test)[1]).tolist() == [2, 2, 2]


def test_npz_uncompressed_is_read_lazily(tmp_path):
    """Opening an uncompressed .npz maps its images instead of loading them: opening and
    reading two images allocate far less than the 12 MB array."""
    x = np.zeros((1000, 32, 32, 3), np.float32)
    np.savez(tmp_path / "big.npz", x=x, y=np.zeros(1000, np.int64))
    tracemalloc.start()
    try:
        ds = open_dataset({"kind": "npz", "path": "big.npz", "split": "all"}, base_dir=tmp_path)
        ds.read(10, 12)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(ds) == 1000
    assert peak < x.nbytes / 4  # a compressed file (loaded whole) peaks above x.nbytes


def test_npz_errors(tmp_path):
    def npz(name, **arrays):
        np.savez(tmp_path / name, **arrays)
        return lambda: open_dataset({"kind": "npz", "path": name}, base_dir=tmp_path)

    key = "dataset.path"
    x = np.zeros((4, 2, 2, 3), np.uint8)
    y = np.array([0, 1, 0, 1])
    user_error(
        lambda: open_dataset({"kind": "npz", "path": "no.npz"}, base_dir=tmp_path),
        key,
        "does not exist",
    )
    user_error(npz("nox.npz", images=x, y=y), key, "no array 'x'", "arrays: images, y")
    user_error(npz("rank.npz", x=x[..., :2], y=y), key, "(N, H, W, 3)", "grayscale")
    user_error(npz("rank5.npz", x=x[..., None], y=y), key, "(N, H, W, 3)")
    user_error(npz("range.npz", x=x, y=y + 1, class_names=np.array(["a", "b"])), key, "label 2")
    user_error(npz("ylen.npz", x=x, y=y[:3]), key, "shape (4,)")
    xf = np.zeros((5, 2, 2, 3), np.float32)
    xf[3, 0, 1, 1] = np.nan
    err = user_error(npz("nan.npz", x=xf, y=np.zeros(5, int)), key)
    assert str(err) == "dataset.path: x contains NaN at image 3"
    user_error(
        npz("obj.npz", x=x, y=y, class_names=np.array(["a", 1], dtype=object)), key, "objects"
    )
    (tmp_path / "junk.npz").write_bytes(b"junk")
    user_error(
        lambda: open_dataset({"kind": "npz", "path": "junk.npz"}, base_dir=tmp_path),
        key,
        "not an .npz",
    )


def test_npz_without_labels_runs_a_sensor(tmp_path):
    """Labels are optional: a sensor run needs images only (no model, no accuracy)."""
    from pipeline.runner import run

    x = np.random.default_rng(1).integers(0, 255, (5, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "nolabels.npz", x=x)
    ds = open_dataset({"kind": "npz", "path": "nolabels.npz", "split": "all"}, base_dir=tmp_path)
    images, labels = read_all(ds)
    assert labels is None and ds.class_names == ()
    np.testing.assert_array_equal(images, x)
    cfg = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text(encoding="utf-8"))
    npz = {"kind": "npz", "path": str(tmp_path / "nolabels.npz"), "split": "all"}
    cfg.update(dataset=npz, model=None)
    result = run(cfg, store=False, progress=False)
    assert result.labels is None and result.arrays["raw"].shape[0] == 5


@pytest.mark.parametrize("gray_shape", [(4, 3, 5), (4, 3, 5, 1)])
def test_npz_grayscale_reads_as_three_equal_channels(tmp_path, gray_shape):
    """Like the folder reader, a grayscale image is its value in R, G and B."""
    gray = np.arange(60, dtype=np.uint16).reshape(gray_shape) * 1000
    np.savez(tmp_path / "g.npz", x=gray, y=np.array([0, 1, 0, 1]))
    ds = open_dataset({"kind": "npz", "path": "g.npz", "split": "all"}, base_dir=tmp_path)
    assert ds.image_shape == (3, 5, 3) and ds.encoding == "linear16"
    images, _ = read_all(ds)
    planes = gray.reshape(4, 3, 5)
    for c in range(3):
        np.testing.assert_array_equal(images[..., c], planes)
    np.testing.assert_array_equal(ds.read(2, 3)[0][0, :, :, 1], planes[2])


def test_npz_memmap_of_zip64_and_fortran(tmp_path):
    # np.savez writes zip64 local headers; a Fortran-ordered array must come back equal.
    x = np.asfortranarray(np.random.default_rng(0).integers(0, 255, (6, 3, 4, 3), dtype=np.uint8))
    path = tmp_path / "f.npz"
    np.savez(path, x=x, y=np.zeros(6, np.int64))
    with zipfile.ZipFile(path) as zf:
        assert zf.getinfo("x.npy").compress_type == zipfile.ZIP_STORED
    ds = open_dataset({"kind": "npz", "path": "f.npz", "split": "all"}, base_dir=tmp_path)
    np.testing.assert_array_equal(read_all(ds)[0], x[ds.image_keys(0, len(ds))])


# -- cifar10 ----------------------------------------------------------------------------------
CIFAR_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def write_fake_cifar(root: Path, per_batch: int = 10) -> Path:
    """CIFAR-10 python batches in the real format (pickled dicts, bytes keys, CHW rows)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        data[:, 0] = b  # red channel of pixel (0, 0) tells the batch
        data[:, 1] = np.arange(per_batch)  # red of pixel (0, 1): the row in the batch
        batch = {
            b"batch_label": f"fake {name}".encode(),
            b"labels": [int(v) for v in (np.arange(per_batch) + b) % 10],
            b"data": data,
            b"filenames": [f"img{k}.png".encode() for k in range(per_batch)],
        }
        with open(root / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    meta = {b"label_names": [n.encode() for n in CIFAR_NAMES], b"num_cases_per_batch": per_batch}
    with open(root / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return root


def test_cifar10_format_and_splits(tmp_path):
    root = write_fake_cifar(tmp_path / "cifar-10-batches-py", per_batch=20)
    test = open_dataset({"kind": "cifar10", "path": ".", "split": "test"}, base_dir=tmp_path)
    assert test.class_names == tuple(CIFAR_NAMES) and len(test) == 20
    assert test.image_shape == (32, 32, 3) and test.encoding == "srgb8"
    x, y = read_all(test)
    with open(root / "test_batch", "rb") as f:
        raw = pickle.load(f)
    chw = raw[b"data"].reshape(-1, 3, 32, 32)
    np.testing.assert_array_equal(x[..., 0], chw[:, 0])  # R plane first in the file
    np.testing.assert_array_equal(x[..., 2], chw[:, 2])
    assert x[5, 3, 7].tolist() == [raw[b"data"][5, c * 1024 + 3 * 32 + 7] for c in range(3)]
    assert y.tolist() == raw[b"labels"]
    train = Cifar10Dataset(root, split="train", val_fraction=0.1, seed=1)
    val = Cifar10Dataset(root, split="val", val_fraction=0.1, seed=1)
    assert len(train) == 90 and len(val) == 10
    key = lambda ds: {(int(a), int(b)) for a, b in read_all(ds)[0][:, 0, :2, 0]}  # noqa: E731
    assert not key(train) & key(val) and len(key(train) | key(val)) == 100
    assert all(batch < 5 for batch, _ in key(train) | key(val))  # test images never in train
    assert np.bincount(read_all(val)[1]).tolist() == [1] * 10  # stratified
    assert len(Cifar10Dataset(root, split="all", limit=33)) == 33


def test_cifar10_errors(tmp_path):
    err = user_error(
        lambda: Cifar10Dataset(tmp_path / "none"), "dataset.path", "does not exist", "test_batch"
    )
    assert "cifar-10-python.tar.gz" in err.message and "nothing is downloaded" in err.message
    root = write_fake_cifar(tmp_path / "c")
    (root / "data_batch_3").unlink()
    Cifar10Dataset(root, split="test")  # the test split needs only test_batch
    user_error(lambda: Cifar10Dataset(root, split="train"), "dataset.path", "lacks data_batch_3")


def test_cifar10_refuses_code_in_pickles(tmp_path):
    root = write_fake_cifar(tmp_path / "c")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f, protocol=2)
    user_error(lambda: Cifar10Dataset(root, split="test"), "dataset.path", "refusing to load")
    assert not marker.exists()


# -- digits -----------------------------------------------------------------------------------
def test_digits_missing_sklearn_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # makes `import sklearn...` fail
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    err = user_error(
        lambda: open_dataset({"kind": "digits"}, base_dir=Path(".")), "dataset.kind", "scikit-learn"
    )
    assert "pip install 'sensorlab[digits]'" in err.message


def test_digits_reader_with_a_stand_in_sklearn(monkeypatch):
    """The reader's own work (scaling, upscaling, RGB, splits) on a stand-in load_digits."""
    images = np.zeros((50, 8, 8))
    images[:, 2:6, 3:5] = 16.0
    images[np.arange(50), 0, 0] = np.arange(50) % 17
    fake = types.ModuleType("sklearn.datasets")
    fake.load_digits = lambda: types.SimpleNamespace(images=images, target=np.arange(50) % 10)
    monkeypatch.setitem(sys.modules, "sklearn", types.ModuleType("sklearn"))
    monkeypatch.setitem(sys.modules, "sklearn.datasets", fake)
    ds = open_dataset({"kind": "digits", "size": 16, "split": "all"}, base_dir=Path("."))
    assert ds.image_shape == (16, 16, 3) and ds.dtype == np.uint8 and ds.encoding == "srgb8"
    x, y = read_all(ds)
    assert np.all(x[..., 0] == x[..., 1]) and np.all(x[..., 1] == x[..., 2])
    assert x[:, 8, 7].min() == 255 and x[:, 15, 15].max() == 0  # ink (16) -> 255, paper -> 0
    assert y.tolist() == (ds.image_keys(0, len(ds)) % 10).tolist()
    test = open_dataset({"kind": "digits", "split": "test"}, base_dir=Path("."))
    assert len(test) == 10 and np.bincount(read_all(test)[1]).tolist() == [1] * 10


def test_digits_with_sklearn():

    ds = open_dataset({"kind": "digits", "split": "all", "size": 24}, base_dir=Path("."))
    assert len(ds) == 1797 and ds.class_names == tuple("0123456789")
    x, y = ds.read(0, 50)
    assert x.shape == (50, 24, 24, 3) and x.max() > 200 and set(y.tolist()) <= set(range(10))


# -- configs and open_dataset ------------------------------------------------------------------
CONFIGS = [ProceduralConfig, FolderConfig, NpzConfig, Cifar10Config, DigitsConfig]


@pytest.mark.parametrize("model", CONFIGS)
def test_config_fields_documented_and_strict(model):
    for name, field in model.model_fields.items():
        assert field.description, f"{model.__name__}.{name} has no description"
        assert field.annotation is not None
    assert model.model_config["extra"] == "forbid"


def test_dataset_config_union_and_errors(tmp_path):
    adapter = TypeAdapter(DatasetConfig)
    cfg = adapter.validate_python({"kind": "procedural", "n": 12, "size": [16, 20]})
    assert isinstance(cfg, ProceduralConfig) and cfg.split == "test"
    ds = open_dataset(cfg, base_dir=tmp_path)
    assert len(ds) == 12 and ds.image_shape == (16, 20, 3)
    with pytest.raises(ValidationError):
        adapter.validate_python({"kind": "procedural", "colour": "red"})
    user_error(lambda: open_dataset({"kind": "procedural", "n": 0}, base_dir=tmp_path), "dataset.n")
    user_error(
        lambda: open_dataset({"kind": "folder", "path": "x", "bogus": 1}, base_dir=tmp_path),
        "dataset.bogus",
    )
    user_error(
        lambda: open_dataset({"kind": "npzz"}, base_dir=tmp_path),
        "dataset.kind",
        "did you mean 'npz'",
    )
    user_error(
        lambda: open_dataset({"kind": "procedural", "split": "dev"}, base_dir=tmp_path),
        "dataset.split",
    )
    user_error(
        lambda: open_dataset({"kind": "procedural", "size": 4}, base_dir=tmp_path),
        "dataset.size",
        "from 8 to 4096",
    )
    user_error(lambda: open_dataset({"n": 3}, base_dir=tmp_path), "dataset.kind", "missing kind")


def test_relative_paths_resolve_against_base_dir_and_empty_split(tmp_path):
    make_folder(tmp_path / "configs" / "imgs", {"a": 2, "b": 2})
    ds = open_dataset(
        {"kind": "folder", "path": "imgs", "split": "all"}, base_dir=tmp_path / "configs"
    )
    assert len(ds) == 4
    user_error(
        lambda: open_dataset(
            {"kind": "folder", "path": "imgs", "split": "val", "val_fraction": 0.0},
            base_dir=tmp_path / "configs",
        ),
        "dataset.split",
        "empty",
    )
