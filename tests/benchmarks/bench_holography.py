"""Holography benchmarks (run on demand, not in CI).

    python tests/benchmarks/bench_holography.py [--quick] [--skip-full]

1. Propagation of a cached full-frame (IMX477, 4056x3040) complex64 field, as a
   ratio to the FFT floor (scipy fft2 + ifft2 on the same array, same workers)
   and to a plain numpy complex128 angular-spectrum implementation that
   recomputes its transfer function, all measured in this run.
2. A full-sensor 3-LED simulated capture: reconstruction time, autofocus cost
   in FFT-pair equivalents of a full frame, and peak RSS of the reconstruction
   (in a fresh process, so the simulator's memory does not count).
3. Focus error against the simulator's truth on held-out captures of all three
   sensors, several Bayer orders and seeds, with tilt.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.fft

from holography.propagation import DEFAULT_WORKERS, propagate, transfer_function


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def plain_numpy_asm(field, pitch_um, wavelength_um, z_um):
    """Textbook angular spectrum, complex128, transfer function recomputed each call."""
    ny, nx = field.shape
    fy = np.fft.fftfreq(ny, pitch_um)[:, None]
    fx = np.fft.fftfreq(nx, pitch_um)[None, :]
    arg = 1.0 / wavelength_um**2 - fx**2 - fy**2
    h = np.where(arg > 0, np.exp(2j * np.pi * z_um * np.sqrt(np.maximum(arg, 0))), 0)
    return np.fft.ifft2(np.fft.fft2(field) * h)


def bench_propagation(repeats):
    rng = np.random.default_rng(0)
    shape = (3040, 4056)
    field = (1 + 0.1 * rng.standard_normal(shape)).astype(np.complex64)
    kw = dict(pitch_um=1.55, wavelength_nm=530.0, distance_um=-950.0)
    transfer_function(shape, **kw)  # cache it
    work = field.copy()

    def floor():
        scipy.fft.ifft2(scipy.fft.fft2(work, workers=DEFAULT_WORKERS, overwrite_x=False),
                        workers=DEFAULT_WORKERS, overwrite_x=True)

    def ours():
        propagate(work, **kw)

    def plain():
        plain_numpy_asm(field.astype(np.complex128), 1.55, 0.53, -950.0)

    floor()
    ours()
    f_min, f_med = best_of(floor, repeats)
    o_min, o_med = best_of(ours, repeats)
    p_min, p_med = best_of(plain, max(2, repeats // 2))
    return {
        "shape": list(shape), "workers": DEFAULT_WORKERS,
        "fft_pair_s": round(f_min, 4), "propagate_cached_s": round(o_min, 4),
        "plain_numpy_complex128_s": round(p_min, 4),
        "ratio_to_fft_floor": round(o_min / f_min, 3),
        "ratio_to_fft_floor_median": round(o_med / f_med, 3),
        "speedup_vs_plain_numpy": round(p_min / o_min, 2),
    }


RECON_CHILD = r"""
import json, resource, sys, time
from holography.capture import read_capture
from holography.reconstruct import ReconOptions, reconstruct_capture
cap = read_capture(sys.argv[1])
t = time.perf_counter()
focus = reconstruct_capture(cap, ReconOptions(keep_fields=False))
t_focus = time.perf_counter() - t
t = time.perf_counter()
rec = reconstruct_capture(cap)
t_all = time.perf_counter() - t
print(json.dumps({"focus_only_s": round(t_focus, 2), "reconstruction_s": round(t_all, 2),
                  "autofocus_fft_pairs": round(focus.fft_pairs, 1),
                  "total_fft_pairs": round(rec.fft_pairs, 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "sample_distance_um": round(rec.plane.distance_um, 2),
                  "tilt_um_per_mm": [round(rec.plane.slope_x_um_per_mm, 2),
                                     round(rec.plane.slope_y_um_per_mm, 2)],
                  "tiles_used": rec.plane.tiles_used, "flags": rec.flags}))
"""


def bench_full_frame(tmp: Path, existing: Path | None = None):
    from holography.capture import read_capture
    from holography.simulate import Optics, SimConfig, simulate_capture

    t = time.perf_counter()
    if existing is not None:  # a capture made earlier by this same function (seed 101)
        cap = read_capture(existing)
    else:
        cfg = SimConfig(size=None, optics=Optics(tilt_um_per_mm=(3.0, -2.0)))
        cap = simulate_capture(tmp / "full", preset="healthy", seed=101, config=cfg)
    sim_s = time.perf_counter() - t
    out = subprocess.run([sys.executable, "-c", RECON_CHILD, str(cap.root)], capture_output=True,
                         text=True, check=True)
    res = json.loads(out.stdout)
    res["simulation_s"] = round(sim_s, 1)
    truth = json.loads((cap.root / "truth.json").read_text())
    cells = [o["distance_um"] for o in truth["objects"]
             if o["kind"] in ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")
             and o["height_um"] < 6]
    res["truth_settled_cells_median_um"] = float(np.median(cells))
    res["truth_tilt_um_per_mm"] = [3.0, -2.0]
    # FFT floor of its frames: one FFT pair per frame at full size
    return res


def bench_focus_accuracy(tmp: Path, quick: bool):
    from holography.capture import read_capture
    from holography.reconstruct import reconstruct_capture
    from holography.simulate import DEFAULT_LEDS, Optics, SimConfig, simulate_capture

    cases = [("imx477", "BGGR"), ("imx477", "GRBG"), ("imx708", "RGGB"), ("imx708", "GBRG"),
             ("imx219", "BGGR"), ("imx219", "RGGB")]
    seeds = (301,) if quick else (301, 302)
    rows = []
    for sensor, bayer in cases:
        for seed in seeds:
            rng = np.random.default_rng(seed)
            optics = Optics(air_gap_um=float(rng.uniform(300, 1100)),
                            nominal_error_um=float(rng.uniform(-300, 300)),
                            tilt_um_per_mm=(float(rng.uniform(-4, 4)), float(rng.uniform(-4, 4))))
            d = tmp / f"acc-{sensor}-{bayer}-{seed}"
            simulate_capture(d, preset="random", seed=seed,
                             config=SimConfig(sensor=sensor, bayer=bayer, size=(1024, 1024),
                                              leds=(DEFAULT_LEDS[1],), optics=optics))
            rec = reconstruct_capture(read_capture(d))
            truth = json.loads((d / "truth.json").read_text())
            cells = [o for o in truth["objects"]
                     if o["kind"] in ("neutrophil", "lymphocyte", "monocyte", "eosinophil",
                                      "basophil") and o["height_um"] < 6
                     and 0 <= o["x_px"] < 1024 and 0 <= o["y_px"] < 1024]
            z1 = truth["optics"]["source_distance_um"]
            pitch = read_capture(d).sensor.pixel_pitch_um
            errs = []
            for o in cells:
                m = (z1 + o["distance_um"]) / z1
                p = pitch / m / 1000.0
                errs.append(rec.plane.at((o["x_px"] - 512) * p, (o["y_px"] - 512) * p)
                            - o["distance_um"])
            rows.append({"sensor": sensor, "bayer": bayer, "seed": seed,
                         "nominal_error_um": round(optics.nominal_error_um, 1),
                         "cells": len(cells), "flags": rec.flags,
                         "median_error_um": round(float(np.median(errs)), 2),
                         "median_abs_error_um": round(float(np.median(np.abs(errs))), 2)})
            print(json.dumps(rows[-1]), file=sys.stderr)
    all_err = [r["median_error_um"] for r in rows]
    return {"captures": rows,
            "median_of_median_errors_um": round(float(np.median(all_err)), 2),
            "worst_median_abs_error_um": round(max(r["median_abs_error_um"] for r in rows), 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-full", action="store_true", help="skip the full-sensor capture")
    ap.add_argument("--full-capture", type=Path, help="reuse a full-sensor capture written by "
                    "an earlier run (--keep-full) instead of simulating it again")
    ap.add_argument("--keep-full", type=Path, help="write the full-sensor capture here")
    ap.add_argument("--skip-accuracy", action="store_true", help="skip the focus-accuracy set")
    args = ap.parse_args()
    report = {"cpus": os.cpu_count()}
    report["propagation"] = bench_propagation(3 if args.quick else 7)
    print(json.dumps(report["propagation"], indent=1), file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_full:
            where = args.keep_full.parent if args.keep_full else Path(tmp)
            if args.keep_full and not args.full_capture:
                report["full_frame"] = bench_full_frame(where)
                (where / "full").rename(args.keep_full)
            else:
                report["full_frame"] = bench_full_frame(where, args.full_capture)
            print(json.dumps(report["full_frame"], indent=1), file=sys.stderr)
        if not args.skip_accuracy:
            report["focus_accuracy"] = bench_focus_accuracy(Path(tmp), args.quick)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
