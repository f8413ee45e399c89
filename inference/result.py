"""From classified cells to the ``holodiff-result/1`` object (INTERFACES.md section 2).

Counts, 5-part and 3-part differentials with 95 % intervals (counting and classification error),
WBC concentration, per-cell volume, MDW with its interval, and QC flags.

Figures and limits
------------------
- Confidence intervals: the union of the Wilson score interval of the count
  (Wilson, J. Am. Stat. Assoc. 22:209, 1927; recommended over the Wald interval
  by Brown, Cai & DasGupta, Stat. Sci. 16(2):101, 2001), which holds counting
  error, and the interval of the sample's class mix as the network's
  sample-adapted posteriors and the differential prior give it (a Laplace
  approximation: :func:`mix_intervals`), which holds classification
  ambiguity. (The "matrix method" of adjusted counting, the network's calls
  corrected by its validation confusion, was used before: its confusion
  matrix turned near-singular where eosinophils and basophils are both
  mostly called something else, and the intervals went to 0-100 %.)
  Neither part holds the network's own systematic error (a class it
  absorbs into another), which does not shrink with the count: each
  interval is widened by the model's method error, ``z x`` the RMS
  systematic error of that class's share that a method comparison on
  captures apart from every test set measured (``method_error`` in the
  model card, :func:`method_error`), added in quadrature to each side
  (the total error of a measurement as random plus systematic parts, as in
  Westgard, Carey & Wold, Clin. Chem. 20(7):825, 1974; the comparison
  itself as in CLSI EP09). A card without one leaves the intervals as
  they were.
- WBC per uL of blood: white cells counted / (imaged sample-plane area x
  chamber height / dilution), over a counting frame :data:`COUNT_GUARD_UM`
  inside the image's edges: a cell on the border is found with its centre
  pushed outward, so counting every candidate takes in cells just outside
  (+1 % on a 1024-pixel window); in the shrunken frame every cell is whole
  and its centre true, and counting cells by their centre in it is unbiased
  (the edge effect of counting in a frame: Gundersen, "Notes on the
  estimation of the numerical density of arbitrary profiles: the edge
  effect", J. Microsc. 111(2):219, 1977; "minus sampling" in Baddeley &
  Jensen, Stereology for Statisticians, 2005).
- MDW: standard deviation of the monocyte volumes (fL), every white cell
  weighted by its monocyte probability (:func:`monocyte_distribution_width`),
  reported from :data:`MDW_MIN_MONOCYTES` effective monocytes up; its 95 %
  interval is the chi-square interval of a normal SD. Crouser et al. (Crit. Care Med. 47(8):1018, 2019)
  used an MDW cut-off of 20 on the Beckman DxH scale, whose healthy values lie
  near 16-19; our limit :data:`MDW_HIGH_CV_PCT` is set the same way on our
  scale (healthy monocyte volume CV about 14 %) and is provisional until a
  clinical study sets it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from holography.sample import WBC_CLASSES

FORMAT = "holodiff-result/1"
THREE_PART = {"lymphocyte": ("lymphocyte",), "monocyte": ("monocyte",),
              "granulocyte": ("neutrophil", "eosinophil", "basophil")}

#: a crop whose most probable 3-part group (lymphocyte, monocyte, granulocyte) holds less
#: probability than this is not counted ("low confidence"); one that reaches it is called its
#: most probable class (:func:`call_cells`)
MIN_CONFIDENCE = 0.5
#: fewer counted white cells than this: EMPTY_CHAMBER
EMPTY_MAX_CELLS = 5
#: fewer counted white cells than this: LOW_COUNT (a 200-cell count is the least a differential is
#: read from; CLSI H20-A2 uses 400 for its reference method)
LOW_COUNT_CELLS = 200
#: more than this fraction of white cells touching others: CLUMPS
CLUMP_LIMIT = 0.10
#: DEBRIS: more non-white-cell objects than this many per white cell, and more than
#: DEBRIS_PER_UL of them per uL of blood (a healthy simulated full-sensor capture: about 1.2
#: per white cell and 8,500 per uL, mostly platelet clusters, ghosts and debris)
DEBRIS_PER_WBC = 3.0
DEBRIS_PER_UL = 15000.0
#: more than this fraction of white-cell candidates left unclassified: LOW_CONFIDENCE
LOW_CONFIDENCE_LIMIT = 0.10
MDW_MIN_MONOCYTES = 30
MDW_HIGH_CV_PCT = 20.0
#: a class the model finds at less than this fraction of its true number on the held-out
#: captures (the recall in its card) is under-counted: CONFIRM_DIFF names it on every result
UNDER_COUNTED_RECALL = 0.5
#: the concentration's counting frame lies this far (um, sample plane) inside the image's edges
#: (the detection's own edge margin)
COUNT_GUARD_UM = 8.0
#: pseudo-count per class of the sample-mix adaptation (keeps a rare class off exactly zero)
PSEUDO_COUNT = 1.0
#: adult reference intervals of the differential, % (Dacie and Lewis Practical Haematology, 12th
#: ed., table 2.1); the LIS export and the touchscreen show them, and they set the prior of
#: :func:`differential_prior`
REFERENCE_PCT = {"neutrophil": (40.0, 75.0), "lymphocyte": (20.0, 45.0), "monocyte": (2.0, 10.0),
                 "eosinophil": (1.0, 6.0), "basophil": (0.0, 2.0)}
#: a candidate deeper than the chamber by this much (air-equivalent um) sits on a window
OUTSIDE_MARGIN_UM = 12.0
#: larger than this (um) is not one white cell (bubble, big debris)
MAX_DIAMETER_UM = 20.0
#: why a candidate too faint to be a white cell (inference.detect.FAINT_PEAK_RATIO) is not counted
FAINT_REASON = "too faint for a white cell"

FLAG_TEXT = {
    "EMPTY_CHAMBER": "No cells found: the chamber is empty or was not filled. Fill a new chamber "
                     "with the sample and repeat the test.",
    "LOW_COUNT": "Too few white cells counted for a reliable differential. Repeat with a new "
                 "sample; if the count stays low, confirm with the laboratory.",
    "SATURATED": "The image was over-exposed. Repeat the test; if it happens again, call service.",
    "DARK_FRAME": "A light did not switch on. Repeat the test; if it happens again, call service.",
    "OUT_OF_FOCUS": "The sample could not be brought into focus. Reseat the chamber and repeat "
                    "the test.",
    "CLUMPS": "Many white cells are clumped together: the differential may be wrong. Mix the "
              "sample gently, fill a new chamber and repeat.",
    "DEBRIS": "Much debris or many non-white-cell particles in the sample. Use a fresh sample and "
              "a clean chamber, then repeat.",
    "MDW_HIGH": "Monocyte distribution width is high: sepsis screen positive. Tell the doctor now.",
    "LOW_CONFIDENCE": "Many cells could not be classified with confidence. Repeat the test; if it "
                      "happens again, send the sample to the laboratory.",
    "SITE_CALIBRATION_STALE": "The site calibration was made for another model and is not used. "
                              "Results are valid; ask an engineer to calibrate the new model "
                              "(holodiff calibrate classifier).",
    "CONFIRM_DIFF": "Some white-cell types are under-counted by this analyzer: if they matter for "
                    "this patient, send a tube to the laboratory.",
}


def under_counted(card: dict[str, Any]) -> dict[str, float]:
    """White-cell classes the model's card says it finds at less than :data:`UNDER_COUNTED_RECALL`.

    The card's held-out accuracy (``holodiff evaluate --update-card``) of the
    INT8 model, else of its only model; ``{class: recall}``. A card without a
    held-out accuracy gives ``{}``: nothing was measured to warn about.
    """
    acc = card.get("accuracy")
    if not isinstance(acc, dict):
        return {}
    rep = acc.get("int8")
    if not isinstance(rep, dict):
        reps = [v for v in acc.values() if isinstance(v, dict) and "per_class" in v]
        rep = reps[0] if len(reps) == 1 else {}
    per = rep.get("per_class")
    per = per if isinstance(per, dict) else {}
    recall = {c: per[c].get("recall") for c in WBC_CLASSES if isinstance(per.get(c), dict)}
    return {c: float(r) for c, r in recall.items()
            if isinstance(r, (int, float)) and math.isfinite(r) and r < UNDER_COUNTED_RECALL}


def under_counted_text(under: dict[str, float]) -> str:
    """CONFIRM_DIFF's one line for a result: which classes, how far under, what to do."""
    def listed(items: list[str]) -> str:
        return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]

    said = listed([f"{c}s" for c in under])  # the five class names take a plain -s
    found = listed([f"{100 * r:.0f} %" for r in under.values()])
    return (f"{said[0].upper()}{said[1:]} are under-counted by this analyzer (found at {found} "
            f"of their true number in testing): if they matter for this patient, send a tube to "
            f"the laboratory.")


def method_error(card: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The model's method error from its card: ``{"5part": {class: pct}, "3part": {group: pct}}``.

    Each figure is the RMS systematic error (percentage points) of that share,
    ``sqrt(bias^2 + sd^2)`` of the card's ``method_error`` section
    (``holodiff evaluate --write-method-error``). A card without the section,
    or with a figure that is not a finite non-negative number, gives ``{}``
    for that part: nothing measured, nothing added.
    """
    sec = card.get("method_error")
    out: dict[str, dict[str, float]] = {"5part": {}, "3part": {}}
    if not isinstance(sec, dict):
        return out
    for part, names in (("5part", WBC_CLASSES), ("3part", tuple(THREE_PART))):
        rows = sec.get(part)
        rows = rows if isinstance(rows, dict) else {}
        for k in names:
            v = rows.get(k, {}).get("rms_pct") if isinstance(rows.get(k), dict) else None
            if isinstance(v, (int, float)) and math.isfinite(v) and v >= 0:
                out[part][k] = float(v)
    return out


def widen(share: float, lo: float, hi: float, systematic: float, conf: float = 0.95
          ) -> tuple[float, float]:
    """An interval ``(lo, hi)`` about ``share`` widened by a systematic error (same units).

    Each side's half-width and ``z x systematic`` add in quadrature (random and
    systematic parts of a total error); the bounds stay within 0..100.
    """
    if not systematic > 0:
        return lo, hi
    e = float(stats.norm.ppf(0.5 + conf / 2)) * systematic
    return (max(0.0, share - math.hypot(max(share - lo, 0.0), e)),
            min(100.0, share + math.hypot(max(hi - share, 0.0), e)))


def wilson_interval(k: int, n: int, conf: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (as fractions)."""
    if n <= 0:
        return (0.0, 1.0)
    z = float(stats.norm.ppf(0.5 + conf / 2))
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def sd_interval(sd: float, n: int, conf: float = 0.95) -> tuple[float, float]:
    """Chi-square confidence interval of a standard deviation from ``n`` normal values."""
    df = n - 1
    lo = sd * math.sqrt(df / stats.chi2.ppf(0.5 + conf / 2, df))
    hi = sd * math.sqrt(df / stats.chi2.ppf(0.5 - conf / 2, df))
    return lo, hi


def _rounded_percentages(counts: dict[str, int]) -> dict[str, float]:
    """Percentages to 0.1 that sum to exactly 100 (largest remainder)."""
    n = sum(counts.values())
    if n == 0:
        return {k: 0.0 for k in counts}
    tenths = {k: 1000.0 * v / n for k, v in counts.items()}
    floor = {k: math.floor(v) for k, v in tenths.items()}
    short = 1000 - sum(floor.values())
    for k in sorted(tenths, key=lambda k: tenths[k] - floor[k], reverse=True)[:short]:
        floor[k] += 1
    return {k: v / 10.0 for k, v in floor.items()}


@dataclass(slots=True)
class CellCall:
    """One candidate after classification."""

    x: float
    y: float
    cls: str | None
    confidence: float
    diameter_um: float
    volume_fl: float
    depth_um: float
    clump: bool
    reject_reason: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    raw_call: str | None = None  # the network's own most probable class (before adaptation)


def is_white(call: CellCall) -> bool:
    """Whether the analysis counts ``call`` as a white cell: classified, or unsure only of its class.

    These are the cells of the concentration and the MDW; the differential takes those of them
    that are classified.
    """
    return call.cls is not None or call.reject_reason == "low confidence"


def differential_prior() -> tuple[np.ndarray, float]:
    """Mean and concentration of a Dirichlet prior of the 5-part differential (WBC_CLASSES order).

    The mean is the centre of each class's adult reference interval
    (:data:`REFERENCE_PCT`), normalised. Taking each interval as mean +- 1.96 SD,
    a Dirichlet of concentration ``S`` has variance ``m (1 - m) / (S + 1)``; each
    class gives its own ``S`` and the smallest (the neutrophils': about 30, the
    widest spread) is used, so that the prior is no tighter than the least
    certain class says. It describes healthy adults: a patient's differential
    may lie far outside it, and a few hundred counted cells outweigh its 30
    pseudo-cells wherever the network can tell the classes apart.
    """
    lo = np.array([REFERENCE_PCT[c][0] for c in WBC_CLASSES]) / 100.0
    hi = np.array([REFERENCE_PCT[c][1] for c in WBC_CLASSES]) / 100.0
    mean = (lo + hi) / 2
    mean = mean / mean.sum()
    var = ((hi - lo) / (2 * 1.96)) ** 2
    return mean, float(np.min(mean * (1 - mean) / var - 1.0))


def _mix_estimate(n: np.ndarray, wbc: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """The M-step: class priors from the summed posteriors ``n`` (with their pseudo-counts).

    ``wbc = (columns, beta)`` adds ``beta`` pseudo-cells to the white-cell
    columns' shares; the other columns keep their own fraction.
    """
    if wbc is None:
        return n / n.sum()
    cols, beta = wbc
    rest = np.setdiff1d(np.arange(len(n)), cols)
    new = np.empty(len(n), np.float64)
    new[rest] = n[rest] / n.sum()
    new[cols] = (1.0 - new[rest].sum()) * (n[cols] + beta) / (n[cols].sum() + beta.sum())
    return new


def adapt_priors(probs: np.ndarray, train_priors: np.ndarray, *, iterations: int = 200,
                 tol: float = 1e-7, pseudo_count: float = 1.0,
                 wbc_prior: tuple[np.ndarray, np.ndarray, float] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Adjust a classifier's posteriors to the class mix of this sample (EM).

    The network was trained on near-equal classes; a blood sample is mostly
    neutrophils and lymphocytes. The expectation-maximisation procedure of
    Saerens, Latinne & Decaestecker ("Adjusting the outputs of a classifier to
    new a priori probabilities: a simple procedure", Neural Comput. 14(1):21,
    2002) estimates the sample's own class priors from the posteriors and
    re-weights every posterior by ``prior / training prior``. A pseudo-count per
    class keeps a rare class from being driven to exactly zero.

    ``wbc_prior = (columns, mean, concentration)``: the M-step adds
    ``concentration x mean`` pseudo-cells to the white-cell classes (``columns``
    of ``probs``) and spreads them by their shares, which makes it the maximum a
    posteriori estimate of the shares under a Dirichlet prior of parameters
    ``1 + concentration x mean``; the other columns stay free. Where
    the network cannot tell two classes apart (a sample's neutrophils looking
    like eosinophils under some optics), the plain EM drifts along the flat
    direction of the likelihood, to a differential no patient has; the prior
    holds it near the population's. Without it, the plain EM.

    Returns
    -------
    (adjusted posteriors (N, K), estimated priors (K,))
    """
    p0 = np.asarray(train_priors, np.float64)
    p0 = p0 / p0.sum()
    f = np.asarray(probs, np.float64)
    if len(f) == 0:
        return f.astype(np.float32), p0
    prior = p0.copy()
    post = f
    if wbc_prior is not None:
        cols = np.asarray(wbc_prior[0], int)
        beta = float(wbc_prior[2]) * np.asarray(wbc_prior[1], np.float64)
    for _ in range(iterations):
        w = f * (prior / p0)
        post = w / w.sum(axis=1, keepdims=True)
        new = _mix_estimate(post.sum(axis=0) + pseudo_count,
                            None if wbc_prior is None else (cols, beta))
        done = float(np.abs(new - prior).max()) < tol
        prior = new
        if done:
            break
    w = f * (prior / p0)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32), prior


def call_cells(candidates: list, probs: np.ndarray, volumes: np.ndarray, classes: tuple[str, ...],
               *, chamber_eq_um: float, min_confidence: float = MIN_CONFIDENCE,
               train_priors: np.ndarray | None = None) -> list[CellCall]:
    """Decide, per candidate, its class or why it is not counted.

    With ``train_priors`` the posteriors are first adapted to this sample's
    class mix (:func:`adapt_priors`). A white cell is counted when its most
    probable 3-part group holds at least ``min_confidence``, and called its
    most probable class: a cell that is surely a granulocyte but may be a
    neutrophil or an eosinophil belongs in the differential. Requiring the
    class itself to reach 0.5 left such cells out, and with them mostly the
    classes the network confuses (monocytes, eosinophils, basophils), which
    the differential already under-reports; on twelve validation captures
    (training conditions, seeds apart) per-cell accuracy rose from 0.801 to
    0.822 (5-part) and from 0.864 to 0.917 (3-part) when it stopped.
    """
    faint = np.array([c.faint for c in candidates], bool)
    probs = np.asarray(probs, np.float32).reshape(len(candidates), len(classes))
    raw = [classes[int(np.argmax(p))] for p in probs]
    if train_priors is not None and not faint.all():
        # the sample's class mix is estimated on the candidates the network saw
        probs = probs.copy()
        mean, conc = differential_prior()
        probs[~faint], _ = adapt_priors(
            probs[~faint], train_priors, pseudo_count=PSEUDO_COUNT,
            wbc_prior=([classes.index(c) for c in WBC_CLASSES], mean, conc))
    wbc_idx = [classes.index(c) for c in WBC_CLASSES]
    groups = [[classes.index(c) for c in members] for members in THREE_PART.values()]
    calls = []
    for c, p, v, r, f in zip(candidates, probs, volumes, raw, faint, strict=True):
        if f:
            calls.append(CellCall(x=c.x, y=c.y, cls=None, confidence=0.0,
                                  diameter_um=c.diameter_um, volume_fl=math.nan,
                                  depth_um=c.depth_um, clump=c.clump, reject_reason=FAINT_REASON))
            continue
        best = int(np.argmax(p))
        w = int(wbc_idx[int(np.argmax(p[wbc_idx]))])
        reason = None
        if c.depth_um > chamber_eq_um + OUTSIDE_MARGIN_UM:
            reason = "outside the chamber (dust on a window)"
        elif c.diameter_um > MAX_DIAMETER_UM:
            reason = "too large for a white cell"
        elif best not in wbc_idx:
            reason = "not a white cell"
        elif max(float(p[g].sum()) for g in groups) < min_confidence:
            reason = "low confidence"
        calls.append(CellCall(
            x=c.x, y=c.y, cls=None if reason else classes[w], confidence=float(p[w]),
            diameter_um=c.diameter_um, volume_fl=float(v), depth_um=c.depth_um, clump=c.clump,
            reject_reason=reason, probabilities={k: float(q) for k, q in zip(classes, p, strict=True)},
            raw_call=r if r in WBC_CLASSES and reason in (None, "low confidence") else None))
    return calls


def mix_intervals(posteriors: np.ndarray, classes: tuple[str, ...], conf: float = 0.95
                  ) -> tuple[np.ndarray, np.ndarray, dict[str, tuple[float, float]]]:
    """Intervals of the sample's white-cell proportions from its adapted posteriors.

    ``posteriors`` (N, K) are the sample-adapted class probabilities of every
    candidate the network saw (:func:`call_cells`). The sample mix ``pi`` that
    :func:`adapt_priors` estimates maximises ``sum_i log sum_k pi_k g_ik`` plus
    the log of its Dirichlet prior (the differential prior on the white-cell
    shares and the pseudo-counts); with the adapted posteriors
    ``p_ik = pi_k g_ik / sum_m pi_m g_im`` its Hessian is
    ``-sum_i p_ik p_il / (pi_k pi_l) - diag(a_k / pi_k^2)``, ``a`` the prior's
    pseudo-cells. The inverse of its negative on the simplex (the observed
    information; a Laplace approximation of the posterior of ``pi``) and the
    delta method give the covariance of the white-cell shares and of the
    3-part groups. Classes the network cannot tell apart leave the likelihood
    flat between them and get wide intervals (held in by the prior);
    well-separated ones get about the counting error. Neither holds a shift of
    the network itself on optics it never saw (measured: README, Known limitations).

    Returns
    -------
    (lo, hi, groups)
        Per-class bounds (fractions, WBC_CLASSES order) and
        ``groups[name] = (lo, hi)`` for the 3-part groups.
    """
    k5 = len(WBC_CLASSES)
    none = (np.zeros(k5), np.ones(k5), {g: (0.0, 1.0) for g in THREE_PART})
    P = np.asarray(posteriors, np.float64).reshape(-1, len(classes))
    if not len(P):
        return none
    cols = np.array([classes.index(c) for c in WBC_CLASSES])
    mean, conc = differential_prior()
    a = np.full(len(classes), PSEUDO_COUNT)
    a[cols] += conc * mean
    pi = _mix_estimate(P.sum(axis=0) + PSEUDO_COUNT, (cols, conc * mean))
    pi = np.maximum(pi, 1e-12)
    Q = P / pi
    info = Q.T @ Q + np.diag(a / pi ** 2)
    K = len(classes)
    # an orthonormal basis of the directions that keep sum(pi) = 1
    Z = np.linalg.qr(np.c_[np.ones(K), np.eye(K)[:, :K - 1]])[0][:, 1:]
    try:
        cov = Z @ np.linalg.solve(Z.T @ info @ Z, Z.T)
    except np.linalg.LinAlgError:
        return none
    w = pi[cols]
    tot = float(w.sum())
    share = w / tot
    J = np.zeros((k5, K))
    J[:, cols] = (np.eye(k5) - share[:, None]) / tot
    cov5 = J @ cov @ J.T
    z = float(stats.norm.ppf(0.5 + conf / 2))
    sd = np.sqrt(np.clip(np.diag(cov5), 0.0, None))
    lo, hi = np.clip(share - z * sd, 0.0, 1.0), np.clip(share + z * sd, 0.0, 1.0)
    groups = {}
    for g, members in THREE_PART.items():
        v = np.array([1.0 if c in members else 0.0 for c in WBC_CLASSES])
        m, sg = float(v @ share), math.sqrt(max(float(v @ cov5 @ v), 0.0))
        groups[g] = (min(max(m - z * sg, 0.0), 1.0), min(max(m + z * sg, 0.0), 1.0))
    return lo, hi, groups


def monocyte_distribution_width(cells: list[CellCall]) -> dict[str, Any]:
    """MDW: the SD of monocyte volumes, each white cell weighted by its monocyte probability.

    The classifier separates monocytes from neutrophils poorly, and the cells it
    calls monocytes are the most typical (largest) ones: their SD was measured to
    be about half the truth on held-out full-sensor captures. Weighting every
    white cell's volume by its (sample-adapted) monocyte probability is the
    expected SD under the posterior; it keeps a septic sample's wider
    distribution visible. ``n`` is the expected number of monocytes ``sum w``,
    used for the minimum count and the chi-square interval.
    """
    w = np.array([c.probabilities.get("monocyte", 0.0) for c in cells], np.float64)
    v = np.array([c.volume_fl for c in cells], np.float64)
    total = float(w.sum())
    out: dict[str, Any] = {"sd_fl": None, "cv_pct": None, "mean_fl": None, "n": 0}
    if total <= 0:
        out["not_reported"] = f"fewer than {MDW_MIN_MONOCYTES} monocytes counted"
        return out
    n_eff = total
    mean = float((w * v).sum() / total)
    out.update(mean_fl=round(mean, 1), n=int(round(n_eff)))
    if n_eff < MDW_MIN_MONOCYTES:
        out["not_reported"] = f"fewer than {MDW_MIN_MONOCYTES} monocytes counted"
        return out
    var = float((w * (v - mean) ** 2).sum() / total) * n_eff / (n_eff - 1.0)
    sd = math.sqrt(max(var, 0.0))
    lo, hi = sd_interval(sd, max(2, int(round(n_eff))))
    out.update(sd_fl=round(sd, 1), cv_pct=round(100 * sd / mean, 1), sd_ci95_fl=[round(lo, 1), round(hi, 1)])
    return out


def in_counting_frame(x: float, y: float, rows: int, cols: int, px_um: float) -> bool:
    """Whether pixel position ``(x, y)`` lies in the concentration's counting frame.

    The frame is :data:`COUNT_GUARD_UM` (``px_um`` um per pixel) inside the
    edges of a ``rows`` x ``cols`` image that spans -0.5 .. size - 0.5.
    """
    g = COUNT_GUARD_UM / px_um
    return g - 0.5 <= x <= cols - 0.5 - g and g - 0.5 <= y <= rows - 0.5 - g


def counting_frame_mm2(rows: int, cols: int, px_um: float, true_px_um: float | None = None
                       ) -> float:
    """Area (mm^2, sample plane) of the counting frame of :func:`in_counting_frame`.

    ``true_px_um``: the frame laid out with ``px_um`` (the analysis's pixel
    size) but measured with this one (the truth's, for the evaluation).
    """
    g = COUNT_GUARD_UM / px_um
    side = true_px_um or px_um
    return max(cols - 2 * g, 0.0) * max(rows - 2 * g, 0.0) * side ** 2 * 1e-6


def summarise(calls: list[CellCall], *, imaged_area_mm2: float, chamber_height_um: float,
              dilution: float, qc_flags: list[str],
              frame: tuple[int, int, float] | None = None,
              under: dict[str, float] | None = None,
              method: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """Counts, differentials with intervals, concentration, MDW and flags.

    ``frame = (rows, columns, um per pixel)`` of the image the candidates'
    ``x``, ``y`` refer to: the concentration is then counted in the frame
    :data:`COUNT_GUARD_UM` inside its edges (unbiased at the border); without
    it, every white cell over ``imaged_area_mm2``.

    Each interval spans the Wilson interval of the reported count and the
    interval of the sample mix from the posteriors (:func:`mix_intervals`; their
    union), so that it holds both the counting and the classification uncertainty.

    ``under``: the classes the model under-counts (:func:`under_counted`); a
    result with a differential then carries CONFIRM_DIFF and lists them under
    ``under_counted``.

    ``method``: the model's method error (:func:`method_error`); each
    interval is widened by its class's or group's systematic part (:func:`widen`).
    """
    counted = [c for c in calls if c.cls is not None]
    counts = {k: sum(1 for c in counted if c.cls == k) for k in WBC_CLASSES}
    n = len(counted)
    diff5 = _rounded_percentages(counts)
    wil5 = {k: wilson_interval(counts[k], n) for k in WBC_CLASSES}
    c3 = {k: sum(counts[m] for m in members) for k, members in THREE_PART.items()}
    diff3 = _rounded_percentages(c3)
    wil3 = {k: wilson_interval(c3[k], n) for k in THREE_PART}
    seen = [c for c in calls if c.probabilities]
    if n and seen:
        names = WBC_CLASSES + tuple(sorted({k for c in seen for k in c.probabilities}
                                           - set(WBC_CLASSES)))
        lo, hi, groups = mix_intervals(
            np.array([[c.probabilities.get(k, 0.0) for k in names] for c in seen]), names)
        for i, k in enumerate(WBC_CLASSES):
            wil5[k] = (min(wil5[k][0], lo[i]), max(wil5[k][1], hi[i]))
        for g in THREE_PART:
            wil3[g] = (min(wil3[g][0], groups[g][0]), max(wil3[g][1], groups[g][1]))
    ci5 = {k: [100 * b for b in wil5[k]] for k in WBC_CLASSES}
    ci3 = {k: [100 * b for b in wil3[k]] for k in THREE_PART}
    if n and method:
        for ci, diff, part in ((ci5, diff5, "5part"), (ci3, diff3, "3part")):
            for k, e in method.get(part, {}).items():
                ci[k] = list(widen(diff[k], *ci[k], e))
    ci5 = {k: [round(b, 1) for b in v] for k, v in ci5.items()}
    ci3 = {k: [round(b, 1) for b in v] for k, v in ci3.items()}
    # the concentration counts every white cell, classified or not
    white = [c for c in calls if is_white(c)]
    n_wbc = len(white)
    low_conf = n_wbc - n
    blood_uL = imaged_area_mm2 * chamber_height_um * 1e-3 / dilution
    wbc_per_uL = n_wbc / blood_uL if blood_uL > 0 else math.nan
    if frame is not None:
        rows, cols, px = frame
        inner = [c for c in white if in_counting_frame(c.x, c.y, rows, cols, px)]
        frame_uL = counting_frame_mm2(rows, cols, px) * chamber_height_um * 1e-3 / dilution
        wbc_per_uL = len(inner) / frame_uL if frame_uL > 0 else math.nan
    mdw = monocyte_distribution_width(white)
    flags = list(qc_flags)
    if mdw["sd_fl"] is not None:
        if mdw["cv_pct"] > MDW_HIGH_CV_PCT:
            flags.append("MDW_HIGH")
    else:
        mdw["not_reported"] = (f"fewer than {MDW_MIN_MONOCYTES} monocytes counted")
    if n_wbc < EMPTY_MAX_CELLS:
        flags.append("EMPTY_CHAMBER")
    elif n < LOW_COUNT_CELLS:
        flags.append("LOW_COUNT")
    if n and sum(c.clump for c in counted) / n > CLUMP_LIMIT:
        flags.append("CLUMPS")
    others = sum(1 for c in calls if c.reject_reason not in (None, "low confidence"))
    if (n_wbc >= EMPTY_MAX_CELLS and others > DEBRIS_PER_WBC * n_wbc
            and blood_uL > 0 and others / blood_uL > DEBRIS_PER_UL):
        flags.append("DEBRIS")
    if n_wbc and low_conf / n_wbc > LOW_CONFIDENCE_LIMIT:
        flags.append("LOW_CONFIDENCE")
    under = dict(under or {}) if n and n_wbc >= EMPTY_MAX_CELLS else {}
    if under:
        flags.append("CONFIRM_DIFF")
    return {
        "cells_detected": len(calls),
        "cells_classified": n,
        "cells_rejected": len(calls) - n,
        "counts": counts,
        "differential_5part": diff5,
        "differential_3part": diff3,
        "differential_5part_ci95": ci5,
        "differential_3part_ci95": ci3,
        "wbc_per_uL": round(wbc_per_uL, 1) if math.isfinite(wbc_per_uL) else None,
        "mdw": mdw,
        "flags": list(dict.fromkeys(flags)),
        "under_counted": {c: round(r, 2) for c, r in under.items()},
    }


def cell_records(calls: list[CellCall]) -> list[dict[str, Any]]:
    """The ``cells`` list of the result (``--cells``)."""
    def num(v: float, nd: int) -> float | None:
        return round(v, nd) if math.isfinite(v) else None  # a faint candidate was never sized

    out = []
    for c in calls:
        rec: dict[str, Any] = {"x": round(c.x, 1), "y": round(c.y, 1), "class": c.cls,
                               "confidence": round(c.confidence, 3),
                               "diameter_um": num(c.diameter_um, 2),
                               "volume_fl": round(c.volume_fl, 1) if c.cls else None,
                               "depth_um": num(c.depth_um, 1), "clump": c.clump}
        if c.reject_reason:
            rec["reject_reason"] = c.reject_reason
        out.append(rec)
    return out
