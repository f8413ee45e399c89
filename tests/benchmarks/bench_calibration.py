"""Calibration accuracy on the simulated analyzer: distance error, die-shift error, bead bias.

For each sensor (4-die LED board, a WINDOW x WINDOW read-out), in a temporary
home: dark/flat, sample distance (error against the twin's true air-equivalent
distance, air gap + glass / 1.52), die shifts (residual against the geometry;
and error against the shift the twin really applied at the true distance), and
bead sizing of simulated 8 um beads (bias, CV). Prints JSON.

    python tests/benchmarks/bench_calibration.py [--window 768] [--seeds 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", type=int, default=768)
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args(argv)

    from device import calibrate
    from device.instrument import simulated_instrument
    from device.profiles import load_profile, parse_profile
    from holography.superres import predicted_shift_px

    out = {}
    for name in ("hd1-imx477-4die", "hd1-imx708", "hd1-imx219"):
        d = json.loads(load_profile(name).path.read_text())
        if name != "hd1-imx477-4die":  # the same 4-die board on every sensor
            d["led_board"] = json.loads(load_profile("hd1-imx477-4die").path.read_text())["led_board"]
        d["sensor"].update(width=args.window, height=args.window)
        prof = parse_profile(d)
        true_z2 = prof.twin.air_gap_um + prof.twin.glass_um / 1.52
        rows = {"distance_error_um": [], "led_spread_um": [], "shift_residual_px": [],
                "shift_error_px": [], "bead_bias_pct": [], "bead_cv_pct": [], "beads": []}
        for seed in range(args.seeds):
            root = Path(tempfile.mkdtemp(prefix="hd-cal-"))
            instr = simulated_instrument(prof, seed=100 + seed)
            instr.chamber.remove()
            calibrate.calibrate_dark_flat(instr, user="bench", root=root)
            instr.chamber.insert("healthy", seed=200 + seed)
            rec = calibrate.calibrate_distance(instr, user="bench", root=root)
            rows["distance_error_um"].append(rec["values"]["sample_distance_um"] - true_z2)
            rows["led_spread_um"].append(rec["values"]["led_spread_um"])
            rec = calibrate.calibrate_shifts(instr, user="bench", root=root)
            pitch = instr.camera.spec.pixel_pitch_um
            z1 = prof.source_distance_mm * 1000.0
            for dies in rec["values"]["per_led"].values():
                o0 = dies[0]["offset_um"]
                for dd in dies[1:]:
                    rows["shift_residual_px"].append(dd["residual_px"])
                    # cells sit on the floor: the shift the twin applied is at ~ the floor distance
                    ty, tx = predicted_shift_px((dd["offset_um"][0] - o0[0], dd["offset_um"][1] - o0[1]),
                                                sample_distance_um=true_z2, source_distance_um=z1,
                                                pitch_um=pitch)
                    rows["shift_error_px"].append(float(np.hypot(dd["dy_px"] - ty, dd["dx_px"] - tx)))
            instr.chamber.insert("beads", seed=300 + seed)
            rec = calibrate.calibrate_beads(instr, user="bench", root=root, diameter_um=8.0)
            rows["bead_bias_pct"].append(rec["values"].get("bias_pct"))
            rows["bead_cv_pct"].append(rec["values"].get("cv_pct"))
            rows["beads"].append(rec["values"].get("beads"))
            instr.close()
        out[name] = {k: [round(float(x), 3) for x in v if x is not None] for k, v in rows.items()}
        out[name]["summary"] = {
            "distance_error_um_mean": round(float(np.mean(rows["distance_error_um"])), 2),
            "shift_error_px_median": round(float(np.median(rows["shift_error_px"])), 3),
            "shift_error_px_max": round(float(np.max(rows["shift_error_px"])), 3),
            "bead_bias_pct_mean": round(float(np.mean(rows["bead_bias_pct"])), 2),
            "bead_cv_pct_mean": round(float(np.mean(rows["bead_cv_pct"])), 2)}
        print(name, json.dumps(out[name]["summary"]), file=sys.stderr)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
