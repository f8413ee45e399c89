"""Calibration procedures on the simulated analyzer, the calibration store, and the lock-out of
patient tests by a failed, expired or missing calibration."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from calibration.store import CalibrationError, CalibrationStore
from device import calibrate
from device.errors import SampleError
from device.instrument import simulated_instrument
from device.profiles import parse_profile
from device.runner import Stage, TestRunner
from holography.capture import read_capture

EXE = shutil.which("holodiff") or str(Path(sys.executable).parent / "holodiff")


@pytest.fixture
def twin512(profile_dict):
    """A 512x512 window: enough beads (about 40) for bead sizing."""
    instr = simulated_instrument(parse_profile(profile_dict(sensor={"width": 512, "height": 512})))
    yield instr
    instr.close()


def test_dark_flat_needs_an_empty_closed_chamber_and_measures_noise(twin512, tmp_path):
    twin512.chamber.insert("healthy", seed=1)
    with pytest.raises(SampleError, match="empty chamber"):
        calibrate.calibrate_dark_flat(twin512, user="eng", root=tmp_path)
    twin512.chamber.remove()
    twin512.chamber.open_door()
    with pytest.raises(SampleError, match="door is open"):
        calibrate.calibrate_dark_flat(twin512, user="eng", root=tmp_path)
    twin512.chamber.close_door()
    rec = calibrate.calibrate_dark_flat(twin512, user="eng", root=tmp_path)
    assert rec["passed"], rec["reasons"]
    v = rec["values"]
    assert abs(v["dark"]["mean_dn"] - 256) < 2 and 1.0 < v["dark"]["temporal_noise_dn"] < 3.0
    for die, f in v["flats"].items():
        assert 0.45 < f["level"] < 0.65, die
        assert 0.8 < f["prnu_pct"] < 2.0, die  # the twin's sensor has 1 % PRNU
    store = CalibrationStore(tmp_path)
    flats = store.flats()
    assert set(flats) == {"blue", "green", "red"} and flats["green"].shape == (512, 512)


def test_distance_beads_and_a_wrong_bead_size(twin512, tmp_path):
    twin512.chamber.insert("healthy", seed=2)
    rec = calibrate.calibrate_distance(twin512, user="eng", root=tmp_path)
    assert rec["passed"], rec["reasons"]
    true_z2 = 600.0 + 500.0 / 1.52
    assert abs(rec["values"]["sample_distance_um"] - true_z2) < 10
    assert set(rec["values"]["per_led_um"]) == {"blue", "green", "red"}
    twin512.chamber.insert("beads", seed=3)
    rec = calibrate.calibrate_beads(twin512, user="eng", root=tmp_path, diameter_um=8.0)
    assert rec["passed"], rec["reasons"]
    assert rec["values"]["beads"] >= 30 and abs(rec["values"]["bias_pct"]) < 6
    rec = calibrate.calibrate_beads(twin512, user="eng", root=tmp_path, diameter_um=10.0)
    assert not rec["passed"] and "bias" in rec["reasons"][0]


def test_die_shifts_against_the_geometry(profile_dict, tmp_path):
    instr = simulated_instrument(parse_profile(profile_dict(
        name="hd1-imx477-4die", sensor={"width": 384, "height": 384})))
    instr.chamber.insert("healthy", seed=4)
    rec = calibrate.calibrate_shifts(instr, user="eng", root=tmp_path)
    assert rec["passed"], rec["reasons"]
    for led, dies in rec["values"]["per_led"].items():
        assert len(dies) == 4
        for d in dies[1:]:
            assert not d["from_geometry"] and d["residual_px"] < 0.3, (led, d)
    one_die = simulated_instrument(parse_profile(profile_dict(sensor={"width": 256, "height": 256})))
    one_die.chamber.insert("healthy", seed=4)
    rec = calibrate.calibrate_shifts(one_die, user="eng", root=tmp_path)
    assert not rec["passed"] and "one die per colour" in rec["reasons"][0]


def _calibrated(twin, root):
    twin.chamber.remove()
    calibrate.calibrate_dark_flat(twin, user="eng", root=root)
    twin.chamber.insert("healthy", seed=5)
    calibrate.calibrate_distance(twin, user="eng", root=root)
    twin.chamber.insert("beads", seed=3)
    calibrate.calibrate_beads(twin, user="eng", root=root, diameter_um=8.0)


def test_status_blocks_patient_tests_until_calibrated(twin512, tmp_path):
    store = CalibrationStore(tmp_path)
    w = (512, 512)
    assert store.status(window=w, simulated=True).ok  # the bare simulated analyzer
    st = store.status(window=w, simulated=False)
    assert not st.ok and "no dark/flat calibration" in st.message and "engineer" in st.message
    _calibrated(twin512, tmp_path)
    st = store.status(window=w, simulated=False)
    assert st.ok and st.calibration_id.startswith("cal-")
    later = datetime.now(UTC) + timedelta(days=8)
    st = store.status(window=w, simulated=False, now=later)
    assert not st.ok and "dark/flat calibration expired" in st.message
    assert not store.status(window=(256, 256), simulated=False).ok  # another sensor window
    # a failed calibration blocks, on the twin too, until it is repeated
    twin512.chamber.insert("beads", seed=3)
    calibrate.calibrate_beads(twin512, user="eng", root=tmp_path, diameter_um=12.0)
    st = store.status(window=w, simulated=True)
    assert not st.ok and "beads" in st.message and "failed" in st.message
    runner = TestRunner(twin512, root=tmp_path)
    twin512.chamber.insert("healthy", seed=6)
    with pytest.raises(CalibrationError, match="failed: patient tests are blocked"):
        runner.run(operator="n", sample_id="S-1")
    assert twin512.camera.frames_read > 0  # (frames of the calibrations only)
    n = twin512.camera.frames_read
    with pytest.raises(CalibrationError):
        runner.run(operator="n", sample_id="S-2")
    assert twin512.camera.frames_read == n  # the refused test did not touch the sample
    twin512.chamber.insert("beads", seed=3)
    calibrate.calibrate_beads(twin512, user="eng", root=tmp_path, diameter_um=8.0)
    twin512.chamber.insert("healthy", seed=6)
    out = runner.run(operator="n", sample_id="S-3")
    assert out.state is Stage.DONE
    cal_id = store.status(window=w, simulated=True).calibration_id
    assert out.result["calibration"]["id"] == cal_id
    cap = read_capture(out.capture_path)
    assert set(cap.flats) == {"blue", "green", "red"}  # the calibration's flats went in
    dist = store.active()["distance"]["values"]["sample_distance_um"]
    assert cap.geometry.sample_distance_um == pytest.approx(dist, abs=0.01)
    with runner.db as db:
        acts = [r["action"] for r in db.audit_rows()]
    assert "test.refused" in acts and "calibration.beads" in acts
    runner.close()


def test_records_are_never_half_written(twin512, tmp_path):
    store = CalibrationStore(tmp_path)
    _calibrated(twin512, tmp_path)
    (store.dir / ".beads-x.json.partial").write_text("{")
    (store.dir / "junk.json").write_text("not json")
    assert len(store.records()) == 3
    store.remove_partial()
    assert not list(store.dir.glob(".*"))
    rec = store.records()[0]
    assert np.load(store.dir / rec["id"] / "dark.npy").dtype == np.uint16


def test_calibrate_cli_on_the_simulated_analyzer(tmp_path, profile_dict):
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps(profile_dict(sensor={"width": 256, "height": 256})))
    env = dict(os.environ, HOLODIFF_HOME=str(tmp_path / "home"))

    def run(*a):
        return subprocess.run([EXE, "calibrate", *a], capture_output=True, text=True, env=env,
                              timeout=300)

    r = run("dark-flat", "--simulated", "--profile", str(prof), "--user", "eng", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["passed"], r.stderr
    r = run("beads", "--simulated", "--profile", str(prof), "--user", "eng", "--diameter", "15")
    assert r.returncode == 2 and "FAIL" in r.stdout
    r = run("status", "--simulated", "--profile", str(prof))
    assert r.returncode == 2 and "BLOCKED" in r.stdout
    r = run("list", "--json")
    assert [x["kind"] for x in json.loads(r.stdout)] == ["dark_flat", "beads"]
