"""What pixel super-resolution and phase retrieval buy (run on demand, not in CI).

    python tests/benchmarks/bench_psr.py

1. Resolution: a target of point pairs (1 um opaque particles on the
   chamber floor, separations 1.5-8 um) is simulated with 4 LED dies, and
   reconstructed from 1 frame (bicubic to the fine grid), shift-and-add and
   least-squares PSR. A pair counts as resolved when the amplitude dip between
   its two points is at least 19 % (a Rayleigh-like criterion). The smallest
   resolved separation is compared with the limit set by the LED bandwidth
   (temporal coherence), the pinhole (spatial coherence) and the pixel pitch.
   Two geometries: the default instrument, and a short, narrow-band one.
2. Twin image: background energy around cells of a simulated capture with and
   without support-constrained retrieval, per LED, with iterations and time.
3. Cost of each step in FFT-pair equivalents of the same frame.
4. In the analysis: weak spheres of known optical path through the crops that the
   analysis makes (plain, retrieval, PSR + retrieval): optical path error at the
   centre (nm) and integrated (%), background energy around each sphere, cost.

    python tests/benchmarks/bench_psr.py --cells-only   # part 4 alone (~2 min)
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import map_coordinates, zoom

from holography.propagation import propagate
from holography.raw import normalise_frame
from holography.reconstruct import reference_amplitudes, sensor_distance
from holography.sample import KIND_ID, OBJECT_DTYPE, PART_DTYPE, Sample
from holography.simulate import LedSpec, Optics, SimConfig, simulate_capture
from holography.superres import predicted_shift_px, psr_least_squares, register_dies, shift_and_add

SEPARATIONS = (1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0)


def target(size_px: int, pitch: float) -> tuple[Sample, list[tuple[float, float, float]]]:
    """Point pairs along x, one pair per separation, on a grid across the field."""
    rows = []
    pairs = []
    c = size_px * pitch / 2
    for k, sep in enumerate(SEPARATIONS):
        cx = c + (k % 3 - 1) * 90.0
        cy = c + (k // 3 - 1) * 90.0
        pairs.append((cx, cy, sep))
        for dx in (-sep / 2, sep / 2):
            rows.append((KIND_ID["bead"], cx + dx, cy, 0.5, 0.5, 0.5, 0.05, 0.3, 0.0, 0.0, 0, 0, 0,
                         0, -1, 0))
    return Sample(objects=np.array(rows, OBJECT_DTYPE), parts=np.zeros(0, PART_DTYPE),
                  chamber_height_um=100.0, cover_glass_um=170.0), pairs


def resolved(amp: np.ndarray, pitch_fine: float, mag: float, axis_px: float,
             pairs: list, factor: int) -> dict[float, bool]:
    """Dip criterion on the amplitude deficit along each pair (sample-plane geometry)."""
    deficit = 1.0 - amp / np.median(amp)
    out = {}
    for cx, cy, sep in pairs:
        # sample-plane um -> sensor px -> fine px
        def to_px(x):
            return ((axis_px + 0.5) + mag * (x - (axis_px + 0.5) * pitch_fine * factor)
                    / (pitch_fine * factor)) * factor - 0.5
        xs = np.linspace(cx - sep, cx + sep, 81)
        prof = map_coordinates(deficit, [np.full(xs.size, to_px(cy)), to_px(xs)], order=1)
        i1, i2, im = 20, 60, 40  # the two points and the middle (sep/2 each side)
        p1, p2 = prof[i1 - 4:i1 + 5].max(), prof[i2 - 4:i2 + 5].max()
        out[sep] = bool(min(p1, p2) > 0 and prof[im] < 0.81 * min(p1, p2))
    return out


def limits(led: LedSpec, optics: Optics, pitch: float) -> dict[str, float]:
    z1 = optics.source_distance_mm * 1000.0
    z2 = optics.floor_distance_um
    m = (z1 + z2) / z1
    d_sensor = sensor_distance(z2, z1)
    sigma = led.bandwidth_nm * 1e-3 / 2.3548
    f_t = math.sqrt(math.sqrt(2 * math.log(2)) / (math.pi * d_sensor * sigma))  # envelope = 1/2
    f_s = 1.22 / (optics.pinhole_um * z2 / z1)  # first zero of the source's jinc
    f_p = 1.0 / (2 * pitch)
    to_sample = lambda f: 1.0 / f / m  # noqa: E731  period in the sample plane
    return {"temporal_period_um": round(to_sample(f_t), 2),
            "spatial_period_um": round(to_sample(f_s), 2),
            "pixel_period_um": round(to_sample(f_p), 2),
            "limit_one_frame_um": round(to_sample(min(f_t, f_s, f_p)), 2),
            "limit_psr_um": round(to_sample(min(f_t, f_s)), 2)}


def bench_resolution(tmp: Path, name: str, led: LedSpec, optics: Optics) -> dict:
    size = 512
    cfg = SimConfig(size=(size, size), leds=(led,), optics=optics)
    pitch = 1.55
    sample, pairs = target(size, pitch)
    cap = simulate_capture(tmp / name, seed=5, config=cfg, n_dies=4, sample=sample)
    dark, flat = cap.load_dark(), cap.load_flat(led.name)
    frames = [normalise_frame(cap.load_frame(f), sensor=cap.sensor, dark=dark, flat=flat)[0]
              for f in cap.frames]
    z1 = optics.source_distance_mm * 1000.0
    z2 = optics.floor_distance_um + 0.5 / 1.335
    pred = [predicted_shift_px(i.led_offset_um, sample_distance_um=z2, source_distance_um=z1,
                               pitch_um=pitch) for i in cap.frames]
    shifts, fallbacks = register_dies(frames, pred)
    mag = (z1 + z2) / z1
    d = sensor_distance(z2, z1)
    out = {"limits": limits(led, optics, pitch),
           "registration_residual_px": [round(s.residual_px, 3) for s in shifts],
           "registration_fallbacks": fallbacks}
    t = time.perf_counter()
    variants = {"one_frame": zoom(frames[0], 2, order=3)}
    t_one = time.perf_counter() - t
    t = time.perf_counter()
    variants["shift_and_add"] = shift_and_add(frames, shifts, 2)
    t_sa = time.perf_counter() - t
    t = time.perf_counter()
    ls, hist = psr_least_squares(frames, shifts, 2, iterations=20)
    variants["least_squares"] = ls
    t_ls = time.perf_counter() - t
    t = time.perf_counter()
    propagate(frames[0].astype(np.complex64), pitch_um=pitch, wavelength_nm=led.wavelength_nm,
              distance_um=-d)
    t_pair = time.perf_counter() - t
    for k, fine in variants.items():
        u = propagate(np.sqrt(np.clip(fine, 0, None)), pitch_um=pitch / 2,
                      wavelength_nm=led.wavelength_nm, distance_um=-d)
        res = resolved(np.abs(u), pitch / 2, mag, size / 2 - 0.5, pairs, 2)
        ok = [s for s, r in sorted(res.items()) if r]
        out[k] = {"smallest_resolved_um": min(ok) if ok else None,
                  "resolved": {str(s): r for s, r in sorted(res.items())}}
    out["cost_fft_pairs_of_the_frame"] = {
        "shift_and_add": round(t_sa / t_pair, 1), "least_squares": round(t_ls / t_pair, 1),
        "bicubic": round(t_one / t_pair, 1)}
    out["least_squares_residuals"] = [round(h, 4) for h in hist]
    return out


def bench_retrieval(tmp: Path) -> dict:
    from holography.retrieval import retrieve_leds, twin_image_energy
    cap = simulate_capture(tmp / "ret", preset="healthy", seed=9, config=SimConfig(size=(1024, 1024)))
    z = sensor_distance(cap.geometry.sample_distance_um + 3.0, 40000.0)
    amps = reference_amplitudes(cap)
    t = time.perf_counter()
    propagate(amps["green"][0], pitch_um=cap.sensor.pixel_pitch_um, wavelength_nm=530.0,
              distance_um=-z)
    t_plain = time.perf_counter() - t
    t = time.perf_counter()
    support, plain, results = retrieve_leds(amps, pitch_um=cap.sensor.pixel_pitch_um,
                                            distance_um=z, iterations=30)
    dt = (time.perf_counter() - t) / len(amps)
    out = {"support_fraction": round(float(support.mean()), 4),
           "time_per_led_s": round(dt, 2), "cost_vs_plain_reconstruction": round(dt / t_plain, 1)}
    for led, r in results.items():
        before, after = twin_image_energy(plain[led], support), twin_image_energy(r.field, support)
        out[led] = {"twin_energy_before": round(before, 6), "twin_energy_after": round(after, 6),
                    "reduction": round(before / after, 1), "iterations": r.iterations,
                    "mismatch": [round(m, 4) for m in r.mismatch]}
    return out


def bench_cells(tmp: Path) -> dict:
    """Phase objects of known optical path through the analysis's crops, four ways.

    Weak spheres (6-9 um, refractive-index contrast 0.015-0.04: white-cell-like optical
    paths without phase wrapping) on the chamber floor, three LEDs, four dies per colour,
    default optics. Each variant makes the crops of the same candidates: plain fields,
    retrieval on the sensor grid, PSR + retrieval (3 iterations, the default) and PSR +
    retrieval (10). Per matched sphere, from the green slot: the optical path at the
    centre against ``dn d`` (nm) and the integrated optical path (``dn V``, um^3, the
    quantity dry mass is proportional to) over a 7 um disk, both from the phase unwrapped
    with two wavelengths as ``holodiff analyze --phase`` does; the background energy in the
    ring 8-14 um around the sphere (twin image and neighbours' fringes); time per candidate.
    """
    from inference.analyze import optical_path_um
    from inference.dataset import match
    from inference.detect import CROP_PIXEL_UM, detect_in_capture, slot_of

    rng = np.random.default_rng(11)
    size, pitch = 512, 1.55
    rows, truth_obj = [], []
    half = size * pitch / 2
    for k in range(36):
        gy, gx = divmod(k, 6)
        x = half + (gx - 2.5) * 110.0 + rng.uniform(-15, 15)
        y = half + (gy - 2.5) * 110.0 + rng.uniform(-15, 15)
        d = rng.uniform(6.0, 9.0)
        dn = rng.uniform(0.015, 0.04)
        rows.append((KIND_ID["bead"], x, y, d / 2, d / 2, d / 2, dn, 1e-5, 0.0, 0.0, 0, 0, 0, 0, -1, 0))
        truth_obj.append((d, dn))
    sample = Sample(objects=np.array(rows, OBJECT_DTYPE), parts=np.zeros(0, PART_DTYPE),
                    chamber_height_um=100.0, cover_glass_um=170.0)
    cap = simulate_capture(tmp / "spheres", seed=3, config=SimConfig(size=(size, size)),
                           n_dies=4, sample=sample)
    from holography.capture import read_capture
    from holography.reconstruct import ReconOptions, reconstruct_capture
    cap = read_capture(tmp / "spheres")
    truth = json.loads((tmp / "spheres" / "truth.json").read_text())
    rec = reconstruct_capture(cap, ReconOptions(keep_dies=True))
    slot_wl = {slot_of(cap.wavelength_nm(led)): cap.wavelength_nm(led) for led in cap.leds}
    n = 40
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    r_um = np.hypot(yy, xx) * CROP_PIXEL_UM
    disk, ring = r_um <= 7.0, (r_um >= 8.0) & (r_um <= 14.0)
    variants = {"plain": dict(enhance=False), "retrieval_no_psr": dict(psr=False),
                "psr_retrieval_3": dict(), "psr_retrieval_10": dict(retrieval_iterations=10)}
    out: dict = {"spheres": len(rows)}
    for name, kw in variants.items():
        t = time.perf_counter()
        det = detect_in_capture(cap, rec, faint_ratio=0.0, **kw)  # every sphere, faint or not
        dt = time.perf_counter() - t
        xy = np.array([[c.x, c.y] for c in det.candidates]).reshape(-1, 2)
        idx, _ = match(xy, truth, det.pixel_um, cap.shape)
        centre_err, integ_err, ring_e = [], [], []
        for k, j in enumerate(idx):
            if j < 0 or j >= len(truth_obj):
                continue
            d, dn = truth_obj[j]
            u = 1.0 + det.crops[k, 2] + 1j * det.crops[k, 3]
            opd = optical_path_um(det.crops[k:k + 1], slot_wl)[0]  # um, two-wavelength unwrapped
            centre = float(np.median(opd[r_um <= 1.0]))
            centre_err.append(1000.0 * (centre - dn * d))
            vol = float(opd[disk].sum()) * CROP_PIXEL_UM ** 2
            integ_err.append(100.0 * (vol / (dn * math.pi / 6 * d ** 3) - 1.0))
            ring_e.append(float(np.mean(np.abs(u[ring] - 1.0) ** 2)))
        def med(v):
            return round(float(np.median(v)), 1)

        out[name] = {"matched": len(centre_err),
                     "centre_opd_error_nm": {"median": med(centre_err),
                                             "median_abs": med(np.abs(centre_err))},
                     "integrated_opd_error_pct": {"median": med(integ_err),
                                                  "median_abs": med(np.abs(integ_err))},
                     "ring_energy": float(f"{np.median(ring_e):.3g}"),
                     "ms_per_candidate": round(1000 * dt / max(1, len(det.candidates)), 2),
                     "enhancement": det.enhancement.get("green")}
    return out


def main():
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "--cells-only" in sys.argv:
            print(json.dumps({"cells": bench_cells(tmp)}, indent=1))
            return
        report["resolution_default"] = bench_resolution(
            tmp, "default", LedSpec(name="green", wavelength_nm=530.0, bandwidth_nm=30.0), Optics())
        print(json.dumps(report["resolution_default"]), file=sys.stderr)
        report["resolution_coherent"] = bench_resolution(
            tmp, "coherent", LedSpec(name="green", wavelength_nm=530.0, bandwidth_nm=3.0),
            Optics(air_gap_um=150.0, pinhole_um=20.0))
        print(json.dumps(report["resolution_coherent"]), file=sys.stderr)
        report["retrieval"] = bench_retrieval(tmp)
        report["cells"] = bench_cells(tmp)
        print(json.dumps(report["cells"]), file=sys.stderr)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
