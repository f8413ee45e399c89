"""Detection, refocus, classifier, result arithmetic and the whole analysis on small captures."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from holography.capture import read_capture
from holography.reconstruct import reconstruct_capture
from holography.sample import KIND_ID, OBJECT_DTYPE, PART_DTYPE, WBC_CLASSES, Sample
from holography.simulate import Optics, SimConfig, simulate_capture
from inference.analyze import AnalysisOptions, analyze_capture
from inference.classify import DEFAULT_MODEL, Classifier, ModelError
from inference.dataset import CLASSES, OTHER, label_detections, match, random_config
from inference.detect import (
    CROP_SIZE,
    FAINT_PEAK_RATIO,
    N_CHANNELS,
    Candidate,
    detect_in_capture,
)
from inference.result import (
    _rounded_percentages,
    sd_interval,
    summarise,
    wilson_interval,
)


def _detect(path, enhance=True, **kw):
    cap = read_capture(path)
    rec = reconstruct_capture(cap)
    det = detect_in_capture(cap, rec, enhance=enhance, **kw)
    truth = json.loads((path / "truth.json").read_text())
    return cap, rec, det, truth


@pytest.fixture(scope="module")
def three_led(capdir):
    """A 512x512 three-LED healthy capture (held-out test conditions, IMX708)."""
    rng = np.random.default_rng(77)
    cfg = random_config(rng, "test", size=(512, 512), sensor="imx708")
    from dataclasses import asdict
    kw = {k: getattr(cfg, k) for k in asdict(cfg)}
    kw["size"] = (512, 512)
    return capdir("three-led-test", preset="lymphocytosis", seed=4242, **kw)


# ---------------------------------------------------------------- statistics


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-3)
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_interval_covers_as_claimed():
    rng = np.random.default_rng(1)
    p, n = 0.07, 400
    hits = 0
    for _ in range(4000):
        lo, hi = wilson_interval(int(rng.binomial(n, p)), n)
        hits += lo <= p <= hi
    assert 0.93 < hits / 4000 < 0.97


def test_sd_interval_brackets_and_narrows():
    lo, hi = sd_interval(60.0, 30)
    assert lo < 60.0 < hi
    lo2, hi2 = sd_interval(60.0, 300)
    assert hi2 - lo2 < hi - lo


def test_percentages_sum_to_100():
    counts = {"a": 1, "b": 1, "c": 1}
    pct = _rounded_percentages(counts)
    assert sum(pct.values()) == pytest.approx(100.0)
    assert sorted(pct.values()) == [33.3, 33.3, 33.4]


def _calls(classes, n_each, *, volume=450.0, spread=0.0, clump=False):
    from inference.result import CellCall
    rng = np.random.default_rng(0)
    out = []
    for cls, n in zip(classes, n_each, strict=True):
        for _ in range(n):
            out.append(CellCall(x=0, y=0, cls=cls, confidence=0.9, diameter_um=8,
                                volume_fl=float(volume * (1 + spread * rng.standard_normal())),
                                depth_um=3, clump=clump, probabilities={cls: 1.0}))
    return out


def test_summary_flags_and_mdw():
    calls = _calls(WBC_CLASSES, [300, 150, 60, 20, 5], spread=0.3)
    s = summarise(calls, imaged_area_mm2=20.0, chamber_height_um=100.0, dilution=10.0, qc_flags=[])
    assert s["cells_classified"] == 535
    assert sum(s["differential_5part"].values()) == pytest.approx(100.0, abs=0.1)
    assert s["differential_3part"]["granulocyte"] == pytest.approx(100 * 325 / 535, abs=0.1)
    assert s["wbc_per_uL"] == pytest.approx(535 / (20.0 * 0.1 / 10.0), rel=1e-3)
    assert s["mdw"]["n"] == 60 and "MDW_HIGH" in s["flags"]
    lo, hi = s["mdw"]["sd_ci95_fl"]
    assert lo < s["mdw"]["sd_fl"] < hi
    calm = summarise(_calls(WBC_CLASSES, [300, 150, 60, 20, 5], spread=0.1), imaged_area_mm2=20.0,
                     chamber_height_um=100.0, dilution=10.0, qc_flags=[])
    assert "MDW_HIGH" not in calm["flags"]
    few = summarise(_calls(WBC_CLASSES, [50, 30, 10, 2, 1]), imaged_area_mm2=20.0,
                    chamber_height_um=100.0, dilution=10.0, qc_flags=["SATURATED"])
    assert few["flags"][0] == "SATURATED" and "LOW_COUNT" in few["flags"]
    assert few["mdw"]["sd_fl"] is None and "fewer than" in few["mdw"]["not_reported"]
    empty = summarise([], imaged_area_mm2=20.0, chamber_height_um=100.0, dilution=10.0, qc_flags=[])
    assert "EMPTY_CHAMBER" in empty["flags"] and empty["cells_classified"] == 0
    clumped = summarise(_calls(WBC_CLASSES, [300, 150, 60, 20, 5], clump=True),
                        imaged_area_mm2=20.0, chamber_height_um=100.0, dilution=10.0, qc_flags=[])
    assert "CLUMPS" in clumped["flags"]


def test_under_counted_classes_come_from_the_card_and_flag_every_differential():
    from inference.result import UNDER_COUNTED_RECALL, under_counted, under_counted_text

    per = {"neutrophil": 0.98, "lymphocyte": 0.97, "monocyte": 0.39, "eosinophil": 0.0068,
           "basophil": 0.0}
    card = {"accuracy": {"int8": {"per_class": {c: {"n": 10, "recall": r} for c, r in per.items()}},
                         "fp32": {"per_class": {c: {"n": 10, "recall": 0.9} for c in per}},
                         "test_set": {"captures": []}}}
    under = under_counted(card)
    assert list(under) == ["monocyte", "eosinophil", "basophil"]  # the INT8 figures, not FP32's
    assert all(r < UNDER_COUNTED_RECALL for r in under.values())
    text = under_counted_text(under)
    assert text.startswith("Monocytes, eosinophils and basophils are under-counted")
    assert "39 %, 1 % and 0 %" in text and "laboratory" in text
    assert under_counted({}) == {} and under_counted({"accuracy": {"int8": {}}}) == {}
    assert under_counted({"accuracy": {"int8": {"per_class": {"basophil": {"recall": None}}}}}) == {}
    calls = _calls(WBC_CLASSES, [300, 150, 60, 20, 5])
    s = summarise(calls, imaged_area_mm2=20.0, chamber_height_um=100.0, dilution=10.0,
                  qc_flags=[], under=under)
    assert s["flags"][-1] == "CONFIRM_DIFF" and s["under_counted"] == {
        "monocyte": 0.39, "eosinophil": 0.01, "basophil": 0.0}
    plain = summarise(calls, imaged_area_mm2=20.0, chamber_height_um=100.0, dilution=10.0,
                      qc_flags=[])
    assert "CONFIRM_DIFF" not in plain["flags"] and plain["under_counted"] == {}
    empty = summarise([], imaged_area_mm2=20.0, chamber_height_um=100.0, dilution=10.0,
                      qc_flags=[], under=under)
    assert "CONFIRM_DIFF" not in empty["flags"]  # no differential, nothing to confirm


def test_method_error_from_the_card_widens_every_interval_in_quadrature():
    from inference.result import method_error, widen

    card = {"method_error": {
        "5part": {"neutrophil": {"bias_pct": 7.0, "sd_pct": 2.0, "rms_pct": 7.28},
                  "lymphocyte": {"rms_pct": 0.0}, "monocyte": {"rms_pct": float("nan")},
                  "eosinophil": {"rms_pct": -1.0}, "basophil": "garbage"},
        "3part": {"granulocyte": {"rms_pct": 3.0}}}}
    method = method_error(card)
    # only finite, non-negative figures count; a missing or broken section adds nothing
    assert method == {"5part": {"neutrophil": 7.28, "lymphocyte": 0.0},
                      "3part": {"granulocyte": 3.0}}
    assert method_error({}) == {"5part": {}, "3part": {}}
    assert method_error({"method_error": [1, 2]}) == {"5part": {}, "3part": {}}
    assert widen(50.0, 45.0, 56.0, 0.0) == (45.0, 56.0)
    lo, hi = widen(50.0, 45.0, 56.0, 4.0)
    assert lo == pytest.approx(50 - math.hypot(5, 1.959964 * 4), abs=1e-4)
    assert hi == pytest.approx(50 + math.hypot(6, 1.959964 * 4), abs=1e-4)
    assert widen(1.0, 0.5, 2.0, 4.0)[0] == 0.0 and widen(99.0, 98.0, 99.5, 4.0)[1] == 100.0
    calls = _calls(WBC_CLASSES, [300, 150, 60, 20, 5])
    kw = dict(imaged_area_mm2=20.0, chamber_height_um=100.0, dilution=10.0, qc_flags=[])
    plain, wide = summarise(calls, **kw), summarise(calls, **kw, method=method)
    p = plain["differential_5part"]["neutrophil"]
    for side, sign in ((0, -1), (1, 1)):
        half = abs(plain["differential_5part_ci95"]["neutrophil"][side] - p)
        assert wide["differential_5part_ci95"]["neutrophil"][side] == pytest.approx(
            p + sign * math.hypot(half, 1.959964 * 7.28), abs=0.11)
    for k in ("lymphocyte", "monocyte", "eosinophil", "basophil"):  # nothing measured: as before
        assert wide["differential_5part_ci95"][k] == plain["differential_5part_ci95"][k]
    assert wide["differential_3part_ci95"]["granulocyte"][1] > plain["differential_3part_ci95"][
        "granulocyte"][1]
    assert wide["differential_5part"] == plain["differential_5part"]  # the estimate is the count's
    empty = summarise([], **kw, method=method)
    assert empty["differential_5part_ci95"] == summarise([], **kw)["differential_5part_ci95"]


def test_method_error_fit_recovers_a_bias_and_makes_intervals_cover():
    """A method whose share is 6 points high (SD 2) on top of counting error, as a
    classifier absorbing one class into another: intervals of the counting error
    alone miss the truth on large counts; widened by the fitted method error they hold it."""
    from inference.evaluate import fit_method_error
    from inference.result import widen

    rng = np.random.default_rng(12)

    def captures(m):
        n = rng.choice([80, 300, 2000, 5000], size=m)
        true = rng.uniform(30, 70, m)
        sd = np.sqrt(true * (100 - true) / n)  # binomial counting error, points
        rep = true + 6.0 + 2.0 * rng.standard_normal(m) + sd * rng.standard_normal(m)
        return true, rep, sd

    true, rep, sd = captures(60)
    bias, spread = fit_method_error((rep - true)[:, None], sd[:, None])
    assert bias[0] == pytest.approx(6.0, abs=1.0) and spread[0] == pytest.approx(2.0, abs=1.0)
    # no systematic part: none found
    b0, s0 = fit_method_error((sd * rng.standard_normal(60))[:, None], sd[:, None])
    assert abs(b0[0]) < 1.0 and s0[0] < 1.0
    true, rep, sd = captures(400)  # other captures than the fit's
    z = 1.959964
    plain = np.abs(rep - true) <= z * sd
    rms = math.hypot(bias[0], spread[0])
    wide = [lo <= t <= hi for t, r, d in zip(true, rep, sd, strict=True)
            for lo, hi in [widen(r, r - z * d, r + z * d, rms)]]
    assert plain.mean() < 0.7 and np.mean(wide) > 0.93, (plain.mean(), np.mean(wide))


def test_accuracy_interval_is_over_captures():
    from inference.evaluate import _accuracy_interval

    same = lambda t, c: t == c  # noqa: E731
    alike = [[(0, 0)] * 90 + [(0, 1)] * 10 for _ in range(12)]
    mixed = [[(0, 0)] * (60 if i % 2 else 100) + [(0, 1)] * (40 if i % 2 else 0) for i in range(12)]
    lo, hi = _accuracy_interval(alike, same)
    assert lo == hi == 0.9  # every capture alike: no spread between captures
    lo, hi = _accuracy_interval(mixed, same)
    assert lo < 0.8 < hi and hi - lo > 0.1  # captures differ: the pooled 0.8 is uncertain
    assert _accuracy_interval(mixed, same) == [lo, hi]  # seeded
    assert _accuracy_interval(mixed[:1], same) is None


def test_evaluation_reports_mdw_per_capture():
    from inference.evaluate import _report, format_report

    K = len(WBC_CLASSES)
    acc = {"pairs": [(0, 0)] * 9 + [(2, 0)], "vol_err": [1.0, -3.0], "wbc_ratio": [1.01],
           "coverage5": [True], "coverage3": [True], "tp": 10, "fp": 0, "fn": 1,
           "crops_per_s": [100.0], "err5": [], "err3": [], "captures": [[(0, 0)] * 9 + [(2, 0)]],
           "names": ["a-healthy"], "raw_confusion": np.zeros((K, K), np.int64),
           "mdw": [("a-healthy", 85.0, 62.0), ("b-septic", 140.0, 136.0), ("c-septic", 120.0, 127.0)]}
    m = _report(acc)["mdw"]
    assert m["captures"] == 3 and m["within_10pct"] == 2  # +37 %, +3 %, -6 %
    assert m["median_error_pct"] == pytest.approx(100 * (140 / 136 - 1), abs=0.01)
    assert m["median_abs_error_pct"] == pytest.approx(100 * (1 - 120 / 127), abs=0.01)
    text = format_report({"m": _report(acc)})
    assert "MDW: 3 captures" in text and "a-healthy: 85.0 fL, true 62.0 fL" in text
    assert "no capture with enough monocytes" in format_report({"m": _report({**acc, "mdw": []})})


def test_evaluation_reports_each_captures_own_accuracy():
    """A large easy capture carries the pooled accuracy; the median capture does not hide behind it."""
    from inference.evaluate import _report, format_report

    K = len(WBC_CLASSES)
    easy = [(0, 0)] * 980 + [(2, 0)] * 20  # 1,000 cells, 0.98 (a monocyte called a neutrophil)
    hard = [(0, 0)] * 80 + [(2, 0)] * 15 + [(2, 2)] * 5  # 100 cells, 0.85; 3-part too
    mixed = [(3, 0)] * 10 + [(1, 1)] * 80 + [(2, K)] * 10  # eosinophils as neutrophils; 10 unclassified
    acc = {"pairs": easy + hard + mixed, "vol_err": [1.0], "wbc_ratio": [1.0], "coverage5": [True],
           "coverage3": [True], "tp": 1200, "fp": 0, "fn": 0, "crops_per_s": [1.0], "err5": [],
           "err3": [], "captures": [easy, hard, mixed], "names": ["easy", "hard", "mixed"],
           "raw_confusion": np.zeros((K, K), np.int64), "mdw": []}
    rep = _report(acc)
    assert rep["accuracy_5part"] == pytest.approx((980 + 85 + 80) / 1200, abs=1e-4)
    pc = rep["per_capture"]
    assert [r["capture"] for r in pc["rows"]] == ["easy", "hard", "mixed"]
    assert [r["accuracy_5part"] for r in pc["rows"]] == [0.98, 0.85, 0.8]
    assert [r["accuracy_3part"] for r in pc["rows"]] == [0.98, 0.85, 0.9]  # E as N is a right group
    assert pc["median_5part"] == 0.85 < rep["accuracy_5part"]
    text = format_report({"m": rep})
    assert "median capture 5-part 0.85" in text and "hard: 100 cells, 5-part 0.85" in text


def test_method_error_is_never_measured_on_the_test_set(tmp_path):
    from inference.classify import ONNX_MODEL
    from inference.evaluate import capture_name, main

    card = json.loads(ONNX_MODEL.with_name("wbc5.card.json").read_text())
    first = card["accuracy"]["test_set"]["captures"][0]
    assert first == capture_name(0, size=1024, physics="random")
    with pytest.raises(SystemExit, match="in the card's test set"):
        main(["--out", str(tmp_path / "m"), "--captures", "2", "--physics", "random",
              "--write-method-error"])
    with pytest.raises(SystemExit, match=f"{first} is in the card's test set"):  # any --start
        main(["--out", str(tmp_path / "m"), "--captures", "2", "--start", "900", "--start", "0",
              "--physics", "random", "--write-method-error"])
    with pytest.raises(SystemExit, match="needs --split test"):
        main(["--out", str(tmp_path / "m"), "--split", "train", "--write-method-error"])
    assert not (tmp_path / "m").exists()  # refused before anything was simulated


def test_concentration_is_counted_in_a_frame_inside_the_image():
    from inference.result import COUNT_GUARD_UM, CellCall

    rng = np.random.default_rng(9)
    rows, cols, px = 400, 600, 1.25  # 750 x 500 um
    def cell(x, y):
        return CellCall(x=float(x), y=float(y), cls="neutrophil", confidence=0.9, diameter_um=8,
                        volume_fl=330.0, depth_um=3, clump=False, probabilities={"neutrophil": 1.0})
    xs, ys = rng.uniform(-0.5, cols - 0.5, 3000), rng.uniform(-0.5, rows - 0.5, 3000)
    inside = [cell(x, y) for x, y in zip(xs, ys, strict=True)]
    # cells just outside the image, found with their centre on or past its edge
    outside = [cell(-1.0, y) for y in rng.uniform(0, rows, 60)] + \
              [cell(cols - 0.2, y) for y in rng.uniform(0, rows, 60)]
    kw = dict(imaged_area_mm2=rows * cols * px * px * 1e-6, chamber_height_um=100.0, dilution=10.0,
              qc_flags=[])
    truth = 3000 / (kw["imaged_area_mm2"] * 100e-3 / 10.0)
    plain = summarise(inside + outside, **kw)["wbc_per_uL"]
    framed = summarise(inside + outside, frame=(rows, cols, px), **kw)["wbc_per_uL"]
    assert plain > 1.03 * truth  # the border cells inflate the plain count
    assert framed == pytest.approx(truth, rel=0.03)
    # the frame lies COUNT_GUARD_UM inside: a cell that far in counts, one closer does not
    g = COUNT_GUARD_UM / px
    edge = summarise([cell(g - 0.5 + 0.01, 200), cell(g - 0.5 - 0.01, 200)], frame=(rows, cols, px), **kw)
    frame_uL = (cols * px - 2 * COUNT_GUARD_UM) * (rows * px - 2 * COUNT_GUARD_UM) * 1e-6 * 1e-2
    assert edge["wbc_per_uL"] == pytest.approx(1 / frame_uL, rel=1e-3)  # reported to 0.1/uL
    # the evaluation lays the same frame out in the analysis's pixels and measures it in the truth's
    from inference.result import counting_frame_mm2
    assert counting_frame_mm2(rows, cols, px) * 1e-2 == pytest.approx(frame_uL)  # 100 um, 1:10
    assert counting_frame_mm2(rows, cols, px, true_px_um=1.1 * px) == pytest.approx(
        1.21 * counting_frame_mm2(rows, cols, px))


# ---------------------------------------------------------------- detection


def test_detection_finds_the_white_cells(three_led):
    cap, rec, det, truth = _detect(three_led)
    assert det.crops.shape == (len(det.candidates), N_CHANNELS, CROP_SIZE, CROP_SIZE)
    assert all(det.slots_present)
    xy = np.array([[c.x, c.y] for c in det.candidates])
    idx, wbc = match(xy, truth, det.pixel_um, cap.shape)
    assert len(wbc) >= 20
    found = set(idx[idx >= 0])
    recall = np.mean([j in found for j in wbc])
    assert recall >= 0.95, recall
    # platelets are the commonest object but scatter too little to be candidates
    kinds = [truth["objects"][j]["kind"] for j in idx if j >= 0]
    n_plt = sum(o["kind"] == "platelet" for o in truth["objects"])
    assert kinds.count("platelet") < 0.1 * n_plt
    # faint candidates: the weakest, last, never refocused (zero crops), and no white cell
    faint = np.array([c.faint for c in det.candidates])
    assert 0 < faint.sum() < len(faint)
    assert not faint[:faint.argmax()].any() and faint[faint.argmax():].all()
    peaks = np.array([c.peak for c in det.candidates])
    assert peaks[faint].max() < FAINT_PEAK_RATIO * det.threshold <= peaks[~faint].min()
    assert not det.crops[faint].any() and det.crops[~faint].any(axis=(1, 2, 3)).all()
    assert all(math.isnan(c.depth_um) for c in np.array(det.candidates)[faint])
    faint_wbc = [j for j, f in zip(idx, faint, strict=True) if f and j in set(wbc)]
    assert len(faint_wbc) <= 0.01 * len(wbc)
    # with the ratio at 0 every candidate is refocused, the strong ones exactly as before
    det0 = detect_in_capture(cap, reconstruct_capture(cap), enhance=True, faint_ratio=0.0)
    assert not any(c.faint for c in det0.candidates)
    k = int((~faint).sum())
    assert np.array_equal(det0.crops[:k], det.crops[:k])


def test_faint_candidates_are_rejected_and_left_out_of_the_sample_mix():
    from inference.result import FAINT_REASON, adapt_priors, call_cells, cell_records, differential_prior

    classes = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "other")
    rng = np.random.default_rng(5)
    strong = [Candidate(x=float(i), y=0.0, peak=1.0, distance_um=500.0, depth_um=5.0,
                        diameter_um=8.0) for i in range(40)]
    faint = [Candidate(x=100.0 + i, y=0.0, peak=0.01, faint=True) for i in range(60)]
    probs = rng.dirichlet(np.ones(6), size=40).astype(np.float32)
    vols = np.full(40, 300.0, np.float32)
    priors = np.full(6, 1 / 6)
    # the faint rows (zeros, NaN volume, as Classifier.classify_candidates gives them)
    calls = call_cells(strong + faint, np.vstack([probs, np.zeros((60, 6), np.float32)]),
                       np.r_[vols, np.full(60, np.nan, np.float32)], classes,
                       chamber_eq_um=100.0, train_priors=priors)
    assert all(c.cls is None and c.reject_reason == FAINT_REASON for c in calls[40:])
    # the strong candidates' calls are those of the strong candidates alone
    alone = call_cells(strong, probs, vols, classes, chamber_eq_um=100.0, train_priors=priors)
    assert [(c.cls, c.reject_reason) for c in calls[:40]] == \
        [(c.cls, c.reject_reason) for c in alone]
    mean, conc = differential_prior()
    adapted, _ = adapt_priors(probs, priors, wbc_prior=(range(5), mean, conc))
    assert calls[0].probabilities["other"] == pytest.approx(float(adapted[0, 5]))
    recs = cell_records(calls)
    assert recs[50]["diameter_um"] is None and recs[50]["depth_um"] is None
    json.dumps(recs, allow_nan=False)  # valid JSON: no NaN for the never-sized candidates


def test_a_cell_sure_of_its_3_part_group_is_counted_as_its_most_probable_class():
    from inference.result import call_cells

    classes = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "other")
    cands = [Candidate(x=float(i), y=0.0, peak=1.0, distance_um=500.0, depth_um=5.0,
                       diameter_um=8.0) for i in range(4)]
    probs = np.array([[0.34, 0.10, 0.10, 0.30, 0.06, 0.10],   # a granulocyte, N or E: counted, N
                      [0.20, 0.05, 0.05, 0.21, 0.14, 0.35],   # granulocyte 0.55 but "other" wins
                      [0.10, 0.30, 0.29, 0.05, 0.06, 0.20],   # L or M, neither group 0.5: unsure
                      [0.05, 0.05, 0.05, 0.05, 0.05, 0.75]], np.float32)
    calls = call_cells(cands, probs, np.full(4, 300.0, np.float32), classes, chamber_eq_um=100.0)
    assert (calls[0].cls, calls[0].reject_reason) == ("neutrophil", None)
    assert calls[0].confidence == pytest.approx(0.34)  # the class's own probability
    assert calls[1].reject_reason == calls[3].reject_reason == "not a white cell"
    assert (calls[2].cls, calls[2].reject_reason) == (None, "low confidence")
    # the rule's threshold is the group's probability: at 0.69 the granulocyte (0.70) passes
    strict = call_cells(cands, probs, np.full(4, 300.0, np.float32), classes, chamber_eq_um=100.0,
                        min_confidence=0.69)
    assert strict[0].cls == "neutrophil"
    assert call_cells(cands, probs, np.full(4, 300.0, np.float32), classes, chamber_eq_um=100.0,
                      min_confidence=0.71)[0].reject_reason == "low confidence"


def _one_object_sample(kind: str, h_um: float, *, on_cover: bool = False) -> Sample:
    """A single white cell (or dust grain) at the centre of a 256 px IMX477 frame."""
    c = 256 * 1.55 / 2
    parts = np.zeros(0, PART_DTYPE)
    if kind == "dust":
        parts = np.array([(0.0, 0.0, 0.0, 2.5, 0.0, 0.0), (2.0, 1.0, 0.0, 2.0, 0.0, 0.0)], PART_DTYPE)
        row = (KIND_ID["dust"], c, c, 0.0, 5.0, 3.0, 0.0, 0.0, 0.3, 0.05, 0, 2, 0, 0, -1, 1)
    else:
        parts = np.array([(0.0, 0.0, 0.0, 3.3, 0.0, 0.0)], PART_DTYPE)
        row = (KIND_ID[kind], c, c, h_um, 4.2, 4.2, 0.035, 2e-5, 0.02, 4e-4, 0, 1, 1, 0, -1, 0)
    return Sample(objects=np.array([row], OBJECT_DTYPE), parts=parts, chamber_height_um=100.0,
                  cover_glass_um=170.0)


@pytest.mark.parametrize("h_um", [4.2, 60.0])
def test_refocus_finds_a_floating_cell(tmp_path, h_um):
    cfg = SimConfig(size=(256, 256), optics=Optics(nominal_error_um=40.0))
    simulate_capture(tmp_path / "c", seed=3, config=cfg, sample=_one_object_sample("lymphocyte", h_um))
    cap, rec, det, truth = _detect(tmp_path / "c")
    assert det.candidates, "the cell was not detected"
    best = max(det.candidates, key=lambda c: c.peak)
    true_depth = truth["objects"][0]["distance_um"] - truth["optics"]["floor_distance_um"]
    # a lone cell is its own floor: compare distances, within the depth of field (~20 um)
    assert abs(best.distance_um - truth["objects"][0]["distance_um"]) < 20.0, (best, true_depth)


def test_dust_on_the_cover_glass_is_outside_the_chamber(tmp_path):
    # dust on the cover glass above a chamber whose floor cell fixes the plane
    cfg = SimConfig(size=(256, 256))
    s = _one_object_sample("dust", 0.0, on_cover=True)
    cell = _one_object_sample("lymphocyte", 4.2)
    obj = np.concatenate([s.objects, cell.objects])
    obj["x_um"][1] += 60.0
    obj["lobe0"][1] = len(s.parts)
    parts = np.concatenate([s.parts, cell.parts])
    sample = Sample(objects=obj, parts=parts, chamber_height_um=100.0, cover_glass_um=170.0)
    simulate_capture(tmp_path / "d", seed=5, config=cfg, sample=sample)
    # every candidate refocused (faint_ratio 0): the refocus puts the dust above the chamber
    cap, rec, det, truth = _detect(tmp_path / "d", faint_ratio=0.0)
    dust_xy = (truth["objects"][0]["x_px"], truth["objects"][0]["y_px"])
    near = [c for c in det.candidates if math.dist((c.x, c.y), dust_xy) < 6]
    assert near, "dust was not detected"
    assert max(c.depth_um for c in near) > 100.0 / 1.335 + 12.0
    # as the analysis runs, out of focus it is also too faint to be refocused; never counted
    det = detect_in_capture(cap, reconstruct_capture(cap))
    near = [c for c in det.candidates if math.dist((c.x, c.y), dust_xy) < 6]
    assert near and all(c.faint or c.depth_um > 100.0 / 1.335 + 12.0 for c in near)


# ---------------------------------------------------------------- classifier


@pytest.fixture(scope="module")
def classifier():
    return Classifier()


def test_model_card_and_size(classifier):
    assert DEFAULT_MODEL.stat().st_size < 5_000_000
    assert classifier.classes == CLASSES
    assert classifier.info.sha256 and len(classifier.info.sha256) == 64
    card = json.loads(DEFAULT_MODEL.with_name("wbc5.card.json").read_text())
    assert card["accuracy"]["int8"]["accuracy_5part"] > 0


def test_bad_models_are_refused(tmp_path, classifier):
    with pytest.raises(ModelError, match="not found"):
        Classifier(tmp_path / "nothing.onnx")
    broken = tmp_path / "wbc5.onnx"
    broken.write_bytes(DEFAULT_MODEL.read_bytes()[:5000])
    shutil.copy(DEFAULT_MODEL.with_name("wbc5.card.json"), tmp_path / "wbc5.card.json")
    with pytest.raises(ModelError, match="cannot be loaded"):
        Classifier(broken)
    (tmp_path / "wbc5.card.json").write_text("{")
    with pytest.raises(ModelError, match="card"):
        Classifier(broken)
    with pytest.raises(ModelError, match="do not fit"):
        classifier(np.zeros((2, 3, CROP_SIZE, CROP_SIZE), np.float32))


def test_classifier_on_held_out_crops(three_led, classifier):
    """Held-out conditions: the shipped model classifies most white cells; colour matters.

    The capture holds legacy cells (one guess per class), outside every physics family the
    shipped model 1.1.0 was trained on (it reads 0.67 5-part on legacy held-out captures).
    """
    cap, rec, det, truth = _detect(three_led, enhance=classifier.enhanced_crops)
    lab = label_detections(det, truth, cap.shape)  # the candidates the network sees
    assert len(lab.labels) == sum(not c.faint for c in det.candidates)
    wbc = lab.labels != OTHER
    probs, vol = classifier(lab.crops)
    pred = probs.argmax(1)
    acc = float((pred[wbc] == lab.labels[wbc]).mean())
    assert acc > 0.7, acc
    # the same crops with the blue and red slots swapped lose accuracy: the model uses colour
    swapped = lab.crops.copy()
    swapped[:, 0:2], swapped[:, 4:6] = lab.crops[:, 4:6], lab.crops[:, 0:2]
    acc_swapped = float((classifier(swapped)[0].argmax(1)[wbc] == lab.labels[wbc]).mean())
    assert acc_swapped < acc - 0.05, (acc, acc_swapped)
    err = np.abs(vol[wbc] - lab.volume_fl[wbc]) / lab.volume_fl[wbc]
    assert np.median(err) < 0.15


# ---------------------------------------------------------------- the whole analysis


def test_analyze_capture_result_format(three_led, classifier):
    res = analyze_capture(three_led, classifier=classifier, options=AnalysisOptions(cells=True))
    assert res["format"] == "holodiff-result/1"
    assert res["model"]["name"] == "wbc5" and res["model"]["sha256"] == classifier.info.sha256
    assert res["cells_detected"] == res["cells_classified"] + res["cells_rejected"]
    assert sum(res["counts"].values()) == res["cells_classified"]
    assert sum(res["differential_5part"].values()) == pytest.approx(100.0, abs=0.1)
    assert sum(res["differential_3part"].values()) == pytest.approx(100.0, abs=0.1)
    truth = json.loads((three_led / "truth.json").read_text())
    n_true = sum(truth["wbc_counts_in_frame"].values())
    assert abs(res["cells_classified"] - n_true) <= 0.15 * n_true + 3
    assert res["differential_5part"]["lymphocyte"] > res["differential_5part"]["monocyte"]
    assert {"total", "reconstruction", "detection", "classification"} <= set(res["timing_s"])
    assert len(res["cells"]) == res["cells_detected"]
    rejected = [c for c in res["cells"] if c["class"] is None]
    assert all(c["reject_reason"] for c in rejected)
    assert "LOW_COUNT" in res["flags"]  # a 512 px frame holds far fewer than 200 white cells
    # the shipped model's card says which classes it under-counts: every result names them
    from inference.result import under_counted
    under = under_counted(classifier.card)
    assert under and res["under_counted"] == {c: round(r, 2) for c, r in under.items()}
    text = res["flag_details"]["CONFIRM_DIFF"].lower()
    assert "CONFIRM_DIFF" in res["flags"] and all(f"{c}s" in text for c in under)
    # the intervals carry the model's method error from its card
    from inference.result import method_error
    e = 1.959964 * method_error(classifier.card)["5part"]["neutrophil"]
    p, (lo, hi) = res["differential_5part"]["neutrophil"], res["differential_5part_ci95"]["neutrophil"]
    assert e > 0 and hi - p >= min(e, 100.0 - p) - 0.1 and p - lo >= min(e, p) - 0.1


def test_empty_chamber_is_flagged(capdir, classifier):
    path = capdir("empty-3led", faults=("empty_chamber",), leds=SimConfig().leds, size=(256, 256))
    res = analyze_capture(path, classifier=classifier)
    assert "EMPTY_CHAMBER" in res["flags"] and res["cells_classified"] < 5
    assert res["flag_details"]["EMPTY_CHAMBER"].startswith("No cells found")


# ---------------------------------------------------------------- data sets


def test_train_and_test_conditions_never_overlap():
    from inference.dataset import SEED_BASE, SPLITS
    for key, test_iv in SPLITS["test"].items():
        for a, b in test_iv:
            for c, d in SPLITS["train"][key]:
                assert b <= c or d <= a, key
    rng = np.random.default_rng(0)
    for _ in range(50):
        cfg = random_config(rng, "test", size=(64, 64))
        assert 650 <= cfg.optics.air_gap_um <= 850
        assert all(21 <= led.bandwidth_nm <= 30 for led in cfg.leds)
        cfg = random_config(rng, "train", size=(64, 64))
        assert not 650 < cfg.optics.air_gap_um < 850
        assert not 45 < cfg.optics.pinhole_um < 75
    assert SEED_BASE["test"] - SEED_BASE["train"] >= 1_000_000


def test_match_is_one_to_one_and_prefers_white_cells():
    truth = {"objects": [
        {"kind": "neutrophil", "x_px": 10.0, "y_px": 10.0},
        {"kind": "platelet", "x_px": 11.0, "y_px": 10.0},
        {"kind": "lymphocyte", "x_px": 40.0, "y_px": 40.0},
        {"kind": "monocyte", "x_px": 200.0, "y_px": 5.0},  # outside a 100 px frame
    ]}
    cands = np.array([[10.8, 10.0], [10.2, 10.1], [80.0, 80.0]])
    idx, wbc = match(cands, truth, 1.5, (100, 100))
    assert wbc == [0, 2]
    assert sorted(idx[:2].tolist()) == [0, 1] and idx[2] == -1
    # the candidate nearer the platelet still takes the white cell when only one candidate
    idx, _ = match(cands[:1], truth, 1.5, (100, 100))
    assert idx[0] == 0


def test_mdw_weights_cells_by_their_monocyte_probability():
    from inference.result import CellCall, monocyte_distribution_width
    rng = np.random.default_rng(2)
    cells = []
    # 200 clear monocytes (SD 60 fL) and 400 neutrophils with a 5 % monocyte probability
    for v in rng.normal(450, 60, 200):
        cells.append(CellCall(x=0, y=0, cls="monocyte", confidence=0.9, diameter_um=9, volume_fl=v,
                              depth_um=0, clump=False, probabilities={"monocyte": 0.9}))
    for v in rng.normal(350, 40, 400):
        cells.append(CellCall(x=0, y=0, cls="neutrophil", confidence=0.9, diameter_um=8,
                              volume_fl=v, depth_um=0, clump=False, probabilities={"monocyte": 0.05}))
    mdw = monocyte_distribution_width(cells)
    assert 190 <= mdw["n"] <= 210
    assert 420 < mdw["mean_fl"] < 450 and 55 < mdw["sd_fl"] < 75
    lo, hi = mdw["sd_ci95_fl"]
    assert lo < mdw["sd_fl"] < hi
    assert monocyte_distribution_width(cells[200:])["sd_fl"] is None  # 400 x 0.05: too few


def test_adapt_priors_recovers_the_sample_mix():
    from inference.result import adapt_priors
    rng = np.random.default_rng(3)
    # a classifier trained on equal classes, with overlapping likelihoods
    true_prior = np.array([0.6, 0.3, 0.07, 0.03])
    n = 4000
    labels = rng.choice(4, size=n, p=true_prior)
    centres = np.array([0.0, 2.5, 1.0, 0.6])
    x = centres[labels] + rng.normal(0, 0.5, n)
    lik = np.exp(-0.5 * ((x[:, None] - centres[None, :]) / 0.5) ** 2)
    post_equal = lik / lik.sum(1, keepdims=True)  # posteriors under equal training priors
    adjusted, prior = adapt_priors(post_equal, np.full(4, 0.25))
    assert np.allclose(prior, true_prior, atol=0.03), prior
    acc_before = (post_equal.argmax(1) == labels).mean()
    acc_after = (adjusted.argmax(1) == labels).mean()
    assert acc_after > acc_before
    assert np.allclose(adjusted.sum(1), 1.0, atol=1e-5)
    empty, p0 = adapt_priors(np.zeros((0, 4)), np.full(4, 1.0))
    assert empty.shape == (0, 4) and np.allclose(p0, 0.25)


def _posteriors(rng, true_mix, centres, n, sd=0.5):
    labels = rng.choice(len(true_mix), size=n, p=true_mix)
    x = centres[labels] + rng.normal(0, sd, n)
    lik = np.exp(-0.5 * ((x[:, None] - centres[None, :]) / sd) ** 2)
    return lik / lik.sum(1, keepdims=True), labels


def test_the_differential_prior_holds_classes_the_network_cannot_tell_apart():
    from inference.result import REFERENCE_PCT, adapt_priors, differential_prior

    mean, conc = differential_prior()
    assert mean.sum() == pytest.approx(1.0)
    assert mean[0] == pytest.approx(57.5 / 100.5)  # neutrophils: centre of 40-75 %
    assert 25 < conc < 35  # set by the widest reference interval (neutrophils)
    assert REFERENCE_PCT["neutrophil"] == (40.0, 75.0)
    rng = np.random.default_rng(8)
    five = (range(5), mean, conc)
    # N, L, M, E, B + other; eosinophils look exactly like neutrophils (same centre)
    centres = np.array([0.0, 3.0, 1.5, 0.0, 4.5, 6.0])
    true_mix = np.array([0.55, 0.25, 0.05, 0.02, 0.01, 0.12])
    post, _ = _posteriors(rng, true_mix, centres, 3000)
    _, plain = adapt_priors(post, np.full(6, 1 / 6))
    _, held = adapt_priors(post, np.full(6, 1 / 6), wbc_prior=five)
    # the plain EM cannot split N from E and keeps the training ratio (half each)
    assert plain[3] > 0.2
    assert held[3] < 0.1 and held[0] > 0.45
    # where the classes are distinct, a few hundred cells outweigh the prior: 15 % eosinophils
    centres = np.array([0.0, 3.0, 1.5, 7.5, 4.5, 6.0])
    true_mix = np.array([0.45, 0.20, 0.06, 0.15, 0.01, 0.13])
    post, labels = _posteriors(rng, true_mix, centres, 400, sd=0.3)
    _, held = adapt_priors(post, np.full(6, 1 / 6), wbc_prior=five)
    assert held[3] == pytest.approx(np.mean(labels == 3), abs=0.02)


@pytest.mark.parametrize("fault, flag", [("saturated", "SATURATED"), ("failed_led", "DARK_FRAME")])
def test_faulty_captures_are_flagged_not_lost(capdir, classifier, fault, flag):
    path = capdir(f"fault-{fault}", faults=(fault,), leds=SimConfig().leds, size=(256, 256), seed=9)
    res = analyze_capture(path, classifier=classifier)
    assert flag in res["flags"] and res["flag_details"][flag]
    assert res["cells_classified"] > 0


def test_corrupt_frame_is_refused_with_its_reason(capdir, classifier):
    from holography.errors import CaptureError
    path = capdir("fault-corrupt", faults=("corrupt_file",), leds=SimConfig().leds, size=(128, 128))
    with pytest.raises(CaptureError, match="truncated"):
        analyze_capture(path, classifier=classifier)


def test_mix_intervals_cover_the_true_mix_and_widen_where_classes_overlap():
    from inference.result import PSEUDO_COUNT, adapt_priors, differential_prior, mix_intervals

    rng = np.random.default_rng(5)
    classes = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "other")
    mean, conc = differential_prior()
    # a weak network: eosinophils overlap neutrophils, monocytes sit between N and L
    centres = np.array([0.0, 3.0, 1.2, 0.5, 4.5, 6.5])
    true_mix = np.array([0.50, 0.25, 0.06, 0.05, 0.02, 0.12])
    true_share = true_mix[:5] / true_mix[:5].sum()
    hits = np.zeros(5)
    widths = np.zeros(5)
    trials = 150
    for _ in range(trials):
        post, _ = _posteriors(rng, true_mix, centres, 1500)
        adapted, _ = adapt_priors(post, np.full(6, 1 / 6), pseudo_count=PSEUDO_COUNT,
                                  wbc_prior=(range(5), mean, conc))
        lo, hi, groups = mix_intervals(adapted, classes)
        hits += (lo <= true_share) & (true_share <= hi)
        widths += hi - lo
        # N and E trade off against each other: their sum is better known than either
        assert groups["granulocyte"][1] - groups["granulocyte"][0] < (hi[0] - lo[0]) + (hi[3] - lo[3])
    assert np.all(hits / trials > 0.85), hits / trials
    # the overlapping class gets a wider interval than a well-separated one
    assert widths[3] > 2 * widths[4]
    assert widths[0] > widths[1]
    # nothing seen: nothing known
    lo, hi, _ = mix_intervals(np.zeros((0, 6)), classes)
    assert np.all(lo == 0) and np.all(hi == 1)


def test_evaluation_cache_gives_the_fresh_crops(three_led, tmp_path):
    """The evaluation's detection cache keeps float32 crops: a rerun scores what the first run did."""
    from inference.evaluate import _detections

    cap = tmp_path / "cap"
    shutil.copytree(three_led, cap)
    fresh, _, _ = _detections(cap, True)
    cached, _, _ = _detections(cap, False)
    assert len(list(cap.glob("eval-detections-*.npz"))) == 1
    assert cached.plain_crops.dtype == np.float32
    np.testing.assert_array_equal(cached.plain_crops, fresh.plain_crops)
    np.testing.assert_array_equal(cached.crops, fresh.crops)
    np.testing.assert_array_equal([c.distance_um for c in cached.candidates],
                                  [c.distance_um for c in fresh.candidates])  # NaN: faint ones
    assert [c.faint for c in cached.candidates] == [c.faint for c in fresh.candidates]
    assert any(c.faint for c in cached.candidates)
