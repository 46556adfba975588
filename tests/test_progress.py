"""Progress in a log: a line per 10 % (or per cell) with elapsed and remaining time."""

from __future__ import annotations

import io

import yaml
from conftest import ROOT, sensorlab

from pipeline.progress import LogProgress, format_duration, progress


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _log(total, clock, **kw):
    out = io.StringIO()
    defaults = {"desc": "run", "unit": "img", "show": True, "initial": 0, "every_pct": 10.0}
    return LogProgress(total, **{**defaults, **kw}, stream=out, clock=clock), out


def test_a_line_per_ten_percent_with_elapsed_and_remaining_time():
    clock = FakeClock()
    bar, out = _log(100, clock)
    for _ in range(14):  # 7 images per batch, 2 s per batch
        clock.t += 2.0
        bar.update(7)
    clock.t += 2.0
    bar.update(2)  # the last images: 100 %
    lines = out.getvalue().splitlines()
    # one line at the first batch past each multiple of 10 %, and one at the end
    assert [int(line.split(" % (")[1].split("/")[0]) for line in lines] == [
        14, 21, 35, 42, 56, 63, 70, 84, 91, 100
    ]  # fmt: skip
    # after 2 batches: 14 images in 4 s, 86 left at 3.5 img/s
    assert lines[0] == "run: 14 % (14/100 img), 4 s elapsed, about 25 s left"
    assert lines[-1] == "run: 100 % (100/100 img), 30 s elapsed"


def test_a_line_per_cell_and_the_rate_of_this_process_only():
    clock = FakeClock()
    bar, out = _log(10, clock, desc="sweep s", unit="cell", initial=4, every_pct=0)
    for _ in range(3):
        clock.t += 60.0
        bar.update(1)
    lines = out.getvalue().splitlines()
    assert lines == [
        "sweep s: 50 % (5/10 cell), 1 min 00 s elapsed, about 5 min 00 s left",
        "sweep s: 60 % (6/10 cell), 2 min 00 s elapsed, about 4 min 00 s left",
        "sweep s: 70 % (7/10 cell), 3 min 00 s elapsed, about 3 min 00 s left",
    ]


def test_durations():
    assert [format_duration(s) for s in (0.4, 59.4, 61, 3599, 7441)] == [
        "0 s",
        "59 s",
        "1 min 01 s",
        "59 min 59 s",
        "2 h 04 min",
    ]


def test_a_terminal_gets_a_bar_a_log_gets_lines_and_off_is_silent():
    bar = progress(5, desc="run", unit="img", stream=Terminal())
    assert type(bar).__name__.startswith("tqdm")
    bar.close()
    log = io.StringIO()
    assert isinstance(progress(5, desc="run", unit="img", stream=log), LogProgress)
    quiet = progress(5, desc="run", unit="img", show=False, stream=log)
    quiet.update(5)
    quiet.write("epoch 1/1")
    assert log.getvalue() == ""


def test_run_and_sweep_write_progress_lines_to_a_log(tmp_path):
    config = str(ROOT / "configs" / "default.yaml")
    small = ["--set", "dataset.n=20", "--set", "run.batch_size=2", "--set", "model=null"]
    res = sensorlab("run", config, *small, "--out", "runs", cwd=tmp_path)  # stderr is a pipe
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert [line.split(" %")[0] for line in lines] == [f"run: {p}" for p in range(10, 101, 10)]
    assert lines[0].startswith("run: 10 % (2/20 img), ") and "elapsed, about " in lines[0]

    sweep = tmp_path / "s.yaml"
    spec = {"base": config, "axes": {"sensor.adc.bits": [2, 4]}, "out": str(tmp_path),
            "name": "sw"}  # fmt: skip
    sweep.write_text(yaml.safe_dump(spec), encoding="utf-8")
    res = sensorlab("sweep", str(sweep), "--set", "dataset.n=4", "--set", "model=null",
                    cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("sweep sw:")]
    assert [line.split(",")[0] for line in lines] == [
        "sweep sw: 50 % (1/2 cell)",
        "sweep sw: 100 % (2/2 cell)",
    ]
