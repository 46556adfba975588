"""``sensorlab report FOLDER`` and the reports written at the end of each command."""

from __future__ import annotations

from pathlib import Path

from conftest import sensorlab

from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_report_command_writes_the_page(characterize_folder: Path, capsys) -> None:
    (characterize_folder / "report.html").unlink(missing_ok=True)
    assert main(["report", str(characterize_folder)]) == 0
    assert (characterize_folder / "report.html").is_file()
    assert capsys.readouterr().out.strip() == f"report: {characterize_folder / 'report.html'}"


def test_report_of_a_plain_folder_is_exit_2(tmp_path: Path) -> None:
    proc = sensorlab("report", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"sensorlab: error: {tmp_path}: not a sensorlab result folder "
        "(none of sweep.json, datasheet.json, fit.json, history.csv, manifest.json)"
    )


def test_run_sweep_and_characterize_write_their_report(tmp_path: Path) -> None:
    config = str(ROOT / "configs" / "default.yaml")
    small = ["--set", "dataset.n=4", "--set", "run.batch_size=4"]
    res = sensorlab("run", config, *small, "--out", "runs", "--name", "r", "-q", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1] == f"report: {Path('runs') / 'r' / 'report.html'}"
    assert (tmp_path / "runs" / "r" / "report.html").is_file()

    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        f"base: {config}\naxes:\n  sensor.adc.bits: [2, 4]\nout: {tmp_path}\nname: sw\n",
        encoding="utf-8",
    )
    res = sensorlab("sweep", str(sweep), *small, "-q", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1] == f"report: {tmp_path / 'sw' / 'report.html'}"

    res = sensorlab(
        "characterize", config, "--out", "sheet", "--levels", "10", "--size", "32", cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1] == f"report: {Path('sheet') / 'report.html'}"


def test_report_is_a_command_module_with_a_description() -> None:
    from pipeline.cli import COMMANDS, build_parser
    from pipeline.cli import report as report_command

    assert report_command in COMMANDS
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sub.choices["report"].description.startswith("Write one self-contained HTML page")


def test_report_command_in_a_subprocess_rewrites_a_run_folders_page(run_folder: Path) -> None:
    page = run_folder / "report.html"
    page.unlink(missing_ok=True)
    proc = sensorlab("report", str(run_folder), cwd=run_folder.parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"report: {page}"
    assert "<html" in page.read_text(encoding="utf-8")


def test_report_without_a_folder_is_a_one_line_usage_error(tmp_path: Path) -> None:
    proc = sensorlab("report", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "sensorlab: error: report: the following arguments are required: folder"
    ]
