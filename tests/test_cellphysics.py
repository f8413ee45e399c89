"""The cell physics drawn per sample: families, ranges, and what the simulator makes of them."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from holography.cellphysics import (
    AXES,
    GRANULE_VF,
    MAX_GRANULES,
    draw_physics,
    parse_families,
    spectral_factor,
)
from holography.errors import SimulationError
from holography.sample import KINDS, WBC_CLASSES, get_spec, make_sample
from holography.simulate import SimConfig, _crosstalk, at_wavelength
from inference.dataset import crowded_spec, family_codes

FIELD = (0.0, 0.0, 1500.0, 1500.0)


def _sample(families, seed=0, wbc=40000.0):
    rng = np.random.default_rng(seed)
    spec = replace(get_spec("healthy", rng), wbc_per_uL=wbc, floating_fraction=0.0,
                   clump_fraction=0.0, physics=draw_physics(rng, families))
    return make_sample(spec, field_um=FIELD, chamber_height_um=100.0, dilution=10.0, rng=rng)


def _granule_vf(s, cls):
    """Granule volume over cytoplasm volume of each cell of ``cls`` (vacuoles excluded)."""
    out = []
    for o in s.objects[s.objects["kind"] == KINDS.index(cls)]:
        g = s.parts[o["gran0"]:o["gran0"] + o["ngran"]]
        g = g[g["dn"] > 0]
        lob = s.parts[o["lobe0"]:o["lobe0"] + o["nlobe"]]
        v_cell = 4 / 3 * math.pi * o["a_um"] ** 2 * o["c_um"]
        v_nuc = 4 / 3 * math.pi * float((lob["r"] ** 3).sum())
        out.append(4 / 3 * math.pi * float((g["r"] ** 3).sum()) / max(v_cell - v_nuc, 1e-9))
    return np.array(out)


def _granule_cell_fraction(s, cls):
    """Median granule volume over cell volume of the cells of ``cls``."""
    out = []
    for o in s.objects[s.objects["kind"] == KINDS.index(cls)]:
        g = s.parts[o["gran0"]:o["gran0"] + o["ngran"]]
        g = g[g["dn"] > 0]
        out.append(float((g["r"] ** 3).sum()) / (o["a_um"] ** 2 * o["c_um"]))
    return float(np.median(out))


def test_families_are_drawn_fixed_or_excluded():
    rng = np.random.default_rng(0)
    seen = {a: set() for a in AXES}
    for _ in range(60):
        p = draw_physics(rng, {"index": "high"}, exclude={"granules": ("upper",)})
        for a, f in p.families.items():
            seen[a].add(f)
    assert seen["index"] == {"high"}
    assert seen["granules"] == {"lower", "literature"}
    assert seen["shape"] == set(AXES["shape"])
    with pytest.raises(SimulationError, match="unknown physics axis"):
        draw_physics(rng, {"colour": "red"})
    with pytest.raises(SimulationError, match="every granules family is excluded"):
        draw_physics(rng, exclude={"granules": AXES["granules"]})
    assert parse_families("granules=upper, shape=round") == {"granules": "upper", "shape": "round"}
    with pytest.raises(SimulationError, match="bad physics family 'granules=huge'"):
        parse_families("granules=huge")


def test_granules_fill_their_volume_fraction_and_stay_out_of_the_nucleus():
    dense, sparse = _sample({"granules": "upper"}), _sample({"granules": "lower"})
    for cls in ("neutrophil", "eosinophil", "basophil"):
        lo, hi = GRANULE_VF["upper"][cls]
        vf = _granule_vf(dense, cls)
        # +-30 % cell to cell around a class value inside the family's range
        assert lo * 0.65 < np.median(vf) < hi * 1.35, cls
        assert np.median(vf) > 1.3 * np.median(_granule_vf(sparse, cls)), cls
        # granulocytes hold many more granules than monocytes and lymphocytes
        assert _granule_cell_fraction(sparse, cls) > 1.5 * _granule_cell_fraction(dense, "monocyte")
    neu = dense.objects[dense.objects["kind"] == KINDS.index("neutrophil")]
    assert (neu["ngran"] <= MAX_GRANULES + 1).all() and neu["ngran"].max() > 100
    o = neu[0]
    g = dense.parts[o["gran0"]:o["gran0"] + o["ngran"]]
    lob = dense.parts[o["lobe0"]:o["lobe0"] + o["nlobe"]]
    d = np.sqrt((g["dx"][:, None] - lob["dx"][None]) ** 2 + (g["dy"][:, None] - lob["dy"][None]) ** 2
                + (g["dz"][:, None] - lob["dz"][None]) ** 2)
    assert (d > lob["r"][None]).all()  # granule centres lie in the cytoplasm


def test_settled_cells_flatten_at_constant_volume_and_rest_on_the_floor():
    flat, rnd = _sample({"shape": "flattened"}, 1), _sample({"shape": "round"}, 1)
    wbc = np.isin(flat.objects["kind"], [KINDS.index(c) for c in WBC_CLASSES])
    f = flat.objects[wbc]
    assert np.all(f["c_um"] / f["a_um"] < 0.9) and np.all(f["h_um"] == f["c_um"])
    r = rnd.objects[np.isin(rnd.objects["kind"], [KINDS.index(c) for c in WBC_CLASSES])]
    assert np.all(r["c_um"] / r["a_um"] > 0.8)
    # volume-equivalent diameters of both follow the same class means
    d_flat = 2 * np.cbrt(f["a_um"] ** 2 * f["c_um"])
    assert 6.0 < np.median(d_flat) < 10.0


def test_nucleus_lighter_than_cytoplasm_is_a_family():
    s = _sample({"nucleus": "lighter"}, 2)
    w = s.objects[np.isin(s.objects["kind"], [KINDS.index(c) for c in WBC_CLASSES])]
    assert np.median(w["dn_nuc"]) < 0.005
    s = _sample({"nucleus": "denser"}, 2)
    w = s.objects[np.isin(s.objects["kind"], [KINDS.index(c) for c in WBC_CLASSES])]
    assert np.median(w["dn_nuc"]) > 0.005


def test_absorption_spectrum_and_dispersion_follow_the_wavelength():
    s = _sample({"absorption": "blue"}, 3, wbc=5000.0)
    blue_o, blue_p = at_wavelength(s, 470.0)
    red_o, red_p = at_wavelength(s, 625.0)
    w = np.isin(s.objects["kind"], [KINDS.index(c) for c in WBC_CLASSES])
    ratio = blue_o["kappa"][w] / red_o["kappa"][w]
    expect = spectral_factor(s.beta[w], 470.0) / spectral_factor(s.beta[w], 625.0)
    assert np.allclose(ratio, expect) and ratio.min() > (625 / 470) ** 1.5 * 0.999
    assert np.all(blue_o["dn"][w] >= red_o["dn"][w])
    # the legacy model has neither
    rng = np.random.default_rng(0)
    legacy = make_sample(get_spec("healthy", rng), field_um=FIELD, chamber_height_um=100.0,
                         dilution=10.0, rng=rng)
    o, p = at_wavelength(legacy, 470.0)
    assert o is legacy.objects and p is legacy.parts


def test_crosstalk_spreads_but_keeps_the_signal():
    rng = np.random.default_rng(0)
    img = rng.uniform(0.5, 1.5, (64, 64)).astype(np.float32)
    out = _crosstalk(img, 0.05)
    assert out[8:-8, 8:-8].mean() == pytest.approx(img[8:-8, 8:-8].mean(), rel=1e-3)
    assert out.std() < img.std()
    assert _crosstalk(img, 0.0) is img
    with pytest.raises(SimulationError, match="crosstalk"):
        SimConfig(crosstalk=0.5)


def test_training_samples_carry_their_families():
    rng = np.random.default_rng(5)
    specs = [crowded_spec(rng, {"granules": ("upper",)}) for _ in range(20)]
    codes = np.array([family_codes(s) for s in specs])
    g = list(AXES).index("granules")
    assert (codes[:, g] != AXES["granules"].index("upper")).all() and (codes >= 0).all()
    assert (family_codes(crowded_spec(rng, "legacy")) == -1).all()
