"""Out-of-family scoring: held-out family masks and virtual captures through the analysis's rules."""

from __future__ import annotations

import numpy as np
import pytest

from holography.cellphysics import AXES
from inference.dataset import CLASSES
from inference.families import MIXES, family_mask, summary, virtual_capture


def _crops(rng, n_per=300, confuse=0.0):
    """Probabilities of a network that calls each class right, or neutrophils eosinophils."""
    labels = np.repeat(np.arange(len(CLASSES)), n_per)
    probs = np.full((len(labels), len(CLASSES)), 0.001)
    probs[np.arange(len(labels)), labels] = 0.995
    neu = np.flatnonzero(labels == 0)
    bad = neu[: int(confuse * len(neu))]
    probs[bad, 0], probs[bad, 3] = 0.001, 0.995
    probs /= probs.sum(1, keepdims=True)
    vol_true = np.where(labels < 5, rng.normal(350, 50, len(labels)), np.nan)
    return probs, vol_true * rng.normal(1, 0.03, len(labels)), labels, vol_true


def test_family_mask_selects_the_held_out_family():
    fam = np.array([[0, 1, 0, 0, 0], [2, 1, 0, 1, 0], [2, 0, 1, 1, 1]], np.int8)
    assert family_mask(fam, "granules", "upper").tolist() == [False, True, True]
    assert family_mask(fam, "shape", "flattened").tolist() == [False, True, True]
    with pytest.raises(ValueError):
        family_mask(fam, "granules", "huge")
    assert len(fam[0]) == len(AXES)


def test_a_good_network_scores_well_and_a_confused_one_does_not():
    rng = np.random.default_rng(0)
    priors = np.ones(len(CLASSES))
    good = [virtual_capture(*_crops(rng), MIXES["healthy"], 400, rng, classes=CLASSES,
                            train_priors=priors) for _ in range(4)]
    s = summary(good)
    assert s["median_5part"] > 0.97 and s["balanced"] > 0.95 and s["volume_error_pct"] < 5
    assert s["coverage_5part"] > 0.8
    bad = [virtual_capture(*_crops(rng, confuse=0.7), MIXES["healthy"], 400, rng, classes=CLASSES,
                           train_priors=priors) for _ in range(4)]
    b = summary(bad)
    assert b["median_5part"] < s["median_5part"] - 0.2
    assert b["recall"]["neutrophil"] < 0.5 < b["recall"]["lymphocyte"]
    # the true shares are what was drawn, the reported ones what the analysis said
    cap = bad[0]
    assert sum(cap["true_5part"].values()) == pytest.approx(100.0)
    assert cap["reported_5part"]["eosinophil"] > cap["true_5part"]["eosinophil"] + 10
