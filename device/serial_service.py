"""The engineer's serial service: SCPI over a tty (INTERFACES.md section 4).

:class:`ScpiService` executes program messages (:meth:`ScpiService.execute`)
against the analyzer; :class:`MessageReader` cuts a byte stream into program
messages (LF, CR LF accepted), carrying definite-length blocks whole, and
turns garbage into errors rather than stopping; :func:`serve` runs both on a
serial port (pyserial) until stopped.

Robustness: a line longer than :data:`MAX_LINE` bytes (outside blocks) or a
block above :data:`MAX_BLOCK` is dropped with -363; bytes that are not UTF-8 or
not printable in a header give -101/-102; a half message that stays
incomplete for :data:`STALE_S` seconds (a disconnect mid-line or mid-block) is
dropped with -102 or -160; a command error (-1xx) discards the rest of its
message, an execution error (-2xx) skips only its own unit, and a command
validates every parameter before it changes anything, so no state is
half-changed. The error queue holds
:data:`QUEUE_LEN` errors; beyond that the last is replaced by -350.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device.errors import HardwareError, LoginError, SampleError
from device.home import captures_dir, database_path, home
from device.instrument import Instrument
from device.scpi import (
    ESR_OPC,
    Block,
    Chars,
    CommandTree,
    Number,
    ScpiError,
    block,
    esr_bit,
    nr,
    parse_message,
    quote,
)
from device.store import ResultsDB
from holography import __version__
from holography.errors import HoloDiffError

log = logging.getLogger("holodiff.serial")
MAX_LINE = 4096
MAX_BLOCK = 16 << 20
QUEUE_LEN = 32
STALE_S = 5.0
SCPI_VERSION = "1999.0"
ENGINEER = ("engineer", "service")
SERVICE = ("service",)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(slots=True)
class Session:
    """What one connection has set: status registers, error queue, log-in, selections."""

    errors: deque = field(default_factory=deque)
    esr: int = 0
    ese: int = 0
    sre: int = 0
    user: str | None = None
    role: str | None = None
    die: str | None = None
    duty: float | None = None


class ScpiService:
    """SCPI command tree of the analyzer, bound to one instrument and one home."""

    def __init__(self, instrument: Instrument, *, root: Path | None = None):
        self.instr = instrument
        self.root = Path(root) if root is not None else home()
        self.s = Session()
        self.tree = CommandTree()
        self._build()
        self.last_test: str | None = None

    # -- errors and status -------------------------------------------------------------------
    def push_error(self, err: ScpiError) -> None:
        """Queue an error and set its ESR bit."""
        if len(self.s.errors) >= QUEUE_LEN:
            self.s.errors[-1] = ScpiError(-350)
        else:
            self.s.errors.append(err)
        self.s.esr |= esr_bit(err.code)
        log.info("error %s", err)

    def stb(self) -> int:
        """Status byte: bit 2 error queue not empty, bit 5 ESB, bit 6 MSS."""
        v = (4 if self.s.errors else 0) | (32 if self.s.esr & self.s.ese else 0)
        if v & self.s.sre:
            v |= 64
        return v

    # -- execution ---------------------------------------------------------------------------
    def execute(self, message: bytes) -> bytes | None:
        """Run one program message; return the response (with LF) or None if no query."""
        try:
            units = parse_message(message)
        except ScpiError as exc:
            self.push_error(exc)
            return None
        out: list[bytes] = []
        branch: list[str] = []
        for u in units:
            path = u.path if (u.absolute or u.common or not branch) else branch + u.path
            try:
                try:
                    cmd, suffixes = self.tree.find(path, u.query)
                except ScpiError:
                    if u.absolute or u.common or not branch:
                        raise
                    cmd, suffixes = self.tree.find(u.path, u.query)  # a new root after all
                    path = u.path
                if cmd.role and self.s.role not in cmd.role:
                    raise ScpiError(-203, f"log in as {' or '.join(cmd.role)} "
                                          "(SYSTem:LOGin 'user','pin')")
                resp = cmd.handler(u.params, suffixes)
            except ScpiError as exc:
                self.push_error(exc)
                if -199 <= exc.code <= -100:
                    break  # a command error discards the rest of the message (488.2 6.1.6)
                continue
            except LoginError as exc:
                self.push_error(ScpiError(-203, str(exc)))
                continue
            except SampleError as exc:
                self.push_error(ScpiError(-221, str(exc)))
                continue
            except HardwareError as exc:
                self.push_error(ScpiError(-240, str(exc)))
                continue
            except (HoloDiffError, ValueError, OSError) as exc:
                self.push_error(ScpiError(-200, str(exc)))
                continue
            if not u.common:
                branch = path[:-1]
            if u.query:
                out.append(resp if isinstance(resp, bytes) else str(resp).encode())
        if not out:
            return None
        return b";".join(out) + b"\n"

    # -- parameter helpers -------------------------------------------------------------------
    @staticmethod
    def _n(params: list, k: int = 1) -> None:
        if len(params) > k:
            raise ScpiError(-108, f"{len(params)} parameters, {k} expected")
        if len(params) < k:
            raise ScpiError(-109)

    @staticmethod
    def _str(p) -> str:
        if isinstance(p, str):
            return p
        if isinstance(p, Chars):
            return p.text
        raise ScpiError(-104, "string expected")

    @staticmethod
    def _num(p, *, lo: float, hi: float, units: dict[str, float] | None = None,
             minmax: tuple[float, float] | None = None) -> float:
        if isinstance(p, Chars) and minmax and p.text in ("MIN", "MINIMUM", "MAX", "MAXIMUM"):
            return minmax[0] if p.text.startswith("MIN") else minmax[1]
        if not isinstance(p, Number):
            raise ScpiError(-104, "number expected")
        v = p.value
        if p.unit:
            if not units or p.unit not in units:
                raise ScpiError(-131, f"unit {p.unit}")
            v *= units[p.unit]
        if not math.isfinite(v) or not lo <= v <= hi:
            raise ScpiError(-222, f"{v:g} outside {lo:g}-{hi:g}")
        return v

    @staticmethod
    def _bool(p) -> bool:
        if isinstance(p, Chars) and p.text in ("ON", "OFF"):
            return p.text == "ON"
        if isinstance(p, Number) and p.value in (0, 1) and not p.unit:
            return bool(p.value)
        raise ScpiError(-224, "ON, OFF, 1 or 0 expected")

    def _audit(self, action: str, entity: str, old: Any = None, new: Any = None,
               reason: str | None = None) -> None:
        with ResultsDB(database_path(self.root)) as db:
            db.audit(user=self.s.user or "serial", action=action, entity=entity,
                     old=None if old is None else str(old), new=None if new is None else str(new),
                     reason=reason)

    # -- the tree ----------------------------------------------------------------------------
    def _build(self) -> None:  # noqa: C901  (one registration list)
        t = self.tree
        instr = self.instr
        prof = instr.profile

        # IEEE 488.2 common commands
        t.add("*IDN?", lambda p, s: (self._n(p, 0),
                                     f"HoloDiff,{prof.name},{prof.serial},{__version__}")[1])
        t.add("*RST", lambda p, s: (self._n(p, 0), self._reset())[1])
        t.add("*CLS", lambda p, s: (self._n(p, 0), self.s.errors.clear(),
                                    setattr(self.s, "esr", 0))[1])
        t.add("*ESR?", lambda p, s: (self._n(p, 0), nr(self._read_esr()))[1])
        t.add("*ESE", lambda p, s: (self._n(p), setattr(self.s, "ese", int(self._num(
            p[0], lo=0, hi=255)))))
        t.add("*ESE?", lambda p, s: (self._n(p, 0), nr(self.s.ese))[1])
        t.add("*STB?", lambda p, s: (self._n(p, 0), nr(self.stb()))[1])
        t.add("*SRE", lambda p, s: (self._n(p), setattr(self.s, "sre", int(self._num(
            p[0], lo=0, hi=255)) & ~64)))
        t.add("*SRE?", lambda p, s: (self._n(p, 0), nr(self.s.sre))[1])
        t.add("*OPC", lambda p, s: (self._n(p, 0), setattr(self.s, "esr", self.s.esr | ESR_OPC)))
        t.add("*OPC?", lambda p, s: (self._n(p, 0), "1")[1])  # commands complete before replies
        t.add("*WAI", lambda p, s: self._n(p, 0))
        t.add("*TST?", lambda p, s: (self._n(p, 0), nr(self._self_test()))[1])

        # SYSTem
        t.add("SYSTem:ERRor[:NEXT]?", lambda p, s: (self._n(p, 0), self._pop_error())[1])
        t.add("SYSTem:ERRor:COUNt?", lambda p, s: (self._n(p, 0), nr(len(self.s.errors)))[1])
        t.add("SYSTem:VERSion?", lambda p, s: (self._n(p, 0), SCPI_VERSION)[1])
        t.add("SYSTem:LOGin", self._login)
        t.add("SYSTem:LOGin?", lambda p, s: (self._n(p, 0), quote(
            f"{self.s.user},{self.s.role}" if self.s.user else ""))[1])
        t.add("SYSTem:LOGout", lambda p, s: (self._n(p, 0), self._logout())[1])

        # LEDs
        t.add("SOURce:LED:CATalog?", lambda p, s: (self._n(p, 0), quote(",".join(
            d.name for d in prof.leds.dies)))[1])
        t.add("SOURce:LED:SELect", self._led_select, role=ENGINEER)
        t.add("SOURce:LED:SELect?", lambda p, s: (self._n(p, 0), quote(self.s.die or ""))[1])
        t.add("SOURce:LED#[:STATe]", self._led_state, role=ENGINEER)
        t.add("SOURce:LED#[:STATe]?", lambda p, s: (self._n(p, 0), nr(
            int(instr.leds.lit() is not None)))[1])
        t.add("SOURce:LED:DUTY", self._led_duty, role=ENGINEER)
        t.add("SOURce:LED:DUTY?", lambda p, s: (self._n(p, 0), nr(self._duty()))[1])

        # camera
        tunits = {"US": 1.0, "MS": 1e3, "S": 1e6}
        t.add("CAMera:EXPosure", lambda p, s: self._set_exposure(p, tunits), role=ENGINEER)
        t.add("CAMera:EXPosure?", lambda p, s: (self._n(p, 0), nr(instr.camera.exposure_us))[1])
        t.add("CAMera:GAIN", self._set_gain, role=ENGINEER)
        t.add("CAMera:GAIN?", lambda p, s: (self._n(p, 0), nr(instr.camera.analogue_gain))[1])
        t.add("CAMera:MODE?", lambda p, s: (self._n(p, 0), quote(
            f"{prof.sensor.model},{prof.sensor.width},{prof.sensor.height},"
            f"{instr.camera.spec.bit_depth},{prof.sensor.bayer or 'MONO'}"))[1])

        # acquisition and captures
        t.add("ACQuire:FRAMe?", self._frame, role=ENGINEER)
        t.add("ACQuire:CAPTure", self._capture, role=ENGINEER)
        t.add("MMEMory:CATalog?", self._catalog)
        t.add("MMEMory:DATA?", self._data, role=ENGINEER)
        t.add("MMEMory:DELete", self._delete, role=ENGINEER)

        # calibration
        t.add("CALibration:DFLat", lambda p, s: self._calibrate("dark_flat", p), role=ENGINEER)
        t.add("CALibration:DISTance", lambda p, s: self._calibrate("distance", p), role=ENGINEER)
        t.add("CALibration:SHIFt", lambda p, s: self._calibrate("shifts", p), role=ENGINEER)
        t.add("CALibration:BEAD", lambda p, s: self._calibrate("beads", p), role=ENGINEER)
        t.add("CALibration:LIST?", self._cal_list)
        t.add("CALibration:RECord?", self._cal_record)
        t.add("CALibration:STATus?", self._cal_status)
        t.add("CALibration:CLASsifier?", self._cal_classifier)

        # models
        t.add("MODel:LIST?", self._model_list)
        t.add("MODel:ACTive?", self._model_active)
        t.add("MODel:INSTall", self._model_install, role=SERVICE)
        t.add("MODel:ACTivate", self._model_activate, role=SERVICE)
        t.add("MODel:ROLLback", self._model_rollback, role=SERVICE)

        # tests
        t.add("TEST:RUN", self._test_run, role=ENGINEER)
        t.add("TEST:RESult?", self._test_result)

        # the simulated twin's chamber (refused on real hardware)
        t.add("SIMulation:SAMPle", self._sim_sample, role=ENGINEER)
        t.add("SIMulation:SAMPle:REMove", self._sim_remove, role=ENGINEER)

    # -- handlers ----------------------------------------------------------------------------
    def _read_esr(self) -> int:
        v, self.s.esr = self.s.esr, 0
        return v

    def _pop_error(self) -> str:
        if not self.s.errors:
            return '0,"No error"'
        return self.s.errors.popleft().queue_text()

    def _reset(self) -> None:
        self.instr.leds.off()
        self.s.die = None
        self.s.duty = None
        self.instr.camera.set_exposure(2000, 1.0)

    def _self_test(self) -> int:
        """0 when LEDs, camera, database and model pass; else a bit per failed part."""
        from device.models import ModelSlots

        bad = 0
        try:
            self.instr.leds.off()
        except HoloDiffError:
            bad |= 1
        try:
            f = self.instr.camera.capture().data
            if abs(float(f.mean()) - self.instr.camera.black_level) > 64:
                bad |= 2  # light in a frame with every LED off
        except HoloDiffError:
            bad |= 2
        try:
            with ResultsDB(database_path(self.root)) as db:
                if db.integrity_check():
                    bad |= 4
                db.verify_audit()
        except HoloDiffError:
            bad |= 4
        try:
            if ModelSlots(self.root).active().warning:
                bad |= 8
        except HoloDiffError:
            bad |= 8
        if bad:
            self.push_error(ScpiError(-330, f"failed parts bitmask {bad} (1 LED, 2 camera, "
                                            f"4 database, 8 model)"))
        return bad

    def _login(self, p, s) -> None:
        self._n(p, 2)
        user, pin = self._str(p[0]), self._str(p[1])
        with ResultsDB(database_path(self.root)) as db:
            role = db.login(user, pin, via="serial")
        self.s.user, self.s.role = user, role

    def _logout(self) -> None:
        if self.s.user:
            self._audit("logout", f"user:{self.s.user}", new="serial")
        self.instr.leds.off()
        self.s.user = self.s.role = None

    def _led_select(self, p, s) -> None:
        self._n(p)
        name = self._str(p[0]).lower() if isinstance(p[0], Chars) else self._str(p[0])
        try:
            self.instr.profile.leds.die(name)
        except KeyError:
            raise ScpiError(-224, f"no die {name!r}; see SOURce:LED:CATalog?") from None
        if self.instr.leds.lit() is not None:
            raise ScpiError(-221, "switch the LED off before selecting another die")
        old, self.s.die = self.s.die, name
        self._audit("led.select", "led", old, name)

    def _duty(self) -> float:
        if self.s.duty is not None:
            return self.s.duty
        return self.instr.profile.leds.die(self.s.die).duty if self.s.die else 0.0

    def _led_state(self, p, s) -> None:
        self._n(p)
        on = self._bool(p[0])
        die = self.s.die
        if s and s[0] > 1:  # SOURce:LED<n>: die number n of the catalogue
            dies = self.instr.profile.leds.dies
            if s[0] > len(dies):
                raise ScpiError(-114, f"LED{s[0]}: the board has {len(dies)} dies")
            die = dies[s[0] - 1].name
        if on:
            if die is None:
                raise ScpiError(-221, "select a die first (SOURce:LED:SELect)")
            self.instr.sleep(self.instr.profile.leds.min_off_ms * 1e-3 + 1e-3)
            self.instr.leds.on(die, self.s.duty)
        else:
            self.instr.leds.off()
        self._audit("led.state", f"led:{die}", None, "ON" if on else "OFF")

    def _led_duty(self, p, s) -> None:
        self._n(p)
        lim = self.instr.profile.leds.max_duty
        v = self._num(p[0], lo=0.001, hi=lim, units={"PCT": 0.01, "%": 0.01}, minmax=(0.001, lim))
        if self.instr.leds.lit() is not None:
            raise ScpiError(-221, "switch the LED off before changing its duty")
        old, self.s.duty = self.s.duty, v
        self._audit("led.duty", "led", old, v)

    def _set_exposure(self, p, units) -> None:
        self._n(p)
        sp = self.instr.profile.sensor
        v = self._num(p[0], lo=sp.exposure_us_min, hi=sp.exposure_us_max, units=units,
                      minmax=(sp.exposure_us_min, sp.exposure_us_max))
        old = self.instr.camera.exposure_us
        self.instr.camera.set_exposure(v)
        self._audit("camera.exposure", "camera", old, self.instr.camera.exposure_us)

    def _set_gain(self, p, s) -> None:
        self._n(p)
        v = self._num(p[0], lo=1.0, hi=16.0, minmax=(1.0, 16.0))
        old = self.instr.camera.analogue_gain
        self.instr.camera.set_exposure(self.instr.camera.exposure_us, v)
        self._audit("camera.gain", "camera", old, v)

    def _frame(self, p, s) -> bytes:
        self._n(p, 0)
        f = self.instr.camera.capture().data
        buf = io.BytesIO()
        np.save(buf, f, allow_pickle=False)
        return block(buf.getvalue())

    def _capture_name(self, p) -> str:
        name = self._str(p)
        if not _NAME.fullmatch(name):
            raise ScpiError(-257, f"{name!r}: use letters, digits, '.', '_' or '-'")
        return name

    def _capture(self, p, s) -> None:
        from calibration.store import CalibrationStore
        from device.acquire import acquire_capture

        self._n(p)
        name = self._capture_name(p[0])
        dest = captures_dir(self.root) / name
        if dest.exists():
            raise ScpiError(-257, f"capture {name} exists; choose another name")
        acquire_capture(self.instr, dest, flats=CalibrationStore(self.root).flats(),
                        extra_meta={"saved_by": self.s.user, "via": "serial"})
        self._audit("capture.save", f"capture:{name}", None, str(dest))

    def _catalog(self, p, s) -> str:
        d = captures_dir(self.root)
        if not p:
            names = sorted(x.name for x in d.iterdir() if x.is_dir()
                           and not x.name.startswith(".")) if d.is_dir() else []
            return quote(",".join(names))
        self._n(p)
        name = self._capture_name(p[0])
        if not (d / name).is_dir():
            raise ScpiError(-256, name)
        return quote(",".join(f"{f.name}:{f.stat().st_size}" for f in sorted((d / name).iterdir())))

    def _file(self, spec: str) -> Path:
        parts = spec.split("/")
        if len(parts) != 2 or not all(_NAME.fullmatch(x) for x in parts):
            raise ScpiError(-257, f"{spec!r}: give CAPTURE/FILE")
        f = captures_dir(self.root) / parts[0] / parts[1]
        if not f.is_file():
            raise ScpiError(-256, spec)
        return f

    def _data(self, p, s) -> bytes:
        self._n(p)
        f = self._file(self._str(p[0]))
        if f.stat().st_size > MAX_BLOCK:
            raise ScpiError(-250, f"{f.name} is larger than a block may be")
        return block(f.read_bytes())

    def _delete(self, p, s) -> None:
        import shutil

        self._n(p)
        name = self._capture_name(p[0])
        d = captures_dir(self.root) / name
        if not d.is_dir():
            raise ScpiError(-256, name)
        shutil.rmtree(d)
        self._audit("capture.delete", f"capture:{name}", str(d), None)

    def _calibrate(self, kind: str, p) -> None:
        from device import calibrate

        user = self.s.user or "serial"
        if kind == "beads":
            self._n(p)
            d = self._num(p[0], lo=1.0, hi=50.0, units={"UM": 1.0})
            rec = calibrate.calibrate_beads(self.instr, user=user, diameter_um=d, root=self.root)
        else:
            self._n(p, 0)
            fn = {"dark_flat": calibrate.calibrate_dark_flat,
                  "distance": calibrate.calibrate_distance,
                  "shifts": calibrate.calibrate_shifts}[kind]
            rec = fn(self.instr, user=user, root=self.root)
        if not rec["passed"]:
            raise ScpiError(100, f"calibration {rec['id']} failed: {'; '.join(rec['reasons'])}")

    def _cal_list(self, p, s) -> str:
        from calibration.store import CalibrationStore

        self._n(p, 0)
        recs = CalibrationStore(self.root).records()
        return quote(",".join(f"{r['id']}:{'PASS' if r['passed'] else 'FAIL'}" for r in recs))

    def _cal_record(self, p, s) -> str:
        from calibration.store import CalibrationStore

        self._n(p)
        return quote(json.dumps(CalibrationStore(self.root).get(self._str(p[0]))))

    def _cal_status(self, p, s) -> str:
        from calibration.store import CalibrationStore

        self._n(p, 0)
        sp = self.instr.profile.sensor
        st = CalibrationStore(self.root).status(window=(sp.width, sp.height),
                                                simulated=self.instr.simulated)
        return f"{int(st.ok)},{quote(st.calibration_id)},{quote(st.message)}"

    def _cal_classifier(self, p, s) -> str:
        """The active site calibration: ``"id",captures,"model",applies`` or ``"none",0,"",0``.

        ``applies`` is 1 when it was fitted for the model in use (else results carry
        SITE_CALIBRATION_STALE).
        """
        import hashlib

        from calibration.store import CalibrationStore
        from device.models import ModelSlots
        from inference.bundle import read_bundle

        self._n(p, 0)
        rec = CalibrationStore(self.root).classifier()
        if rec is None:
            return '"none",0,"",0'
        m = rec["values"].get("model", {})
        # the model in use, as the analysis names it (sha256 of the bundle's model.onnx); no
        # onnxruntime session is started for a query
        onnx = read_bundle(ModelSlots(self.root).active().path).files["model.onnx"]
        sha = hashlib.sha256(onnx).hexdigest()
        name = f"{m.get('name')} {m.get('version')}"
        return (f"{quote(rec['id'])},{int(rec['values'].get('n_captures', 0))},{quote(name)},"
                f"{int(m.get('sha256') == sha)}")

    def _model_list(self, p, s) -> str:
        from device.models import ModelSlots

        self._n(p, 0)
        return quote(json.dumps(ModelSlots(self.root).list()))

    def _model_active(self, p, s) -> str:
        from device.models import ModelSlots

        self._n(p, 0)
        act = ModelSlots(self.root).active()
        return quote(f"{act.slot or 'factory'},{act.bundle.name},{act.bundle.version},"
                     f"{act.bundle.counter}")

    def _model_install(self, p, s) -> None:
        import tempfile

        from device.models import ModelSlots

        if not p or not isinstance(p[0], Block):
            raise ScpiError(-104, "the bundle as a definite-length block")
        if len(p) > 2:
            raise ScpiError(-108)
        reason = self._str(p[1]) if len(p) == 2 else None
        with tempfile.TemporaryDirectory() as d:
            f = Path(d) / "incoming.hdmodel"
            f.write_bytes(p[0].data)
            ModelSlots(self.root).install(f, user=self.s.user or "serial", force_reason=reason)

    def _model_activate(self, p, s) -> None:
        from device.models import ModelSlots

        self._n(p)
        slot = self._str(p[0]).upper()
        if slot not in ("A", "B"):
            raise ScpiError(-224, "slot A or B")
        ModelSlots(self.root).activate(slot, user=self.s.user or "serial", reason="serial")

    def _model_rollback(self, p, s) -> None:
        from device.models import ModelSlots

        self._n(p, 0)
        ModelSlots(self.root).rollback(user=self.s.user or "serial", reason="serial")

    def _test_run(self, p, s) -> None:
        from device.runner import Stage, TestRunner

        if not 1 <= len(p) <= 2:
            raise ScpiError(-109 if not p else -108)
        sample = self._str(p[0])
        patient = self._str(p[1]) if len(p) == 2 else None
        runner = TestRunner(self.instr, root=self.root)
        try:
            out = runner.run(operator=self.s.user or "serial", sample_id=sample,
                             patient_id=patient)
        finally:
            runner.close()
        self.last_test = out.uid
        if out.state is not Stage.DONE:
            raise ScpiError(-200, f"test {out.uid[:8]} {out.state}: {out.error}")

    def _test_result(self, p, s) -> str:
        if len(p) > 1:
            raise ScpiError(-108)
        uid = self._str(p[0]) if p else self.last_test
        if not uid:
            raise ScpiError(-221, "no test run in this session; give a test ID")
        with ResultsDB(database_path(self.root)) as db:
            rows = [r[0] for r in db.conn.execute("SELECT uid FROM tests WHERE uid LIKE ? "
                                                  "LIMIT 2", (uid + "%",))]
            if len(rows) != 1:
                raise ScpiError(-224, f"test {uid!r} not found or ambiguous")
            res = db.result_of(rows[0])
        if res is None:
            raise ScpiError(-221, f"test {uid} has no result")
        return quote(json.dumps(res))

    def _sim_sample(self, p, s) -> None:
        from holography.sample import PRESETS

        if self.instr.bench is None:
            raise ScpiError(-241, "this is the real analyzer: insert a real sample")
        if not 1 <= len(p) <= 2:
            raise ScpiError(-109 if not p else -108)
        preset = self._str(p[0]).lower()
        if preset not in PRESETS:
            raise ScpiError(-224, f"preset {preset!r}; use one of {', '.join(PRESETS)}")
        seed = int(self._num(p[1], lo=0, hi=2**31)) if len(p) == 2 else 0
        self.instr.chamber.insert(preset, seed=seed)

    def _sim_remove(self, p, s) -> None:
        if self.instr.bench is None:
            raise ScpiError(-241, "this is the real analyzer")
        self._n(p, 0)
        self.instr.chamber.remove()


class MessageReader:
    """Cut a byte stream into program messages; blocks are carried whole.

    Feed bytes with :meth:`feed`; it returns complete messages (without the
    terminator) and reports framing errors through ``on_error``.
    """

    def __init__(self, on_error: Callable[[ScpiError], None], *, clock=time.monotonic):
        self.buf = bytearray()
        self.on_error = on_error
        self.clock = clock
        self.last = clock()
        self.skipping = False  # dropping the rest of an over-long line

    def _scan(self) -> int | None:
        """Index of the terminating LF of the first message, or None if incomplete."""
        b = self.buf
        i, n = 0, len(b)
        quote_ch = None
        saw_block = False
        while i < n:
            c = b[i]
            if quote_ch is not None:
                if c == quote_ch:
                    quote_ch = None
                elif c == 10:
                    return i  # a string cannot hold LF: let the parser report it
                i += 1
                continue
            if c in (34, 39):
                quote_ch = c
            elif c == 35 and i + 1 < n and 49 <= b[i + 1] <= 57:  # '#1'..'#9'
                nd = b[i + 1] - 48
                digits = bytes(b[i + 2:i + 2 + nd])
                if digits and not digits.isdigit():
                    i += 1  # not a block header: let the parser report it
                    continue
                if i + 2 + nd > n:
                    return None
                if digits.isdigit():
                    size = int(digits)
                    if size > MAX_BLOCK:
                        raise ScpiError(-363, f"block of {size} bytes is above {MAX_BLOCK}")
                    end = i + 2 + nd + size
                    if end > n:
                        return None
                    i = end
                    saw_block = True
                    continue
            elif c == 10:
                if i > MAX_LINE and not saw_block:
                    raise ScpiError(-363, f"message longer than {MAX_LINE} bytes")
                return i
            i += 1
        if n > MAX_LINE and not saw_block and b.find(b"#") < 0:
            raise ScpiError(-363, f"message longer than {MAX_LINE} bytes")
        return None

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the complete messages."""
        now = self.clock()
        if self.buf and now - self.last > STALE_S:
            in_block = b"#" in self.buf
            self.on_error(ScpiError(-160 if in_block else -102,
                                    "incomplete message dropped (connection lost mid-message?)"))
            self.buf.clear()
            self.skipping = False
        self.last = now
        out = []
        if self.skipping:
            k = data.find(b"\n")
            if k < 0:
                return out
            data = data[k + 1:]
            self.skipping = False
        self.buf += data
        while self.buf:
            try:
                end = self._scan()
            except ScpiError as exc:
                self.on_error(exc)
                k = self.buf.find(b"\n")
                if k < 0:
                    self.buf.clear()
                    self.skipping = True
                else:
                    del self.buf[:k + 1]
                continue
            if end is None:
                break
            msg = bytes(self.buf[:end])
            del self.buf[:end + 1]
            if msg.endswith(b"\r"):
                msg = msg[:-1]
            if msg.strip():
                out.append(msg)
        return out

    def stale(self) -> None:
        """Called when nothing arrived for a while: drop a half message after :data:`STALE_S`."""
        if self.buf and self.clock() - self.last > STALE_S:
            self.feed(b"")


def serve(port, service: ScpiService, *, stop: threading.Event | None = None,
          poll_s: float = 0.2) -> None:
    """Answer program messages on ``port`` (anything with ``read(n)``/``write(b)``) until ``stop``."""
    stop = stop or threading.Event()
    reader = MessageReader(service.push_error)
    log.info("serving SCPI on %s", getattr(port, "name", port))
    while not stop.is_set():
        try:
            waiting = getattr(port, "in_waiting", 0)
            data = port.read(max(1, min(waiting, 65536)))
        except (OSError, ValueError) as exc:  # the host went away; keep the port and go on
            log.info("read failed (%s); waiting for the host", exc)
            time.sleep(poll_s)
            reader.buf.clear()
            continue
        if not data:
            reader.stale()
            continue
        for msg in reader.feed(data):
            resp = service.execute(msg)
            if resp is not None:
                try:
                    port.write(resp)
                    getattr(port, "flush", lambda: None)()
                except (OSError, ValueError) as exc:
                    log.info("write failed (%s)", exc)
