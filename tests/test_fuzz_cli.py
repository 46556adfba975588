"""Property test (issue 12): a mutated config or sweep file runs, or is refused in one line.

Hypothesis mutates configs/default.yaml (on a 2-image dataset, with the shipped model)
and a small sweep file: values replaced by other types, numbers near and beyond limits,
NaN and inf, unicode and control characters, deep nesting; keys removed or added. Each
example goes through the real command line in-process (``pipeline.cli.main``) and must
exit 0, or exit 2 with exactly one line on stderr, never a traceback, with a bounded
peak of traced memory. Keys that legitimately scale the work (images, image size, batch
size, pixels per image pixel) are left alone here: their bounds are tested in
tests/test_hostile.py.
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import math
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pipeline.cli import main

WORK_KEYS = {
    ("dataset", "n"),
    ("dataset", "size"),
    ("run", "batch_size"),
    ("pixels_per_image_pixel",),
}
PEAK_GROWTH_BYTES = 1 << 30  # how far one example may raise the process's peak memory

NUMBERS = st.sampled_from(
    [0, -1, 1, 2**31, 2**63, -(2**63), 10**9, 10**12, 10**300, 0.5, 1e-300, 1e300, -1e300]
) | st.sampled_from([math.nan, math.inf, -math.inf])
TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40
) | st.sampled_from(["", "x" * 5000, "../../etc", "a.b[1].c", "!!python/object:os.system", "\x00"])
LEAVES = st.none() | st.booleans() | NUMBERS | st.integers() | st.floats() | TEXT


@st.composite
def deep(draw) -> Any:
    """A list or mapping nested 1–150 levels deep."""
    depth = draw(st.integers(1, 150))
    value: Any = draw(LEAVES)
    for _ in range(depth):
        value = [value] if draw(st.booleans()) else {"k": value}
    return value


VALUES = LEAVES | st.lists(LEAVES, max_size=4) | st.dictionaries(TEXT, LEAVES, max_size=3) | deep()


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a nested dict/list, parents before children."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _scales_work(path: tuple) -> bool:
    return any(path[-len(k) :] == k for k in WORK_KEYS if len(path) >= len(k))


@st.composite
def mutated(draw, base: dict) -> dict:
    """``base`` with 1–3 mutations: a value replaced, a key removed or a key added."""
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(data) if not _scales_work(p)]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "replace", "remove", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(VALUES)
        elif action == "remove":
            parent.pop(path[-1])
        elif isinstance(parent, dict):
            parent[draw(TEXT)] = draw(VALUES)
    return data


def _base_config(out: str) -> dict:
    cfg = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    cfg["dataset"]["n"] = 2
    cfg["model"]["path"] = str(ROOT / "data" / "models" / "procedural32-default" / "model.yaml")
    cfg["run"] = {
        "out": out,
        "batch_size": 2,
        "samples": 0,
        "progress": False,
        "record": {"stages": "none", "images": 0},
    }
    return cfg


BASE = _base_config("runs")  # paths relative to the test's folder (the cwd while it runs)
SWEEP = {"base": "base.yaml", "axes": {"sensor.adc.bits": [8, 10]}, "out": "sweeps"}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """The folder every example runs in (outputs land here)."""
    return tmp_path_factory.mktemp("fuzz")


def _keep_outputs_inside(data: Any, key: tuple, where: str) -> None:
    """Put the output folder back (a fuzzed absolute path would write outside the test)."""
    node = data
    for part in key[:-1]:
        if not isinstance(node, dict) or not isinstance(node.get(part), dict):
            return
        node = node[part]
    if isinstance(node, dict) and key[-1] in node:
        node[key[-1]] = where


def _dump(data: Any, path: Path) -> Path:
    try:
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    except (yaml.YAMLError, RecursionError):
        text = repr(data)  # not representable as YAML: the file holds text that is not
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


def _assert_runs_or_one_line(folder: Path, args: list[str]) -> None:
    err = io.StringIO()
    with (
        peak_growth() as growth,
        contextlib.chdir(folder),
        contextlib.redirect_stderr(err),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        status = main(args)
    text = err.getvalue()
    event(f"exit {status}")
    assert "Traceback" not in text, text
    assert growth[0] < PEAK_GROWTH_BYTES, f"peak memory grew by {growth[0] / 2**20:.0f} MiB"
    if status != 0:
        assert status == 2, (status, text)
        assert len(text.strip().splitlines()) == 1, text
        assert text.startswith("sensorlab: error: "), text


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


@contextlib.contextmanager
def peak_growth() -> Iterator[list[int]]:
    """How far the peak memory rose above the start, in bytes, while the block ran.

    Linux: the process's peak RSS (VmHWM), reset first through /proc/self/clear_refs;
    elsewhere the peak of memory traced by tracemalloc (slower).
    """
    out = [0]
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        start = _status_kib("VmRSS")
    except OSError:
        tracemalloc.start()
        try:
            yield out
            out[0] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return
    yield out
    out[0] = (_status_kib("VmHWM") - start) * 1024


SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@SETTINGS
@given(config=mutated(BASE))
def test_mutated_default_config_runs_or_is_refused_in_one_line(work, config):
    _keep_outputs_inside(config, ("run", "out"), "runs")
    _assert_runs_or_one_line(work, ["run", str(_dump(config, work / "config.yaml")), "-q"])


@settings(SETTINGS, max_examples=60)
@given(sweep=mutated(SWEEP))
def test_mutated_sweep_file_runs_or_is_refused_in_one_line(work, sweep):
    _keep_outputs_inside(sweep, ("out",), "sweeps")
    if isinstance(sweep, dict):
        sweep.setdefault("name", f"fuzz{next(_COUNTER)}")  # a fresh folder per example
    base = copy.deepcopy(BASE)
    base["model"] = None
    _dump(base, work / "base.yaml")
    _assert_runs_or_one_line(work, ["sweep", str(_dump(sweep, work / "sweep.yaml")), "-q"])


_COUNTER = itertools.count()
