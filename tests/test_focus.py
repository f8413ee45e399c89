"""Autofocus and reconstruction on simulated captures against the simulator's truth."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from holography.capture import read_capture
from holography.focus import fit_plane, tamura_of_gradient
from holography.reconstruct import ReconOptions, reconstruct_capture
from holography.sample import WBC_CLASSES
from holography.simulate import DEFAULT_LEDS, Optics


def settled_cell_distance(cap_dir) -> float:
    truth = json.loads((cap_dir / "truth.json").read_text())
    zs = [o["distance_um"] for o in truth["objects"]
          if o["kind"] in WBC_CLASSES and o["height_um"] < 6.0]
    return float(np.median(zs))


def test_metric_prefers_sharp_images():
    rng = np.random.default_rng(0)
    img = np.ones((128, 128), np.float32)
    img[rng.integers(10, 118, 20), rng.integers(10, 118, 20)] = 0.2
    sharp = gaussian_filter(img, 0.7)
    assert tamura_of_gradient(sharp) > tamura_of_gradient(gaussian_filter(img, 3)) + 0.05


def test_plane_fit_is_robust_to_outlier_tiles():
    rng = np.random.default_rng(1)
    x, y = np.meshgrid(np.linspace(-2, 2, 5), np.linspace(-1.5, 1.5, 4))
    x, y = x.ravel(), y.ravel()
    z = 930 + 4.0 * x - 2.5 * y + rng.normal(0, 0.5, x.size)
    z[[3, 11]] += 40  # tiles focused on floating debris
    z[7] = np.nan  # an empty tile
    plane = fit_plane(x, y, z, np.ones_like(z))
    assert plane.distance_um == pytest.approx(930, abs=0.6)
    assert plane.slope_x_um_per_mm == pytest.approx(4.0, abs=0.4)
    assert plane.slope_y_um_per_mm == pytest.approx(-2.5, abs=0.4)
    assert plane.tiles_used == x.size - 3


@pytest.mark.parametrize("sensor,bayer", [("imx477", "BGGR"), ("imx477", "RGGB"),
                                          ("imx708", "GRBG"), ("imx219", "GBRG")])
def test_focus_found_on_every_sensor_and_bayer_order(capdir, sensor, bayer):
    d = capdir(f"focus-{sensor}-{bayer}", sensor=sensor, bayer=bayer, seed=21)
    rec = reconstruct_capture(read_capture(d))
    assert rec.flags == []
    truth = settled_cell_distance(d)
    assert abs(rec.plane.distance_um - truth) < 8.0, (rec.plane.distance_um, truth)
    # sizes are reported in the sample plane
    z1 = 40000.0
    assert rec.magnification == pytest.approx((z1 + rec.plane.distance_um) / z1)
    assert rec.pixel_um < read_capture(d).sensor.pixel_pitch_um


def test_capture_far_from_its_nominal_distance_is_found(capdir):
    # the sample sits 800 um further from the sensor than the metadata says
    d = capdir("defocused", faults=("defocused",), seed=22)
    cap = read_capture(d)
    truth = settled_cell_distance(d)
    assert truth - cap.geometry.sample_distance_um == pytest.approx(800, abs=5)
    rec = reconstruct_capture(cap)
    assert "OUT_OF_FOCUS" not in rec.flags
    assert abs(rec.plane.distance_um - truth) < 8.0


def test_focus_on_a_validation_capture_the_quarter_band_missed(tmp_path):
    # a 1024 px IMX708 capture under training conditions (validation capture 10): a coarse
    # search on the quarter band once locked on a plane 150 um too far (and flagged
    # OUT_OF_FOCUS); the half band finds the floor
    from inference.evaluate import make_test_captures

    (d,) = make_test_captures(tmp_path, 1, size=1024, start=10, split="train", log=lambda m: None)
    truth = json.loads((d / "truth.json").read_text())["optics"]["floor_distance_um"]
    rec = reconstruct_capture(read_capture(d))
    assert "OUT_OF_FOCUS" not in rec.flags
    assert abs(rec.plane.distance_um - truth) < 8.0, (rec.plane.distance_um, truth)


def test_capture_beyond_the_search_range_is_flagged_not_guessed(capdir):
    d = capdir("far", optics=Optics(nominal_error_um=+1500.0), seed=23)  # metadata says 2.4 mm
    rec = reconstruct_capture(read_capture(d), ReconOptions(search_um=1000.0))
    assert "OUT_OF_FOCUS" in rec.flags
    assert "no sample plane found" in rec.flag_details["OUT_OF_FOCUS"]


def test_empty_chamber_is_flagged(capdir):
    d = capdir("empty", faults=("empty_chamber",), seed=24)
    rec = reconstruct_capture(read_capture(d))
    assert rec.flags == ["OUT_OF_FOCUS"]
    assert math.isfinite(rec.plane.distance_um)  # reconstructed at nominal, and says so


def test_tilted_chamber_gives_its_tilt(capdir):
    d = capdir("tilted", preset="septic", size=(1152, 768), seed=25,
               optics=Optics(tilt_um_per_mm=(8.0, 0.0)))
    rec = reconstruct_capture(read_capture(d), ReconOptions(tile_px=384, margin_px=128))
    assert rec.plane.tiles_used >= 5
    assert 4.0 < rec.plane.slope_x_um_per_mm < 12.0
    truth = json.loads((d / "truth.json").read_text())
    cap = read_capture(d)
    z1 = 40000.0
    cy, cx = cap.shape[0] / 2, cap.shape[1] / 2
    errs = []
    for o in truth["objects"]:
        if o["kind"] in WBC_CLASSES and o["height_um"] < 6.0:
            m = (z1 + o["distance_um"]) / z1
            p = cap.sensor.pixel_pitch_um / m / 1000.0
            errs.append(rec.plane.at((o["x_px"] - cx) * p, (o["y_px"] - cy) * p)
                        - o["distance_um"])
    assert np.median(np.abs(errs)) < 8.0


def test_saturated_and_failed_led_are_flagged(capdir):
    leds = (DEFAULT_LEDS[1], DEFAULT_LEDS[2])
    sat = reconstruct_capture(read_capture(capdir("sat", leds=leds, faults=("saturated",))))
    assert "SATURATED" in sat.flags and "%" in sat.flag_details["SATURATED"]
    dead = reconstruct_capture(read_capture(capdir("dead", leds=leds, faults=("failed_led",),
                                                   seed=3)))
    assert "DARK_FRAME" in dead.flags
    # the good LED is still reconstructed and focused; the dark one is not
    assert len(dead.fields) == 1
    assert "OUT_OF_FOCUS" not in dead.flags


def test_all_leds_reconstructed_with_their_distances(capdir):
    d = capdir("rgb", leds=DEFAULT_LEDS, seed=26)
    rec = reconstruct_capture(read_capture(d))
    assert set(rec.fields) == {"blue", "green", "red"}
    truth = settled_cell_distance(d)
    for led, z in rec.led_distance_um.items():
        assert abs(z - truth) < 15.0, (led, z, truth)
    f = rec.fields["green"]
    assert f.dtype == np.complex64 and f.shape == (512, 512)
    # background of the focused field is ~1 and real
    assert abs(np.median(np.abs(f)) - 1.0) < 0.05
    assert rec.fft_pairs > 0
