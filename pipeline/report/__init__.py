"""``report.html``: one self-contained page per run, sweep, training, characterisation or
calibration folder.

The page embeds its figures (base64 PNG), needs no network and no JavaScript framework
(a few lines of inline script make the sweep's table sortable). See :func:`write_report`.
"""

from pipeline.report.build import REPORT_HTML, folder_kind, write_report

__all__ = ["REPORT_HTML", "folder_kind", "write_report"]
