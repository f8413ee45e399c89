"""The calibration store: versioned records, the active calibration, expiry.

Under ``$HOLODIFF_HOME/calibration``::

    records/CAL-ID.json     one record per procedure run (format holodiff-calibration/1)
    records/CAL-ID/         its frames (dark.npy, flat_DIE.npy), when it has any

A record is never changed after it is written (a temporary file or folder
renamed into place). The *active* calibration is, for each kind, the newest
record of that kind; its id (``cal-`` + a hash of the active records' ids) is
named in every result. Patient tests are blocked (:meth:`CalibrationStore.status`)
when the newest record of a required kind failed or expired, or when a
required kind was never calibrated on real hardware.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from calibration.procedures import CalResult
from holography.errors import HoloDiffError

FORMAT = "holodiff-calibration/1"
KINDS = ("dark_flat", "distance", "shifts", "beads", "classifier")
#: kinds a patient test needs, and how long each stays valid (a site calibration of the
#: classifier stays until the site calibrates again or the model changes)
REQUIRED = ("dark_flat", "distance", "beads")
VALID_DAYS = {"dark_flat": 7, "distance": 30, "shifts": 90, "beads": 30, "classifier": 3650}
WHAT_TO_DO = {"dark_flat": "holodiff calibrate dark-flat (empty chamber)",
              "distance": "holodiff calibrate distance (sample or target in the chamber)",
              "shifts": "holodiff calibrate shifts (sample or target in the chamber)",
              "beads": "holodiff calibrate beads --diameter UM (bead suspension in the chamber)",
              "classifier": "holodiff calibrate classifier --reference FILE.csv (method "
                            "comparison against the reference analyzer)"}


class CalibrationError(HoloDiffError, ValueError):
    """A calibration record is missing, damaged, failed or expired."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CalStatus:
    """Whether patient tests may run, and if not, what to do."""

    ok: bool
    message: str
    calibration_id: str
    active: dict[str, dict[str, Any]]


def _now() -> datetime:
    return datetime.now(UTC)


class CalibrationStore:
    """Calibration records of one analyzer (``root`` is ``$HOLODIFF_HOME``)."""

    def __init__(self, root: Path):
        self.dir = Path(root) / "calibration" / "records"

    def save(self, result: CalResult, *, user: str, profile: str,
             window: tuple[int, int], now: datetime | None = None) -> dict[str, Any]:
        """Write a record for ``result``; return it."""
        now = now or _now()
        self.dir.mkdir(parents=True, exist_ok=True)
        rid = f"{result.kind}-{now.strftime('%Y%m%dT%H%M%S%f')}"
        rec = {"format": FORMAT, "id": rid, "kind": result.kind, "user": user,
               "created": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
               "expires": (now + timedelta(days=VALID_DAYS[result.kind])).strftime(
                   "%Y-%m-%dT%H:%M:%SZ"),
               "profile": profile, "window": list(window), "passed": bool(result.passed),
               "reasons": result.reasons, "values": result.values,
               "arrays": sorted(f"{k}.npy" for k in result.arrays)}
        if result.arrays:
            tmp = Path(tempfile.mkdtemp(prefix=f".{rid}.", dir=self.dir))
            for k, a in result.arrays.items():
                with open(tmp / f"{k}.npy", "wb") as fh:
                    np.save(fh, a, allow_pickle=False)
                    fh.flush()
                    os.fsync(fh.fileno())
            os.rename(tmp, self.dir / rid)
        data = json.dumps(rec, indent=1).encode()
        rec_tmp = self.dir / f".{rid}.json.partial"
        with open(rec_tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(rec_tmp, self.dir / f"{rid}.json")
        return rec

    def records(self) -> list[dict[str, Any]]:
        """Every readable record, oldest first (damaged ones are skipped)."""
        out = []
        if not self.dir.is_dir():
            return out
        for f in sorted(self.dir.glob("*.json")):
            try:
                rec = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if rec.get("format") == FORMAT:
                out.append(rec)
        return sorted(out, key=lambda r: r["id"].split("-", 1)[1])

    def get(self, rid: str) -> dict[str, Any]:
        """One record by id."""
        for r in self.records():
            if r["id"] == rid:
                return r
        raise CalibrationError(f"no calibration record {rid!r}; see 'holodiff calibrate list'")

    def array(self, rec: dict[str, Any], name: str) -> np.ndarray:
        """One of a record's frames."""
        try:
            return np.load(self.dir / rec["id"] / f"{name}.npy", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CalibrationError(f"calibration {rec['id']}: frame {name} unreadable ({exc}); "
                                   f"repeat the calibration") from None

    def active(self) -> dict[str, dict[str, Any]]:
        """The newest record of each kind."""
        act: dict[str, dict[str, Any]] = {}
        for r in self.records():
            act[r["kind"]] = r
        return act

    def classifier(self) -> dict[str, Any] | None:
        """The active site calibration of the classifier: the newest accepted ``classifier`` record.

        A rejected one (it did not lower the cross-validated error) is kept but never
        active; a ``cleared`` record (``holodiff calibrate classifier --clear``) withdraws
        the site calibration until the next one; whether the record fits the model in
        use is the analysis's check (:func:`inference.analyze.site_calibration_for`).
        """
        accepted = [r for r in self.records() if r["kind"] == "classifier" and r["passed"]]
        if not accepted or accepted[-1].get("values", {}).get("cleared"):
            return None  # never calibrated, or the site calibration was withdrawn
        return accepted[-1]

    def status(self, *, window: tuple[int, int], simulated: bool,
               now: datetime | None = None) -> CalStatus:
        """May patient tests run? (and the id results name)."""
        now = now or _now()
        act = self.active()
        cid = ("cal-" + hashlib.sha256(",".join(sorted(r["id"] for r in act.values())).encode())
               .hexdigest()[:10]) if act else "uncalibrated"
        if not any(k in act for k in REQUIRED + ("shifts",)) and simulated:
            return CalStatus(ok=True, message="simulated analyzer, not calibrated",
                             calibration_id="uncalibrated-simulated", active=act)
        for kind in REQUIRED:
            r = act.get(kind)
            if r is None:
                return CalStatus(ok=False, calibration_id=cid, active=act, message=(
                    f"the analyzer has no {kind.replace('_', '/')} calibration: patient tests are "
                    f"blocked; ask an engineer to run {WHAT_TO_DO[kind]}"))
            if not r["passed"]:
                return CalStatus(ok=False, calibration_id=cid, active=act, message=(
                    f"the last {kind.replace('_', '/')} calibration ({r['id']}) failed: patient tests "
                    f"are blocked; ask an engineer to repeat {WHAT_TO_DO[kind]}"))
            if r["window"] != list(window):
                return CalStatus(ok=False, calibration_id=cid, active=act, message=(
                    f"the {kind.replace('_', '/')} calibration was made for another sensor window; "
                    f"ask an engineer to repeat {WHAT_TO_DO[kind]}"))
            expires = datetime.strptime(r["expires"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            if now > expires:
                return CalStatus(ok=False, calibration_id=cid, active=act, message=(
                    f"the {kind.replace('_', '/')} calibration expired on {r['expires'][:10]}: "
                    f"patient tests are blocked; ask an engineer to run {WHAT_TO_DO[kind]}"))
        return CalStatus(ok=True, message="calibrated", calibration_id=cid, active=act)

    def flats(self) -> dict[str, np.ndarray]:
        """LED colour -> flat of its first die, from the active passing dark/flat record."""
        r = self.active().get("dark_flat")
        if r is None or not r["passed"]:
            return {}
        out = {}
        for die, v in r["values"]["flats"].items():
            colour = v.get("led")
            if colour and colour not in out:
                out[colour] = self.array(r, f"flat_{die}")
        return out

    def remove_partial(self) -> None:
        """Delete what a power cut left half-written."""
        if self.dir.is_dir():
            for p in self.dir.glob(".*"):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
