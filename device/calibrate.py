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


#: roles that may fit and activate a site calibration of the classifier
SITE_CALIBRATION_ROLES = ("engineer", "service")


def _require_site_role(user: str, role: str, root: Path, doing: str) -> None:
    """Refuse (audited) an operator whose role may not touch the site calibration."""
    if role not in SITE_CALIBRATION_ROLES:
        with ResultsDB(database_path(root)) as db:
            db.audit(user=user, action="calibration.classifier.refused",
                     entity="calibration:classifier", reason=f"role {role}")
        raise PermissionError(f"operator {user} ({role}) may not {doing}; an engineer or "
                              "service operator must")


def clear_classifier_calibration(*, user: str, role: str, root: Path | None = None,
                                 reason: str = "") -> dict[str, Any]:
    """Withdraw the site calibration: analyses run on the model alone until the next one.

    Stored as an accepted ``classifier`` record marked ``cleared`` (records are never
    deleted), and audited.
    """
    from calibration.procedures import CalResult

    root = root or home()
    _require_site_role(user, role, root, "change the site calibration")
    store = CalibrationStore(root)
    old = store.classifier()
    res = CalResult(kind="classifier", passed=True, values={
        "cleared": True, "replaces": old["id"] if old else None, "reason": reason})
    rec = store.save(res, user=user, profile="site-calibration", window=(0, 0))
    with ResultsDB(database_path(root)) as db:
        db.audit(user=user, action="calibration.classifier.cleared", entity=f"calibration:{rec['id']}",
                 old=old["id"] if old else None, new="cleared", reason=reason or None)
    return rec


def calibrate_classifier(reference: str | Path, *, user: str, role: str, model: str | Path,
                         root: Path | None = None,
                         progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Site calibration of the classifier from a method comparison (INTERFACES.md section 7).

    Analyses every capture of the reference file with ``model``, fits the map of
    :mod:`inference.sitecal`, cross-validates it by capture, and stores a
    ``classifier`` record: accepted (active) when it lowers the cross-validated
    5-part error, else kept as rejected with the reason. ``role`` is the
    authenticated operator's (engineer or service). A bad reference file or
    capture raises with its row before anything is stored.
    """
    import numpy as np

    from holography.capture import read_capture
    from holography.errors import HoloDiffError
    from holography.sample import WBC_CLASSES
    from inference.analyze import score_capture
    from inference.classify import Classifier
    from inference.result import call_cells, summarise
    from inference.sitecal import (
        FORMAT,
        SiteCalibrationError,
        choose_ridge,
        cross_validate,
        fit,
        read_reference,
    )

    root = root or home()
    say = progress or (lambda m: None)
    _require_site_role(user, role, root, "calibrate the classifier")
    rows = read_reference(reference)
    caps = []
    for r in rows:
        try:
            caps.append(read_capture(r.capture))
        except (HoloDiffError, OSError) as exc:
            raise SiteCalibrationError(f"{reference}: line {r.line}: capture {r.capture}: {exc}") from None
    clf = Classifier(model)
    scored = []
    for i, (r, cap) in enumerate(zip(rows, caps, strict=True)):
        try:
            sc = score_capture(cap, classifier=clf)
        except HoloDiffError as exc:
            raise SiteCalibrationError(f"{reference}: line {r.line}: capture {r.capture} cannot be "
                                       f"analysed ({exc})") from None
        if sum(not c.faint for c in sc.detections.candidates) < 20:
            raise SiteCalibrationError(f"{reference}: line {r.line}: capture {r.capture} holds "
                                       "fewer than 20 cells; use another sample")
        scored.append(sc)
        say(f"analysed {i + 1}/{len(rows)}: {r.capture.name}")

    def result_of(i: int, probs) -> dict:
        sc = scored[i]
        calls = call_cells(sc.detections.candidates, probs, sc.volumes, clf.classes,
                           chamber_eq_um=sc.chamber_eq_um, train_priors=clf.train_priors)
        cap, det = sc.capture, sc.detections
        return summarise(calls, imaged_area_mm2=det.imaged_area_mm2,
                         chamber_height_um=cap.chamber.height_um, dilution=cap.chamber.dilution,
                         qc_flags=[], frame=(*cap.shape, det.pixel_um))

    probs = [sc.probs for sc in scored]
    refs = [r.differential for r in rows]
    say("cross-validating the calibration by capture")
    cv = cross_validate(probs, refs, lambda i, p: result_of(i, p)["differential_5part"],
                        clf.classes, clf.train_priors)
    say("fitting on every capture")
    r5 = np.array([[d[c] / 100.0 for c in WBC_CLASSES] for d in refs])
    ridge = choose_ridge(probs, refs, lambda i, p: result_of(i, p)["differential_5part"],
                         clf.classes, clf.train_priors)
    smap, stats = fit(probs, r5, clf.classes, clf.train_priors, ridge=ridge)
    stats["ridge"] = ridge
    # WBC/uL and MDW against the references that carry them, without and with the map
    extra: dict[str, Any] = {}
    for key, ref_key, get in (("wbc_per_uL", "wbc_per_uL", lambda res: res["wbc_per_uL"]),
                              ("mdw_sd_fl", "mdw_sd_fl", lambda res: res["mdw"]["sd_fl"])):
        pairs = [(i, getattr(rows[i], ref_key)) for i in range(len(rows))
                 if getattr(rows[i], ref_key) is not None]
        if not pairs:
            continue
        out = {}
        for label, fn in (("without", lambda p: p), ("with", smap.apply)):
            errs = [abs(v / ref - 1.0) * 100 for i, ref in pairs
                    if (v := get(result_of(i, fn(probs[i])))) is not None]
            out[label] = round(float(np.median(errs)), 2) if errs else None
        extra[key] = {"captures": len(pairs), "median_relative_error_pct": out,
                      "in_sample": True}
    before, after = cv["without"]["mae_5part"], cv["with"]["mae_5part"]
    improved = after < before
    from calibration.procedures import CalResult

    values = {
        "format": FORMAT,
        "model": {"name": clf.info.name, "version": clf.info.version, "sha256": clf.info.sha256},
        "reference": str(Path(reference).resolve()),
        "captures": [str(r.capture) for r in rows], "n_captures": len(rows),
        "map": smap.to_values(), "fit": stats,
        "cross_validated": {"folds": cv["folds"], "without": cv["without"], "with": cv["with"],
                            "ridges": cv["ridges"]},
        "per_capture": cv["per_capture"], **extra,
    }
    res = CalResult(kind="classifier", values=values, passed=improved)
    if not improved:
        res.reasons.append(f"the calibration does not lower the cross-validated 5-part error "
                           f"({before:.2f} -> {after:.2f} points mean absolute error): kept as "
                           "rejected and not applied; the model stays as it is")
    cap0 = caps[0]
    store = CalibrationStore(root)
    rec = store.save(res, user=user, profile=f"captures:{cap0.sensor.model}",
                     window=(cap0.shape[1], cap0.shape[0]))
    with ResultsDB(database_path(root)) as db:
        db.audit(user=user, action="calibration.classifier", entity=f"calibration:{rec['id']}",
                 new="active" if improved else "rejected",
                 reason=f"5-part MAE {before:.2f} -> {after:.2f} points (cross-validated)")
    return rec
