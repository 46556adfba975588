"""The stage contract: random keys per image, per sensor, never the same stream; the one
declaration of SignalInfo.attrs keys."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import ToyShot

from pipeline.stage import SIGNAL_ATTRS, SignalInfo, Unit, read_attr

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"


def _draws(rng):
    return rng.standard_normal(8)


def test_image_and_pattern_streams_never_coincide():
    stage = ToyShot(seed=5, sensor_seed=5, index=1)
    patterns = [_draws(stage.pattern_rng(k)) for k in range(4)]
    # image keys that equal the pattern keys' other elements once zero-padded, and ordinary ones
    for key in (0, 1, 2, 1509, 0x5E5, 2**40, 2 * 2**40 + 7):
        (rng,) = stage.image_rngs([key])
        image = _draws(rng)
        assert not any(np.array_equal(image, p) for p in patterns), key


def test_keys_depend_on_seed_stage_and_image():
    a = ToyShot(seed=5, index=1)
    b = ToyShot(seed=6, index=1)
    c = ToyShot(seed=5, index=2)
    first = [_draws(r) for r in a.image_rngs([0, 1])]
    assert not np.array_equal(first[0], first[1])
    assert not np.array_equal(first[0], _draws(b.image_rngs([0])[0]))
    assert not np.array_equal(first[0], _draws(c.image_rngs([0])[0]))
    np.testing.assert_array_equal(first[1], _draws(a.image_rngs([1])[0]))  # repeatable
    # the sensor seed, not the run seed, decides the fixed pattern
    d = ToyShot(seed=99, sensor_seed=5, index=1)
    np.testing.assert_array_equal(_draws(a.pattern_rng()), _draws(d.pattern_rng()))


# -- SignalInfo.attrs: one declaration --------------------------------------------------------
@pytest.mark.parametrize(
    "overrides",
    [
        [],  # the default chain: Bayer, 10-bit linear ADC, raw with auto gain, the CNN
        [
            "sensor.scene.mean_photons=null",
            "sensor.scene.illuminance_lux=100",
            "sensor.scene.exposure_s=0.01",
            "sensor.scene.f_number=2.0",
            "sensor.scene.pixel_pitch_um=2.0",
            "sensor.optics.psf=airy",
            "sensor.photodetector.cfa=stacked",
            "sensor.adc.curve=log",
        ],
        [  # a spectral signal: bands, per-band Airy PSF, camera QE curves
            "sensor.scene.spectral=recover",
            "sensor.scene.f_number=4.0",
            "sensor.scene.pixel_pitch_um=2.0",
            "sensor.optics.psf=airy",
            "sensor.photodetector.qe_curves=camera",
        ],
    ],
)
def test_every_attr_the_shipped_stages_set_is_declared(overrides):
    from pipeline.config import load_config
    from pipeline.runner import build_chain, open_config_dataset

    loaded = load_config(DEFAULT_CONFIG, ["dataset.n=4", *overrides])
    chain = build_chain(loaded, open_config_dataset(loaded).info())
    keys = {key for info in chain.infos for key in info.attrs}
    assert keys <= set(SIGNAL_ATTRS), keys - set(SIGNAL_ATTRS)
    assert {"encoding", "cfa", "bits", "black_level_dn", "adc_transfer", "logits"} <= keys
    for info in chain.infos:  # read through the declaration, the same values
        for key, value in info.attrs.items():
            assert info.attr(key) is value


def test_each_declared_attr_says_unit_setter_and_meaning():
    for key, decl in SIGNAL_ATTRS.items():
        assert decl.key == key and decl.set_by and decl.meaning.endswith(".")
    assert SIGNAL_ATTRS["full_well_e"].unit == "e⁻" and SIGNAL_ATTRS["bits"].set_by == "adc"


def test_reading_an_undeclared_attr_fails_with_the_closest_key():
    info = SignalInfo(Unit.DN, (2, 2), np.uint16, {"black_level_dn": 64})
    assert info.attr("black_level_dn") == 64 and info.attr("white_level_dn", 1023) == 1023
    with pytest.raises(KeyError, match=r"'black_level' is not a declared .* 'black_level_dn'"):
        info.attr("black_level")
    with pytest.raises(KeyError, match="not a declared"):
        read_attr({"bitz": 3}, "bitz")


# -- tiles and threads ------------------------------------------------------------------------
def test_tile_rows_cover_every_row_once_within_the_tile_size():
    from pipeline.stage import TILE_ELEMENTS, tile_rows

    assert tile_rows((32, 32)) == [slice(0, 32)]  # the default image: one tile
    assert tile_rows((512, 512)) == [slice(0, 512)]  # TILE_ELEMENTS exactly
    for shape in [(2048, 2048), (1000, 333, 3), (7, 2**20), (513, 512)]:
        bands = tile_rows(shape)
        assert len(bands) > 1
        rows = np.concatenate([np.arange(shape[0])[b] for b in bands])
        np.testing.assert_array_equal(rows, np.arange(shape[0]))
        per_row = int(np.prod(shape[1:]))
        assert all((b.stop - b.start) * per_row <= max(TILE_ELEMENTS, per_row) for b in bands)


def test_tile_groups_hold_every_tile_once_and_pack_small_images(monkeypatch):
    import pipeline.stage
    from pipeline.stage import image_groups, tile_groups, tile_rows

    monkeypatch.setattr(pipeline.stage, "TILE_ELEMENTS", 1000)
    keys = [40, 3, 7, 9, 11, 12, 13]
    small = tile_groups(keys, (10, 30))  # 300 elements: three images per group
    assert [g.positions for g in small] == [slice(0, 3), slice(3, 6), slice(6, 7)]
    assert [t.image_key for g in small for t in g.tiles] == keys
    assert all(t.number == 0 and t.rows == slice(0, 10) for g in small for t in g.tiles)
    assert [t.position for g in small for t in g.tiles] == list(range(7))
    large = tile_groups(keys[:2], (50, 30))  # 1500 elements: bands of 33 rows
    bands = tile_rows((50, 30))
    assert len(bands) == 2
    assert [(g.positions, g.rows) for g in large] == [
        (slice(i, i + 1), rows) for i in range(2) for rows in bands
    ]
    assert [(t.image_key, t.number) for g in large for t in g.tiles] == [
        (40, 0),
        (40, 1),
        (3, 0),
        (3, 1),
    ]
    assert image_groups(7, (50, 30)) == [slice(i, i + 1) for i in range(7)]
    assert image_groups(7, (10, 30)) == [slice(0, 3), slice(3, 6), slice(6, 7)]


@pytest.mark.parametrize("threads", ["1", "2"])
def test_map_images_gives_the_whole_batch_result(monkeypatch, threads):
    import pipeline.stage
    from pipeline.stage import THREADS_ENV, Batch

    monkeypatch.setattr(pipeline.stage, "TILE_ELEMENTS", 40)
    monkeypatch.setenv(THREADS_ENV, threads)
    x = np.arange(9 * 4 * 5, dtype=np.float32).reshape(9, 4, 5)
    seen = []

    def per_image_sum(group, batch):  # each image's own sum: exact in any grouping
        seen.append(batch.image_index.tolist())
        return group * 2 + group.sum(axis=(1, 2), keepdims=True)

    stage = ToyShot(seed=1)
    index = np.arange(100, 109)
    out = stage.map_images(per_image_sum, x, Batch(index), (4, 5), np.float32)
    np.testing.assert_array_equal(out, per_image_sum(x, Batch(index)))
    assert sorted(seen[:-1]) == [[100, 101], [102, 103], [104, 105], [106, 107], [108]]


@pytest.mark.parametrize("tile_elements", [12, 1000])  # bands of 2 rows; whole images
@pytest.mark.parametrize("threads", ["1", "2"])
def test_map_tiles_calls_fn_once_per_tile_with_its_own_stream(monkeypatch, threads, tile_elements):
    import pipeline.stage
    from pipeline.stage import THREADS_ENV, Batch, tile_rows

    monkeypatch.setattr(pipeline.stage, "TILE_ELEMENTS", tile_elements)
    monkeypatch.setenv(THREADS_ENV, threads)
    stage = ToyShot(seed=2)
    x = np.arange(5 * 6 * 6, dtype=np.float64).reshape(5, 6, 6)
    index = np.array([9, 4, 7, 1, 3])

    def noisy(tile_x, tile):
        return tile_x + stage.tile_rng(tile).standard_normal(tile_x.shape)

    out = stage.map_tiles(noisy, x, Batch(index), (6, 6), np.float32)
    assert out.dtype == np.float32
    for i, key in enumerate(index):
        for t, rows in enumerate(tile_rows((6, 6))):
            tile = pipeline.stage.Tile(i, int(key), t, rows)
            np.testing.assert_array_equal(out[i, rows], noisy(x[i, rows], tile).astype(np.float32))


def test_tile_zero_draws_the_image_stream_and_later_tiles_their_own():
    from pipeline.stage import Tile

    stage = ToyShot(seed=5, sensor_seed=5, index=1)
    image = _draws(stage.image_rngs([7])[0])
    np.testing.assert_array_equal(_draws(stage.tile_rng(Tile(3, 7, 0, slice(0, 4)))), image)
    later = [_draws(stage.tile_rng(Tile(0, 7, t, slice(0, 4)))) for t in (1, 2)]
    others = [image, later[1], *(_draws(stage.pattern_rng(k)) for k in range(4))]
    others += [_draws(r) for r in stage.image_rngs([0, 1, 2, 8])]
    assert not any(np.array_equal(later[0], o) for o in others)
    # the key is (image key, tile number): the image's position in the batch does not count
    np.testing.assert_array_equal(_draws(stage.tile_rng(Tile(9, 7, 1, slice(4, 8)))), later[0])


def test_worker_threads_reads_the_environment(monkeypatch):
    from pipeline.stage import THREADS_ENV, worker_threads

    monkeypatch.setenv(THREADS_ENV, "3")
    assert worker_threads() == 3
    for bad in ("0", "-2", "two", ""):
        monkeypatch.setenv(THREADS_ENV, bad)
        assert worker_threads() >= 1


@pytest.mark.parametrize("threads", ["1", "2", "5"])
def test_run_parallel_keeps_task_order_and_raises_the_first_error(monkeypatch, threads):
    from pipeline.stage import THREADS_ENV, run_parallel

    monkeypatch.setenv(THREADS_ENV, threads)
    assert run_parallel([lambda k=k: k * k for k in range(40)]) == [k * k for k in range(40)]
    # a task that splits again runs its subtasks in turn, in order
    nested = run_parallel([lambda: run_parallel([lambda k=k: k for k in range(5)])] * 3)
    assert nested == [list(range(5))] * 3

    def fail(k):
        raise ValueError(f"task {k}")

    tasks = [lambda: 1, lambda: fail(1), lambda: 2, lambda: fail(3)]
    with pytest.raises(ValueError, match="task 1"):
        run_parallel(tasks)
