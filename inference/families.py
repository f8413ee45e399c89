"""Out-of-family validation: train on some physics families, score on one held out.

A crop set made by :func:`inference.dataset.build` records, per crop, the
physics family its capture was drawn from on every axis of
:data:`holography.cellphysics.AXES`. A *split* ``(axis, family)`` trains on the
crops whose capture had another family on that axis and scores on held-out
test captures (test optics, other seeds) that had that family: physics the
network never saw. ``tests/benchmarks/bench_out_of_family.py`` runs several
splits and reports the worst.

Scoring goes through the analysis's own rules (:func:`inference.result.call_cells`
with the sample-mix adaptation, :func:`inference.result.summarise`) on
*virtual captures*: for a blood differential (the simulator's presets, and
monocytosis), cells of each class are drawn from the held-out crops in that
mix, with the candidates that are not white cells beside them. The figures are
per capture (5-part and 3-part accuracy, each class's recall, balanced accuracy,
volume error, MDW against the drawn monocytes' true volume SD, and whether the
95 % intervals hold the true shares), so a pooled figure cannot hide a mix the
model gets wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from holography.cellphysics import AXES
from holography.sample import PRESETS, WBC_CLASSES
from inference.result import THREE_PART, call_cells, summarise

#: the splits the benchmark runs by default: each holds one family of one axis out
DEFAULT_SPLITS = (("granules", "upper"), ("granules", "lower"), ("index", "high"),
                  ("index", "low"), ("nucleus", "lighter"), ("shape", "flattened"),
                  ("absorption", "blue"))
#: blood differentials of the virtual captures
MIXES: dict[str, dict[str, float]] = {
    **{name: dict(PRESETS[name].differential)
       for name in ("healthy", "septic", "lymphocytosis", "eosinophilia")},
    "monocytosis": {"neutrophil": 0.50, "lymphocyte": 0.25, "monocyte": 0.20, "eosinophil": 0.04,
                    "basophil": 0.01},
}
GROUP_OF = {c: g for g, members in THREE_PART.items() for c in members}


def family_mask(family: np.ndarray, axis: str, name: str) -> np.ndarray:
    """Crops whose capture had family ``name`` on ``axis`` (``family``: (N, len(AXES)) codes)."""
    if axis not in AXES or name not in AXES[axis]:
        raise ValueError(f"unknown family {axis}={name}")
    return family[:, list(AXES).index(axis)] == AXES[axis].index(name)


@dataclass(frozen=True, slots=True)
class _Candidate:
    """What :func:`inference.result.call_cells` reads of a detected candidate."""

    x: float = 0.0
    y: float = 0.0
    faint: bool = False
    diameter_um: float = 8.0
    depth_um: float = 0.0
    clump: bool = False


def virtual_capture(probs: np.ndarray, vol_pred: np.ndarray, labels: np.ndarray,
                    vol_true: np.ndarray, mix: dict[str, float], n_cells: int,
                    rng: np.random.Generator, *, classes: tuple[str, ...],
                    train_priors: np.ndarray | None, other_fraction: float = 0.15,
                    method: dict | None = None) -> dict[str, Any]:
    """Score one virtual capture drawn from scored crops (rows of ``probs``).

    ``labels`` index ``classes`` (the last: not a white cell). Cells of each
    class are drawn in the proportions of ``mix`` (with replacement only when a
    class has too few crops), and ``other_fraction`` of the candidates are crops
    that are not white cells.
    """
    other = len(classes) - 1
    counts = rng.multinomial(n_cells, [mix[c] for c in WBC_CLASSES])
    pick: list[np.ndarray] = []
    for k, n in enumerate(counts):
        pool = np.flatnonzero(labels == k)
        if n and len(pool):
            pick.append(rng.choice(pool, n, replace=n > len(pool)))
    pool = np.flatnonzero(labels == other)
    n_other = int(round(other_fraction * n_cells))
    if n_other and len(pool):
        pick.append(rng.choice(pool, n_other, replace=n_other > len(pool)))
    idx = np.concatenate(pick)
    calls = call_cells([_Candidate()] * len(idx), probs[idx], vol_pred[idx], classes,
                       chamber_eq_um=1e6, train_priors=train_priors)
    truth = labels[idx]
    res = summarise(calls, imaged_area_mm2=1.0, chamber_height_um=100.0, dilution=10.0,
                    qc_flags=[], method=method)
    white = truth != other
    called = np.array([c.cls or "" for c in calls])
    true_cls = np.array([classes[t] if t != other else "" for t in truth])
    ok5 = called[white] == true_cls[white]
    ok3 = np.array([c != "" and GROUP_OF[c] == GROUP_OF[t]
                    for c, t in zip(called[white], true_cls[white], strict=True)])
    recall = {c: float(ok5[true_cls[white] == c].mean()) for c in WBC_CLASSES
              if (true_cls[white] == c).any()}
    true5 = {c: 100.0 * float((true_cls[white] == c).mean()) for c in WBC_CLASSES}
    true3 = {g: sum(true5[m] for m in members) for g, members in THREE_PART.items()}
    cover5 = {c: bool(lo <= true5[c] <= hi) for c, (lo, hi) in res["differential_5part_ci95"].items()}
    cover3 = {g: bool(lo <= true3[g] <= hi) for g, (lo, hi) in res["differential_3part_ci95"].items()}
    vt, vp = vol_true[idx][white], vol_pred[idx][white]
    good = np.isfinite(vt) & np.isfinite(vp) & (vt > 0)
    mono = (truth == WBC_CLASSES.index("monocyte")) & np.isfinite(vol_true[idx])
    mdw_true = float(np.std(vol_true[idx][mono], ddof=1)) if mono.sum() >= 3 else math.nan
    mdw = res["mdw"]["sd_fl"]
    return {
        "accuracy_5part": float(ok5.mean()), "accuracy_3part": float(ok3.mean()),
        "recall": recall, "balanced": float(np.mean(list(recall.values()))),
        "volume_error_pct": (float(np.median(np.abs(vp[good] / vt[good] - 1.0)) * 100)
                             if good.any() else math.nan),
        "mdw_true_fl": mdw_true, "mdw_fl": mdw,
        "mdw_error_pct": (100.0 * abs(mdw / mdw_true - 1.0)
                          if mdw is not None and math.isfinite(mdw_true) and mdw_true > 0
                          else math.nan),
        "true_5part": true5, "reported_5part": res["differential_5part"],
        "ci_5part": res["differential_5part_ci95"],
        "true_3part": true3, "reported_3part": res["differential_3part"],
        "ci_3part": res["differential_3part_ci95"],
        "covered_5part": cover5, "covered_3part": cover3,
        "cells": int(white.sum()),
    }


def share_rows(caps: list[dict[str, Any]], part: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per capture: reported minus true shares, and the SD its unwidened interval implies."""
    names = WBC_CLASSES if part == "5part" else tuple(THREE_PART)
    rows = []
    for c in caps:
        err = np.array([c[f"reported_{part}"][k] - c[f"true_{part}"][k] for k in names])
        sd = np.array([(c[f"ci_{part}"][k][1] - c[f"ci_{part}"][k][0]) / (2 * 1.96) for k in names])
        rows.append((err, sd))
    return rows


def summary(caps: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and worst capture, mean per-class recall, volume and MDW errors, coverage."""
    a5 = np.array([c["accuracy_5part"] for c in caps])
    a3 = np.array([c["accuracy_3part"] for c in caps])
    bal = np.array([c["balanced"] for c in caps])
    rec = {k: float(np.mean([c["recall"][k] for c in caps if k in c["recall"]]))
           for k in WBC_CLASSES if any(k in c["recall"] for c in caps)}
    mdw = np.array([c["mdw_error_pct"] for c in caps])
    cov5 = [v for c in caps for v in c["covered_5part"].values()]
    cov3 = [v for c in caps for v in c["covered_3part"].values()]
    return {
        "captures": len(caps),
        "median_5part": float(np.median(a5)), "worst_5part": float(a5.min()),
        "median_3part": float(np.median(a3)), "worst_3part": float(a3.min()),
        "balanced_median": float(np.median(bal)),
        # balanced accuracy over every capture's cells: each class's recall, averaged
        "balanced": float(np.mean(list(rec.values()))),
        "recall": rec,
        "volume_error_pct": float(np.nanmedian([c["volume_error_pct"] for c in caps])),
        "mdw_error_pct": float(np.nanmedian(mdw)) if np.isfinite(mdw).any() else math.nan,
        "coverage_5part": float(np.mean(cov5)), "coverage_3part": float(np.mean(cov3)),
        "by_mix": {},
    }
