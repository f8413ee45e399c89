"""Analyse one capture end to end: reconstruction, detection, classification, result.

:func:`analyze_capture` returns the ``holodiff-result/1`` object of
INTERFACES.md section 2 (plus the additive keys documented in README:
``differential_5part_ci95``, ``differential_3part_ci95``, ``mdw.sd_ci95_fl``,
``flag_details``, ``under_counted``, ``enhancement``, and per cell ``phase_rad`` and, with
``phase``, ``dry_mass_pg``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from holography.capture import Capture, read_capture
from holography.parallel import threads
from holography.reconstruct import ReconOptions, reconstruct_capture
from holography.sample import N_MEDIUM
from inference.classify import DEFAULT_MODEL, Classifier
from inference.detect import CROP_PIXEL_UM, RETRIEVAL_ITERATIONS, detect_in_capture, slot_of
from inference.result import (
    FLAG_TEXT,
    FORMAT,
    call_cells,
    cell_records,
    method_error,
    summarise,
    under_counted,
    under_counted_text,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class AnalysisOptions:
    """Options of :func:`analyze_capture`."""

    model: str | Path = DEFAULT_MODEL
    cells: bool = False
    recon: ReconOptions | None = None
    calibration_id: str = "capture-metadata"
    gallery: str | Path | None = None  # write review thumbnails here (``.npz``)
    #: per-cell fields by pixel super-resolution and phase retrieval (None: where the model
    #: was trained on them, or for ``phase``); the classifier always gets the crops it was
    #: trained on
    enhance: bool | None = None
    #: quantitative phase of each cell (``dry_mass_pg`` in ``cells``) from the retrieved fields
    phase: bool = False
    psr: bool = True  # pixel super-resolution of LEDs with several dies
    retrieval_iterations: int = RETRIEVAL_ITERATIONS  # per-cell phase retrieval (0: none)
    #: the active site calibration record of kind ``classifier`` (INTERFACES.md section 7;
    #: :meth:`calibration.store.CalibrationStore.classifier`), or None
    site_calibration: dict[str, Any] | None = None


@dataclass(slots=True)
class Scored:
    """A capture reconstructed, its candidates detected and scored by the network."""

    capture: Capture
    recon: Any
    detections: Any
    crops: np.ndarray
    probs: np.ndarray
    volumes: np.ndarray
    classifier: Classifier
    timing: dict[str, float]

    @property
    def chamber_eq_um(self) -> float:
        """The chamber's height in air-equivalent micrometres (candidates deeper are dust)."""
        return self.capture.chamber.height_um / N_MEDIUM


def score_capture(capture: Capture | str | Path, *, options: AnalysisOptions | None = None,
                  classifier: Classifier | None = None, progress=None) -> Scored:
    """Reconstruct, detect and run the network on one capture (no calling, no calibration)."""
    opt = options or AnalysisOptions()
    say = progress or (lambda msg: None)
    cap = capture if isinstance(capture, Capture) else read_capture(capture)
    clf = classifier or Classifier(opt.model, threads=threads())
    say("reconstructing")
    t = time.perf_counter()
    wants = clf.enhanced_crops
    enhance = (wants or opt.phase) if opt.enhance is None else opt.enhance
    recon = opt.recon or ReconOptions()
    if enhance != recon.keep_dies:  # keep the hologram frames only where they are used
        recon = replace(recon, keep_dies=enhance)
    rec = reconstruct_capture(cap, recon)
    t_rec = time.perf_counter() - t
    say(f"detecting cells (sample at {rec.plane.distance_um:.0f} um)" if rec.plane else
        "detecting cells")
    t = time.perf_counter()
    det = detect_in_capture(
        cap, rec, progress=lambda k, n: say(f"refocused {k}/{n} candidates")
        if k == n or k % 1024 < 64 else None, psr=opt.psr,
        retrieval_iterations=opt.retrieval_iterations,
        enhance=enhance, keep_plain=enhance and not wants, in_place=True)
    crops = det.plain_crops if det.plain_crops is not None else det.crops
    t_det = time.perf_counter() - t
    t = time.perf_counter()
    probs, vols = clf.classify_candidates(det.candidates, crops)
    return Scored(capture=cap, recon=rec, detections=det, crops=crops, probs=probs, volumes=vols,
                  classifier=clf, timing={"reconstruction": t_rec, "detection": t_det,
                                          "classification": time.perf_counter() - t})


def site_calibration_for(record: dict[str, Any] | None, clf: Classifier):
    """``(map or None, result key, stale)`` of a site calibration record for model ``clf``.

    A record fitted for another model (its sha256) never applies: ``stale`` is
    then True and the result carries SITE_CALIBRATION_STALE.
    """
    from inference.sitecal import SiteMap

    if not record:
        return None, None, False
    values = record.get("values", {})
    if values.get("model", {}).get("sha256") != clf.info.sha256:
        return None, None, True
    smap = SiteMap.from_values(values, len(clf.classes))
    return smap, {"id": record["id"], "captures": int(values.get("n_captures", 0)),
                  "fitted": record.get("created")}, False


def analyze_capture(capture: Capture | str | Path, *, options: AnalysisOptions | None = None,
                    classifier: Classifier | None = None, progress=None) -> dict[str, Any]:
    """The analysis result of one capture folder.

    Raises
    ------
    CaptureError
        The capture is unreadable or invalid (nothing is analysed).
    ModelError
        The classifier model is missing or broken.
    """
    opt = options or AnalysisOptions()
    t0 = time.perf_counter()
    sc = score_capture(capture, options=opt, classifier=classifier, progress=progress)
    cap, rec, det, crops, clf = sc.capture, sc.recon, sc.detections, sc.crops, sc.classifier
    t = time.perf_counter()
    smap, cal_key, stale = site_calibration_for(opt.site_calibration, clf)
    probs = smap.apply(sc.probs) if smap is not None else sc.probs
    calls = call_cells(det.candidates, probs, sc.volumes, clf.classes, chamber_eq_um=sc.chamber_eq_um,
                       train_priors=clf.train_priors)
    t_cls = sc.timing["classification"] + time.perf_counter() - t
    t_rec, t_det = sc.timing["reconstruction"], sc.timing["detection"]
    summary = summarise(calls, imaged_area_mm2=det.imaged_area_mm2,
                        chamber_height_um=cap.chamber.height_um, dilution=cap.chamber.dilution,
                        qc_flags=rec.flags + (["SITE_CALIBRATION_STALE"] if stale else []),
                        frame=(*cap.shape, det.pixel_um),
                        under=under_counted(clf.card), method=method_error(clf.card))
    details = {code: rec.flag_details.get(code, FLAG_TEXT.get(code, "")) for code in summary["flags"]}
    if "CONFIRM_DIFF" in details:
        details["CONFIRM_DIFF"] = under_counted_text(summary["under_counted"])
    plane = rec.plane
    result: dict[str, Any] = {
        "format": FORMAT,
        "capture": str(cap.root),
        "model": {"name": clf.info.name, "version": clf.info.version, "sha256": clf.info.sha256},
        "calibration": {"id": opt.calibration_id,
                        "sample_distance_um": round(plane.distance_um, 1)
                        if plane and math.isfinite(plane.distance_um) else None},
    }
    result.update(summary)
    result["classifier_calibration"] = cal_key
    result["flag_details"] = details
    result["enhancement"] = det.enhancement
    result["timing_s"] = {"total": round(time.perf_counter() - t0, 2),
                          "reconstruction": round(t_rec, 2), "detection": round(t_det, 2),
                          "classification": round(t_cls, 2)}
    if opt.cells:
        result["cells"] = cell_records(calls)
        if len(det.candidates):
            for rec, ph, c in zip(result["cells"], peak_phase(crops), det.candidates,
                                  strict=True):
                rec["phase_rad"] = None if c.faint else round(float(ph), 3)
            slot_wl = {slot_of(cap.wavelength_nm(led)): cap.wavelength_nm(led) for led in cap.leds}
            slot_wl = {s: w for s, w in slot_wl.items() if s is not None and det.slots_present[s]}
            if det.enhancement and slot_wl:
                # quantitative phase only from retrieved fields (the plain field's twin image
                # biases the integral; measured in tests/benchmarks/bench_psr.py)
                for rec, m, c in zip(result["cells"], dry_mass_pg(det.crops, slot_wl),
                                     det.candidates, strict=True):
                    rec["dry_mass_pg"] = None if c.faint else round(float(m), 1)
    if opt.gallery is not None and len(det.candidates):
        save_gallery(opt.gallery, crops, calls)
    return result


def _slot_field(crops: np.ndarray) -> np.ndarray:
    """The complex field of the first lit wavelength slot (green first), ``(N, S, S)``."""
    for slot in (1, 0, 2):
        re, im = crops[:, 2 * slot], crops[:, 2 * slot + 1]
        if np.any(re) or np.any(im):
            return (1.0 + re) + 1j * im
    return np.ones(crops[:, 0].shape, np.complex64)


def peak_phase(crops: np.ndarray, radius_px: float = 4.0) -> np.ndarray:
    """Mean phase (rad) of each crop's central disk, ``(N,)``.

    The cell's optical thickness, for the scattergram (size against phase).
    """
    u = _slot_field(crops)
    n = u.shape[-1]
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    disk = (yy ** 2 + xx ** 2) <= radius_px ** 2
    return np.angle(u[:, disk]).mean(axis=1)


#: specific refraction increment of cell protein (um^3/pg = mL/g): 0.18-0.21 mL/g for most
#: cellular proteins (Zangle & Teitell, "Live-cell mass profiling", Nat. Methods 11:1221, 2014;
#: Barer, Nature 172:1097, 1953)
REFRACTION_INCREMENT_UM3_PER_PG = 0.19


def optical_path_um(crops: np.ndarray, wavelengths_nm: dict[int, float]) -> np.ndarray:
    """Optical path difference (um) of each crop pixel, ``(N, S, S)``, unwrapped.

    A white cell's optical path (up to ~0.5 um) exceeds half a wavelength, so
    its phase wraps. Two wavelength slots give the phase at the synthetic
    wavelength ``L = l1 l2 / |l1 - l2|`` (3-4 um: no wrapping for cells), which
    picks the whole number of waves of the shorter wavelength's phase
    (two-wavelength unwrapping: Gass, Dakoff & Kim, Opt. Lett. 28(13):1141, 2003).
    With one slot the wrapped phase is used.

    ``wavelengths_nm`` maps lit slots (0 blue, 1 green, 2 red) to their wavelength.
    """
    lit = [s for s in (1, 2, 0) if s in wavelengths_nm]
    if not lit:
        raise ValueError("no lit wavelength slot")
    s1 = lit[0]
    l1 = wavelengths_nm[s1] * 1e-3
    phi1 = np.angle((1.0 + crops[:, 2 * s1]) + 1j * crops[:, 2 * s1 + 1])
    if len(lit) == 1:
        return phi1 * l1 / (2 * np.pi)
    s2 = max(lit[1:], key=lambda s: abs(wavelengths_nm[s] - wavelengths_nm[s1]))
    l2 = wavelengths_nm[s2] * 1e-3
    phi2 = np.angle((1.0 + crops[:, 2 * s2]) + 1j * crops[:, 2 * s2 + 1])
    synth = l1 * l2 / abs(l2 - l1)
    # phi1 - phi2 = 2 pi OPD (1/l1 - 1/l2) = 2 pi OPD sign / synth
    sign = 1.0 if l2 > l1 else -1.0
    opd_synth = np.angle(np.exp(1j * (phi1 - phi2))) * synth / (2 * np.pi) * sign
    k = np.round((opd_synth / l1 * 2 * np.pi - phi1) / (2 * np.pi))
    return (phi1 + 2 * np.pi * k) * l1 / (2 * np.pi)


def dry_mass_pg(crops: np.ndarray, wavelengths_nm: dict[int, float],
                radius_um: float = 7.0) -> np.ndarray:
    """Dry mass (pg) of each crop's cell: the integrated optical path over a central disk.

    ``m = (1 / alpha) sum OPD dA`` (:func:`optical_path_um`) with ``alpha`` =
    :data:`REFRACTION_INCREMENT_UM3_PER_PG`.
    """
    opd = optical_path_um(crops, wavelengths_nm)
    n = opd.shape[-1]
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    disk = np.hypot(yy, xx) * CROP_PIXEL_UM <= radius_um
    return opd[:, disk].sum(axis=1) * CROP_PIXEL_UM ** 2 / REFRACTION_INCREMENT_UM3_PER_PG


def save_gallery(path: str | Path, crops: np.ndarray, calls, per_class: int = 12) -> Path:
    """Amplitude thumbnails of up to ``per_class`` confident cells per class, for review.

    Writes ``path`` (``.npz``: ``images (N, S, S) float16``, ``classes``, ``confidence``).
    """
    u = _slot_field(crops)
    order = np.argsort([-c.confidence for c in calls])
    keep: list[int] = []
    seen: dict[str, int] = {}
    for i in order:
        c = calls[i]
        if c.cls is None or seen.get(c.cls, 0) >= per_class:
            continue
        seen[c.cls] = seen.get(c.cls, 0) + 1
        keep.append(int(i))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb") as fh:
        np.savez(fh, images=np.abs(u[keep]).astype(np.float16),
                 classes=np.array([calls[i].cls for i in keep]),
                 confidence=np.array([calls[i].confidence for i in keep], np.float32))
    tmp.replace(path)
    return path
