"""Acquisition sequence and a whole test on the twin: capture folder, stages, faults."""

from __future__ import annotations

import json

import numpy as np
import pytest

from device.acquire import acquire_capture, set_exposures
from device.errors import HardwareError, SampleError, TestAborted
from device.instrument import simulated_instrument
from device.runner import Stage, TestRunner
from holography.capture import read_capture


def test_capture_folder_is_complete_and_exposures_are_set(twin, tmp_path):
    lines = []
    cap = acquire_capture(twin, tmp_path / "cap", progress=lines.append)
    again = read_capture(tmp_path / "cap")
    assert [f.led for f in again.frames] == ["blue", "green", "red"]
    target = twin.profile.acquisition.target_fill
    for f in again.frames:
        raw = again.load_frame(f)
        # the bright background of each colour's frame sits near the target fill
        chan_best = np.percentile(raw, 99.5)
        level = (chan_best - again.sensor.black_level) / (again.sensor.max_code
                                                          - again.sensor.black_level)
        assert abs(level - target) < 0.15, (f.led, level)
    # LEDs differ in power, so exposures differ
    assert len({f.exposure_us for f in again.frames}) == 3
    dark = again.load_dark()
    assert abs(float(dark.mean()) - again.sensor.black_level) < 3
    assert (tmp_path / "cap" / "truth.json").exists()
    assert cap.root == again.root
    # every frame was taken with its die lit, and only one die at a time
    on = [e for e in twin.leds.events if e.event in ("on", "off")]
    assert all(a.event == "on" and b.event == "off" and a.die == b.die
               for a, b in zip(on[::2], on[1::2], strict=True))
    assert twin.leds.lit() is None


def test_sample_removed_mid_test_stops_it_and_writes_nothing(twin, tmp_path):
    twin.chamber.schedule("remove", after_reads=3)
    with pytest.raises(SampleError, match="insert a new sample"):
        acquire_capture(twin, tmp_path / "cap")
    assert not (tmp_path / "cap").exists()
    assert not list(tmp_path.iterdir())  # no half capture left behind
    assert twin.leds.lit() is None


def test_open_door_and_empty_chamber_are_refused(twin, tmp_path):
    twin.chamber.open_door()
    with pytest.raises(SampleError, match="door is open"):
        acquire_capture(twin, tmp_path / "a")
    twin.chamber.close_door()
    twin.chamber.remove()
    with pytest.raises(SampleError, match="no sample"):
        acquire_capture(twin, tmp_path / "b")


def test_a_dead_die_is_skipped_for_metering_but_a_dead_colour_stops(small_profile, profile_dict):
    from device.profiles import parse_profile

    d = profile_dict(name="hd1-imx477-4die", sensor={"width": 128, "height": 128})
    prof = parse_profile(d)
    instr = simulated_instrument(prof, dead_dies=["green-0"])
    instr.chamber.insert("healthy", seed=1)
    notes = []
    exp = set_exposures(instr, progress=notes.append)
    assert "green" in exp and any("green-0 gives no light" in n for n in notes)
    dead = simulated_instrument(small_profile, dead_dies=["red-0"])
    dead.chamber.insert("healthy", seed=1)
    with pytest.raises(HardwareError, match="LED red gives no light"):
        set_exposures(dead)


def test_transient_camera_errors_are_retried(small_profile, tmp_path):
    instr = simulated_instrument(small_profile, camera_error_rate=0.3)
    instr.chamber.insert("healthy", seed=2)
    instr.camera.rng = np.random.default_rng(3)
    cap = acquire_capture(instr, tmp_path / "cap")
    assert len(cap.frames) == 3


def test_whole_test_is_stored_with_stage_timing(twin, tmp_path):
    runner = TestRunner(twin, root=tmp_path)
    stages = []
    out = runner.run(operator="nurse1", sample_id="S-001", patient_id="MRN42",
                     progress=lambda p: stages.append((p.stage, p.fraction)))
    assert out.state is Stage.DONE and out.stored, out.error
    assert [s for s, _ in stages][0] is Stage.CAPTURE and stages[-1] == (Stage.DONE, 1.0)
    fractions = [f for _, f in stages]
    assert fractions == sorted(fractions)
    assert set(out.timing_s) >= {"capture", "reconstruction", "detection", "classification",
                                 "storage", "total"}
    stored = runner.db.result_of(out.uid)
    assert stored == json.loads(json.dumps(out.result))
    assert stored["calibration"]["id"] == "uncalibrated-simulated"
    test = runner.db.test(out.uid)
    assert test.state == "done" and test.patient_id == "MRN42"
    assert json.loads((tmp_path / "captures").glob("*/test.json").__next__().read_text())[
        "sample_id"] == "S-001"
    assert runner.db.verify_audit() >= 4
    runner.close()


def test_failed_and_cancelled_tests_are_recorded_with_the_reason(twin, tmp_path):
    runner = TestRunner(twin, root=tmp_path)
    twin.chamber.schedule("remove", after_reads=2)
    out = runner.run(operator="n", sample_id="S-2")
    assert out.state is Stage.FAILED and "insert a new sample" in out.error
    assert runner.db.test(out.uid).state == "failed"
    twin.chamber.insert("healthy", seed=5)
    out = runner.run(operator="n", sample_id="S-3", cancelled=lambda: True)
    assert out.state is Stage.CANCELLED and "cancelled" in out.error
    assert runner.db.test(out.uid).state == "cancelled"
    assert not list((tmp_path / "captures").glob("*")) if (tmp_path / "captures").exists() else True
    runner.close()


def test_cancel_during_analysis(twin, tmp_path):
    runner = TestRunner(twin, root=tmp_path)
    seen = []

    def cancelled():
        return any(s is Stage.ANALYSIS for s in seen)

    out = runner.run(operator="n", sample_id="S-4", progress=lambda p: seen.append(p.stage),
                     cancelled=cancelled)
    assert out.state is Stage.CANCELLED
    assert runner.db.result_of(out.uid) is None
    runner.close()


def test_aborted_error_type():
    assert issubclass(TestAborted, RuntimeError)


def test_a_cancel_after_the_analysis_still_stores_the_result(twin, tmp_path):
    from device.runner import Stage

    runner = TestRunner(twin, root=tmp_path)
    late = []

    def progress(p):  # the operator presses Cancel as the last cells are refocused
        if p.message.startswith("refocused") and p.message.split()[1].split("/")[0] == \
                p.message.split()[1].split("/")[1]:
            late.append(True)

    out = runner.run(operator="n", sample_id="S-5", progress=progress, cancelled=lambda: bool(late))
    assert late
    assert out.state is Stage.DONE and out.stored
    assert runner.db.test(out.uid).state == "done"
    runner.close()
