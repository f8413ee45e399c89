"""Per-cell pixel super-resolution and phase retrieval in the analysis, and colour registration."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from holography.capture import read_capture
from holography.propagation import propagate, transfer_function
from holography.reconstruct import ReconOptions, reconstruct_capture
from holography.retrieval import retrieve_windows, twin_image_energy, window_support
from holography.simulate import DEFAULT_LEDS
from holography.superres import DieSet, Shift, psr_windows
from inference.analyze import (
    REFRACTION_INCREMENT_UM3_PER_PG,
    AnalysisOptions,
    analyze_capture,
    dry_mass_pg,
    optical_path_um,
)
from inference.classify import Classifier
from inference.detect import CROP_PIXEL_UM, detect_in_capture

KEEP = ReconOptions(keep_dies=True)


def _refocused(det) -> np.ndarray:
    """Indices of the candidates that were refocused (the faint ones have no crop)."""
    return np.flatnonzero([not c.faint for c in det.candidates])


def _centroid(crops: np.ndarray, slot: int) -> tuple[float, float]:
    """Median (x, y) centroid, in crop pixels from the centre, of one slot's scattered field."""
    e = np.hypot(crops[:, 2 * slot], crops[:, 2 * slot + 1])
    n = e.shape[-1]
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    tot = e.sum(axis=(1, 2))
    return (float(np.median((e * xx).sum(axis=(1, 2)) / tot)),
            float(np.median((e * yy).sum(axis=(1, 2)) / tot)))


@pytest.fixture(scope="module")
def four_die(capdir):
    """A 256x256 three-LED capture with four dies per colour (the PSR design)."""
    return capdir("four-die", leds=DEFAULT_LEDS, size=(256, 256), n_dies=4, seed=12)


# ---------------------------------------------------------------- building blocks


def test_psr_windows_interleave_half_pixel_dies_exactly():
    """Four dies shifted by half pixels fill the fine grid: the fused window is the fine
    image blurred by one sensor pixel's aperture, on the documented grid."""
    rng = np.random.default_rng(5)
    fine = 1.0 + 0.2 * rng.standard_normal((96, 96)).astype(np.float32)

    def sensor(dy: float, dx: float) -> np.ndarray:
        # a die shifting the hologram by (dy, dx) sensor px: pixel i sees fine pixels
        # 2 (i - d) .. 2 (i - d) + 1
        oy, ox = int(-2 * dy), int(-2 * dx)
        f = np.roll(fine, (-oy, -ox), axis=(0, 1))
        return f.reshape(48, 2, 48, 2).mean(axis=(1, 3))

    offs = ((0.0, 0.0), (0.0, 0.5), (0.5, 0.0), (0.5, 0.5))
    dies = DieSet(led="green", amplitudes=[sensor(*o).astype(np.float16) for o in offs],
                  shifts=[Shift(dy=dy, dx=dx, peak=1.0) for dy, dx in offs], fallbacks=[],
                  left_out=[])
    win = psr_windows(dies, np.array([24]), np.array([24]), 32, 2)[0]
    # sensor pixel i of the window (frame row 8 + i) sits at fine 2i + 1/2: fine pixel 2i + 1
    # holds the box over fine rows 2 (8 + i) .. 2 (8 + i) + 1, its neighbour 2i the box shifted
    box = 0.25 * (fine + np.roll(fine, 1, 0) + np.roll(fine, 1, 1) + np.roll(fine, (1, 1), (0, 1)))
    want = box[16:80, 16:80]
    want = want / np.median(want)
    assert np.allclose(win[2:-2, 2:-2], want[2:-2, 2:-2], atol=2e-3)
    one = psr_windows(dies, np.array([24]), np.array([24]), 32, 1)[0]
    assert one.shape == (32, 32)


def test_retrieve_windows_removes_the_twin_and_recovers_phase():
    pitch, wl, d, n = 1.0, 530.0, 500.0, 128
    yy, xx = np.mgrid[:n, :n] - n // 2
    opd = 0.05 * ((yy ** 2 + xx ** 2) <= 25)  # um: a 10 um phase disk
    t = np.exp(1j * 2 * np.pi / (wl * 1e-3) * opd)
    # the hologram of a larger field, cut to the window (fringes leave the window)
    big = np.pad(t, 64, constant_values=1.0)
    amp = np.sqrt(np.abs(propagate(big, pitch_um=pitch, wavelength_nm=wl, distance_um=d)) ** 2)
    amp = amp[64:-64, 64:-64].astype(np.float32)[None]
    kern = np.array(transfer_function((n, n), pitch_um=pitch, wavelength_nm=wl,
                                      distance_um=d))[None]
    weight = np.ones((n, n), np.float32)
    weight[:16] = weight[-16:] = 0.0
    weight[:, :16] = weight[:, -16:] = 0.0
    plain, _ = retrieve_windows(amp, np.ones((1, n, n), bool), kern, weight=weight, iterations=0)
    sup = window_support(plain[:, None], pitch, cell_radius_um=7.0)
    assert sup[0, n // 2, n // 2] and sup.mean() < 0.2
    ret, mismatch = retrieve_windows(amp, sup, kern, weight=weight, iterations=15)
    assert mismatch[0, -1] < 0.5 * mismatch[0, 0]
    twin0 = twin_image_energy(plain[0], sup[0], ring_px=20)
    twin1 = twin_image_energy(ret[0], sup[0], ring_px=20)
    assert twin1 < 0.5 * twin0, (twin0, twin1)
    disk = opd > 0
    opd_of = lambda u: np.angle(u) * wl * 1e-3 / (2 * np.pi)  # noqa: E731
    err0 = np.abs(opd_of(plain[0]) - opd)[disk].mean()
    err1 = np.abs(opd_of(ret[0]) - opd)[disk].mean()
    assert err1 < err0 and err1 < 0.01, (err0, err1)  # um


# ---------------------------------------------------------------- in the analysis


def test_dies_are_registered_and_used_by_default(four_die):
    cap = read_capture(four_die)
    assert reconstruct_capture(cap).dies == {}  # kept only when asked
    rec = reconstruct_capture(cap, KEEP)
    assert set(rec.dies) == {"blue", "green", "red"}
    for ds in rec.dies.values():
        assert ds.frames == 4 and not ds.fallbacks and ds.residual_px < 0.15
    det = detect_in_capture(cap, rec, keep_plain=True)
    info = det.enhancement
    assert all(v["factor"] == 2 and v["frames"] == 4 for v in info.values())
    for v in info.values():  # retrieval converges towards the measured hologram
        assert v["retrieval_iterations"] == 3
        assert v["retrieval_mismatch"][1] < v["retrieval_mismatch"][0]
    # the same cells, the same place: the enhanced crop of each cell resembles its plain crop
    k = _refocused(det)
    a = det.crops[k, 2:4].reshape(len(k), -1)
    b = det.plain_crops[k, 2:4].reshape(len(k), -1)
    corr = [np.corrcoef(x, y)[0, 1] for x, y in zip(a, b, strict=True)]
    assert np.median(corr) > 0.6
    assert np.abs(_centroid(det.crops[k], 1)).max() < 0.6
    # off: the crops are the plain ones
    plain = detect_in_capture(cap, rec, enhance=False)
    assert np.array_equal(plain.crops, det.plain_crops) and plain.enhancement == {}


def test_a_dead_die_and_a_wrong_die_offset(four_die, tmp_path):
    """Partial data and bad shifts: a dark central die is replaced by a neighbour, a die
    whose offset in the metadata is wrong is registered from the frames, its residual says so."""
    path = tmp_path / "cap"
    shutil.copytree(four_die, path)
    meta = json.loads((path / "capture.json").read_text())
    green = [f for f in meta["frames"] if f["led"] == "green"]
    np.save(path / green[0]["file"], np.load(path / "dark.npy"))  # the central green die is dead
    red = [f for f in meta["frames"] if f["led"] == "red"]
    red[2]["led_offset_um"] = [red[2]["led_offset_um"][0] + 120.0, red[2]["led_offset_um"][1]]
    (path / "capture.json").write_text(json.dumps(meta))
    good = reconstruct_capture(read_capture(four_die), KEEP).dies
    cap = read_capture(path)
    rec = reconstruct_capture(cap, KEEP)
    assert "DARK_FRAME" in rec.flags
    g = rec.dies["green"]
    assert g.frames == 3 and g.left_out == [f"{green[0]['file']} (dark)"]
    r = rec.dies["red"]
    assert r.residual_px > 1.0  # the metadata was wrong by ~1.7 px
    assert 2 not in r.fallbacks
    true = good["red"].shifts[2]
    assert abs(r.shifts[2].dy - true.dy) < 0.1 and abs(r.shifts[2].dx - true.dx) < 0.1
    det = detect_in_capture(cap, rec)
    assert len(det.candidates) > 5 and det.enhancement["green"]["frames"] == 3
    assert np.abs(_centroid(det.crops[_refocused(det)], 1)).max() < 1.0  # stand-in die: green kept


def test_one_die_gets_retrieval_without_psr(capdir):
    path = capdir("one-die-3led", leds=DEFAULT_LEDS, size=(256, 256), seed=12)
    cap = read_capture(path)
    det = detect_in_capture(cap, reconstruct_capture(cap, KEEP))
    assert all(v["factor"] == 1 and v["frames"] == 1 for v in det.enhancement.values())


def test_colours_are_registered_between_leds(capdir):
    """Red dies 250 um beside the others shift the red hologram ~3.7 px: the colours are
    registered from the fields, so each cell's red crop stays centred."""
    leds = tuple(replace(led, offsets_um=((250.0, 0.0),)) if led.name == "red" else led
                 for led in DEFAULT_LEDS)
    cap = read_capture(capdir("colour-offset", leds=leds, size=(256, 256), seed=7))
    rec = reconstruct_capture(cap, KEEP)
    sh = rec.led_shift_px["red"]
    assert abs(sh.dx + 3.75) < 0.3 and abs(sh.dy) < 0.2, sh
    assert abs(rec.led_shift_px["blue"].dx) < 0.2
    for enhance in (True, False):
        det = detect_in_capture(cap, rec, enhance=enhance)
        assert abs(_centroid(det.crops[_refocused(det)], 2)[0]) < 0.6
    rec.led_shift_px.clear()  # without registration the red crops sit off centre
    det = detect_in_capture(cap, rec, enhance=False)
    assert _centroid(det.crops[_refocused(det)], 2)[0] < -1.0


def test_the_analysis_follows_the_models_crops(four_die):
    clf = Classifier()
    res = analyze_capture(four_die, classifier=clf)
    # the shipped model's card names the crops it was trained on; the analysis makes those
    want_enhanced = clf.enhanced_crops
    assert bool(res["enhancement"]) == want_enhanced
    forced = analyze_capture(four_die, classifier=clf,
                             options=AnalysisOptions(phase=True, retrieval_iterations=2, cells=True))
    assert all(v["factor"] == 2 and v["retrieval_iterations"] == 2
               for v in forced["enhancement"].values())
    if not want_enhanced:  # the phase is measured, the classifier still sees its own crops
        assert forced["counts"] == res["counts"]
    # quantitative phase from the retrieved fields: a white cell's dry mass, tens of pg (on
    # cells whose refocus window lies in the frame: a cut hologram retrieves less)
    from inference.detect import WINDOW_PX
    lo, hi = WINDOW_PX // 2, read_capture(four_die).shape[0] - 1 - WINDOW_PX // 2
    masses = [c["dry_mass_pg"] for c in forced["cells"]
              if c["class"] and lo <= c["x"] <= hi and lo <= c["y"] <= hi]
    assert len(masses) >= 3 and 20 < np.median(masses) < 200
    plain = analyze_capture(four_die, classifier=clf, options=AnalysisOptions(enhance=False,
                                                                              cells=True))
    assert plain["enhancement"] == {} and "dry_mass_pg" not in plain["cells"][0]


def test_dry_mass_integrates_the_optical_path():
    n = 40
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    r = np.hypot(yy, xx) * CROP_PIXEL_UM
    # a cell-like optical path of 0.45 um at the centre: more than half a wave at 530 nm
    opd = np.where(r <= 4.0, 0.45 * np.sqrt(np.clip(1 - (r / 4.0) ** 2, 0, 1)), 0.0)
    crops = np.zeros((1, 6, n, n), np.float32)
    for slot, wl in ((1, 0.53), (2, 0.625)):
        u = np.exp(1j * 2 * np.pi * opd / wl)
        crops[0, 2 * slot], crops[0, 2 * slot + 1] = u.real - 1.0, u.imag
    want = opd.sum() * CROP_PIXEL_UM ** 2 / REFRACTION_INCREMENT_UM3_PER_PG
    both = dry_mass_pg(crops, {1: 530.0, 2: 625.0})[0]
    assert both == pytest.approx(want, rel=1e-3)
    assert np.allclose(optical_path_um(crops, {1: 530.0, 2: 625.0})[0], opd, atol=1e-4)
    # one wavelength alone wraps: the same cell comes out lighter
    assert dry_mass_pg(crops, {1: 530.0})[0] < 0.9 * want


def test_a_data_set_says_which_crops_it_holds(tmp_path):
    from inference.dataset import build
    from inference.train import main as train_main

    for name, start in (("train.npz", 0), ("calibration.npz", 10_000)):
        build(tmp_path / name, split="train", captures=1, size=256, start=start,
              log=lambda m: None)
    with np.load(tmp_path / "train.npz") as z:
        assert not bool(z["enhanced"]) and "plain_crops" not in z.files
    # asking for the enhanced crops on a plain set is refused before any training
    with pytest.raises(SystemExit, match="without the enhanced crops"):
        train_main(["--out", str(tmp_path / "m"), "--data", str(tmp_path), "--captures", "1",
                    "--enhanced-crops"])
