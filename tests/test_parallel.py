"""Threads over tiles, frames and cell batches: same numbers as one thread, in input order."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from holography import parallel
from holography.capture import read_capture
from holography.reconstruct import ReconOptions, reconstruct_capture
from holography.simulate import DEFAULT_LEDS
from inference.detect import background_normalised, detect_in_capture


@pytest.fixture
def threads_restored():
    before = parallel.threads()
    yield
    parallel.set_threads(before)


def test_ordered_map_keeps_order_and_runs_side_by_side():
    running, most = [0], [0]
    lock = threading.Lock()

    def work(x):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02 * (5 - x % 5))  # later items finish first
        with lock:
            running[0] -= 1
        return x * x

    assert list(parallel.ordered_map(work, range(10), threads=2)) == [x * x for x in range(10)]
    assert most[0] == 2
    assert list(parallel.ordered_map(work, range(4), threads=1)) == [0, 1, 4, 9]


def test_ordered_map_bounds_the_work_ahead_and_raises_in_order():
    started = []

    def work(x):
        started.append(x)
        if x == 3:
            raise ValueError("frame 3 is corrupt")
        return x

    it = parallel.ordered_map(work, range(100), threads=2, ahead=2)
    assert next(it) == 0
    time.sleep(0.05)
    assert len(started) <= 4  # never the whole list at once (frames would pile up)
    assert [next(it), next(it)] == [1, 2]
    with pytest.raises(ValueError, match="frame 3"):
        next(it)


def test_set_threads_floors_at_one(threads_restored):
    parallel.set_threads(0)
    assert parallel.threads() == 1
    parallel.set_threads(3)
    assert parallel.threads() == 3


def test_in_place_background_normalisation_equals_the_copy():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:301, 0:257]
    field = ((1.0 + 0.2 * np.sin(yy / 60.0) + 0.1 * xx / 257)
             * np.exp(1j * (0.3 + 0.001 * yy))).astype(np.complex64)
    field += (0.01 * rng.standard_normal(field.shape)).astype(np.complex64)
    copy = background_normalised(field)
    assert abs(float(np.median(np.abs(copy))) - 1.0) < 0.01  # empty regions read 1
    same = field.copy()
    out = background_normalised(same, out=same)
    assert out is same
    np.testing.assert_array_equal(out, copy)


def test_threaded_analysis_gives_the_serial_numbers(capdir, threads_restored):
    """Reconstruction and detection on 1 and 2 threads: identical fields, depths and crops."""
    path = capdir("parallel-3led", preset="healthy", seed=31, size=(768, 640),
                  leds=DEFAULT_LEDS)
    cap = read_capture(path)
    out = {}
    for n in (1, 2):
        parallel.set_threads(n)
        rec = reconstruct_capture(cap, ReconOptions(tile_px=256, margin_px=64))
        fields = {k: v.copy() for k, v in rec.fields.items()}
        det = detect_in_capture(cap, rec, enhance=False, in_place=True)
        out[n] = (rec, fields, det)
    (r1, f1, d1), (r2, f2, d2) = out[1], out[2]
    assert len(r1.tiles) > 4  # several tiles, so the threads had work to share
    assert r1.plane.distance_um == r2.plane.distance_um
    for led in f1:
        np.testing.assert_array_equal(f1[led], f2[led])
    assert len(d1.candidates) == len(d2.candidates) > 64  # more than one batch of cells
    assert [c.distance_um for c in d1.candidates] == [c.distance_um for c in d2.candidates]
    np.testing.assert_array_equal(d1.crops, d2.crops)
