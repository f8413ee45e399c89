"""The simulated instrument: truth, presets, faults, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest

from holography.capture import read_capture
from holography.errors import CaptureError, SimulationError
from holography.sample import KINDS, PRESETS, WBC_CLASSES, get_spec, make_sample
from holography.simulate import SimConfig, simulate_capture


def wbcs(sample):
    ids = [KINDS.index(c) for c in WBC_CLASSES]
    return sample.objects[np.isin(sample.objects["kind"], ids)]


def test_counts_follow_concentration_volume_and_dilution():
    rng = np.random.default_rng(0)
    field = (0.0, 0.0, 3000.0, 3000.0)  # 9 mm^2 x 100 um at 1:10 = 0.09 uL of blood
    s = make_sample(get_spec("healthy", rng), field_um=field, chamber_height_um=100.0,
                    dilution=10.0, rng=rng)
    n = len(wbcs(s))
    expected = 7000 * 9 * 0.1 / 10
    assert abs(n - expected) < 4 * np.sqrt(expected)
    sep = make_sample(get_spec("septic", rng), field_um=field, chamber_height_um=100.0,
                      dilution=10.0, rng=rng)
    assert len(wbcs(sep)) > 1.7 * n


def test_differential_and_sizes_follow_the_preset():
    rng = np.random.default_rng(1)
    field = (0.0, 0.0, 6000.0, 6000.0)
    s = make_sample(get_spec("eosinophilia", rng), field_um=field, chamber_height_um=100.0,
                    dilution=10.0, rng=rng)
    cells = wbcs(s)
    frac = {c: np.mean(cells["kind"] == KINDS.index(c)) for c in WBC_CLASSES}
    assert frac["eosinophil"] == pytest.approx(0.15, abs=0.03)
    d = {c: 2 * cells["a_um"][cells["kind"] == KINDS.index(c)].mean() for c in WBC_CLASSES}
    assert d["lymphocyte"] < d["neutrophil"] < d["monocyte"]


def test_white_cells_touch_but_never_interpenetrate():
    """Settled cells form a monolayer and clumps are cells resting against each other."""
    from dataclasses import replace

    from scipy.spatial import cKDTree

    rng = np.random.default_rng(3)
    spec = replace(get_spec("septic", rng), wbc_per_uL=60000.0, clump_fraction=0.2,
                   floating_fraction=0.2)
    s = make_sample(spec, field_um=(0.0, 0.0, 1500.0, 1500.0), chamber_height_um=100.0,
                    dilution=10.0, rng=rng)
    c = wbcs(s)
    assert len(c) > 1000
    xyz = np.stack([c["x_um"], c["y_um"], c["h_um"]], axis=1)
    r = c["a_um"]
    pairs = np.array(sorted(cKDTree(xyz).query_pairs(2 * r.max())))
    gap = np.linalg.norm(xyz[pairs[:, 0]] - xyz[pairs[:, 1]], axis=1) - r[pairs[:, 0]] - r[pairs[:, 1]]
    assert gap.min() > -1e-6  # no two cells overlap
    # clump members each touch another member of their clump
    same = (c["clump"][pairs[:, 0]] >= 0) & (c["clump"][pairs[:, 0]] == c["clump"][pairs[:, 1]])
    touching = pairs[same & (gap < 1e-3)]
    in_clumps = np.flatnonzero(c["clump"] >= 0)
    assert len(in_clumps) > 100
    assert set(in_clumps) == set(touching.ravel())
    # settled cells rest on the floor
    settled = c["h_um"] == r
    assert 0.7 < settled.mean() < 0.9


def test_an_impossibly_dense_sample_is_refused():
    from dataclasses import replace

    rng = np.random.default_rng(4)
    spec = replace(get_spec("healthy", rng), wbc_per_uL=5e6, floating_fraction=0.0)
    with pytest.raises(SimulationError, match="do not fit"):
        make_sample(spec, field_um=(0.0, 0.0, 300.0, 300.0), chamber_height_um=100.0,
                    dilution=10.0, rng=rng)


def test_septic_monocytes_are_larger_and_more_varied():
    rng = np.random.default_rng(2)
    field = (0.0, 0.0, 8000.0, 8000.0)
    vols = {}
    for preset in ("healthy", "septic"):
        s = make_sample(get_spec(preset, rng), field_um=field, chamber_height_um=100.0,
                        dilution=10.0, rng=rng)
        m = s.objects[s.objects["kind"] == KINDS.index("monocyte")]
        v = 4 / 3 * np.pi * m["a_um"] ** 3
        vols[preset] = (v.mean(), v.std())
    assert vols["septic"][0] > vols["healthy"][0]
    assert vols["septic"][1] > 1.5 * vols["healthy"][1]
    # healthy monocyte volume CV near 14 % (MDW literature)
    assert 0.10 < vols["healthy"][1] / vols["healthy"][0] < 0.18


def test_truth_file_describes_the_capture(small_capture):
    truth = json.loads((small_capture / "truth.json").read_text())
    cap = read_capture(small_capture)
    assert truth["format"] == "holodiff-sim-truth/1"
    in_frame = [o for o in truth["objects"] if o["kind"] in WBC_CLASSES
                and 0 <= o["x_px"] < cap.sensor.width and 0 <= o["y_px"] < cap.sensor.height]
    assert sum(truth["wbc_counts_in_frame"].values()) == len(in_frame) > 5
    kinds = {o["kind"] for o in truth["objects"]}
    assert {"platelet", "neutrophil"} <= kinds
    for o in in_frame:
        assert o["distance_um"] > truth["optics"]["floor_distance_um"]


def test_same_seed_same_frames_other_seed_other_frames(tmp_path):
    cfg = SimConfig(size=(128, 128), leds=SimConfig().leds[1:2])
    a = simulate_capture(tmp_path / "a", seed=5, config=cfg)
    b = simulate_capture(tmp_path / "b", seed=5, config=cfg)
    c = simulate_capture(tmp_path / "c", seed=6, config=cfg)
    assert np.array_equal(a.load_frame(0), b.load_frame(0))
    assert not np.array_equal(a.load_frame(0), c.load_frame(0))


def test_dies_shift_the_hologram_by_their_offset(tmp_path):
    cfg = SimConfig(size=(256, 256), leds=SimConfig().leds[1:2])
    cap = simulate_capture(tmp_path / "d", preset="lymphocytosis", seed=8, config=cfg, n_dies=4)
    assert len(cap.frames) == 4
    f0 = cap.load_frame(0).astype(float)
    f1 = cap.load_frame(1).astype(float)
    truth = json.loads((tmp_path / "d" / "truth.json").read_text())
    dx, dy = truth["dies_um"][1]
    z1 = truth["optics"]["source_distance_um"]
    z2 = truth["optics"]["floor_distance_um"]
    expect_px = -np.array([dx, dy]) * z2 / z1 / cap.sensor.pixel_pitch_um
    # measured shift by phase correlation of the two frames
    F = np.fft.fft2(f0 - f0.mean()) * np.conj(np.fft.fft2(f1 - f1.mean()))
    corr = np.abs(np.fft.ifft2(F / (np.abs(F) + 1e-9)))
    iy, ix = np.unravel_index(np.argmax(corr), corr.shape)
    shift = -np.array([ix if ix < 128 else ix - 256, iy if iy < 128 else iy - 256])
    assert np.allclose(shift, np.round(expect_px), atol=1)


def test_corrupt_file_fault_is_caught_by_the_reader(tmp_path):
    cfg = SimConfig(size=(64, 64), faults=("corrupt_file",))
    simulate_capture(tmp_path / "bad", seed=1, config=cfg)
    with pytest.raises(CaptureError, match="truncated"):
        read_capture(tmp_path / "bad")


def test_bad_requests_are_refused(tmp_path):
    with pytest.raises(SimulationError, match="unknown preset"):
        simulate_capture(tmp_path / "x", preset="zombie")
    with pytest.raises(SimulationError, match="unknown fault"):
        SimConfig(faults=("gremlins",))
    with pytest.raises(SimulationError, match="even"):
        simulate_capture(tmp_path / "y", config=SimConfig(size=(63, 64)))
    assert set(PRESETS) >= {"healthy", "septic", "lymphocytosis", "eosinophilia", "leukopenia"}
