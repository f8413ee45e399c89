"""Where the MDW's error comes from: cell volumes or cell classes (on demand).

    python tests/benchmarks/bench_mdw.py DIR [DIR ...] [--model M.onnx] [--json]

DIR holds captures that ``holodiff evaluate`` has analysed (their cached
detections are used), e.g. the nine held-out full-sensor captures of
``holodiff evaluate --out /tmp/heldfull --size 0 --captures 9``. For every
capture with at least :data:`inference.result.MDW_MIN_MONOCYTES` true
monocytes in the image it reports:

- ``true``: the SD of the true monocytes' true volumes (the evaluation's truth);
- ``perfect classes``: the SD of the network's volumes of the true monocytes
  it found, i.e. the MDW a perfect classifier would report with this volume
  measurement;
- ``reported``: the analysis's MDW (every white cell weighted by its monocyte
  probability, :func:`inference.result.monocyte_distribution_width`);
- where that monocyte weight lies: on true monocytes, on neutrophils, on other
  cells, against the true number of monocytes;
- how well monocytes and neutrophils are told apart (area under the ROC
  curve, Hanley & McNeil, Radiology 143(1):29, 1982, as the Mann-Whitney
  statistic): by the network's score ``log p(M) / p(N)``, by the network's
  volume alone, and by a logistic regression on the volume and each
  wavelength's integrated extinction ``sum(1 - |u|^2)`` and optical path
  ``sum(-arg u)`` over a 7.5 um disk of the refocused crop, per volume
  (fitted on the other captures: leave one capture out);
- ``two populations``: the SD of the monocyte population of a two-component
  log-normal mixture fitted by EM to the volumes of the white cells not called
  lymphocytes, started from the network's monocyte share of each (the
  classical mixture decomposition of a size distribution, e.g. McLachlan &
  Peel, Finite Mixture Models, 2000): what the volumes alone can say.

If ``perfect classes`` lies near ``true`` and ``reported`` far from it, the
error is the classes'; if the network's score separates monocytes from
neutrophils no better than their volume does, the monocyte weight on a
neutrophil is a function of its size, and no re-weighting of the same cells
can take the neutrophils' large cells out of the monocytes' distribution.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from evaluated import analysed, each_capture  # beside this file
from scipy.optimize import minimize
from scipy.stats import mannwhitneyu, norm

from inference.classify import Classifier
from inference.detect import CROP_PIXEL_UM, CROP_SIZE
from inference.result import MDW_MIN_MONOCYTES, is_white, monocyte_distribution_width

#: radius (um, sample plane) of the disk the crop's extinction and optical path are summed over
DISK_UM = 7.5


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for ``positive`` against the rest."""
    pos, neg = score[positive], score[~positive]
    if not len(pos) or not len(neg):
        return math.nan
    return float(mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))


def crop_features(crops: np.ndarray, volumes: np.ndarray) -> np.ndarray:
    """Per crop: log volume, then each wavelength's extinction and optical path per fL."""
    yy, xx = np.mgrid[:CROP_SIZE, :CROP_SIZE] - (CROP_SIZE - 1) / 2
    disk = np.hypot(yy, xx) * CROP_PIXEL_UM < DISK_UM
    u = (1 + crops[:, 0::2].astype(np.float64)) + 1j * crops[:, 1::2]
    area = CROP_PIXEL_UM ** 2
    ext = ((1 - np.abs(u) ** 2) * disk).sum((-1, -2)) * area
    path = -(np.angle(u) * disk).sum((-1, -2)) * area
    v = np.maximum(volumes, 1.0)[:, None]
    return np.c_[np.log(v), ext / v, path / v]


def logistic(X: np.ndarray, y: np.ndarray, l2: float = 1e-2):
    """A standardised L2 logistic regression; returns its score function."""
    mu, sd = X.mean(0), X.std(0) + 1e-9

    def design(Z: np.ndarray) -> np.ndarray:
        return np.c_[np.ones(len(Z)), (Z - mu) / sd]

    A = design(X)

    def loss(w: np.ndarray) -> float:
        s = A @ w
        return float(np.mean(np.logaddexp(0, s) - y * s) + l2 * np.sum(w[1:] ** 2))

    w = minimize(loss, np.zeros(A.shape[1]), method="L-BFGS-B").x
    return lambda Z: design(Z) @ w


def two_populations(volumes: np.ndarray, start: np.ndarray, iterations: int = 300) -> float:
    """SD (fL) of the larger-mean component of a two log-normal mixture of ``volumes`` (EM).

    ``start``: each cell's initial responsibility of that component.
    """
    x = np.log(np.maximum(volumes, 1.0))
    r = np.clip(start, 1e-6, 1 - 1e-6)
    for _ in range(iterations):
        pi = r.mean()
        mu1, mu0 = np.average(x, weights=r), np.average(x, weights=1 - r)
        s1 = math.sqrt(np.average((x - mu1) ** 2, weights=r))
        s0 = math.sqrt(np.average((x - mu0) ** 2, weights=1 - r))
        a, b = pi * norm.pdf(x, mu1, s1), (1 - pi) * norm.pdf(x, mu0, s0)
        r = a / np.maximum(a + b, 1e-300)
    return float(math.exp(mu1 + s1 ** 2 / 2) * math.sqrt(math.expm1(s1 ** 2)))


def capture(path: Path, clf: Classifier) -> dict | None:
    """One capture's monocytes and neutrophils, their scores, and its MDW figures."""
    a = analysed(path, clf)
    objs, shape = a.truth["objects"], a.shape
    mono_true = [o["volume_fl"] for o in objs if o["kind"] == "monocyte"
                 and 0 <= o["x_px"] < shape[1] and 0 <= o["y_px"] < shape[0]]
    if len(mono_true) < MDW_MIN_MONOCYTES:
        return None
    crops, probs, vols, calls = a.crops, a.probs, a.volumes, a.calls
    kind = np.array([k or "" for k in a.kind], object)
    # the white cells the analysis counts and takes the MDW over (inference.result.summarise)
    white = np.array([is_white(c) for c in calls])
    w = np.array([c.probabilities.get("monocyte", 0.0) if ok else 0.0
                  for c, ok in zip(calls, white, strict=True)])
    m, n = kind == "monocyte", kind == "neutrophil"
    raw = probs.astype(np.float64)
    iM, iN = clf.classes.index("monocyte"), clf.classes.index("neutrophil")
    sel = (m | n) & white
    # the white cells not called lymphocytes, each started at its share of monocyte among them
    nl = white & np.array([c.cls != "lymphocyte" for c in calls])
    adapted = np.array([[c.probabilities.get(k, 0.0) for k in ("neutrophil", "monocyte", "eosinophil",
                                                              "basophil")] for c in calls])
    start = adapted[nl, 1] / np.maximum(adapted[nl].sum(1), 1e-9)
    return {
        "capture": path.name, "monocytes": len(mono_true),
        "true_fl": float(np.std(mono_true, ddof=1)),
        "perfect_classes_fl": float(np.std(vols[m & white], ddof=1)),
        "reported_fl": monocyte_distribution_width(
            [c for c, ok in zip(calls, white, strict=True) if ok])["sd_fl"],
        "two_populations_fl": two_populations(vols[nl], start),
        "weight": {"monocytes": float(w[m].sum()), "neutrophils": float(w[n].sum()),
                   "other": float(w[~m & ~n].sum())},
        "score": (np.log(raw[:, iM] + 1e-9) - np.log(raw[:, iN] + 1e-9))[sel],
        "volume": vols[sel], "features": crop_features(crops[sel], vols[sel]),
        "is_monocyte": m[sel],
    }


def main() -> None:
    args, caps = each_capture(__doc__, capture)
    if len(caps) < 2:
        raise SystemExit(f"need at least two captures with {MDW_MIN_MONOCYTES} true monocytes")
    rows = []
    for i, c in enumerate(caps):
        others = [o for j, o in enumerate(caps) if j != i]
        fit = logistic(np.vstack([o["features"] for o in others]),
                       np.concatenate([o["is_monocyte"] for o in others]).astype(np.float64))
        y = c["is_monocyte"]
        row = {k: c[k] for k in ("capture", "monocytes", "true_fl", "perfect_classes_fl",
                                 "reported_fl", "two_populations_fl", "weight")}
        row["auc"] = {"network": auc(c["score"], y), "volume": auc(c["volume"], y),
                      "volume_extinction_path": auc(fit(c["features"]), y)}
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=1))
        return

    def pct(v: float | None, true: float) -> str:
        return "   -  " if v is None else f"{100 * (v / true - 1):+5.0f} %"

    print(f"{'capture':<34} {'mono':>5} {'true':>6} {'perfect':>14} {'reported':>14} "
          f"{'two pop.':>14}  weight M / N / other    AUC net / vol / vol+ext+path")
    for r in rows:
        t, w, a = r["true_fl"], r["weight"], r["auc"]
        rep = "     -        " if r["reported_fl"] is None else \
            f"{r['reported_fl']:6.1f} {pct(r['reported_fl'], t)}"
        print(f"{r['capture']:<34} {r['monocytes']:>5} {t:6.1f} {r['perfect_classes_fl']:6.1f} "
              f"{pct(r['perfect_classes_fl'], t)} {rep} {r['two_populations_fl']:6.1f} "
              f"{pct(r['two_populations_fl'], t)}  {w['monocytes']:5.0f} / "
              f"{w['neutrophils']:5.0f} / {w['other']:4.0f}    {a['network']:.3f} / "
              f"{a['volume']:.3f} / {a['volume_extinction_path']:.3f}")
    err_p = [100 * (r["perfect_classes_fl"] / r["true_fl"] - 1) for r in rows]
    err_r = [100 * (r["reported_fl"] / r["true_fl"] - 1) for r in rows if r["reported_fl"]]
    err_g = [100 * (r["two_populations_fl"] / r["true_fl"] - 1) for r in rows]
    gain = [r["auc"]["network"] - r["auc"]["volume"] for r in rows]
    print(f"median |error|: perfect classes {np.median(np.abs(err_p)):.1f} %, reported "
          f"{np.median(np.abs(err_r)):.1f} % ({len(err_r)} reported), two populations "
          f"{np.median(np.abs(err_g)):.1f} % ({min(err_g):+.0f} to {max(err_g):+.0f} %); network AUC "
          f"above volume alone by {min(gain):+.3f} to {max(gain):+.3f}")


if __name__ == "__main__":
    main()
