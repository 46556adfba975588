"""The core subcommands: ``run``, ``report``, ``schema`` and ``stages``."""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    from pipeline.cli import add_set_option

    p = sub.add_parser("run", help="run a config through its stages and record every stage")
    p.add_argument("config", help="run config YAML")
    add_set_option(p)
    p.add_argument("--out", help="folder that receives the run folder (run.out)")
    p.add_argument("--name", help="run folder name (run.name)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, summary only")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "report",
        help="write report.html for a run, sweep, training or characterisation folder",
        description="Write one self-contained HTML page (figures embedded, no network) "
        "into a result folder; open it in any browser.",
    )
    p.add_argument("folder", help="a run, sweep, training or characterize folder")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("schema", help="print the JSON Schema of config files")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("stages", help="list every registered stage with its parameters")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_stages)


def _overrides(args: argparse.Namespace) -> list[str]:
    extra = list(args.overrides)
    if getattr(args, "out", None):
        extra.append(f"run.out={args.out}")
    if getattr(args, "name", None):
        extra.append(f"run.name={args.name}")
    return extra


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.report import write_report
    from pipeline.runner import run

    loaded = load_config(args.config, _overrides(args))
    result = run(loaded, progress=False if args.quiet else None)
    print(summary(result))
    print(f"report: {write_report(result.path)}")
    return 0


def summary(result: Any) -> str:
    """A few lines: stages with units and shapes, accuracy, where the records are."""
    m = result.manifest
    lines = [
        f"sensorlab run {m['config_file']}: {m['dataset']['images']} images in "
        f"{m['wall_seconds']:.2f} s ({m['images_per_second'] or 0:.0f} images/s), seed {m['seed']}"
    ]
    for st in m["stages"]:
        shape = "×".join(str(s) for s in st["shape"])
        name, unit, dtype = st["name"], st["unit"], st["dtype"]
        lines.append(f"  {name:<14} {unit:<9} {shape:<12} {dtype:<8} {st['seconds']:8.3f} s")
    met = result.metrics
    if met.get("accuracy") is not None:
        lo, hi = met["accuracy_ci95"]
        lines.append(
            f"accuracy {met['accuracy']:.4f} (95% CI {lo:.4f}–{hi:.4f}) on {met['n']} images"
        )
    if met.get("psnr_db") is not None:
        lines.append(
            f"raw image against the ideal sensor: PSNR {met['psnr_db']:.2f} dB, "
            f"SSIM {met['ssim']:.4f} ({met['quality_images']} images)"
        )
    if result.path is not None:
        lines.append(f"records: {result.path}")
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.report import write_report

    print(f"report: {write_report(args.folder)}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from pipeline.cli import print_json
    from pipeline.config import json_schema

    print_json(json_schema())
    return 0


def cmd_stages(args: argparse.Namespace) -> int:
    from pipeline.registry import default_registry

    registry = default_registry()
    rows = []
    for name in registry.names():
        try:
            cls = registry.get(name)
        except Exception as exc:  # list a broken plugin instead of failing the listing
            rows.append({"name": name, "error": str(exc)})
            continue
        rows.append(
            {
                "name": name,
                "kind": cls.kind,
                "takes": [str(u) for u in cls.takes],
                "gives": str(cls.gives),
                "doc": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "",
                "params": cls.describe(),
            }
        )
    if args.json:
        from pipeline.cli import print_json

        print_json(rows)
        return 0
    out = sys.stdout
    for row in rows:
        if "error" in row:
            out.write(f"{row['name']}: cannot load: {row['error']}\n\n")
            continue
        takes = " or ".join(row["takes"]) or "anything"
        out.write(f"{row['name']} ({row['kind']}): {takes} -> {row['gives']}\n")
        if row["doc"]:
            out.write(textwrap.indent(row["doc"], "  ") + "\n")
        for p in row["params"]:
            default = "required" if p["required"] else f"default {p['default']!r}"
            unit = f" [{p['unit']}]" if p["unit"] else ""
            out.write(f"  {p['name']}{unit}: {p['type']}, {default}")
            out.write(f" — {p['doc']}\n" if p["doc"] else "\n")
        out.write("\n")
    return 0
