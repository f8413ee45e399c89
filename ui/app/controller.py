"""What the touchscreen does, without Qt: log-in, sample IDs, QC lock-out, tests, exports.

The screens (:mod:`ui.app.screens`) only show and ask; every decision is
here, so it is tested like any other code and the same rules hold for
whoever drives the analyzer.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from calibration.store import CalibrationStore
from device import lis
from device.errors import LoginError
from device.home import database_path, home
from device.instrument import Instrument
from device.models import ModelSlots
from device.runner import TestRunner
from device.store import ResultsDB
from holography.sample import WBC_CLASSES
from inference.result import MDW_HIGH_CV_PCT

#: operators are logged out after this long without a touch
IDLE_LOGOUT_S = 300
#: the control material: lot, assigned values (WBC /uL, %), the systematic allowance of the lot
#: sheet, and the twin's preset that stands for the vial. A run passes when it counted at least
#: ``min_cells`` white cells and each value is within the allowance plus three standard errors of
#: its own count (Poisson for the WBC, binomial for the percentages).
CONTROL = {"lot": "HD-CTRL-N 2026-11", "preset": "healthy", "seed": 777,
           "wbc_per_uL": 7000.0, "neutrophil": 58.0, "lymphocyte": 30.0,
           "allow_wbc_rel": 0.15, "allow_pct": 8.0, "min_cells": 100}
QC_VALID_H = 24
#: reference intervals shown beside a result: the LIS export's (device.lis.REFERENCE, adults,
#: Dacie and Lewis 12th ed.) in the screen's units, and the MDW_HIGH limit
REFERENCE = {"wbc_per_uL": tuple(1000.0 * v for v in lis.REFERENCE["wbc"]),
             **{c: lis.REFERENCE[f"{c}_pct"] for c in WBC_CLASSES},
             "mdw_cv_pct": (0.0, MDW_HIGH_CV_PCT)}
#: what each QC flag means to a nurse, and what to do next
FLAG_ADVICE = {
    "EMPTY_CHAMBER": "No cells were found. Check the sample was loaded, then repeat with a new sample.",
    "LOW_COUNT": "Too few cells counted. Repeat with a new sample; if it stays low, send a tube to "
                 "the laboratory.",
    "SATURATED": "The image was over-exposed. Repeat the test; if it happens again, call service.",
    "DARK_FRAME": "A light source failed. Do not use this result; call service.",
    "OUT_OF_FOCUS": "The image was out of focus. Re-seat the sample and repeat the test.",
    "CLUMPS": "Many cells were clumped. Mix the tube gently and repeat with a new sample.",
    "DEBRIS": "The sample holds much debris. Repeat with a fresh sample; if it persists, send a "
              "tube to the laboratory.",
    "MDW_HIGH": "Monocytes are unusually varied in size (sepsis screen positive). Tell the doctor "
                "now.",
    "LOW_CONFIDENCE": "Many cells could not be classified. Repeat the test; if it happens again, "
                      "send a tube to the laboratory.",
    "CONFIRM_DIFF": "Some white-cell types (marked *) are under-counted by this analyzer: if they "
                    "matter for this patient, send a tube to the laboratory.",
    "SITE_CALIBRATION_STALE": "This analyzer's site calibration was made for an older model and "
                              "was not used. The result is valid; ask an engineer to recalibrate.",
}
SAMPLE_FORMAT = "S-<7 digits><check digit>, e.g. S-12345674"


def luhn_ok(digits: str) -> bool:
    """Luhn (mod 10) check digit, as printed on our sample tube labels."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def check_sample_id(text: str) -> str:
    """A valid sample ID from what was typed or scanned, or :class:`ValueError` saying why."""
    s = text.strip().upper()
    m = re.fullmatch(r"S-?(\d{8})", s)
    if m:
        if not luhn_ok(m.group(1)):
            raise ValueError("The sample ID's check digit is wrong: scan the tube again or type "
                             "the ID carefully.")
        return f"S-{m.group(1)}"
    raise ValueError(f"Unknown barcode '{text.strip()[:24]}'. Scan the sample tube's label "
                     f"({SAMPLE_FORMAT}).")


def check_patient_id(text: str) -> str:
    """A medical record number: 4-16 letters or digits."""
    s = text.strip().upper()
    if not re.fullmatch(r"[A-Z0-9]{4,16}", s):
        raise ValueError("Unknown patient ID: use the wristband barcode (4-16 letters or digits).")
    return s


@dataclass(slots=True)
class Session:
    """Who is logged in."""

    user: str
    role: str
    since: float


class AppController:
    """The touchscreen's state and rules, on one instrument and one home."""

    def __init__(self, instrument: Instrument, *, root: Path | None = None,
                 model: str | Path | None = None, clock=time.monotonic,
                 qc_min_cells: int = CONTROL["min_cells"]):
        self.instr = instrument
        self.qc_min_cells = qc_min_cells
        self.root = Path(root) if root is not None else home()
        self.model = model
        self.clock = clock
        self.session: Session | None = None
        self.last_touch = clock()
        self.settings_path = self.root / "settings.json"
        with ResultsDB(database_path(self.root)) as db:
            self.recovered = db.recover()

    # -- log-in -------------------------------------------------------------------------------------
    def login(self, user: str, pin: str) -> Session:
        """Check the PIN; raise :class:`LoginError` with a message for the screen."""
        if not user.strip() or not pin:
            raise LoginError("Enter your operator ID and PIN.")
        with ResultsDB(database_path(self.root)) as db:
            role = db.login(user.strip(), pin, via="touchscreen")
        self.session = Session(user=user.strip(), role=role, since=self.clock())
        self.touch()
        return self.session

    def logout(self, reason: str = "log-out") -> None:
        """End the session (audited)."""
        if self.session:
            with ResultsDB(database_path(self.root)) as db:
                db.audit(user=self.session.user, action="logout", entity=f"user:{self.session.user}",
                         new="touchscreen", reason=reason)
        self.session = None

    def touch(self) -> None:
        """The operator did something."""
        self.last_touch = self.clock()

    def idle_expired(self) -> bool:
        """Whether the session should end for inactivity."""
        return self.session is not None and self.clock() - self.last_touch > IDLE_LOGOUT_S

    # -- what may run -------------------------------------------------------------------------------
    def qc_status(self, now: datetime | None = None) -> tuple[bool, str]:
        """(ok, message): patient tests need a passing control run within the last 24 h."""
        now = now or datetime.now(UTC)
        with ResultsDB(database_path(self.root)) as db:
            last = db.last_qc()
        if last is None:
            return False, "No quality control run yet today: run the daily QC test first (QC)."
        ts = datetime.strptime(last["ts"][:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
        if not last["passed"]:
            return False, ("The last QC test failed: patient tests are locked. Repeat QC with a "
                           "new control vial; if it fails again, call service.")
        if now - ts > timedelta(hours=QC_VALID_H):
            return False, "The daily QC test is overdue: run QC before patient tests."
        return True, f"QC passed {ts.strftime('%d %b %H:%M')} UTC"

    def calibration_status(self) -> tuple[bool, str]:
        """(ok, message) of the calibration store."""
        sp = self.instr.profile.sensor
        st = CalibrationStore(self.root).status(window=(sp.width, sp.height),
                                                simulated=self.instr.simulated)
        return st.ok, st.message

    def can_test(self) -> tuple[bool, str]:
        """Whether a patient test may start now, and if not, what to do."""
        ok, msg = self.calibration_status()
        if not ok:
            return False, msg[0].upper() + msg[1:] + "."
        return self.qc_status()

    def model_status(self) -> str:
        """The model in use, and a warning if a fallback happened."""
        act = ModelSlots(self.root).active()
        text = f"{act.bundle.name} {act.bundle.version} ({act.slot and 'slot ' + act.slot or 'factory'})"
        return text + (f" - WARNING: {act.warning}" if act.warning else "")

    # -- running ------------------------------------------------------------------------------------
    def runner(self) -> TestRunner:
        """A runner for one test (opened in the worker thread that uses it)."""
        return TestRunner(self.instr, root=self.root, model=self.model)

    def evaluate_qc(self, result: dict[str, Any]) -> tuple[bool, str]:
        """Compare a control run's result with the lot's assigned values (see :data:`CONTROL`)."""
        n = max(int(result.get("cells_classified") or 0), 1)
        if n < self.qc_min_cells:
            return False, (f"only {n} white cells counted (needs {self.qc_min_cells}): too few to "
                           f"judge the control; repeat QC with a new vial")
        bad, seen = [], []
        wbc = result.get("wbc_per_uL")
        t = CONTROL["wbc_per_uL"]
        tol = CONTROL["allow_wbc_rel"] * t + 3.0 * t / math.sqrt(n)
        seen.append(f"WBC {wbc} (target {t:.0f} +- {tol:.0f})")
        if wbc is None or abs(wbc - t) > tol:
            bad.append(seen[-1])
        for k in ("neutrophil", "lymphocyte"):
            v = result["differential_5part"].get(k)
            t = CONTROL[k]
            tol = CONTROL["allow_pct"] + 300.0 * math.sqrt(t / 100 * (1 - t / 100) / n)
            seen.append(f"{k} {v} % (target {t:g} +- {tol:.1f})")
            if v is None or abs(v - t) > tol:
                bad.append(seen[-1])
        return (not bad), ("out of range: " + "; ".join(bad) if bad else
                           f"{n} cells: " + "; ".join(seen))

    def record_qc(self, test_uid: str | None, passed: bool, detail: str) -> None:
        """Store a control run."""
        with ResultsDB(database_path(self.root)) as db:
            db.record_qc(user=self.session.user if self.session else "system",
                         lot=CONTROL["lot"], test_uid=test_uid, passed=passed, detail=detail)

    # -- history and export ------------------------------------------------------------------------
    def history(self, query: str = "", limit: int = 50) -> list[dict[str, Any]]:
        """Tests with results, newest first, filtered by patient or sample ID."""
        q = query.strip().upper()
        with ResultsDB(database_path(self.root)) as db:
            rows = db.list_tests(limit=500)
        out = [r for r in rows if not q or q in (r["patient_id"] or "").upper()
               or q in r["sample_id"].upper()]
        return out[:limit]

    def result(self, uid: str) -> tuple[dict[str, Any], Any]:
        """A stored result and its test."""
        with ResultsDB(database_path(self.root)) as db:
            return db.result_of(uid), db.test(uid)

    def settings(self) -> dict[str, Any]:
        """Touchscreen settings (LIS address)."""
        try:
            return json.loads(self.settings_path.read_text())
        except (OSError, ValueError):
            return {}

    def send_to_lis(self, uid: str) -> str:
        """Send a result to the LIS configured in settings; return what happened."""
        from device.errors import ExportError

        host = self.settings().get("lis")
        if not host or ":" not in host:
            raise ExportError("No LIS address is set: ask service to set it (settings.json "
                              "'lis': 'HOST:PORT'). The result stays stored.")
        res, test = self.result(uid)
        h, _, port = host.rpartition(":")
        msg = lis.build_oru(res, test_uid=uid, sample_id=test.sample_id, patient_id=test.patient_id,
                            observed=test.started, device_serial=self.instr.profile.serial)
        user = self.session.user if self.session else "system"
        with ResultsDB(database_path(self.root)) as db:
            try:
                ack = lis.send_mllp(msg, h, int(port), retries=2, backoff_s=0.5, timeout_s=5.0)
            except ExportError as exc:
                db.record_send(uid, destination=host, status="failed", detail=str(exc), user=user)
                raise
            db.record_send(uid, destination=host, status="acked", detail=ack.code, user=user)
        return f"Sent to the laboratory system ({ack.code})."

    def export_pdf(self, uid: str, path: Path, render) -> Path:
        """Write the result report as PDF with ``render(painter, rect)``."""
        from PyQt6.QtGui import QPageSize, QPainter, QPdfWriter

        path.parent.mkdir(parents=True, exist_ok=True)
        w = QPdfWriter(str(path))
        w.setPageSize(QPageSize(QPageSize.PageSizeId.A4))
        w.setResolution(150)
        p = QPainter(w)
        try:
            render(p, p.viewport())
        finally:
            p.end()
        with ResultsDB(database_path(self.root)) as db:
            db.audit(user=self.session.user if self.session else "system", action="result.print",
                     entity=f"test:{uid}", new=str(path))
        return path
