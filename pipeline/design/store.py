"""The design folder: finished searches, checkpoints and cached front-end images.

::

    <out>/<name>/
        design.json                     the design as resolved, its hash, every search's key
        fronts/<key>-<split>.npz        images as they reach the ADC (pipeline.design.front)
        searches/<cell id>-<key>/
            result.json                 a finished search (written last, atomically)
            checkpoint.pkl              the CMA-ES state after the last generation
        ranges/<cell id>-<key>/result.json   range-matched fixed curves (pipeline.design.ranged)
        results.csv, pareto.csv, pareto.png

A search's key is the hash of everything that decides its result (the cell's run config,
the model's files, the validation and test images, the search options), so a finished
search is reused only by an identical search, and a changed design gets new folders
beside the old ones. Every file is written to a temporary name and renamed, so an
interrupted write leaves the previous version or nothing. The checkpoint is a pickle
written by this code into its own folder and read back only from there; one that cannot
be read is ignored (the search starts again).
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

from pipeline.design.search import SearchState
from pipeline.store import write_json_atomic

__all__ = [
    "RESULT",
    "front_path",
    "load_checkpoint",
    "range_dir",
    "read_result",
    "save_checkpoint",
    "search_dir",
    "write_result",
]

RESULT = "result.json"
CHECKPOINT = "checkpoint.pkl"


def search_dir(folder: Path, cell_id: str, key: str) -> Path:
    """The folder of one search."""
    return folder / "searches" / f"{cell_id}-{key[:12]}"


def range_dir(folder: Path, cell_id: str, key: str) -> Path:
    """The folder of one cell's range-matched baselines."""
    return folder / "ranges" / f"{cell_id}-{key[:12]}"


def front_path(folder: Path, key: str, split: str) -> Path:
    """The cached front-end images of one (light, noise) and split."""
    return folder / "fronts" / f"{key[:16]}-{split}.npz"


def read_result(path: Path) -> dict[str, Any] | None:
    """A finished search's record, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads((path / RESULT).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def write_result(path: Path, record: dict[str, Any]) -> None:
    """Write a finished search's record and drop its checkpoint."""
    path.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path / RESULT, record)
    (path / CHECKPOINT).unlink(missing_ok=True)


def save_checkpoint(path: Path, state: SearchState, extra: dict[str, Any]) -> None:
    """Save the search state (and ``extra``: what the search found before CMA-ES)."""
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / f".{CHECKPOINT}.tmp-{os.getpid()}"
    with open(tmp, "wb") as handle:
        pickle.dump({"state": state, "extra": extra}, handle, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path / CHECKPOINT)


def load_checkpoint(path: Path) -> tuple[SearchState, dict[str, Any]] | None:
    """The saved search state and extra, or None when there is none or it is damaged."""
    try:
        with open(path / CHECKPOINT, "rb") as handle:
            data = pickle.load(handle)  # our own file, written by save_checkpoint
        state, extra = data["state"], data["extra"]
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(state, SearchState) or not isinstance(extra, dict):
        return None
    return state, extra
