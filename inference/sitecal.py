"""Site calibration of the classifier from a method comparison (INTERFACES.md section 7).

A site runs 10-40 patient samples on the analyzer and on its reference
haematology analyzer; only each sample's reference 5-part is known, never
which cell is which (learning from label proportions). The calibration is a
small map of the network's log-probabilities, ``z' = W z + b`` (``K x K`` and
``K``, ``K`` = the model's classes), applied to every candidate before the
analysis adapts the posteriors to the sample's own mix and calls the cells
(:func:`inference.result.call_cells`).

Why a map and not per-class biases: the analysis re-estimates each sample's
class priors by EM (Saerens et al. 2002), and a bias on one class's log-score
is exactly a change of training prior, which that EM absorbs (the adapted
posteriors do not move, up to the differential prior). What a site must undo is
a class-conditional shift (under another instrument's physics neutrophils
score like eosinophils); a map that mixes the scores can move such cells while
the cells that look like no neutrophil (true eosinophils) keep their call.

The fit (:func:`fit`) minimises, over the comparison captures, the
chi-square-like distance between the shares the calibrated scores imply at
the reference mix and the reference, ``sum (s - r)^2 / (r + 1 point)``, which weighs a
rare class's error by its own size (a proportion fit alone would fix the
neutrophils and starve the rare classes), plus a ridge ``lambda ||W - I||^2 +
lambda ||b||^2`` that keeps the map near the identity (with 10-40 captures, 40-160
proportion constraints against 42 parameters). It is cross-validated by
capture (:func:`cross_validate`: every capture is scored by a fit that did not
see it, with the analysis's hard calls), and the caller makes it active only
when it lowers the cross-validated 5-part error.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from holography.errors import HoloDiffError
from holography.sample import WBC_CLASSES
from inference.result import (
    PSEUDO_COUNT,
    THREE_PART,
    adapt_priors,
    differential_prior,
)

FORMAT = "holodiff-sitecal/1"
#: reference file columns (INTERFACES.md section 7)
COLUMNS = ("capture", *WBC_CLASSES, "wbc_per_uL", "mdw_sd_fl")
OPTIONAL = ("wbc_per_uL", "mdw_sd_fl")
MIN_ROWS = 8
#: the reference 5-part must sum to 100 within this (points)
SUM_TOLERANCE = 1.0
#: ridge weight towards the identity map
RIDGE = 0.003
FLOOR = 1e-6
#: candidates of one capture used by the fit (a random subset of larger captures)
FIT_MAX_CELLS = 600


class SiteCalibrationError(HoloDiffError, ValueError):
    """A reference file or a site calibration is unusable; the message says which row or why."""


@dataclass(frozen=True, slots=True)
class ReferenceRow:
    """One row of the method-comparison file."""

    line: int
    capture: Path
    differential: dict[str, float]  # percent
    wbc_per_uL: float | None
    mdw_sd_fl: float | None


def read_reference(path: str | Path) -> list[ReferenceRow]:
    """Parse and check a reference CSV; raise with the row and what is wrong.

    Capture paths are relative to the CSV's folder unless absolute; that each
    is a readable capture is checked by the caller (which reads it).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SiteCalibrationError(f"{path}: cannot read the reference file ({exc})") from None
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        raise SiteCalibrationError(f"{path}: empty reference file; it needs a header row "
                                   f"({','.join(COLUMNS)}) and one row per capture")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in COLUMNS if c not in header and c not in OPTIONAL]
    if missing:
        raise SiteCalibrationError(f"{path}: line 1: missing column {missing[0]!r} (the header "
                                   f"needs {','.join(COLUMNS)})")
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        raise SiteCalibrationError(f"{path}: line 1: unknown column {unknown[0]!r}")
    out: list[ReferenceRow] = []
    seen: set[Path] = set()
    for n, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise SiteCalibrationError(f"{path}: line {n}: {len(row)} fields, the header has "
                                       f"{len(header)}")
        rec = dict(zip(header, (cell.strip() for cell in row), strict=True))
        if not rec["capture"]:
            raise SiteCalibrationError(f"{path}: line {n}: the capture is empty")
        cap = Path(rec["capture"])
        cap = cap if cap.is_absolute() else path.parent / cap
        if cap.resolve() in seen:
            raise SiteCalibrationError(f"{path}: line {n}: capture {rec['capture']} is listed twice")
        seen.add(cap.resolve())
        diff = {}
        for c in WBC_CLASSES:
            try:
                v = float(rec[c])
            except ValueError:
                raise SiteCalibrationError(f"{path}: line {n}: {c} {rec[c]!r} is not a number") from None
            if not (math.isfinite(v) and 0.0 <= v <= 100.0):
                raise SiteCalibrationError(f"{path}: line {n}: {c} {rec[c]} is not a percentage "
                                           "(0-100)")
            diff[c] = v
        total = sum(diff.values())
        if abs(total - 100.0) > SUM_TOLERANCE:
            raise SiteCalibrationError(f"{path}: line {n}: the five percentages sum to {total:g}, "
                                       "not 100 (+-1)")
        extra: dict[str, float | None] = {}
        for c in OPTIONAL:
            raw = rec.get(c, "")
            if raw == "":
                extra[c] = None
                continue
            try:
                v = float(raw)
            except ValueError:
                raise SiteCalibrationError(f"{path}: line {n}: {c} {raw!r} is not a number") from None
            if not (math.isfinite(v) and v > 0):
                raise SiteCalibrationError(f"{path}: line {n}: {c} {raw} must be positive")
            extra[c] = v
        out.append(ReferenceRow(line=n, capture=cap, differential=diff, **extra))
    if len(out) < MIN_ROWS:
        raise SiteCalibrationError(f"{path}: {len(out)} usable rows; a method comparison needs at "
                                   f"least {MIN_ROWS} captures (10-40 recommended)")
    return out


@dataclass(frozen=True, slots=True)
class SiteMap:
    """The calibration map on log-probabilities: ``softmax(W log p + b)``."""

    W: np.ndarray
    b: np.ndarray

    @classmethod
    def identity(cls, k: int) -> SiteMap:
        """The map that changes nothing."""
        return cls(np.eye(k), np.zeros(k))

    @classmethod
    def from_values(cls, values: dict[str, Any], k: int) -> SiteMap:
        """The map stored in a calibration record's values (checked for shape and finiteness)."""
        try:
            W = np.array(values["map"]["W"], np.float64)
            b = np.array(values["map"]["b"], np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise SiteCalibrationError(f"site calibration record has no usable map ({exc}); "
                                       "repeat holodiff calibrate classifier") from None
        if W.shape != (k, k) or b.shape != (k,) or not (np.isfinite(W).all() and np.isfinite(b).all()):
            raise SiteCalibrationError("site calibration map does not fit this model; repeat "
                                       "holodiff calibrate classifier")
        return cls(W, b)

    def to_values(self) -> dict[str, Any]:
        """The map as a record stores it."""
        return {"W": [[round(float(v), 6) for v in r] for r in self.W],
                "b": [round(float(v), 6) for v in self.b]}

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of ``probs`` (N, K); all-zero rows (faint candidates) stay zero."""
        p = np.asarray(probs, np.float64)
        if not len(p):
            return p.astype(np.float32)
        seen = p.sum(axis=1) > 0
        z = np.log(np.clip(p, FLOOR, None)) @ self.W.T + self.b
        z -= z.max(axis=1, keepdims=True)
        q = np.exp(z)
        q /= q.sum(axis=1, keepdims=True)
        return np.where(seen[:, None], q, 0.0).astype(np.float32)


def fit(captures: list[np.ndarray], refs: np.ndarray, classes: tuple[str, ...],
        train_priors: np.ndarray | None, *, ridge: float = RIDGE) -> tuple[SiteMap, dict]:
    """Fit the map to the reference 5-parts (``refs``: (M, 5) fractions) of ``captures``' probabilities.

    The analysis adapts each sample's posteriors to its class mix by EM; with
    calibrated scores that EM stops where the mean adapted posterior equals the
    mix. The fit asks exactly that of each comparison capture at its
    reference mix: the mean of ``softmax(W z + b + log(mix / training prior))``
    over its candidates must give the reference 5-part (the share of the
    candidates that are not white cells is held at what the uncalibrated
    analysis estimates). No EM runs inside the fit, the gradient is exact, and
    a fit of 40 captures takes a fraction of a second.

    Returns the map and the fit's own figures (loss before and after).
    """
    from scipy.optimize import minimize

    k = len(classes)
    wbc = np.array([classes.index(c) for c in WBC_CLASSES])
    other = np.setdiff1d(np.arange(k), wbc)
    p0 = (np.asarray(train_priors, np.float64) if train_priors is not None else np.ones(k))
    p0 = p0 / p0.sum()
    mean, conc = differential_prior()
    rng = np.random.default_rng(0)
    refs = np.asarray(refs, np.float64)
    refs = np.clip(refs, 1e-4, None)
    refs = refs / refs.sum(axis=1, keepdims=True)
    weight = 1.0 / (refs + 0.01)
    data = []
    for p, r in zip(captures, refs, strict=True):
        p = np.asarray(p, np.float64)
        p = p[p.sum(1) > 0]
        if len(p) > FIT_MAX_CELLS:  # the shares of a few hundred cells are as good for the fit
            p = p[rng.choice(len(p), FIT_MAX_CELLS, replace=False)]
        _, prior = adapt_priors(p, p0, pseudo_count=PSEUDO_COUNT, wbc_prior=(wbc, mean, conc))
        mix = np.empty(k)
        mix[other] = prior[other]
        mix[wbc] = r * (1.0 - prior[other].sum())
        data.append((np.log(np.clip(p, FLOOR, None)), np.log(mix / p0)))

    def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        W = np.eye(k) + theta[:k * k].reshape(k, k)
        b = theta[k * k:]
        loss, gW, gb = 0.0, np.zeros((k, k)), np.zeros(k)
        for (z, a), r, w in zip(data, refs, weight, strict=True):
            y = z @ W.T + b + a
            y -= y.max(axis=1, keepdims=True)
            q = np.exp(y)
            q /= q.sum(axis=1, keepdims=True)
            m = q.mean(axis=0)
            S = m[wbc].sum()
            sh = m[wbc] / S
            d = sh - r
            loss += float(np.sum(w * d * d))
            ds = 2.0 * w * d
            dm = np.zeros(k)
            dm[wbc] = (ds - float(ds @ sh)) / S
            g = dm / len(q)  # d loss / d q_n, the same for every candidate
            dy = q * (g - (q @ g)[:, None])
            gW += dy.T @ z
            gb += dy.sum(axis=0)
        n = len(data)
        loss = loss / n + ridge * float(theta @ theta)
        grad = np.concatenate([(gW / n).ravel(), gb / n]) + 2.0 * ridge * theta
        return loss, grad

    theta0 = np.zeros(k * k + k)
    before = loss_grad(theta0)[0]
    best = minimize(loss_grad, theta0, jac=True, method="L-BFGS-B", options={"maxiter": 500})
    theta = best.x if best.fun < before else theta0
    W = np.eye(k) + theta[:k * k].reshape(k, k)
    return SiteMap(W, theta[k * k:]), {"loss_before": round(before, 6),
                                       "loss_after": round(float(min(best.fun, before)), 6),
                                       "iterations": int(best.nit)}


def _errors(reported: dict[str, float], ref: dict[str, float]) -> dict[str, float]:
    e5 = {c: abs(reported[c] - ref[c]) for c in WBC_CLASSES}
    for g, members in THREE_PART.items():
        e5[f"3part:{g}"] = abs(sum(reported[m] for m in members) - sum(ref[m] for m in members))
    return e5


def summarise_errors(rows: list[dict[str, float]]) -> dict[str, Any]:
    """Mean absolute error (points) per class, their mean (5-part), and the 3-part groups'."""
    per = {c: round(float(np.mean([r[c] for r in rows])), 2) for c in WBC_CLASSES}
    g3 = {g: round(float(np.mean([r[f"3part:{g}"] for r in rows])), 2) for g in THREE_PART}
    return {"mae_5part": round(float(np.mean(list(per.values()))), 3), "per_class": per,
            "mae_3part": round(float(np.mean(list(g3.values()))), 3), "per_group": g3}


def cross_validate(captures: list[np.ndarray], refs: list[dict[str, float]], report,
                   classes: tuple[str, ...], train_priors: np.ndarray | None, *,
                   folds: int = 5, ridge: float | None = None) -> dict[str, Any]:
    """Cross-validated 5-part and 3-part errors without and with the calibration.

    ``report(i, probs) -> dict`` gives the analysis's reported 5-part (percent) of
    capture ``i`` with candidate probabilities ``probs`` (the hard calls of
    :func:`inference.result.call_cells`);
    ``refs`` are the reference 5-parts in percent. Folds are by capture
    (every capture scored by a fit that did not see it). ``ridge`` None: each
    fold chooses its ridge from :data:`RIDGES` by a cross-validation of its own
    training captures (nested, so the reported error is not the selection's).
    """
    m = len(captures)
    folds = max(2, min(folds, m))
    order = np.arange(m)
    without, with_ = [], []
    per_capture = []
    chosen = []
    r = np.array([[ref[c] / 100.0 for c in WBC_CLASSES] for ref in refs])
    for f in range(folds):
        test = order[f::folds]
        train = np.setdiff1d(order, test)
        lam = ridge
        if lam is None:
            lam = choose_ridge([captures[i] for i in train], [refs[i] for i in train],
                               lambda j, p, train=train: report(int(train[j]), p), classes,
                               train_priors)
        chosen.append(lam)
        smap, _ = fit([captures[i] for i in train], r[train], classes, train_priors, ridge=lam)
        for i in test:
            a = report(int(i), captures[i])
            b = report(int(i), smap.apply(captures[i]))
            without.append(_errors(a, refs[i]))
            with_.append(_errors(b, refs[i]))
            per_capture.append({"index": int(i), "without": a, "with": b})
    per_capture.sort(key=lambda d: d["index"])
    return {"folds": folds, "without": summarise_errors(without), "with": summarise_errors(with_),
            "ridges": chosen, "per_capture": per_capture}


#: ridges a fit chooses from (by cross-validation on its own captures)
RIDGES = (0.003, 0.01, 0.03)


def choose_ridge(captures: list[np.ndarray], refs: list[dict[str, float]], report,
                 classes: tuple[str, ...], train_priors: np.ndarray | None) -> float:
    """The ridge of :data:`RIDGES` with the lowest cross-validated 5-part error on these captures."""
    scores = [cross_validate(captures, refs, report, classes, train_priors, folds=4,
                             ridge=lam)["with"]["mae_5part"] for lam in RIDGES]
    return RIDGES[int(np.argmin(scores))]
