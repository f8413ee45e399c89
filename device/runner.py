"""Running a test: operator and sample in, a stored result out, never a lost result.

A test goes through explicit stages (:class:`Stage`); the time of each is
measured. The start is recorded in the results database *before* the sample
is measured, so a database that cannot be written stops the test before the
sample is used. A result that the database then refuses (disk full, file
system read-only) is spooled to ``$HOLODIFF_HOME/pending`` and, if even that
fails, kept in memory; :meth:`TestRunner.retry_pending` stores it later, and a
new runner ingests the spool at start.
"""

from __future__ import annotations

import enum
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calibration.store import CalibrationError, CalibrationStore
from device.acquire import acquire_capture
from device.errors import SampleError, StorageError, TestAborted
from device.home import captures_dir, database_path, home, pending_dir
from device.instrument import Instrument
from device.store import ResultsDB, spool_result
from holography.errors import HoloDiffError


class Stage(enum.StrEnum):
    """Where a test is."""

    STARTING = "starting"
    CAPTURE = "capture"
    ANALYSIS = "analysis"
    STORAGE = "storage"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    """One progress report: stage, a line for people, fraction of the test done (0-1)."""

    stage: Stage
    message: str
    fraction: float


@dataclass(slots=True, kw_only=True)
class TestOutcome:
    """What a test produced. ``stored`` is false while the result waits in the spool or memory."""

    __test__ = False  # not a pytest class

    uid: str
    sample_id: str
    state: Stage
    result: dict[str, Any] | None = None
    capture_path: str | None = None
    error: str | None = None
    stored: bool = False
    timing_s: dict[str, float] = field(default_factory=dict)


#: rough share of the time of each stage, for the progress bar
_SHARE = {Stage.CAPTURE: (0.0, 0.45), Stage.ANALYSIS: (0.45, 0.97), Stage.STORAGE: (0.97, 1.0)}


def remove_partial_captures(folder: Path) -> list[Path]:
    """Delete capture folders a crash left half-written (``.NAME.*.partial``); return them."""
    gone = []
    if folder.is_dir():
        for p in folder.glob(".*.partial"):
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
    return gone


class TestRunner:
    """Runs tests on one instrument and stores them in one database.

    Parameters
    ----------
    instrument : Instrument
        The opened analyzer (real or twin).
    root : path, optional
        State folder (default :func:`device.home.home`).
    model : path, optional
        Model bundle or ONNX file (default: the active model slot, verified, else the
        shipped bundle; ``model_warning`` says when a fallback was needed).
    flats : dict, optional
        LED colour -> flat frame (default: the active dark/flat calibration's).
    calibration_id : str, optional
        Named in every result (default: the active calibration's id).
    """

    __test__ = False  # not a pytest class

    def __init__(self, instrument: Instrument, *, root: Path | None = None,
                 model: str | Path | None = None, flats=None,
                 calibration_id: str | None = None):
        self.instrument = instrument
        self.root = Path(root) if root is not None else home()
        self.model_warning = None
        if model is None:
            from device.models import ModelSlots

            act = ModelSlots(self.root).active()  # verified now, with a fallback and a reason
            model, self.model_warning = act.path, act.warning
        self.model = model
        self.flats = flats
        self.calibration_id = calibration_id
        self.calibrations = CalibrationStore(self.root)
        self.calibrations.remove_partial()
        self.db = ResultsDB(database_path(self.root))
        self.pending: list[TestOutcome] = []
        self.recovered = self.db.recover()
        self.db.ingest_spool(pending_dir(self.root))
        self.removed_partial = remove_partial_captures(captures_dir(self.root))

    def close(self) -> None:
        """Close the database (the instrument belongs to the caller)."""
        self.db.close()

    def run(self, *, operator: str, sample_id: str, patient_id: str | None = None,
            progress: Callable[[Progress], None] | None = None,
            cancelled: Callable[[], bool] | None = None, cells: bool = False) -> TestOutcome:
        """Run one test on the sample in the chamber.

        Expected failures (no sample, sample removed, LED or camera fault, a
        capture the analysis rejects, cancellation) do not raise: the outcome
        says ``failed`` or ``cancelled`` with the one-line reason, and the
        database records it.

        Raises
        ------
        CalibrationError
            If the active calibration failed, expired or is missing (the sample is not used).
        StorageError
            If the database cannot record the start of the test (the sample is not used).
        """
        from inference.analyze import AnalysisOptions, analyze_capture

        uid = uuid.uuid4().hex
        t_all = time.perf_counter()
        timing: dict[str, float] = {}

        def say(stage: Stage, msg: str, within: float = 0.0) -> None:
            # a result that exists is stored, cancelled or not: only capture and analysis stop
            if cancelled is not None and stage in (Stage.CAPTURE, Stage.ANALYSIS) and cancelled():
                raise TestAborted("test cancelled by the operator; repeat it with a new sample")
            lo, hi = _SHARE.get(stage, (1.0, 1.0))
            if progress:
                progress(Progress(stage=stage, message=msg, fraction=lo + (hi - lo) * within))

        prof = self.instrument.profile
        cal = self.calibrations.status(window=(prof.sensor.width, prof.sensor.height),
                                       simulated=self.instrument.simulated)
        if not cal.ok:
            self.db.audit(user=operator, action="test.refused", entity=f"sample:{sample_id}",
                          reason=cal.message)
            raise CalibrationError(cal.message)
        flats = self.flats if self.flats is not None else self.calibrations.flats()
        dist = cal.active.get("distance")
        z2 = dist["values"]["sample_distance_um"] if dist and dist["passed"] else None
        rec = self.db.begin_test(operator=operator, sample_id=sample_id, patient_id=patient_id,
                                 uid=uid)
        out = TestOutcome(uid=rec.uid, sample_id=sample_id, state=Stage.STARTING, timing_s=timing)
        cap_dir = captures_dir(self.root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{uid[:8]}"
        try:
            t = time.perf_counter()
            n_frames = len(self.instrument.profile.leds.dies)
            frames_done = [0]

            def capture_progress(msg: str) -> None:
                if msg.startswith("frame "):
                    frames_done[0] += 1
                say(Stage.CAPTURE, msg, 0.3 + 0.7 * frames_done[0] / n_frames)

            say(Stage.CAPTURE, "measuring the sample")
            cap = acquire_capture(self.instrument, cap_dir, flats=flats, sample_distance_um=z2,
                                  extra_meta={"test_uid": uid, "sample_id": sample_id,
                                              "operator": operator},
                                  progress=capture_progress, cancelled=cancelled)
            out.capture_path = str(cap.root)
            timing["capture"] = round(time.perf_counter() - t, 2)
            steps = {"reconstructing": 0.1, "detecting": 0.6}

            def analysis_progress(msg: str) -> None:
                say(Stage.ANALYSIS, msg, next((v for k, v in steps.items() if msg.startswith(k)),
                                              0.8))

            say(Stage.ANALYSIS, "analysing the holograms")
            opts = AnalysisOptions(model=self.model, cells=cells,
                                   calibration_id=self.calibration_id or cal.calibration_id,
                                   gallery=cap.root / "gallery.npz",
                                   site_calibration=self.calibrations.classifier())
            result = analyze_capture(cap, options=opts, progress=analysis_progress)
            for k in ("reconstruction", "detection", "classification"):
                timing[k] = result["timing_s"][k]
            result["timing_s"]["capture"] = timing["capture"]
            out.result = result
        except TestAborted as exc:
            return self._end(out, Stage.CANCELLED, str(exc), operator)
        except (SampleError, HoloDiffError, OSError) as exc:
            return self._end(out, Stage.FAILED, str(exc), operator)
        say(Stage.STORAGE, "storing the result")
        t = time.perf_counter()
        try:
            self.db.store_result(uid, result, user=operator, capture_path=out.capture_path)
            out.stored = True
        except StorageError as exc:
            out.error = f"{exc} (the result is kept and will be stored when this is fixed)"
            self._keep(out, operator, patient_id)
        timing["storage"] = round(time.perf_counter() - t, 3)
        timing["total"] = round(time.perf_counter() - t_all, 2)
        out.state = Stage.DONE
        if progress:
            progress(Progress(stage=Stage.DONE, message="result ready", fraction=1.0))
        return out

    def _end(self, out: TestOutcome, state: Stage, error: str, operator: str) -> TestOutcome:
        out.state, out.error = state, error
        try:
            self.db.end_test(out.uid, state=str(state), error=error, user=operator)
        except StorageError:
            pass  # the test has no result to lose; the start row says it never finished
        if self.instrument is not None:
            self.instrument.leds.off()
        return out

    def _keep(self, out: TestOutcome, operator: str, patient_id: str | None) -> None:
        self.pending.append(out)
        try:
            spool_result(pending_dir(self.root), uid=out.uid, operator=operator,
                         sample_id=out.sample_id, patient_id=patient_id, result=out.result,
                         capture_path=out.capture_path)
        except OSError:
            pass  # the disk is full too: the result stays in memory until retry_pending

    def retry_pending(self) -> int:
        """Store the results that are waiting; return how many are still waiting."""
        still = []
        for out in self.pending:
            try:
                if self.db.result_of(out.uid) is None:
                    self.db.store_result(out.uid, out.result, user="system",
                                         capture_path=out.capture_path)
                out.stored = True
                spool = pending_dir(self.root) / f"{out.uid}.json"
                spool.unlink(missing_ok=True)
            except StorageError:
                still.append(out)
        self.pending = still
        return len(still)
