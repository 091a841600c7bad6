"""A job's memory does not grow with the scores of the images it finished.

At K=1,000 classes a record is about 55 KB of JSON; the job must keep only a path key and a
shared outcome per finished image, both while writing new records and when it reads the done
images of the file it resumes. Measured in a fresh Python process (resident memory from
/proc/self/statm, not the peak), through the real job layer with a stand-in classifier that
yields seeded K=1,000 results without a model.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

N_IMAGES = 3000
WARM_UP = 200  # images classified first, so the allocator's pools exist before measuring
BYTES_PER_IMAGE = 1024  # the bound; a whole record kept would cost about 100 KB in memory

CHILD = r"""
import json, os, sys
from pathlib import Path

import numpy as np

from fastgen.engine.result import ImageResult
from fastgen.jobs.local import classify_files

K = 1000
CLASSES = tuple(f"class{k:04d}" for k in range(K))
folder, n_images, warm_up = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])


def resident() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class CheapClassifier:
    # What the job layer uses of a DiffusionClassifier, with seeded K-class results and no model.
    model_id = "stand-in:k1000"
    calibration = None

    def __init__(self):
        self.rng = np.random.default_rng(0)
        self.at_start = self.at_end = None

    def settings(self):
        return {"classes": list(CLASSES)}

    def classify_stream(self, items):
        self.at_start = resident()  # the done images of the file are read; nothing new yet
        for key, _path in items:
            errors = self.rng.random(K)
            yield key, ImageResult(CLASSES, errors, errors.copy(), np.ones(K, dtype=np.int64), unet_evals=K)
        self.at_end = resident()  # every new image written and counted, the job still running


paths = [folder / "images" / f"{i % 10}" / f"img{i:05d}.png" for i in range(n_images)]
out = folder / "results.jsonl"
clf = CheapClassifier()
if sys.argv[4] == "write":
    classify_files(clf, paths[:warm_up], out=out, progress=False, labels_from_folders=True)
    summary = classify_files(clf, paths, out=out, progress=False, labels_from_folders=True)
    assert summary.computed == n_images - warm_up, summary
    grown = clf.at_end - clf.at_start
else:  # a fresh process resumes the finished file: nothing to compute, every image read as done
    warm = folder / "warm-up.jsonl"
    for _ in range(2):  # writes, then reads, records of the same size elsewhere
        classify_files(clf, paths[:warm_up], out=warm, progress=False, labels_from_folders=True)
    before = resident()
    summary = classify_files(clf, paths, out=out, progress=False, labels_from_folders=True)
    assert summary.computed == 0 and summary.skipped == n_images, summary
    grown = clf.at_start - before
print(json.dumps({"grown": grown, "record_bytes": out.stat().st_size // n_images}))
"""


@pytest.fixture
def scratch() -> Path:
    """A folder in memory when there is one: the test writes about 165 MB, synced line by line."""
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None) as folder:
        yield Path(folder)


def _grown_per_image(scratch: Path, phase: str) -> tuple[float, dict]:
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(scratch), str(N_IMAGES), str(WARM_UP), phase],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    assert measured["record_bytes"] > 40_000  # the records really hold K=1,000 scores
    images = N_IMAGES - WARM_UP if phase == "write" else N_IMAGES
    return measured["grown"] / images, measured


def test_memory_per_finished_image_stays_small_at_1000_classes(scratch):
    per_new_image, measured = _grown_per_image(scratch, "write")
    assert per_new_image < BYTES_PER_IMAGE, measured
    per_done_image, measured = _grown_per_image(scratch, "resume")
    assert per_done_image < BYTES_PER_IMAGE, measured
