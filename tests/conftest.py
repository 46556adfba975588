"""Shared fixtures: toy stages registered in the tests themselves, and a plugin on disk."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.registry import Registry
from pipeline.stage import Stage, StageParams, Unit, param

ROOT = Path(__file__).resolve().parents[1]


class ToScene(Stage):
    """Image values to photons (linear scale)."""

    name = "toy_scene"
    takes = (Unit.IMAGE,)
    gives = Unit.PHOTONS

    class Params(StageParams):
        photons: float = param(100.0, unit="photons", doc="Photons at full scale.", gt=0)

    def setup(self, info):
        return info.evolve(unit=self.gives, dtype=np.float64)

    def process(self, x, batch):
        return x.astype(np.float64) / 255.0 * self.params.photons


class ToyShot(Stage):
    """Poisson shot noise plus a fixed offset pattern: per-image and per-sensor randomness."""

    name = "toy_shot"
    takes = (Unit.PHOTONS,)
    gives = Unit.ELECTRONS

    class Params(StageParams):
        dsnu_e: float = param(1.0, unit="e-", doc="Offset pattern rms.", ge=0)

    def setup(self, info):
        self.pattern = self.pattern_rng().normal(0.0, self.params.dsnu_e, info.shape)
        return info.evolve(unit=self.gives, dtype=np.float64)

    def process(self, x, batch):
        rngs = self.image_rngs(batch.image_index)
        return np.stack([r.poisson(xi) + self.pattern for r, xi in zip(rngs, x, strict=True)])


class ToyADC(Stage):
    """Electrons to N-bit codes (floor)."""

    name = "toy_adc"
    takes = (Unit.ELECTRONS,)
    gives = Unit.DN

    class Params(StageParams):
        bits: int = param(10, doc="Resolution.", ge=1, le=16)

    def setup(self, info):
        return info.evolve(unit=self.gives, dtype=np.uint16, attrs={"bits": self.params.bits})

    def process(self, x, batch):
        return np.clip(np.floor(x), 0, 2**self.params.bits - 1).astype(np.uint16)


class Boom(Stage):
    """Fails when it meets image ``at`` (simulates a crash midway through a run)."""

    name = "toy_boom"
    takes = ()
    gives = Unit.DN

    class Params(StageParams):
        at: int = param(10, doc="Image index that triggers the failure.", ge=0)

    def setup(self, info):
        return info

    def process(self, x, batch):
        if (batch.image_index >= self.params.at).any():
            raise RuntimeError("boom")
        return x


TOY_STAGES = [ToScene, ToyShot, ToyADC, Boom]


@pytest.fixture
def toy_registry() -> Registry:
    return Registry(TOY_STAGES, entry_points=False)


@pytest.fixture
def npz_dataset(tmp_path) -> Path:
    """40 random 8×8 RGB uint8 images with labels 0..3."""
    rng = np.random.default_rng(123)
    path = tmp_path / "toy.npz"
    x = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    np.savez(path, x=x, y=np.arange(40) % 4)
    return path


def toy_config(dataset: Path, out: Path, **run) -> dict:
    return {
        "seed": 7,
        "dataset": {"kind": "npz", "path": str(dataset), "split": "all"},
        "sensor": [
            {"stage": "toy_scene", "photons": 500},
            {"stage": "toy_shot", "dsnu_e": 2.0},
            {"stage": "toy_adc", "bits": 8},
        ],
        "run": {"out": str(out), **run},
    }


PLUGIN_SOURCE = '''
import time
import numpy as np
from pipeline.stage import Stage, StageParams, Unit, param


class Slow(Stage):
    """Sleeps per batch (for interrupt tests)."""
    name = "slow"
    takes = ()
    gives = Unit.DN

    class Params(StageParams):
        seconds: float = param(0.2, unit="s", doc="Sleep per batch.", ge=0)

    def setup(self, info):
        return info

    def process(self, x, batch):
        time.sleep(self.params.seconds)
        return x


class Photons(Stage):
    """Image values to photons."""
    name = "plug_photons"
    takes = (Unit.IMAGE,)
    gives = Unit.PHOTONS

    def setup(self, info):
        return info.evolve(unit=self.gives, dtype=np.float32)

    def process(self, x, batch):
        return x.astype(np.float32)


class Counts(Stage):
    """Electrons to DN."""
    name = "plug_counts"
    takes = (Unit.ELECTRONS,)
    gives = Unit.DN

    def process(self, x, batch):
        return x
'''


def write_plugin(site: Path, package: str, source: str, stages: dict[str, str]) -> Path:
    """A plugin on disk: ``site/package/__init__.py`` and a dist-info whose
    ``sensorlab.stages`` entry points map stage names to ``package:Class`` (nothing installed;
    put ``site`` on sys.path or PYTHONPATH)."""
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text(source)
    info = site / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {package}:{cls}\n" for name, cls in stages.items())
    (info / "entry_points.txt").write_text(f"[sensorlab.stages]\n{lines}")
    return site


@pytest.fixture
def plugin_dir(tmp_path) -> Path:
    """A plugin package with a dist-info whose entry points name its stages (nothing installed)."""
    stages = {"slow": "Slow", "plug_photons": "Photons", "plug_counts": "Counts"}
    return write_plugin(tmp_path / "plugin_site", "toyplug", PLUGIN_SOURCE, stages)


def cli_env(plugin: Path | None = None) -> dict:
    env = dict(os.environ)
    paths = [str(plugin)] if plugin else []
    paths.append(str(ROOT))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def sensorlab(*args: str, cwd: Path, plugin: Path | None = None, timeout: float = 120):
    """Run the real CLI (``python -m pipeline``) in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *map(str, args)],
        cwd=cwd,
        env=cli_env(plugin),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
