"""RGB mode (``spectral: off``, the default) gives the arrays it gave before spectral
imaging existed: SHA-256 digests of every sensor stage's output for 48 images of
configs/default.yaml, recorded from main at 510f84e (before issue 17) with
``pipeline.run("configs/default.yaml", set=DIGEST_RUN)``."""

from __future__ import annotations

import hashlib

import numpy as np
from conftest import ROOT

from pipeline import run

DIGEST_RUN = ["dataset.n=48", "run.batch_size=20", "run.record.images=48"]

#: First 16 hex digits of SHA-256 over each array's bytes, from main at 510f84e.
MAIN_DIGESTS = {
    "dataset": "3e244af63391cec7",
    "scene": "e50b460215a3c492",
    "optics": "7307550c1bcbeee1",
    "photodetector": "ee0e7e5243dda991",
    "adc": "87107be7ca41e0d3",
    "raw": "3a5bc73c47a3eff5",
}


def test_default_config_arrays_are_bit_identical_to_main_before_spectral_imaging():
    result = run(ROOT / "configs/default.yaml", set=DIGEST_RUN, store=False, progress=False)
    digests = {
        name: hashlib.sha256(np.ascontiguousarray(result.arrays[name]).tobytes()).hexdigest()[:16]
        for name in MAIN_DIGESTS
    }
    assert digests == MAIN_DIGESTS
