"""Child process of the power-cut test: writes tests and results until it is killed.

``python powercut_writer.py HOME results`` stores results in a loop;
``python powercut_writer.py HOME tests`` runs whole tests on a tiny twin. After
each acknowledged (committed) result it prints ``ACK <uid> <sha256>``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path


def main() -> None:
    home, mode = Path(sys.argv[1]), sys.argv[2]
    if mode == "results":
        from device.store import ResultsDB, _canonical

        db = ResultsDB(home / "results.sqlite")
        db.recover()
        print("READY", flush=True)
        i = 0
        while True:
            t = db.begin_test(operator="pc", sample_id=f"S{i}")
            # big enough that one result spans several database pages
            res = {"format": "holodiff-result/1", "wbc_per_uL": 1000.0 + i, "flags": [],
                   "cells_classified": 300 + i,
                   "differential_5part": {"neutrophil": 60.0, "lymphocyte": 30.0},
                   "cells": [{"x": float(k), "y": float(i), "class": "neutrophil"}
                             for k in range(300)]}
            db.store_result(t.uid, res, user="pc")
            sha = hashlib.sha256(_canonical(res).encode()).hexdigest()
            print(f"ACK {t.uid} {sha}", flush=True)
            i += 1
    else:
        from device.instrument import simulated_instrument
        from device.profiles import load_profile, parse_profile
        from device.runner import Stage, TestRunner
        from device.store import _canonical

        d = json.loads(load_profile("demo-imx477").path.read_text())
        d["sensor"].update(width=192, height=192)
        instr = simulated_instrument(parse_profile(d))
        runner = TestRunner(instr, root=home)
        print("READY", flush=True)
        i = 0
        while True:
            instr.chamber.insert("healthy", seed=i)
            out = runner.run(operator="pc", sample_id=f"T{i}")
            if out.state is Stage.DONE and out.stored:
                sha = hashlib.sha256(_canonical(out.result).encode()).hexdigest()
                print(f"ACK {out.uid} {sha}", flush=True)
            i += 1


if __name__ == "__main__":
    main()
