"""Site calibration of the classifier from a method comparison: the fit, the file, the record."""

from __future__ import annotations

import numpy as np
import pytest

from holography.sample import WBC_CLASSES
from inference.dataset import CLASSES
from inference.families import _Candidate
from inference.result import call_cells
from inference.sitecal import SiteCalibrationError, SiteMap, cross_validate, fit, read_reference

NEU, EOS = 0, 3


def _shifted_capture(rng, mix, n=400):
    """A capture under a shifted physics: true neutrophils score as half-eosinophils."""
    labels = rng.choice(5, size=n, p=mix)
    p = np.full((n, 6), 0.01)
    p[np.arange(n), labels] = 0.95
    neu = labels == NEU
    p[neu, NEU], p[neu, EOS] = rng.uniform(0.25, 0.4, neu.sum()), rng.uniform(0.5, 0.7, neu.sum())
    p /= p.sum(1, keepdims=True)
    return p.astype(np.float32), labels


def _report(p):
    calls = call_cells([_Candidate()] * len(p), p, np.full(len(p), 300.0), CLASSES,
                       chamber_eq_um=1e6, train_priors=np.ones(6))
    counted = [c.cls for c in calls if c.cls]
    return {c: 100.0 * counted.count(c) / max(len(counted), 1) for c in WBC_CLASSES}, calls


def _mixes(rng, k):
    return [rng.dirichlet([30, 15, 4, 3 if i % 4 else 12, 0.8]) for i in range(k)]


def test_a_map_fitted_on_proportions_undoes_a_class_conditional_shift():
    rng = np.random.default_rng(0)
    train = [_shifted_capture(rng, m) for m in _mixes(rng, 16)]
    refs = [{c: 100.0 * float(np.mean(lab == i)) for i, c in enumerate(WBC_CLASSES)}
            for _, lab in train]
    r = np.array([[d[c] / 100 for c in WBC_CLASSES] for d in refs])
    smap, stats = fit([p for p, _ in train], r, CLASSES, np.ones(6))
    assert stats["loss_after"] < 0.5 * stats["loss_before"]
    cv = cross_validate([p for p, _ in train], refs, lambda i, p: _report(p)[0], CLASSES,
                        np.ones(6), folds=4)
    assert cv["with"]["mae_5part"] < 0.5 * cv["without"]["mae_5part"]
    # on new captures: neutrophils come back, and an eosinophilia is still an eosinophilia
    for mix in ([0.6, 0.3, 0.06, 0.03, 0.01], [0.45, 0.25, 0.07, 0.22, 0.01]):
        p, lab = _shifted_capture(rng, np.array(mix), n=600)
        before, _ = _report(p)
        after, calls = _report(smap.apply(p))
        true = {c: 100 * float(np.mean(lab == i)) for i, c in enumerate(WBC_CLASSES)}
        assert abs(after["neutrophil"] - true["neutrophil"]) < 0.5 * abs(
            before["neutrophil"] - true["neutrophil"])
        called = np.array([c.cls or "" for c in calls])
        eos_recall = np.mean(called[lab == EOS] == "eosinophil")
        assert eos_recall > 0.8
    # the identity map changes nothing; faint candidates (zero rows) stay zero
    ident = SiteMap.identity(6)
    q = np.vstack([p[:3], np.zeros((1, 6), np.float32)])
    assert np.allclose(ident.apply(q)[:3], q[:3], atol=1e-5) and not ident.apply(q)[3].any()
    assert np.allclose(SiteMap.from_values({"map": smap.to_values()}, 6).W, smap.W, atol=1e-5)
    with pytest.raises(SiteCalibrationError, match="does not fit this model"):
        SiteMap.from_values({"map": smap.to_values()}, 5)


def _csv(tmp_path, rows, header="capture,neutrophil,lymphocyte,monocyte,eosinophil,basophil"):
    f = tmp_path / "ref.csv"
    f.write_text(header + "\n" + "\n".join(rows) + "\n")
    return f


GOOD = [f"c{i:02d},58.2,30.1,7.3,3.6,0.8" for i in range(8)]


@pytest.mark.parametrize("rows,header,message", [
    (GOOD[:7], None, "7 usable rows; a method comparison needs at least 8"),
    (GOOD[:7] + ["c99,58.2,30.1,7.3,3.6"], None, "line 9: 5 fields, the header has 6"),
    (GOOD[:7] + ["c99,58.2,30.1,seven,3.6,0.8"], None, "line 9: monocyte 'seven' is not a number"),
    (GOOD[:7] + ["c99,68.2,30.1,7.3,3.6,0.8"], None, "line 9: the five percentages sum to 110"),
    (GOOD[:7] + ["c00,58.2,30.1,7.3,3.6,0.8"], None, "line 9: capture c00 is listed twice"),
    ([g + ",7000," for g in GOOD[:7]] + ["c99,58.2,30.1,7.3,3.6,0.8,-5,"],
     "capture,neutrophil,lymphocyte,monocyte,"
     "eosinophil,basophil,wbc_per_uL,mdw_sd_fl", "line 9: wbc_per_uL -5 must be positive"),
    (GOOD, "capture,neutrophil,lymphocyte,eosinophil,basophil", "line 1: missing column 'monocyte'"),
    (GOOD, "capture,neutrophil,lymphocyte,monocyte,eosinophil,basophil,bands",
     "line 1: unknown column 'bands'"),
])
def test_a_bad_reference_file_names_its_row(tmp_path, rows, header, message):
    f = _csv(tmp_path, rows, header or "capture,neutrophil,lymphocyte,monocyte,eosinophil,basophil")
    with pytest.raises(SiteCalibrationError, match=message):
        read_reference(f)


def test_a_good_reference_file_resolves_captures_beside_it(tmp_path):
    rows = read_reference(_csv(tmp_path, GOOD[:7] + ["/abs/c8,81.0,9.5,7.9,1.1,0.5"]))
    assert rows[0].capture == tmp_path / "c00" and str(rows[-1].capture) == "/abs/c8"
    assert rows[-1].differential["neutrophil"] == 81.0 and rows[0].wbc_per_uL is None


def test_score_calibration_learns_a_temperature_and_is_applied_by_the_classifier(tmp_path):
    import json
    import shutil

    from inference.classify import ONNX_MODEL, Classifier, calibrate_scores, fit_score_calibration

    rng = np.random.default_rng(1)
    y = rng.integers(0, 6, 4000)
    logit = rng.normal(0, 1, (4000, 6))
    logit[np.arange(4000), y] += 2.0
    soft = np.exp(logit) / np.exp(logit).sum(1, keepdims=True)
    sharp = np.exp(3 * logit) / np.exp(3 * logit).sum(1, keepdims=True)  # over-confident
    t1, _ = fit_score_calibration(soft, y)
    t3, b3 = fit_score_calibration(sharp, y)
    assert t3 == pytest.approx(3 * t1, rel=0.05) and abs(b3.sum()) < 1e-6
    fixed = calibrate_scores(sharp, t3, b3)
    nll = lambda p: -np.mean(np.log(p[np.arange(len(y)), y]))  # noqa: E731
    assert nll(fixed) < nll(sharp)
    # a card with a score calibration: the classifier's probabilities are calibrated by it
    for f in (ONNX_MODEL, ONNX_MODEL.with_name("wbc5.card.json")):
        shutil.copy(f, tmp_path / f.name)
    card = json.loads((tmp_path / "wbc5.card.json").read_text())
    card.pop("score_calibration", None)
    (tmp_path / "wbc5.card.json").write_text(json.dumps(card))
    plain = Classifier(tmp_path / "wbc5.onnx")
    crops = rng.normal(0, 0.05, (8, plain.channels, plain.size, plain.size)).astype(np.float32)
    p0, v0 = plain(crops)
    card["score_calibration"] = {"temperature": 2.0, "bias": [0.5, 0, 0, 0, 0, -0.5]}
    (tmp_path / "wbc5.card.json").write_text(json.dumps(card))
    p1, v1 = Classifier(tmp_path / "wbc5.onnx")(crops)
    assert np.allclose(p1, calibrate_scores(p0, 2.0, np.array([0.5, 0, 0, 0, 0, -0.5])), atol=1e-5)
    assert np.array_equal(v0, v1)
