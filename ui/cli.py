"""The ``holodiff`` command (INTERFACES.md section 3).

Results go to stdout only when asked (``--json``); progress and logs go to
stderr; a failure exits non-zero with one line that says what to do next.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from holography import __version__
from holography.capture import read_capture
from holography.errors import HoloDiffError
from holography.parallel import set_threads
from holography.pictures import save_field, save_png
from holography.reconstruct import (
    ReconOptions,
    Reconstruction,
    reconstruct_capture,
    retrieve_region,
)
from holography.sample import PRESETS
from holography.sensors import BAYER_PATTERNS, SENSORS
from holography.simulate import FAULTS, SimConfig, simulate_capture
from ui.cli_calibrate import add_parsers as add_calibrate_parsers
from ui.cli_device import add_parsers
from ui.cli_model import add_parsers as add_model_parsers
from ui.cli_serial import add_parsers as add_serial_parsers

log = logging.getLogger("holodiff")


def _finite(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 3)


def reconstruction_report(rec: Reconstruction, capture_dir: str) -> dict[str, Any]:
    """A JSON-friendly summary of a reconstruction (focus, tilt, QC)."""
    plane = rec.plane
    return {
        "capture": capture_dir,
        "sample_distance_um": _finite(plane.distance_um) if plane else None,
        "tilt_um_per_mm": [_finite(plane.slope_x_um_per_mm), _finite(plane.slope_y_um_per_mm)]
        if plane else None,
        "focus_residual_um": _finite(plane.residual_um) if plane else None,
        "tiles_focused": sum(t.found for t in rec.tiles),
        "tiles": len(rec.tiles),
        "led_distance_um": {k: _finite(v) for k, v in rec.led_distance_um.items()},
        "magnification": _finite(rec.magnification),
        "sample_pixel_um": _finite(rec.pixel_um),
        "flags": rec.flags,
        "flag_details": rec.flag_details,
        "frames": {f: {"saturated_fraction": q.saturated_fraction,
                       "signal_fraction": round(q.signal_fraction, 4),
                       "channels_used": list(q.channels_used)} for f, q in rec.qc.items()},
        "fft_pairs": round(rec.fft_pairs, 1),
    }


def _save_pictures(rec: Reconstruction, cap_dir: Path, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for led, fld in rec.fields.items():
        paths += save_field(out, led, fld)
    cap = read_capture(cap_dir)
    first = cap.frames[0]
    raw = cap.load_frame(first).astype("float32")
    paths.append(save_png(out / f"hologram_{first.led}_raw.png", raw))
    return paths


def cmd_simulate(args: argparse.Namespace) -> int:
    """``holodiff simulate``: write a simulated capture folder and its truth."""
    size = None if args.full_sensor else (args.width, args.height)
    cfg = SimConfig(sensor=args.sensor, bayer=args.bayer or "sensor-default", size=size,
                    faults=tuple(args.fault or ()))
    t0 = time.perf_counter()
    spec = None
    if args.physics and args.physics != "legacy":
        from dataclasses import replace

        import numpy as np

        from holography.sample import get_spec
        from inference.evaluate import sample_physics

        spec = replace(get_spec(args.preset, np.random.default_rng([args.seed, 78])),
                       physics=sample_physics(args.seed, args.physics))
    cap = simulate_capture(args.out, preset=args.preset, seed=args.seed, config=cfg,
                           n_dies=args.dies, spec=spec)
    log.info("simulated %s (%dx%d, %d frames) in %.1f s", cap.root, cap.sensor.width,
             cap.sensor.height, len(cap.frames), time.perf_counter() - t0)
    if args.json:
        print(json.dumps({"capture": str(cap.root), "frames": len(cap.frames),
                          "truth": str(cap.root / "truth.json")}))
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    """``holodiff reconstruct``: QC, autofocus and reconstruction of one capture folder."""
    cap = read_capture(args.capture)
    t0 = time.perf_counter()
    rec = reconstruct_capture(cap, ReconOptions(search_um=args.search_um,
                                                keep_fields=args.pictures is not None))
    if args.retrieve and args.retrieve < 64:
        raise HoloDiffError(f"--retrieve needs a region of at least 64 px (got {args.retrieve})")
    report = reconstruction_report(rec, str(args.capture))
    report["time_s"] = round(time.perf_counter() - t0, 2)
    if args.pictures is not None:
        for p in _save_pictures(rec, Path(args.capture), Path(args.pictures)):
            log.info("wrote %s", p)
    if args.retrieve:
        t1 = time.perf_counter()
        region = retrieve_region(cap, rec, size=args.retrieve)
        report["retrieval"] = {led: {"twin_reduction": round(v["twin_reduction"], 2),
                                     "iterations": v["iterations"]} for led, v in region.items()}
        report["retrieval_time_s"] = round(time.perf_counter() - t1, 2)
        if args.pictures is not None:
            for led, v in region.items():
                for p in save_field(Path(args.pictures), f"{led}_retrieved", v["field"]):
                    log.info("wrote %s", p)
    for code in rec.flags:
        log.warning("%s: %s", code, rec.flag_details[code])
    log.info("sample distance %.1f um, tilt (%.2f, %.2f) um/mm, %d/%d tiles in focus, %.1f s",
             rec.plane.distance_um, rec.plane.slope_x_um_per_mm, rec.plane.slope_y_um_per_mm,
             report["tiles_focused"], report["tiles"], report["time_s"])
    if args.json:
        print(json.dumps(report))
    return 0


def _analyze_one(path: str, model: str, cells: bool, phase: bool = False,
                 site: dict | None = None) -> tuple[str, dict | None, str | None]:
    """Analyse one capture in a worker process: (path, result, error line)."""
    from inference.analyze import AnalysisOptions, analyze_capture

    try:
        res = analyze_capture(path, options=AnalysisOptions(model=model, cells=cells,
                                                            phase=phase, site_calibration=site),
                              progress=lambda m: log.info("%s: %s", Path(path).name, m))
        return path, res, None
    except HoloDiffError as exc:
        return path, None, str(exc)
    except OSError as exc:
        return path, None, f"{exc}; check the path"


def format_report(res: dict) -> str:
    """A short human-readable report of one result."""
    lines = [f"{res['capture']}",
             f"  white cells        {res['cells_classified']} classified, {res['cells_rejected']} "
             f"rejected of {res['cells_detected']} objects",
             f"  WBC                {res['wbc_per_uL']} /uL" if res["wbc_per_uL"] is not None
             else "  WBC                -"]
    for k, v in res["differential_5part"].items():
        lo, hi = res["differential_5part_ci95"][k]
        lines.append(f"  {k:<18} {v:5.1f} %  (95 % CI {lo:.1f}-{hi:.1f}, n={res['counts'][k]})")
    g = res["differential_3part"]
    lines.append(f"  3-part             L {g['lymphocyte']:.1f} %, M {g['monocyte']:.1f} %, "
                 f"G {g['granulocyte']:.1f} %")
    m = res["mdw"]
    if m["sd_fl"] is not None:
        lines.append(f"  MDW                {m['sd_fl']} fL (CV {m['cv_pct']} %, n={m['n']})")
    else:
        lines.append(f"  MDW                not reported ({m.get('not_reported')})")
    for code in res["flags"]:
        lines.append(f"  FLAG {code}: {res['flag_details'].get(code, '')}")
    t = res["timing_s"]
    lines.append(f"  time               {t['total']:.1f} s (reconstruction {t['reconstruction']:.1f}, "
                 f"detection {t['detection']:.1f}, classification {t['classification']:.1f})")
    return "\n".join(lines)


def cmd_analyze(args: argparse.Namespace) -> int:
    """``holodiff analyze``: capture folders to results (INTERFACES.md section 2)."""
    from concurrent.futures import ProcessPoolExecutor

    from device.models import ModelSlots
    from inference.classify import Classifier

    if args.model:
        model = args.model
    else:
        act = ModelSlots().active()  # verified now; falls back with a warning if it must
        if act.warning:
            log.warning("%s", act.warning)
        model = str(act.path)
    clf = Classifier(model)  # fail early, once, on a missing or broken model
    site = None
    if not args.no_site_calibration:
        from calibration.store import CalibrationStore
        from device.home import home

        site = CalibrationStore(home()).classifier()
        if site is not None:
            fits = site["values"].get("model", {}).get("sha256") == clf.info.sha256
            log.info("site calibration %s %s", site["id"], "applied" if fits else
                     "was made for another model: not applied (SITE_CALIBRATION_STALE)")
    jobs = max(1, min(args.jobs or (os.cpu_count() or 1), len(args.captures)))
    log.info("analysing %d capture(s), %d at a time", len(args.captures), jobs)

    def report(outcomes) -> int:
        bad = 0
        for path, res, err in outcomes:
            if err is not None:
                bad += 1
                print(f"holodiff: error: {path}: {err}", file=sys.stderr)
                continue
            log.info("%s: %d white cells in %.1f s", path, res["cells_classified"],
                     res["timing_s"]["total"])
            print(json.dumps(res) if args.json else format_report(res), flush=True)
        return bad

    n = len(args.captures)
    if jobs == 1:
        failed = report(_analyze_one(p, model, args.cells, args.phase, site)
                        for p in args.captures)
    else:
        # the cores are shared: each analysis gets its share of threads
        share = max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(jobs, initializer=set_threads, initargs=(share,)) as ex:
            failed = report(ex.map(_analyze_one, args.captures, [model] * n, [args.cells] * n,
                                   [args.phase] * n, [site] * n))
    return 2 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``holodiff``."""
    p = argparse.ArgumentParser(prog="holodiff", description="HoloDiff lensless holographic "
                                "white-cell differential analyzer")
    p.add_argument("--version", action="version", version=f"holodiff {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = p.add_subparsers(dest="command", required=True)

    add_parsers(sub)
    add_model_parsers(sub)
    add_serial_parsers(sub)
    add_calibrate_parsers(sub)

    s = sub.add_parser("simulate", help="write a simulated capture folder plus its truth")
    s.add_argument("--out", required=True, help="capture folder to create (must not exist)")
    s.add_argument("--preset", default="healthy", choices=sorted([*PRESETS, "random"]))
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--sensor", default="imx477", choices=sorted(SENSORS))
    s.add_argument("--bayer", choices=[*BAYER_PATTERNS], help="colour filter order "
                                                             "(default: the sensor's)")
    s.add_argument("--width", type=int, default=1024)
    s.add_argument("--height", type=int, default=1024)
    s.add_argument("--full-sensor", action="store_true", help="simulate the whole sensor")
    s.add_argument("--dies", type=int, default=1, help="LED dies per colour (sub-pixel shifts)")
    s.add_argument("--fault", action="append", choices=FAULTS, help="inject a fault "
                                                                    "(repeatable)")
    s.add_argument("--physics", default="legacy",
                   help="the cells' physics: legacy (one guess per class), random (drawn over "
                        "every family of holography.cellphysics.AXES) or AXIS=FAMILY,... (those "
                        "families, the other axes at random)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_simulate)

    a = sub.add_parser("analyze", help="analyse capture folders: differential, WBC count, MDW, "
                                       "flags (JSON with --json)")
    a.add_argument("captures", nargs="+", metavar="CAPTURE", help="capture folder(s)")
    a.add_argument("--json", action="store_true", help="one holodiff-result/1 JSON object per "
                                                       "capture on stdout")
    a.add_argument("--cells", action="store_true", help="include every cell in the JSON")
    a.add_argument("--phase", action="store_true",
                   help="with --cells: each cell's dry mass (pg) from its phase, retrieved "
                        "per cell (with pixel super-resolution where the LEDs have several "
                        "dies); slower")
    a.add_argument("--model", help="classifier: a signed .hdmodel bundle, or an .onnx file with "
                   "its card (default: the active model slot, else the shipped bundle)")
    a.add_argument("--jobs", type=int, help="captures analysed in parallel (default: CPU count)")
    a.add_argument("--no-site-calibration", action="store_true",
                   help="analyse without the active site calibration of the classifier")
    a.set_defaults(func=cmd_analyze)

    t = sub.add_parser("train", help="regenerate the training data and retrain the classifier "
                                     "(needs the train extra)", add_help=False)
    t.set_defaults(func=lambda a: _delegate("inference.train", a))
    e = sub.add_parser("evaluate", help="accuracy on held-out simulated captures", add_help=False)
    e.set_defaults(func=lambda a: _delegate("inference.evaluate", a))

    r = sub.add_parser("reconstruct", help="focus and reconstruct a capture folder; report "
                                           "distance, tilt and QC")
    r.add_argument("capture", help="capture folder")
    r.add_argument("--pictures", help="folder to write amplitude/phase PNGs into")
    r.add_argument("--retrieve", type=int, metavar="PX", nargs="?", const=512, default=0,
                   help="also run support-constrained phase retrieval on the central PX x PX "
                        "region (default 512) and report the twin-image reduction")
    r.add_argument("--search-um", type=float, default=1000.0,
                   help="autofocus search range around the nominal distance")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_reconstruct)
    u = sub.add_parser("ui", help="the touchscreen app (simulated analyzer where no hardware is "
                                  "found)")
    u.add_argument("--size", default="800x480", choices=["800x480", "1280x720"],
                   help="the display (official Raspberry Pi 7-inch displays)")
    u.add_argument("--fullscreen", action="store_true", help="kiosk: full screen")
    u.add_argument("--profile", help="hardware profile (default $HOLODIFF_PROFILE)")
    g = u.add_mutually_exclusive_group()
    g.add_argument("--simulated", action="store_true")
    g.add_argument("--hardware", action="store_true")
    u.set_defaults(func=cmd_ui)
    return p


def cmd_ui(args: argparse.Namespace) -> int:
    """``holodiff ui``: the touchscreen."""
    from ui.app.main import run_app

    w, h = (int(x) for x in args.size.split("x"))
    return run_app(profile=args.profile, size=(w, h), fullscreen=args.fullscreen,
                   simulated=True if args.simulated else (False if args.hardware else None))


def _delegate(module: str, args: argparse.Namespace) -> int:
    import importlib

    return importlib.import_module(module).main(args.rest)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``holodiff`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command in ("train", "evaluate"):
        args.rest = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="holodiff: %(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except HoloDiffError as exc:
        print(f"holodiff: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"holodiff: error: {exc}; check the path and free disk space", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
