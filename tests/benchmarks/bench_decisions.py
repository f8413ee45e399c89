"""How far a better decision on the network's scores could take the 5-part accuracy (on demand).

    python tests/benchmarks/bench_decisions.py DIR [DIR ...] [--model M.onnx] [--json]

DIR holds captures that ``holodiff evaluate`` has analysed (their cached
detections are used). Every way the analysis turns the network's scores into
calls (the sample's class mix adapted by EM, the differential prior, a
confidence rule) amounts to a per-class offset on the log-probabilities: a
cell is called ``argmax_k log p_k + b_k``, with ``b`` the log of the sample's
priors over the training priors (Saerens, Latinne & Decaestecker, Neural
Comput. 14(1):21, 2002). This finds, per capture and *with the truth*, the
offsets that maximise that capture's 5-part accuracy (coordinate ascent over
a grid, neutrophils held at 0) and reports it beside the analysis's own
accuracy. The oracle's figure is an upper bound of any prior adaptation or
threshold on these scores: where it stays below a goal, the goal needs a
network that separates the classes better, not a better decision.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from evaluated import analysed, each_capture  # beside this file

from holography.sample import WBC_CLASSES
from inference.classify import Classifier
from inference.result import is_white

#: the offsets tried for each class (natural-log units)
GRID = np.linspace(-8.0, 8.0, 161)


def best_offsets(logp: np.ndarray, truth: np.ndarray, sweeps: int = 6) -> tuple[np.ndarray, float]:
    """Offsets ``b`` (column 0 held at 0) maximising the accuracy of ``argmax(logp + b)``."""
    b = np.zeros(logp.shape[1])

    def accuracy(bb: np.ndarray) -> float:
        return float(np.mean(np.argmax(logp + bb, axis=1) == truth))

    best = accuracy(b)
    for _ in range(sweeps):
        before = best
        for k in range(1, logp.shape[1]):
            for g in GRID:
                trial = b.copy()
                trial[k] = g
                a = accuracy(trial)
                if a > best:
                    best, b = a, trial
        if best == before:
            break
    return b, best


def capture(path: Path, clf: Classifier) -> dict | None:
    """The analysis's 5-part accuracy on one capture and the best offsets' (white cells it counts)."""
    a = analysed(path, clf)
    probs, calls, kind = a.probs, a.calls, a.kind
    # the evaluation's pairs: true white cells the analysis counts (low-confidence ones as errors)
    sel = np.array([k in WBC_CLASSES and is_white(c) for k, c in zip(kind, calls, strict=True)])
    if sel.sum() < 20:
        return None
    t = np.array([WBC_CLASSES.index(k) for k, s in zip(kind, sel, strict=True) if s])
    called = np.array([c.cls == k for c, k, s in zip(calls, kind, sel, strict=True) if s])
    cols = [clf.classes.index(c) for c in WBC_CLASSES]
    logp = np.log(np.asarray(probs, np.float64)[sel][:, cols] + 1e-12)
    b, oracle = best_offsets(logp, t)
    counts = np.bincount(t, minlength=len(WBC_CLASSES))
    return {"capture": path.name, "cells": int(sel.sum()),
            "true_mix_pct": [round(100 * float(c) / sel.sum(), 1) for c in counts],
            "analysis_5part": round(float(called.mean()), 4), "oracle_5part": round(oracle, 4),
            "oracle_offsets": [round(float(v), 2) for v in b]}


def main() -> None:
    args, rows = each_capture(__doc__, capture)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'capture':<36} {'cells':>6}  {'true mix N/L/M/E/B %':<26} analysis  oracle")
    for r in rows:
        mix = "/".join(f"{v:g}" for v in r["true_mix_pct"])
        print(f"{r['capture']:<36} {r['cells']:>6}  {mix:<26} {r['analysis_5part']:.4f}    "
              f"{r['oracle_5part']:.4f}")
    tot = sum(r["cells"] for r in rows)
    print(f"pooled over {len(rows)} captures ({tot} cells): analysis "
          f"{sum(r['analysis_5part'] * r['cells'] for r in rows) / tot:.4f}, oracle "
          f"{sum(r['oracle_5part'] * r['cells'] for r in rows) / tot:.4f}")


if __name__ == "__main__":
    main()
