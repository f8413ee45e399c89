"""Time to result of one whole test on the simulated analyzer, stage by stage.

Runs ``holodiff run``'s code path (device.runner.TestRunner) on the twin of a
hardware profile, by default the full IMX477 sensor (``hd1-imx477``), in a
temporary ``HOLODIFF_HOME``, and prints JSON: the time of every stage measured
in this process (capture on the twin is dominated by rendering the holograms,
which a real camera does not do, so the instrument's own exposure and read-out
time, from the twin's clock, is given beside it), the analysis stages, storage,
the total compute time without simulation, and the result's headline figures.

    python tests/benchmarks/bench_test.py                    # full sensor (~5-10 min on 2 cores)
    python tests/benchmarks/bench_test.py --profile demo-imx477   # the demo's 1024x1024 window
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="hd1-imx477")
    ap.add_argument("--preset", default="healthy")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--home", help="keep the test's home here instead of a temporary folder")
    args = ap.parse_args(argv)

    from device.instrument import simulated_instrument
    from device.runner import Stage, TestRunner

    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="hd-bench-"))
    instr = simulated_instrument(args.profile)
    instr.chamber.insert(args.preset, seed=args.seed)
    runner = TestRunner(instr, root=home)
    t0 = time.perf_counter()
    out = runner.run(operator="bench", sample_id="BENCH",
                     progress=lambda p: print(f"[{time.perf_counter() - t0:6.1f} s] {p.stage}: "
                                              f"{p.message}", file=sys.stderr))
    wall = time.perf_counter() - t0
    if out.state is not Stage.DONE:
        print(f"test failed: {out.error}", file=sys.stderr)
        return 2
    t = out.timing_s
    res = out.result
    compute = t["reconstruction"] + t["detection"] + t["classification"] + t["storage"]
    report = {
        "profile": args.profile,
        "frame": [instr.profile.sensor.width, instr.profile.sensor.height],
        "frames": len(instr.profile.leds.dies),
        "stages_s": {"capture_on_twin_incl_simulation": t["capture"],
                     "capture_instrument_exposure_and_readout": round(instr.camera.clock.t_s, 2),
                     "reconstruction": t["reconstruction"], "detection": t["detection"],
                     "classification": t["classification"], "storage": t["storage"]},
        "compute_s_without_simulation": round(compute, 2),
        "time_to_result_on_hardware_s": round(compute + instr.camera.clock.t_s, 2),
        "wall_s_this_run": round(wall, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "cells_classified": res["cells_classified"],
        "wbc_per_uL": res["wbc_per_uL"],
        "flags": res["flags"],
        "stored": out.stored,
        "home": str(home),
    }
    print(json.dumps(report, indent=1))
    runner.close()
    instr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
