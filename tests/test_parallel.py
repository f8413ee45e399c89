"""Threads over tiles, frames and cell batches: same numbers as one thread, in input order."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import scipy.ndimage as ndi

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


@pytest.mark.parametrize("fn, halo", [
    (lambda a: ndi.gaussian_filter(a, 2.3, mode="reflect"), 11),
    (lambda a: ndi.maximum_filter(a, size=7, mode="nearest"), 3),
])
def test_row_bands_equal_the_whole_frame(fn, halo):
    a = np.random.default_rng(5).random((403, 97)).astype(np.float32)
    whole = fn(a)
    np.testing.assert_array_equal(parallel.by_row_bands(fn, a, halo, threads=3), whole)
    # a halo smaller than the filter's reach shows at the band edges: the halo is what makes it exact
    assert not np.array_equal(parallel.by_row_bands(fn, a, 0, threads=3), whole)


@pytest.mark.parametrize("shape", [(64, 64), (300, 260), (520, 512)])
def test_serial_kernels_equal_the_parallel_ones(shape):
    # small grids run the numba kernels serially: the numbers must not depend on which
    # variant ran, nor on how many threads numba has
    from holography import focus, propagation

    rng = np.random.default_rng(shape[0])
    u = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)
    a1, a2 = np.empty(shape, np.float32), np.empty(shape, np.float32)
    focus._amplitude(u, a1)
    focus._amplitude_serial(u, a2)
    assert np.array_equal(a1, a2)
    assert focus._grad_moments(a1) == focus._grad_moments_serial(a1)
    h1, h2 = np.empty(shape, np.complex64), np.empty(shape, np.complex64)
    args = (1.12, 0.98, 1 / 0.47, -180.0, 0.6, 0.55)
    propagation._asm_kernel(h1, *args)
    propagation._asm_kernel_serial(h2, *args)
    assert np.array_equal(h1, h2)
    on_worker = list(parallel.ordered_map(focus.tamura_of_gradient, [u, u], threads=2))
    assert on_worker == [focus.tamura_of_gradient(u)] * 2


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


def test_crop_interpolation_taps_equal_the_whole_window_basis():
    # the batched interpolation evaluates the cubic B-spline on its four taps only
    from inference import detect

    rng = np.random.default_rng(3)
    for n, step in ((39, 0.7), (61, 1.3), (9, 0.2)):
        centres = n / 2 + rng.uniform(-n / 2 - 3, n / 2 + 3, 40)
        centres[:3] = [n // 2, 0.0, n - 1.0]  # integer points: a tap on the support's edge
        full = np.stack([detect._interp_matrix(n, c, step) for c in centres])
        assert np.array_equal(detect._interp_matrices(n, centres, step), full)


def test_peaks_use_a_dilation_equal_to_the_maximum_filter():
    from inference.detect import PEAK_SEPARATION_UM, find_peaks

    rng = np.random.default_rng(9)
    emap = ndi.gaussian_filter(rng.random((257, 311)).astype(np.float32), 1.5)
    peaks, thr = find_peaks(emap, 1.0, threshold_sd=0.0)
    size = max(3, int(round(PEAK_SEPARATION_UM / 1.0)) | 1)
    mx = ndi.maximum_filter(emap, size=size, mode="nearest")
    rr, cc = np.nonzero((emap == mx) & (emap > thr))
    assert len(peaks) == len(rr) > 10
    assert {(int(r), int(c)) for r, c, _ in peaks} == set(zip(rr.tolist(), cc.tolist(), strict=True))
