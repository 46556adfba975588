"""Regenerate docs/onnx-compatibility.md: run the compatibility-table test with the
variable that lets it write the doc (it only checks the doc otherwise).

Usage::

    python docs/onnx_compat_doc.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST = "tests/cnn/test_onnx_export.py::test_compatibility_table_in_the_docs"


def main() -> int:
    env = dict(os.environ, SENSORLAB_WRITE_COMPAT_DOC="1")
    return subprocess.call([sys.executable, "-m", "pytest", "-q", TEST], cwd=ROOT, env=env)


if __name__ == "__main__":
    raise SystemExit(main())
