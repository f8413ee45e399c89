"""Pixel super-resolution: registration of shifted dies and fusion on a finer grid."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from holography import sensors
from holography.capture import read_capture
from holography.raw import normalise_frame
from holography.simulate import LedSpec, Optics, SimConfig, simulate_capture
from holography.superres import (
    Shift,
    predicted_shift_px,
    psr_least_squares,
    register,
    register_dies,
    shift_and_add,
)

NARROW = (LedSpec(name="green", wavelength_nm=530.0, bandwidth_nm=3.0),)
OPTICS = Optics(air_gap_um=150.0, pinhole_um=20.0)  # short distance, coherent enough for PSR


def frames_of(cap):
    dark, flat = cap.load_dark(), cap.load_flat("green")
    return [normalise_frame(cap.load_frame(f), sensor=cap.sensor, dark=dark, flat=flat)[0]
            for f in cap.frames]


@pytest.fixture(scope="module")
def dies(tmp_path_factory):
    root = tmp_path_factory.mktemp("psr")
    cfg = SimConfig(size=(256, 256), leds=NARROW, optics=OPTICS)
    simulate_capture(root / "lr", preset="healthy", seed=31, config=cfg, n_dies=4)
    # the same sample seen by a virtual monochrome sensor with half the pixel pitch
    sensors.SENSORS["virtual-half"] = replace(sensors.SENSORS["imx477"], model="virtual-half",
                                              pixel_pitch_um=0.775, bayer=None,
                                              full_well_e=8000.0 * 16)
    try:
        hr = simulate_capture(root / "hr", preset="healthy", seed=31, n_dies=1,
                              config=replace(cfg, sensor="virtual-half", bayer=None,
                                             size=(512, 512), oversample=1))
    finally:
        del sensors.SENSORS["virtual-half"]
    truth = normalise_frame(hr.load_frame(0), sensor=hr.sensor, dark=hr.load_dark(),
                            flat=hr.load_flat("green"))[0]
    return read_capture(root / "lr"), truth


def geometry_shifts(cap):
    z2 = OPTICS.floor_distance_um + 3.0
    return [predicted_shift_px(f.led_offset_um, sample_distance_um=z2,
                               source_distance_um=40000.0, pitch_um=cap.sensor.pixel_pitch_um)
            for f in cap.frames]


def test_registration_recovers_die_shifts(dies):
    cap, _ = dies
    frames = frames_of(cap)
    for frame, pred in zip(frames, geometry_shifts(cap), strict=True):
        s = register(frames[0], frame, predicted=pred)
        assert s.residual_px < 0.08, (s, pred)
        assert s.peak > 0.1


def test_registration_without_a_prediction_and_on_a_bad_seed(dies):
    cap, _ = dies
    frames = frames_of(cap)
    pred = geometry_shifts(cap)[3]
    free = register(frames[0], frames[3])
    assert abs(free.dy - pred[0]) < 0.08 and abs(free.dx - pred[1]) < 0.08
    # a seed 3 px off with a 1 px window cannot reach the true peak: its low peak says so
    bad = register(frames[0], frames[3], predicted=(pred[0] + 3, pred[1]), search_px=1.0)
    assert abs(bad.dy - pred[0]) > 1.0 and bad.peak < free.peak / 2


def test_least_squares_psr_beats_one_frame_and_converges(dies):
    cap, truth = dies
    frames = frames_of(cap)
    shifts = [register(frames[0], f, predicted=p) for f, p in zip(frames, geometry_shifts(cap),
                                                                   strict=True)]
    fine, history = psr_least_squares(frames, shifts, 2, iterations=20)
    assert fine.shape == (512, 512)
    assert history[-1] < 0.01 and history[-1] < history[0]

    def error(img):
        hp = img - cv2.GaussianBlur(img, (0, 0), 3)
        ht = truth - cv2.GaussianBlur(truth, (0, 0), 3)
        return float(np.sqrt(np.mean((hp - ht)[16:-16, 16:-16] ** 2)))

    one = cv2.resize(frames[0], (512, 512), interpolation=cv2.INTER_CUBIC)
    assert error(fine) < 0.95 * error(one)


def test_one_frame_degrades_gracefully(dies):
    cap, _ = dies
    f0 = frames_of(cap)[0]
    sa = shift_and_add([f0], [Shift(dy=0.0, dx=0.0, peak=1.0)], 2)
    assert sa.shape == (512, 512)
    # every sample kept (a pixel's centre lies between fine pixels 2i and 2i + 1; ties go up),
    # holes filled between
    assert np.allclose(sa[1::2, 1::2], f0, atol=1e-5)


def test_half_pixel_shifts_fill_the_whole_fine_grid():
    # the 4-die design: dies shifted by exactly half a pixel fill the four fine sub-lattices
    rng = np.random.default_rng(3)
    lr = [rng.random((16, 16)).astype(np.float32) for _ in range(4)]
    shifts = [Shift(dy=dy, dx=dx, peak=1.0) for dy, dx in ((0, 0), (0, 0.5), (0.5, 0), (0.5, 0.5))]
    sa = shift_and_add(lr, shifts, 2)
    got = {(i, j): sa[i::2, j::2] for i in (0, 1) for j in (0, 1)}
    assert np.allclose(got[1, 1], lr[0]) and np.allclose(got[1, 0][:, 1:], lr[1][:, 1:])
    assert np.allclose(got[0, 1][1:], lr[2][1:]) and np.allclose(got[0, 0][1:, 1:], lr[3][1:, 1:])


def test_register_dies_falls_back_to_the_geometry_on_an_empty_field(dies):
    cap, _ = dies
    frames = frames_of(cap)
    pred = geometry_shifts(cap)
    shifts, fallbacks = register_dies(frames, pred)
    assert fallbacks == []  # a populated field registers on its own
    assert all(s.residual_px < 0.1 for s in shifts)
    rng = np.random.default_rng(0)
    noise = [1 + 0.01 * rng.standard_normal(frames[0].shape).astype(np.float32) for _ in frames]
    shifts, fallbacks = register_dies(noise, pred)
    assert fallbacks == [1, 2, 3]
    assert [(s.dy, s.dx) for s in shifts[1:]] == [tuple(map(float, p)) for p in pred[1:]]
