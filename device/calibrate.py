"""Calibration on the analyzer: record what each procedure needs, run it, store the record.

The same functions serve ``holodiff calibrate`` and the serial service's
``CALibration`` subsystem. Each one checks the chamber first (flats need it
empty; the others need a sample, target or beads in it), records frames or a
capture with the instrument, runs the procedure of :mod:`calibration.procedures`,
stores the record in :class:`calibration.store.CalibrationStore` (pass or fail:
a failed calibration is kept, and blocks patient tests until repeated), and
writes the audit log.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from calibration import procedures
from calibration.store import CalibrationStore
from device.acquire import acquire_capture, set_exposures
from device.errors import SampleError
from device.home import database_path, home
from device.instrument import Instrument
from device.store import ResultsDB
from holography.capture import SensorInfo

FLAT_FRAMES = 8


def _sensor_info(instr: Instrument) -> SensorInfo:
    cam = instr.camera
    p = instr.profile.sensor
    return SensorInfo(model=p.model, pixel_pitch_um=cam.spec.pixel_pitch_um, width=p.width,
                      height=p.height, bayer=p.bayer, bit_depth=cam.spec.bit_depth,
                      black_level=int(cam.black_level))


def _store(instr: Instrument, root: Path, res: procedures.CalResult, user: str) -> dict[str, Any]:
    store = CalibrationStore(root)
    rec = store.save(res, user=user, profile=instr.profile.name,
                     window=(instr.profile.sensor.width, instr.profile.sensor.height))
    with ResultsDB(database_path(root)) as db:
        db.audit(user=user, action=f"calibration.{res.kind}", entity=f"calibration:{rec['id']}",
                 new="passed" if rec["passed"] else "failed",
                 reason="; ".join(rec["reasons"]) or None)
    return rec


def calibrate_dark_flat(instr: Instrument, *, user: str, root: Path | None = None,
                        frames: int = FLAT_FRAMES,
                        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Dark frames and a flat per LED die, on the empty chamber."""
    root = root or home()
    if not instr.chamber.door_closed():
        raise SampleError("the chamber door is open; close it and repeat the calibration")
    if instr.chamber.sample_present():
        raise SampleError("flat frames need an empty chamber; remove the sample and repeat")
    cam = instr.camera
    try:
        exposures = set_exposures(instr, progress=progress)
        cam.set_exposure(max(exposures.values()))
        instr.leds.off()
        darks = [cam.capture().data for _ in range(max(frames, 2))]
        flats, used = {}, {}
        for die in instr.profile.leds.dies:
            used[die.name] = cam.set_exposure(exposures[die.led])
            got = []
            for _ in range(max(frames, 2)):
                instr.sleep(instr.profile.leds.min_off_ms * 1e-3 + 1e-3)
                with instr.leds.lighting(die.name):
                    got.append(cam.capture().data)
            flats[die.name] = got
            if progress:
                progress(f"flat {die.name}: {len(got)} frames at {used[die.name]} us")
    finally:
        instr.leds.off()
    res = procedures.dark_flat(darks, flats, _sensor_info(instr), exposures_us=used,
                               die_leds={d.name: d.led for d in instr.profile.leds.dies})
    return _store(instr, root, res, user)


def _with_capture(instr: Instrument, root: Path, fn: Callable, progress) -> procedures.CalResult:
    """Record a capture of what is in the chamber (with the active flats) and run ``fn`` on it."""
    tmp = Path(tempfile.mkdtemp(prefix="holodiff-cal-"))
    try:
        cap = acquire_capture(instr, tmp / "capture", flats=CalibrationStore(root).flats(),
                              progress=progress)
        return fn(cap)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def calibrate_distance(instr: Instrument, *, user: str, root: Path | None = None,
                       progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Sample distance per LED by autofocus of a capture of what is in the chamber."""
    root = root or home()
    res = _with_capture(instr, root, procedures.sample_distance, progress)
    return _store(instr, root, res, user)


def calibrate_shifts(instr: Instrument, *, user: str, root: Path | None = None,
                     progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Sub-pixel shift of every LED die."""
    root = root or home()
    dist = CalibrationStore(root).active().get("distance")
    z2 = dist["values"].get("sample_distance_um") if dist and dist["passed"] else None
    res = _with_capture(instr, root, lambda cap: procedures.die_shifts(cap, sample_distance_um=z2),
                        progress)
    return _store(instr, root, res, user)


def calibrate_beads(instr: Instrument, *, user: str, diameter_um: float, root: Path | None = None,
                    progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Bead sizing against the beads' nominal diameter."""
    root = root or home()
    if not 1.0 <= diameter_um <= 50.0:
        raise ValueError(f"bead diameter {diameter_um} um is outside 1-50 um")
    res = _with_capture(instr, root, lambda cap: procedures.bead_sizing(cap, nominal_um=diameter_um),
                        progress)
    return _store(instr, root, res, user)
