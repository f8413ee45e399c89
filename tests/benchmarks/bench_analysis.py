"""Analysis benchmark (run on demand, not in CI).

    python tests/benchmarks/bench_analysis.py [--full-capture DIR] [--keep-full DIR] [--preset P]
        [--dies 4] [--model M] [--enhance model|on|off] [--repeats 3]

``--dies 4`` simulates four LED dies per colour (pixel super-resolution; the
simulation then takes four times as long); ``--enhance`` forces the crops by
pixel super-resolution and phase retrieval on or off (default: as the model
was trained), to time the enhancement on its own.

1. A full-sensor (IMX477 4056x3040) 3-LED simulated capture analysed end to end
   by ``holodiff analyze`` in a fresh process (median of ``--repeats`` runs, and
   one run on a single thread, ``HOLODIFF_THREADS=1``): time per stage, peak RSS,
   and the ratio of the total to the FFT-pair floor of its frames (one scipy
   fft2 + ifft2 of a full complex64 frame per LED, measured in this run).
2. Classifier throughput in crops per second, INT8 against FP32, on the crops of
   that capture's refocused candidates (not the faint ones), single thread and
   all threads.
3. The per-cell refocus against a plain per-cell loop (one FFT per window and
   one inverse FFT per depth, numpy, no batching), same candidates, same run;
   ours is the whole detection stage per refocused candidate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.fft

from holography.capture import read_capture
from holography.reconstruct import reconstruct_capture
from holography.simulate import SimConfig, simulate_capture
from inference.classify import ONNX_MODEL, Classifier
from inference.detect import detect_in_capture


def fft_pair_floor(shape, repeats=3):
    a = (1 + 0.1 * np.random.default_rng(0).standard_normal(shape)).astype(np.complex64)
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        scipy.fft.ifft2(scipy.fft.fft2(a, workers=os.cpu_count()), workers=os.cpu_count(),
                        overwrite_x=True)
        best = min(best, time.perf_counter() - t)
    return best


def analyse_in_fresh_process(cap_dir: Path, model: str | None = None,
                             enhance: bool | None = None, threads: int | None = None) -> dict:
    opts = f"AnalysisOptions(enhance={enhance!r}" + (f", model={model!r})" if model else ")")
    code = (
        "import json, resource, sys, time\n"
        "from inference.analyze import AnalysisOptions, analyze_capture\n"
        "t = time.perf_counter()\n"
        f"r = analyze_capture({str(cap_dir)!r}, options={opts})\n"
        "r['wall_s'] = time.perf_counter() - t\n"
        "r['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "print(json.dumps(r))\n")
    env = dict(os.environ)
    if threads:
        env["HOLODIFF_THREADS"] = str(threads)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=env)
    return json.loads(out.stdout)


def plain_refocus(fields, rows, cols, n, kernels):
    """Per-cell loop with numpy FFTs: one forward FFT per window, one inverse per depth."""
    for r, c in zip(rows, cols, strict=True):
        w = fields[r - n // 2:r + n // 2, c - n // 2:c + n // 2] - 1
        if w.shape != (n, n):
            continue
        s = np.fft.fft2(w)
        for k in kernels:
            np.fft.ifft2(s * k)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--full-capture", help="reuse this full-sensor capture")
    ap.add_argument("--keep-full", help="simulate the full-sensor capture here and keep it")
    ap.add_argument("--preset", default="healthy")
    ap.add_argument("--dies", type=int, default=1, help="LED dies per colour of the simulated "
                                                        "capture (4: pixel super-resolution)")
    ap.add_argument("--model", help="classifier (default: the shipped one)")
    ap.add_argument("--enhance", choices=("model", "on", "off"), default="model",
                    help="crops by PSR and retrieval: as the model was trained (default), or forced")
    ap.add_argument("--repeats", type=int, default=3,
                    help="fresh-process analyses timed (the median is reported: a shared "
                         "machine's timings vary by 10-20 %%)")
    args = ap.parse_args()
    enhance = {"model": None, "on": True, "off": False}[args.enhance]
    if args.full_capture:
        cap_dir = Path(args.full_capture)
    else:
        root = Path(args.keep_full) if args.keep_full else Path(tempfile.mkdtemp())
        cap_dir = root / ("full" if args.dies == 1 else f"full-{args.dies}die")
        if not cap_dir.exists():
            t = time.perf_counter()
            simulate_capture(cap_dir, preset=args.preset, seed=11, n_dies=args.dies,
                             config=SimConfig(size=None, optics=SimConfig().optics))
            print(f"simulated the full-sensor capture in {time.perf_counter() - t:.0f} s",
                  file=sys.stderr)
    cap = read_capture(cap_dir)
    floor = fft_pair_floor(cap.shape)
    runs = [analyse_in_fresh_process(cap_dir, args.model, enhance)
            for _ in range(max(1, args.repeats))]
    runs.sort(key=lambda r: r["timing_s"]["total"])
    res = runs[len(runs) // 2]
    serial = analyse_in_fresh_process(cap_dir, args.model, enhance, threads=1)
    n_leds = len(cap.leds)
    report = {
        "capture": str(cap_dir), "shape": list(cap.shape), "leds": n_leds,
        "cells_detected": res["cells_detected"], "cells_classified": res["cells_classified"],
        "timing_s": res["timing_s"], "totals_s": [r["timing_s"]["total"] for r in runs],
        "one_thread_timing_s": serial["timing_s"],
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs)),
        "fft_pair_s": round(floor, 3),
        "total_over_fft_floor": round(res["timing_s"]["total"] / (n_leds * floor), 1),
        "flags": res["flags"], "enhancement": res.get("enhancement"),
    }
    # classifier throughput on this capture's crops
    rec = reconstruct_capture(cap)
    det = detect_in_capture(cap, rec, enhance=False)
    refocused = [k for k, c in enumerate(det.candidates) if not c.faint]
    report["candidates_refocused"] = len(refocused)  # the faint ones are neither refocused
    crops = det.crops[refocused]                       # nor classified
    thr = {}
    for name, path in (("int8", ONNX_MODEL), ("fp32", ONNX_MODEL.with_suffix(".fp32.onnx"))):
        for threads in (1, os.cpu_count() or 1):
            clf = Classifier(path, threads=threads)
            clf(crops[:64])
            t = time.perf_counter()
            clf(crops)
            thr[f"{name}_threads{threads}"] = round(len(crops) / (time.perf_counter() - t))
    report["classifier_crops_per_s"] = thr
    # refocus: batched (ours) against a plain per-cell numpy loop, same windows and depth count
    from inference.detect import COARSE_STEP_UM, DEPTH_RANGE_UM, FINE_STEP_UM, WINDOW_PX
    n_depths = int((DEPTH_RANGE_UM[1] - DEPTH_RANGE_UM[0]) / COARSE_STEP_UM) + 1 \
        + int(2 * COARSE_STEP_UM / FINE_STEP_UM) + 1 + n_leds
    rows = [int(det.candidates[k].y) for k in refocused[:300]]
    cols = [int(det.candidates[k].x) for k in refocused[:300]]
    u = rec.fields[rec.focus_led]
    kernels = [np.exp(1j * np.random.default_rng(k).uniform(0, 1, (WINDOW_PX, WINDOW_PX)))
               for k in range(n_depths)]
    t = time.perf_counter()
    plain_refocus(u, rows, cols, WINDOW_PX, kernels)
    plain = (time.perf_counter() - t) / max(1, len(rows))
    # the whole detection stage (map, peaks, refocus) per candidate it refocused
    ours = res["timing_s"]["detection"] / max(1, len(refocused))
    report["refocus_ms_per_candidate"] = {"ours_including_detection": round(1000 * ours, 2),
                                          "plain_numpy_loop": round(1000 * plain, 2),
                                          "ratio": round(plain / ours, 2)}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
