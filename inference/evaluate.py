"""Accuracy of the analysis on held-out simulated captures (``holodiff evaluate``).

Test captures are simulated under the ``test`` conditions of
:mod:`inference.dataset` (air gap, LED bandwidths, pinhole, source distance and
read noise from intervals that training never used; other seeds), on all three
sensors, from ordinary blood presets. Each is analysed by the instrument's
pipeline; every model given is run on the same crops. The report gives, per
model:

- detection recall and precision of white cells (one-to-one matching within
  :data:`inference.dataset.MATCH_UM`);
- per-cell 5-part and 3-part accuracy with confusion matrices (rows truth,
  columns call; cells rejected as "low confidence" are counted as errors), and
  the accuracy's 95 % interval over captures (a capture's class mix moves it:
  a set with many monocytes reads lower), and each capture's own accuracy with
  the median capture's (``per_capture``);
- volume error of correctly detected white cells (median absolute percent);
- WBC per uL against the count implied by the imaged volume and the truth (the
  true white cells in the analysis's counting frame over that frame's true volume);
- coverage of the 95 % intervals: how often each capture's interval
  holds the sample's true proportion (widened, as the analysis widens them, by
  the method error in the model's card);
- each share's error against the truth: its mean (bias) and the systematic
  spread beyond counting error (:func:`fit_method_error`), which
  ``--write-method-error`` stores in the card from a method-comparison set
  (captures apart from the test set);
- MDW against the truth's monocyte volume SD where enough monocytes were seen.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from holography.cellphysics import draw_physics, parse_families
from holography.sample import N_MEDIUM, WBC_CLASSES, get_spec
from holography.simulate import simulate_capture
from inference.classify import Classifier
from inference.dataset import SEED_BASE, analyse_for_training, match, random_config
from inference.result import (
    MDW_MIN_MONOCYTES,
    THREE_PART,
    call_cells,
    counting_frame_mm2,
    in_counting_frame,
    is_white,
    method_error,
    summarise,
)

SENSORS_CYCLE = ("imx477", "imx708", "imx219")
PRESETS_CYCLE = ("healthy", "random", "septic", "lymphocytosis", "eosinophilia", "random")
GRAN = {c: g for g, members in THREE_PART.items() for c in members}


def _sensor_preset(i: int) -> tuple[str, str]:
    """Sensor and blood preset of capture ``i`` of :func:`make_test_captures`."""
    return (SENSORS_CYCLE[i % len(SENSORS_CYCLE)],
            PRESETS_CYCLE[(i // len(SENSORS_CYCLE)) % len(PRESETS_CYCLE)])


def physics_tag(physics: str | None) -> str:
    """The part of a capture's folder name that says which cell physics it was made with."""
    if not physics or physics == "legacy":
        return ""
    return "-phys-" + physics.replace("=", "_").replace(",", "+")


def capture_name(i: int, *, size: int, split: str = "test", dies: int = 1,
                 physics: str | None = None) -> str:
    """The folder name of capture ``i`` of :func:`make_test_captures` (its sensor and preset)."""
    sensor, preset = _sensor_preset(i)
    return (f"{'test' if split == 'test' else 'val'}-{i:04d}-{sensor}-{preset}-"
            f"{size or 'full'}{'' if dies == 1 else f'-{dies}die'}{physics_tag(physics)}")


def sample_physics(seed: int, physics: str | None):
    """The cell physics of a test capture: None (legacy model), or drawn from ``physics``.

    ``physics`` is ``legacy``, ``random`` (every family of every axis) or
    ``AXIS=FAMILY,...`` (those families, the other axes at random); drawn from its
    own generator, so the rest of the capture is the same whichever is chosen.
    """
    if not physics or physics == "legacy":
        return None
    fixed = {} if physics == "random" else parse_families(physics)
    return draw_physics(np.random.default_rng([seed, 77]), fixed)


def make_test_captures(out: Path, n: int, *, size: int, start: int = 0, split: str = "test",
                       dies: int = 1, physics: str | None = None, log=print) -> list[Path]:
    """Simulate (or reuse) ``n`` ordinary-blood captures of ``split``'s conditions under ``out``.

    ``split="test"`` makes the held-out test set; ``split="train"`` makes
    validation captures under training conditions (seeds apart from the training set's).
    ``dies`` LED dies per colour (4: pixel super-resolution captures, other seeds).
    ``physics``: the cells' physics (:func:`sample_physics`; default the legacy model).
    """
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        seed = SEED_BASE[split] + (100_000 if dies == 1 else 300_000) + i
        rng = np.random.default_rng(seed)
        sensor, preset = _sensor_preset(i)
        cfg = random_config(rng, split, size=(size, size) if size else None, sensor=sensor)
        path = out / capture_name(i, size=size, split=split, dies=dies, physics=physics)
        if not (path / "truth.json").exists():
            t = time.perf_counter()
            phys = sample_physics(seed, physics)
            spec = None
            if phys is not None:
                spec = replace(get_spec(preset, np.random.default_rng([seed, 78])), physics=phys)
            simulate_capture(path, preset=preset, seed=seed, config=cfg, n_dies=dies, spec=spec)
            log(f"simulated {path.name} in {time.perf_counter() - t:.0f} s")
        paths.append(path)
    return paths


def fit_method_error(errors: np.ndarray, sampling_sd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bias and systematic SD of each column of share errors (percentage points).

    ``errors[i, k]`` is capture ``i``'s reported minus true share of class
    ``k``; ``sampling_sd[i, k]`` the SD its interval gives for counting and
    classification ambiguity alone. The model is the random-effects one of a
    method comparison (DerSimonian & Laird, Control. Clin. Trials 7(3):177,
    1986): ``errors[i, k] ~ N(bias_k, sampling_sd[i, k]^2 + sd_k^2)``, fitted by
    maximum likelihood, so that large captures (small sampling error) weigh in
    as much as they should and small ones' wide intervals do not hide the
    systematic part.

    Returns
    -------
    (bias (K,), sd (K,))
    """
    from scipy.optimize import minimize

    e = np.asarray(errors, np.float64)
    s2 = np.asarray(sampling_sd, np.float64) ** 2
    bias, sd = np.zeros(e.shape[1]), np.zeros(e.shape[1])
    for k in range(e.shape[1]):
        def nll(th, k=k):
            v = s2[:, k] + th[1] ** 2 + 1e-6
            return 0.5 * float(np.sum(np.log(v) + (e[:, k] - th[0]) ** 2 / v))

        best = minimize(nll, [float(e[:, k].mean()), float(e[:, k].std()) + 0.1],
                        method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-8})
        bias[k], sd[k] = best.x[0], abs(best.x[1])
    return bias, sd


def _share_errors(rows: list[tuple[np.ndarray, np.ndarray]], names: tuple[str, ...]
                  ) -> dict[str, dict[str, float]] | None:
    """Per class or group: bias, systematic SD and their RMS (:func:`fit_method_error`).

    ``rows``: per capture, (reported minus true shares, their sampling SDs).
    """
    if len(rows) < 3:
        return None
    err = np.array([r[0] for r in rows])
    bias, sd = fit_method_error(err, np.array([r[1] for r in rows]))
    return {k: {"bias_pct": round(float(b), 2), "sd_pct": round(float(d), 2),
                "rms_pct": round(math.hypot(b, d), 2),
                "rms_observed_pct": round(float(np.sqrt(np.mean(err[:, i] ** 2))), 2)}
            for i, (k, b, d) in enumerate(zip(names, bias, sd, strict=True))}


def _accuracy_interval(captures: list[list[tuple[int, int]]], same, conf: float = 0.95,
                       draws: int = 2000) -> list[float] | None:
    """Percentile bootstrap interval of the pooled per-cell accuracy, captures resampled.

    The captures, not the cells, are the units: cells of one capture share its
    optics and its class mix, and the accuracy moves with both (Efron &
    Tibshirani, An Introduction to the Bootstrap, 1993, ch. 13). ``same(t, c)``
    says whether call ``c`` counts as right for truth ``t``. Seeded: a rerun
    gives the same interval.
    """
    if len(captures) < 2:
        return None
    n = np.array([len(c) for c in captures], np.float64)
    ok = np.array([sum(1 for t, c in cap if same(t, c)) for cap in captures], np.float64)
    idx = np.random.default_rng(0).integers(0, len(captures), (draws, len(captures)))
    tot = n[idx].sum(axis=1)
    rate = ok[idx].sum(axis=1) / np.maximum(tot, 1)
    lo, hi = np.quantile(rate[tot > 0], [(1 - conf) / 2, (1 + conf) / 2])
    return [round(float(lo), 4), round(float(hi), 4)]


def _per_capture(names: list[str], captures: list[list[tuple[int, int]]],
                 same: dict[str, Callable[[int, int], bool]]) -> dict[str, Any] | None:
    """Each capture's own accuracy per part (``same[part](truth, call)``), and the median capture's.

    The pooled accuracy weighs every cell alike, so a few large captures of an
    easy mix (mostly neutrophils and lymphocytes) can carry it; the median
    capture says what one sample reads.
    """
    rows = [{"capture": name, "cells": len(pairs),
             **{f"accuracy_{part}": round(sum(1 for t, c in pairs if rule(t, c)) / len(pairs), 4)
                for part, rule in same.items()}}
            for name, pairs in zip(names, captures, strict=True) if pairs]
    if not rows:
        return None
    return {**{f"median_{part}": round(float(np.median([r[f"accuracy_{part}"] for r in rows])), 4)
               for part in same}, "rows": rows}


def _confusion(pairs: list[tuple[int, int]], k: int) -> np.ndarray:
    m = np.zeros((k, k + 1), np.int64)  # last column: not classified (low confidence)
    for t, c in pairs:
        m[t, c] += 1
    return m


def _detections(path: Path, fresh: bool):
    """Detections of a test capture, cached beside it (keyed by the hash of the code that makes them)."""
    import hashlib

    from holography import raw, reconstruct, retrieval, superres
    from inference import detect
    from inference.detect import Candidate, Detections

    # the detections depend on the raw handling, the reconstruction, PSR, retrieval and detection
    digest = hashlib.sha256(b"float32 crops")  # the cache's own format
    for module in (raw, reconstruct, superres, retrieval, detect):
        digest.update(Path(module.__file__).read_bytes())
    key = digest.hexdigest()[:16]
    cache = path / f"eval-detections-{key}.npz"
    truth = json.loads((path / "truth.json").read_text())
    shape = tuple(json.loads((path / "capture.json").read_text())["sensor"][k]
                  for k in ("height", "width"))
    if cache.exists() and not fresh:
        with np.load(cache, allow_pickle=False) as z:
            names = [str(x) for x in z["names"]]
            cands = [Candidate(**{n: (bool(v) if n in ("edge", "clump", "faint") else float(v))
                                  for n, v in zip(names, row, strict=True)}) for row in z["cands"]]
            det = Detections(cands, z["crops"].astype(np.float32), tuple(bool(b) for b in z["slots"]),
                             float(z["thr"]), float(z["pixel_um"]), float(z["area"]),
                             plain_crops=z["plain_crops"].astype(np.float32)
                             if "plain_crops" in z.files else None)
        return det, truth, shape
    det, truth, shape = analyse_for_training(path)
    names = list(Candidate.__slots__)
    rows = np.array([[float(getattr(c, n)) for n in names] for c in det.candidates]).reshape(-1, len(names))
    # float32, as the analysis gives them to the model: rounded crops move a few borderline
    # INT8 calls, so a cached and a fresh evaluation would differ (0.9053 against 0.9046)
    np.savez(cache, names=np.array(names), cands=rows, crops=det.crops,
             plain_crops=det.plain_crops,
             slots=np.array(det.slots_present), thr=det.threshold, pixel_um=det.pixel_um,
             area=det.imaged_area_mm2)
    return det, truth, shape


def evaluate(captures: list[Path], models: dict[str, Classifier], *, log=print,
             fresh: bool = False) -> dict[str, Any]:
    """Run every model on every capture's crops; compare with the truth.

    Each model gets the crops its card says it was trained on: cut from the
    plain fields, or made by pixel super-resolution and phase retrieval.
    """
    K = len(WBC_CLASSES)
    acc: dict[str, dict[str, Any]] = {
        name: {"pairs": [], "vol_err": [], "wbc_ratio": [], "coverage5": [], "coverage3": [],
               "mdw": [], "tp": 0, "fp": 0, "fn": 0, "crops_per_s": [], "err5": [], "err3": [],
               "captures": [], "names": [],
               "raw_confusion": np.zeros((len(WBC_CLASSES), len(WBC_CLASSES)), np.int64)}
        for name in models}
    for path in captures:
        t0 = time.perf_counter()
        det, truth, shape = _detections(path, fresh)
        t_pipe = time.perf_counter() - t0
        meta = json.loads((path / "capture.json").read_text())
        chamber = meta["chamber"]
        objs = truth["objects"]
        xy = np.array([[c.x, c.y] for c in det.candidates]).reshape(-1, 2)
        idx, wbc_truth = match(xy, truth, det.pixel_um, shape)
        z1 = truth["optics"]["source_distance_um"]
        m_true = (z1 + truth["optics"]["floor_distance_um"]) / z1
        pitch = meta["sensor"]["pixel_pitch_um"]
        # the truth's count in the analysis's own counting frame, over that frame's true volume:
        # what the imaged volume implies (cells in the border strip are not counted by either)
        inner = [j for j in wbc_truth
                 if in_counting_frame(objs[j]["x_px"], objs[j]["y_px"], *shape, det.pixel_um)]
        area_true = counting_frame_mm2(*shape, det.pixel_um, true_px_um=pitch / m_true)
        blood_true = area_true * chamber["height_um"] * 1e-3 / chamber["dilution"]
        implied = len(inner) / blood_true
        spec_diff = truth["sample"]["differential"] if isinstance(truth["sample"], dict) else None
        for name, clf in models.items():
            a = acc[name]
            first_pair = len(a["pairs"])
            t = time.perf_counter()
            crops = det.plain_crops if det.plain_crops is not None and not clf.enhanced_crops \
                else det.crops
            probs, vols = clf.classify_candidates(det.candidates, crops)
            seen = sum(1 for c in det.candidates if not c.faint)
            a["crops_per_s"].append(seen / max(time.perf_counter() - t, 1e-9))
            calls = call_cells(det.candidates, probs, vols, clf.classes,
                               chamber_eq_um=chamber["height_um"] / N_MEDIUM,
                               train_priors=clf.train_priors)
            summary = functools.partial(summarise, calls, imaged_area_mm2=det.imaged_area_mm2,
                                        chamber_height_um=chamber["height_um"],
                                        dilution=chamber["dilution"], qc_flags=[],
                                        frame=(*shape, det.pixel_um))
            s = summary(method=method_error(clf.card))  # as the analysis reports it
            called_wbc = set()
            for k, c in enumerate(calls):
                j = idx[k]
                is_wbc_call = is_white(c)
                truth_wbc = j >= 0 and objs[j]["kind"] in WBC_CLASSES
                if truth_wbc and c.raw_call is not None:
                    a["raw_confusion"][WBC_CLASSES.index(objs[j]["kind"]),
                                       WBC_CLASSES.index(c.raw_call)] += 1
                if is_wbc_call and truth_wbc:
                    a["tp"] += 1
                    called_wbc.add(j)
                    t_i = WBC_CLASSES.index(objs[j]["kind"])
                    c_i = WBC_CLASSES.index(c.cls) if c.cls else K
                    a["pairs"].append((t_i, c_i))
                    if c.cls:
                        tv = objs[j]["volume_fl"]
                        a["vol_err"].append(100.0 * (c.volume_fl - tv) / tv)
                elif is_wbc_call:
                    a["fp"] += 1
            a["fn"] += sum(1 for j in wbc_truth if j not in called_wbc)
            a["captures"].append(a["pairs"][first_pair:])
            a["names"].append(path.name)
            if s["wbc_per_uL"] and implied > 0:
                a["wbc_ratio"].append(s["wbc_per_uL"] / implied)
            n = s["cells_classified"]
            if spec_diff and n >= 20:
                # the intervals of counting and classification ambiguity alone: the sampling
                # part of each share's error
                s0 = summary(method=None)
                z = float(stats.norm.ppf(0.975))
                for names, key, store in ((WBC_CLASSES, "differential_5part", "5"),
                                          (tuple(THREE_PART), "differential_3part", "3")):
                    true = {k: 100 * spec_diff[k] for k in WBC_CLASSES} if store == "5" else {
                        g: 100 * sum(spec_diff[m] for m in THREE_PART[g]) for g in THREE_PART}
                    err, sd = [], []
                    for k in names:
                        p, (lo, hi) = s0[key][k], s0[key + "_ci95"][k]
                        err.append(p - true[k])
                        sd.append(max(p - lo, hi - p) / z)
                        lo, hi = s[key + "_ci95"][k]
                        a["coverage" + store].append(lo - 0.05 <= true[k] <= hi + 0.05)
                    a["err" + store].append((np.array(err), np.array(sd)))
            mono_true = [o["volume_fl"] for o in objs if o["kind"] == "monocyte"
                         and 0 <= o["x_px"] < shape[1] and 0 <= o["y_px"] < shape[0]]
            if s["mdw"]["sd_fl"] is not None and len(mono_true) >= MDW_MIN_MONOCYTES:
                a["mdw"].append((path.name, s["mdw"]["sd_fl"], float(np.std(mono_true, ddof=1))))
        log(f"{path.name}: {len(det.candidates)} candidates, {len(wbc_truth)} white cells in "
            f"truth, pipeline {t_pipe:.1f} s")
    return {name: _report(a) for name, a in acc.items()}


def _report(a: dict[str, Any]) -> dict[str, Any]:
    K = len(WBC_CLASSES)
    cm = _confusion(a["pairs"], K)
    n = int(cm.sum())
    correct5 = int(np.trace(cm[:, :K]))
    gran = [GRAN[c] for c in WBC_CLASSES]
    correct3 = sum(int(cm[t, c]) for t in range(K) for c in range(K) if gran[t] == gran[c])
    per_class = {}
    for i, cls in enumerate(WBC_CLASSES):
        row = int(cm[i].sum())
        col = int(cm[:, i].sum())
        per_class[cls] = {"n": row, "recall": round(cm[i, i] / row, 4) if row else None,
                          "precision": round(cm[i, i] / col, 4) if col else None}
    tp, fp, fn = a["tp"], a["fp"], a["fn"]
    ratio = np.array(a["wbc_ratio"])
    mdw_err = np.array([100 * (r[1] / r[2] - 1) for r in a["mdw"]])
    same = {"5part": lambda t, c: t == c, "3part": lambda t, c: c < K and gran[t] == gran[c]}
    return {
        "cells": n,
        "detection": {"recall": round(tp / (tp + fn), 4) if tp + fn else None,
                      "precision": round(tp / (tp + fp), 4) if tp + fp else None,
                      "true_positives": tp, "false_positives": fp, "missed": fn},
        "accuracy_5part": round(correct5 / n, 4) if n else None,
        "accuracy_3part": round(correct3 / n, 4) if n else None,
        "accuracy_5part_ci95": _accuracy_interval(a["captures"], same["5part"]),
        "accuracy_3part_ci95": _accuracy_interval(a["captures"], same["3part"]),
        "captures": len(a["captures"]),
        "per_capture": _per_capture(a["names"], a["captures"], same),
        "per_class": per_class,
        # mean recall of the classes present: pooled accuracy can be bought by calling every
        # doubtful cell a neutrophil, this cannot
        "balanced_accuracy": (round(float(np.mean([v["recall"] for v in per_class.values()
                                                   if v["recall"] is not None])), 4)
                              if any(v["recall"] is not None for v in per_class.values())
                              else None),
        "confusion_5part": {"rows_truth": list(WBC_CLASSES),
                            "columns_call": [*WBC_CLASSES, "unclassified"],
                            "matrix": cm.tolist()},
        "volume_median_abs_error_pct": round(float(np.median(np.abs(a["vol_err"]))), 2)
        if a["vol_err"] else None,
        "volume_median_bias_pct": round(float(np.median(a["vol_err"])), 2) if a["vol_err"] else None,
        "wbc_per_uL_ratio": {"median": round(float(np.median(ratio)), 4),
                             "worst_abs_error_pct": round(float(np.max(np.abs(ratio - 1))) * 100, 2)}
        if len(ratio) else None,
        "ci_coverage_5part": round(float(np.mean(a["coverage5"])), 3) if a["coverage5"] else None,
        "ci_coverage_3part": round(float(np.mean(a["coverage3"])), 3) if a["coverage3"] else None,
        "ci_coverage_intervals": len(a["coverage5"]) + len(a["coverage3"]),
        "mdw": {"captures": len(mdw_err),
                "median_error_pct": round(float(np.median(mdw_err)), 2),
                "median_abs_error_pct": round(float(np.median(np.abs(mdw_err))), 2),
                "within_10pct": int(np.sum(np.abs(mdw_err) <= 10)),
                "per_capture": [{"capture": r[0], "reported_fl": r[1], "true_fl": round(r[2], 1)}
                                for r in a["mdw"]]}
        if a["mdw"] else None,
        "crops_per_s": round(float(np.median(a["crops_per_s"])), 0) if a["crops_per_s"] else None,
        "raw_confusion_counts": a["raw_confusion"].tolist(),
        "share_error": {"5part": _share_errors(a["err5"], WBC_CLASSES),
                        "3part": _share_errors(a["err3"], tuple(THREE_PART)),
                        "captures": len(a["err5"])},
    }


def format_report(rep: dict[str, Any]) -> str:
    """Plain-text summary of :func:`evaluate`'s report."""
    lines = []
    for name, r in rep.items():
        d = r["detection"]
        lines.append(f"model {name}: {r['cells']} white cells matched")
        lines.append(f"  detection recall {d['recall']}, precision {d['precision']} "
                     f"({d['missed']} missed, {d['false_positives']} false)")
        lines.append(f"  accuracy 5-part {r['accuracy_5part']} (95 % over captures "
                     f"{r['accuracy_5part_ci95']}), 3-part {r['accuracy_3part']} "
                     f"({r['accuracy_3part_ci95']}); balanced {r.get('balanced_accuracy')}; "
                     f"{r['captures']} captures")
        pc = r.get("per_capture")
        if pc:
            lines.append(f"  per capture (median capture 5-part {pc['median_5part']}, 3-part "
                         f"{pc['median_3part']}):")
            lines.extend(f"    {c['capture']}: {c['cells']} cells, 5-part {c['accuracy_5part']}, "
                         f"3-part {c['accuracy_3part']}" for c in pc["rows"])
        for cls, v in r["per_class"].items():
            lines.append(f"    {cls:<11} n={v['n']:<5} recall {v['recall']}  precision {v['precision']}")
        lines.append("  confusion (rows truth, columns call; last column unclassified):")
        for cls, row in zip(WBC_CLASSES, r["confusion_5part"]["matrix"], strict=True):
            lines.append(f"    {cls:<11} " + " ".join(f"{v:6d}" for v in row))
        lines.append(f"  volume: median |error| {r['volume_median_abs_error_pct']} %, "
                     f"median bias {r['volume_median_bias_pct']} %")
        lines.append(f"  WBC/uL vs implied by truth: {r['wbc_per_uL_ratio']}")
        lines.append(f"  95 % CI coverage: 5-part {r['ci_coverage_5part']}, 3-part "
                     f"{r['ci_coverage_3part']} ({r['ci_coverage_intervals']} intervals)")
        for part in ("5part", "3part"):
            se = r["share_error"][part]
            if se:
                lines.append(f"  {part} share error (points; bias, systematic SD, RMS): " + "; ".join(
                    f"{k} {v['bias_pct']:+.1f}, {v['sd_pct']:.1f}, {v['rms_pct']:.1f}"
                    for k, v in se.items()))
        m = r["mdw"]
        if m:
            lines.append(f"  MDW: {m['captures']} captures with >= {MDW_MIN_MONOCYTES} monocytes; "
                         f"error median {m['median_error_pct']:+.1f} %, median |error| "
                         f"{m['median_abs_error_pct']:.1f} %, {m['within_10pct']} within 10 %")
            lines.extend(f"    {c['capture']}: {c['reported_fl']} fL, true {c['true_fl']} fL"
                         for c in m["per_capture"])
        else:
            lines.append("  MDW: no capture with enough monocytes")
        lines.append(f"  classifier throughput {r['crops_per_s']} crops/s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``holodiff evaluate``: simulate held-out captures and report the accuracy."""
    import argparse
    import sys

    from inference.classify import ONNX_MODEL

    ap = argparse.ArgumentParser(prog="holodiff evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="held-out", help="folder of the test captures (reused)")
    ap.add_argument("--captures", type=int, default=18)
    ap.add_argument("--size", type=int, default=1024, help="frame size (0: full sensor)")
    ap.add_argument("--start", type=int, action="append",
                    help="index of the first capture (default 0); repeatable: --captures from each")
    ap.add_argument("--dies", type=int, default=1, help="LED dies per colour of the test captures")
    ap.add_argument("--physics", default="legacy",
                    help="the cells' physics: legacy (one guess per class), random (every "
                         "family of holography.cellphysics.AXES) or AXIS=FAMILY,... (held-out "
                         "families; the other axes at random); default %(default)s")
    ap.add_argument("--model", action="append", help="model .onnx (repeatable; default: the "
                                                     "shipped INT8 model and its FP32 twin)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--fresh", action="store_true", help="recompute cached detections")
    ap.add_argument("--update-card", action="store_true",
                    help="write the figures into the shipped model's card")
    ap.add_argument("--split", choices=("test", "train"), default="test",
                    help="conditions of the captures: held-out test, or training conditions "
                         "(validation captures, seeds apart from the training set)")
    ap.add_argument("--write-confusion", action="store_true",
                    help="store the shipped model's raw confusion on these captures in its card "
                         "(use with --split train: the card's record of how the network does "
                         "under training conditions)")
    ap.add_argument("--write-method-error", action="store_true",
                    help="store the shipped model's share errors on these captures in its card "
                         "as its method error, which widens every interval the analysis reports "
                         "(a method-comparison set: test conditions, captures apart from the "
                         "card's test set)")
    args = ap.parse_args(argv)
    starts = args.start or [0]
    indices = [i for start in starts for i in range(start, start + args.captures)]

    def log(m: str) -> None:
        print(m, file=sys.stderr, flush=True)

    paths = args.model or [str(ONNX_MODEL), str(ONNX_MODEL.with_suffix(".fp32.onnx"))]
    models = {Path(p).name: Classifier(p) for p in paths if Path(p).exists()}
    card_path = ONNX_MODEL.with_name(ONNX_MODEL.stem + ".card.json")
    if args.write_method_error:
        if args.split != "test":
            raise SystemExit("--write-method-error needs --split test: the method error is "
                             "measured under the conditions the analysis is tested in")
        tested = json.loads(card_path.read_text()).get("accuracy", {}).get("test_set", {})
        names = {capture_name(i, size=args.size, split=args.split, dies=args.dies,
                              physics=args.physics) for i in indices}
        shared = sorted(names & set(tested.get("captures", [])))
        if shared:
            raise SystemExit(f"{shared[0]} is in the card's test set: measure the method error "
                             "on other captures (--start past the test set's) so that the "
                             "test set's coverage stays a test")
    caps = [p for start in starts
            for p in make_test_captures(Path(args.out), args.captures, size=args.size, start=start,
                                        split=args.split, dies=args.dies, physics=args.physics,
                                        log=log)]
    rep = evaluate(caps, models, log=log, fresh=args.fresh)
    if args.write_confusion:
        if args.split != "train":
            raise SystemExit("--write-confusion needs --split train (never the test conditions)")
        card = json.loads(card_path.read_text())
        card["confusion_validation"] = {
            "rows_truth": list(WBC_CLASSES), "columns_raw_call": list(WBC_CLASSES),
            "counts": rep[ONNX_MODEL.name]["raw_confusion_counts"],
            "captures": [p.name for p in caps],
            "command": "holodiff evaluate " + " ".join(argv or sys.argv[1:])}
        card_path.write_text(json.dumps(card, indent=1) + "\n")
        log(f"stored the validation confusion in {card_path}")
    if args.write_method_error:
        se = rep[ONNX_MODEL.name]["share_error"] if ONNX_MODEL.name in rep else None
        if not se or not se["5part"]:
            raise SystemExit("the method error needs the shipped model and at least 3 captures "
                             "with 20 classified cells")
        card = json.loads(card_path.read_text())
        card["method_error"] = {
            "5part": se["5part"], "3part": se["3part"], "units": "percentage points",
            "model": "random effects, maximum likelihood (inference.evaluate.fit_method_error)",
            "captures": [p.name for p in caps],
            "command": "holodiff evaluate " + " ".join(argv or sys.argv[1:])}
        card_path.write_text(json.dumps(card, indent=1) + "\n")
        log(f"stored the method error in {card_path}")
    if args.update_card:
        card = json.loads(card_path.read_text())
        names = {ONNX_MODEL.name: "int8", ONNX_MODEL.with_suffix(".fp32.onnx").name: "fp32"}
        card["accuracy"] = {names.get(k, k): v for k, v in rep.items()}
        card["accuracy"]["test_set"] = {
            "captures": [p.name for p in caps],
            "conditions": "inference.dataset.SPLITS['test'] (disjoint from training), "
                          "seeds " + ", ".join(
                              f"{SEED_BASE['test'] + 100_000 + i}-"
                              f"{SEED_BASE['test'] + 100_000 + i + args.captures - 1}"
                              for i in starts),
            "command": "holodiff evaluate " + " ".join(argv or sys.argv[1:])}
        card_path.write_text(json.dumps(card, indent=1) + "\n")
        log(f"updated {card_path}")
    if args.json:
        print(json.dumps(rep, indent=1))
    else:
        print(format_report(rep))
    return 0 if all(math.isfinite(r["accuracy_5part"] or math.nan) for r in rep.values()) else 1
