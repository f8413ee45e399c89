"""``holodiff calibrate classifier`` end to end: a method comparison on a shifted physics family.

Twenty small simulated captures are made with one site's cells (:data:`SITE`: one
draw of the cell physics, the one of held-out test capture 6, a septic sample
whose neutrophils the shipped model reads as eosinophils); sixteen are the
site's method comparison
(the reference 5-part is the simulator's truth in the frame: a perfect
reference analyzer), the others are patient samples scored with and without
the calibration it fits.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from holography.sample import WBC_CLASSES, get_spec
from holography.simulate import SimConfig, simulate_capture
from inference.dataset import SEED_BASE
from inference.evaluate import sample_physics

EXE = shutil.which("holodiff") or str(Path(sys.executable).parent / "holodiff")
#: the site's cells: the physics of ``holodiff evaluate --physics random``'s capture 6
SITE = sample_physics(SEED_BASE["test"] + 100_000 + 6, "random")
N_CAL, N_TEST = 16, 4
HEADER = "capture," + ",".join(WBC_CLASSES)


def run(*args, home, stdin=None):
    env = dict(os.environ, HOLODIFF_HOME=str(home))
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=900, input=stdin)


def _truth_pct(cap: Path) -> dict[str, float]:
    n = json.loads((cap / "truth.json").read_text())["wbc_counts_in_frame"]
    tot = sum(n.values())
    return {c: 100.0 * n[c] / tot for c in WBC_CLASSES}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("site")
    home = tmp / "home"
    caps = []
    mixes = ["healthy", "eosinophilia", "septic", "lymphocytosis"]
    for i in range(N_CAL + N_TEST):
        rng = np.random.default_rng(700 + i)
        spec = replace(get_spec(mixes[i % 4], rng), wbc_per_uL=25000.0, physics=SITE,
                       clump_fraction=0.0)
        d = tmp / f"cap{i:02d}"
        simulate_capture(d, preset=mixes[i % 4], seed=700 + i, spec=spec,
                         config=SimConfig(sensor=("imx477", "imx708", "imx219")[i % 3],
                                          size=(448, 448)))
        caps.append(d)
    rows = [f"{c.name}," + ",".join(f"{v:.2f}" for v in _truth_pct(c).values())
            for c in caps[:N_CAL]]
    ref = tmp / "reference.csv"
    ref.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    for uid, role in (("eng1", "engineer"), ("nurse1", "nurse")):
        r = run("users", "add", uid, "--role", role, "--pin", "2468", home=home)
        assert r.returncode == 0, r.stderr
    r = run("calibrate", "classifier", "--reference", ref, "--user", "eng1", "--pin-stdin",
            "--json", home=home, stdin="2468\n")
    return tmp, home, caps, ref, r


def _mae(res: dict, cap: Path) -> float:
    t = _truth_pct(cap)
    return float(np.mean([abs(res["differential_5part"][c] - t[c]) for c in WBC_CLASSES]))


def test_the_calibration_is_fitted_cross_validated_stored_and_audited(site):
    tmp, home, caps, ref, r = site
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    v = rec["values"]
    assert rec["kind"] == "classifier" and rec["passed"] and rec["user"] == "eng1"
    assert v["format"] == "holodiff-sitecal/1" and v["n_captures"] == N_CAL
    cv = v["cross_validated"]
    assert cv["with"]["mae_5part"] < cv["without"]["mae_5part"]
    lst = run("calibrate", "list", home=home)
    assert rec["id"] in lst.stdout and "ACTIVE" in lst.stdout
    shown = json.loads(run("calibrate", "show", rec["id"], home=home).stdout)
    assert shown["values"]["map"] == v["map"]
    audit = run("results", "audit", home=home).stdout
    assert "calibration.classifier" in audit


def test_patient_samples_read_closer_to_the_truth_with_it(site):
    tmp, home, caps, ref, r = site
    rec = json.loads(r.stdout)
    test = caps[N_CAL:]
    on = run("analyze", *test, "--json", "--jobs", "1", home=home)
    off = run("analyze", *test, "--json", "--jobs", "1", "--no-site-calibration", home=home)
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    res_on = [json.loads(line) for line in on.stdout.splitlines()]
    res_off = [json.loads(line) for line in off.stdout.splitlines()]
    assert all(x["classifier_calibration"]["id"] == rec["id"] for x in res_on)
    assert all(x["classifier_calibration"] is None for x in res_off)
    err_on = np.mean([_mae(x, c) for x, c in zip(res_on, test, strict=True)])
    err_off = np.mean([_mae(x, c) for x, c in zip(res_off, test, strict=True)])
    assert err_on < err_off


def test_a_nurse_a_wrong_pin_or_a_bad_file_stores_nothing(site):
    tmp, home, caps, ref, r = site
    before = json.loads(run("calibrate", "list", "--json", home=home).stdout)
    r1 = run("calibrate", "classifier", "--reference", ref, "--user", "nurse1", "--pin-stdin",
             home=home, stdin="2468\n")
    assert r1.returncode == 2 and "may not calibrate the classifier" in r1.stderr
    r2 = run("calibrate", "classifier", "--reference", ref, "--user", "eng1", "--pin-stdin",
             home=home, stdin="0000\n")
    assert r2.returncode == 2 and "wrong PIN" in r2.stderr
    bad = tmp / "bad.csv"
    lines = ref.read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",oops"
    bad.write_text("\n".join(lines) + "\n")
    r3 = run("calibrate", "classifier", "--reference", bad, "--user", "eng1", "--pin-stdin",
             home=home, stdin="2468\n")
    assert r3.returncode == 2 and "line 4: basophil 'oops' is not a number" in r3.stderr
    assert len(r3.stderr.strip().splitlines()) == 1
    missing = tmp / "missing.csv"
    missing.write_text(ref.read_text().replace("cap03", "cap99"))
    r4 = run("calibrate", "classifier", "--reference", missing, "--user", "eng1", "--pin-stdin",
             home=home, stdin="2468\n")
    assert r4.returncode == 2 and "line 5: capture" in r4.stderr and "cap99" in r4.stderr
    assert json.loads(run("calibrate", "list", "--json", home=home).stdout) == before
    assert "calibration.classifier.refused" in run("results", "audit", home=home).stdout


def test_a_site_calibration_can_be_withdrawn(site, tmp_path):
    tmp, home, caps, ref, r = site
    rec = json.loads(r.stdout)
    home2 = tmp_path / "home"
    shutil.copytree(home, home2)
    nurse = run("calibrate", "classifier", "--clear", "--user", "nurse1", "--pin-stdin",
                home=home2, stdin="2468\n")
    assert nurse.returncode == 2 and "may not change the site calibration" in nurse.stderr
    out = run("calibrate", "classifier", "--clear", "--reason", "new reagent lot", "--user",
              "eng1", "--pin-stdin", "--json", home=home2, stdin="2468\n")
    assert out.returncode == 0, out.stderr
    cleared = json.loads(out.stdout)
    assert cleared["values"]["cleared"] and cleared["values"]["replaces"] == rec["id"]
    res = json.loads(run("analyze", caps[-1], "--json", home=home2).stdout)
    assert res["classifier_calibration"] is None and "SITE_CALIBRATION_STALE" not in res["flags"]
    assert "CLEARED" in run("calibrate", "list", home=home2).stdout
    assert "calibration.classifier.cleared" in run("results", "audit", home=home2).stdout


def test_a_calibration_of_another_model_never_applies(site, tmp_path):
    tmp, home, caps, ref, r = site
    rec = json.loads(r.stdout)
    stale_home = tmp_path / "home"
    shutil.copytree(home, stale_home)
    f = stale_home / "calibration" / "records" / f"{rec['id']}.json"
    data = json.loads(f.read_text())
    data["values"]["model"]["sha256"] = "0" * 64
    f.write_text(json.dumps(data))
    out = run("analyze", caps[-1], "--json", home=stale_home)
    res = json.loads(out.stdout)
    assert res["classifier_calibration"] is None
    assert "SITE_CALIBRATION_STALE" in res["flags"]
    assert "another model" in res["flag_details"]["SITE_CALIBRATION_STALE"]
