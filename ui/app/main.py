"""The touchscreen app: a stack of screens on :class:`ui.app.controller.AppController`.

Long work (a test, a model install) runs in a worker thread; the screens only
receive its progress and outcome through Qt signals, so the UI never blocks
and a test can be cancelled. Every error screen says what happened and what
to do next.
"""

from __future__ import annotations

import threading
import time
import traceback
from pathlib import Path

import numpy as np
from PyQt6.QtCore import QObject, Qt, QThread, QTimer, pyqtSignal
from PyQt6.QtGui import QFont
from PyQt6.QtWidgets import (
    QApplication,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QMainWindow,
    QProgressBar,
    QScrollArea,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from device.errors import LoginError
from holography.errors import HoloDiffError
from holography.sample import WBC_CLASSES as CLASSES
from ui.app.controller import (
    CONTROL,
    FLAG_ADVICE,
    REFERENCE,
    AppController,
    check_patient_id,
    check_sample_id,
)
from ui.app.widgets import TOUCH_PX, Gallery, Histogram, Keypad, Scattergram, touch_button


def _title(text: str) -> QLabel:
    lab = QLabel(text)
    lab.setObjectName("title")
    lab.setWordWrap(True)
    return lab


def _msg() -> QLabel:
    lab = QLabel("")
    lab.setObjectName("message")
    lab.setWordWrap(True)
    return lab


class TestWorker(QObject):
    """Runs one test (or QC run) in a worker thread."""

    __test__ = False
    progress = pyqtSignal(str, str, float)
    finished = pyqtSignal(object, object)  # outcome, error text

    def __init__(self, ctl: AppController, *, sample_id: str, patient_id: str | None):
        super().__init__()
        self.ctl = ctl
        self.sample_id = sample_id
        self.patient_id = patient_id
        self.cancel = threading.Event()

    def run(self) -> None:
        try:
            runner = self.ctl.runner()
            try:
                out = runner.run(operator=self.ctl.session.user if self.ctl.session else "?",
                                 sample_id=self.sample_id, patient_id=self.patient_id, cells=True,
                                 progress=lambda p: self.progress.emit(str(p.stage), p.message,
                                                                       p.fraction),
                                 cancelled=self.cancel.is_set)
            finally:
                runner.close()
            self.finished.emit(out, None)
        except HoloDiffError as exc:
            self.finished.emit(None, str(exc))
        except Exception as exc:  # noqa: BLE001  the UI must say something, not die
            traceback.print_exc()
            self.finished.emit(None, f"Unexpected error ({exc}). Call service.")


class InstallWorker(QObject):
    """Installs a model bundle in a worker thread."""

    finished = pyqtSignal(object)  # message

    def __init__(self, ctl: AppController, path: Path):
        super().__init__()
        self.ctl, self.path = ctl, path

    def run(self) -> None:
        from device.models import ModelSlots

        try:
            rep = ModelSlots(self.ctl.root).install(self.path, user=self.ctl.session.user)
            self.finished.emit(f"Installed {rep.name} {rep.version} in slot {rep.slot}; it passed "
                               f"the golden self-check and is now in use.")
        except HoloDiffError as exc:
            self.finished.emit(f"Not installed: {exc}")


# -- screens -----------------------------------------------------------------------------------
class LoginScreen(QWidget):
    def __init__(self, app: MainWindow):
        super().__init__()
        self.app = app
        lay = QHBoxLayout(self)
        left = QVBoxLayout()
        left.addWidget(_title("HoloDiff - log in"))
        left.addWidget(QLabel("Scan your badge or type your operator ID, then your PIN."))
        self.user = QLineEdit()
        self.user.setPlaceholderText("operator ID")
        self.pin = QLineEdit()
        self.pin.setPlaceholderText("PIN")
        self.pin.setEchoMode(QLineEdit.EchoMode.Password)
        for w in (self.user, self.pin):
            w.setMinimumHeight(TOUCH_PX)
            left.addWidget(w)
        self.msg = _msg()
        left.addWidget(self.msg)
        self.ok = touch_button("Log in", primary=True, name="login")
        self.ok.clicked.connect(self.submit)
        self.pin.returnPressed.connect(self.submit)
        self.user.returnPressed.connect(lambda: self.pin.setFocus())
        left.addWidget(self.ok)
        left.addStretch(1)
        lay.addLayout(left, 3)
        self.keypad = Keypad()
        self.keypad.target = self.pin
        self.user.installEventFilter(self)
        self.pin.installEventFilter(self)
        lay.addWidget(self.keypad, 2)

    def eventFilter(self, obj, ev):  # noqa: N802  (Qt)
        if ev.type() == ev.Type.FocusIn and obj in (self.user, self.pin):
            self.keypad.target = obj
        return False

    def reset(self, message: str = "") -> None:
        self.user.clear()
        self.pin.clear()
        self.msg.setText(message)
        self.user.setFocus()

    def submit(self) -> None:
        try:
            self.app.ctl.login(self.user.text(), self.pin.text())
        except LoginError as exc:
            self.pin.clear()
            self.msg.setText(str(exc))
            return
        self.app.go_home()


class HomeScreen(QWidget):
    def __init__(self, app: MainWindow):
        super().__init__()
        self.app = app
        lay = QVBoxLayout(self)
        self.who = _title("")
        lay.addWidget(self.who)
        self.status = _msg()
        lay.addWidget(self.status)
        grid = QGridLayout()
        self.new = touch_button("New test", primary=True, name="new_test")
        self.hist = touch_button("History", name="history")
        self.qc = touch_button("Daily QC", name="qc")
        self.service = touch_button("Service", name="service")
        self.out = touch_button("Log out", name="logout")
        for i, b in enumerate((self.new, self.hist, self.qc, self.service, self.out)):
            grid.addWidget(b, i // 2, i % 2)
        lay.addLayout(grid)
        lay.addStretch(1)
        self.new.clicked.connect(app.start_new_test)
        self.hist.clicked.connect(app.show_history)
        self.qc.clicked.connect(app.show_qc)
        self.service.clicked.connect(app.show_service)
        self.out.clicked.connect(lambda: app.logout("Logged out."))

    def refresh(self) -> None:
        s = self.app.ctl.session
        self.who.setText(f"Hello {s.user} ({s.role})" if s else "")
        ok, msg = self.app.ctl.can_test()
        self.status.setText(("Ready for patient tests. " if ok else "Patient tests locked: ")
                            + msg + f"\nModel: {self.app.ctl.model_status()}")
        self.service.setVisible(bool(s and s.role in ("service", "engineer")))


class SampleScreen(QWidget):
    def __init__(self, app: MainWindow):
        super().__init__()
        self.app = app
        lay = QHBoxLayout(self)
        left = QVBoxLayout()
        left.addWidget(_title("New test: scan the sample tube"))
        self.sample = QLineEdit()
        self.sample.setPlaceholderText("sample ID (scan the tube label)")
        self.patient = QLineEdit()
        self.patient.setPlaceholderText("patient ID (scan the wristband)")
        for w in (self.sample, self.patient):
            w.setMinimumHeight(TOUCH_PX)
            left.addWidget(w)
            w.installEventFilter(self)
        self.msg = _msg()
        left.addWidget(self.msg)
        row = QHBoxLayout()
        self.back = touch_button("Cancel", name="cancel")
        self.next = touch_button("Next", primary=True, name="next")
        row.addWidget(self.back)
        row.addWidget(self.next)
        left.addLayout(row)
        left.addStretch(1)
        lay.addLayout(left, 3)
        self.keypad = Keypad()
        lay.addWidget(self.keypad, 2)
        self.back.clicked.connect(app.go_home)
        self.next.clicked.connect(self.submit)
        self.sample.returnPressed.connect(lambda: self.patient.setFocus())
        self.patient.returnPressed.connect(self.submit)

    def eventFilter(self, obj, ev):  # noqa: N802  (Qt)
        if ev.type() == ev.Type.FocusIn:
            self.keypad.target = obj
        return False

    def reset(self) -> None:
        self.sample.clear()
        self.patient.clear()
        self.msg.setText("")
        self.sample.setFocus()
        self.keypad.target = self.sample

    def submit(self) -> None:
        try:
            sid = check_sample_id(self.sample.text())
        except ValueError as exc:
            self.msg.setText(str(exc))
            self.sample.selectAll()
            return
        try:
            pid = check_patient_id(self.patient.text())
        except ValueError as exc:
            self.msg.setText(str(exc))
            self.patient.setFocus()
            return
        self.app.confirm_patient(sid, pid)


class ConfirmScreen(QWidget):
    def __init__(self, app: MainWindow):
        super().__init__()
        self.app = app
        lay = QVBoxLayout(self)
        lay.addWidget(_title("Confirm the patient"))
        self.text = QLabel("")
        self.text.setObjectName("big")
        lay.addWidget(self.text)
        lay.addWidget(QLabel("Check the wristband against the tube label before you go on."))
        row = QHBoxLayout()
        self.back = touch_button("Back", name="back")
        self.ok = touch_button("Patient confirmed", primary=True, name="confirm")
        row.addWidget(self.back)
        row.addWidget(self.ok)
        lay.addLayout(row)
        lay.addStretch(1)
        self.back.clicked.connect(app.start_new_test)
        self.ok.clicked.connect(app.ask_insert)

    def show_ids(self, sid: str, pid: str) -> None:
        self.text.setText(f"Patient {pid}\nSample {sid}")


class InsertScreen(QWidget):
    def __init__(self, app: MainWindow):
        super().__init__()
        self.app = app
        lay = QVBoxLayout(self)
        self.head = _title("Insert the sample")
        lay.addWidget(self.head)
        lay.addWidget(QLabel("Put the sample cartridge in the chamber and close the door. The test "
                             "starts by itself."))
        self.msg = _msg()
        lay.addWidget(self.msg)
        row = QHBoxLayout()
        self.cancel = touch_button("Cancel", name="cancel")
        self.sim = touch_button("Insert simulated sample", name="simulate_insert")
        row.addWidget(self.cancel)
        row.addWidget(self.sim)
        lay.addLayout(row)
        lay.addStretch(1)
        self.cancel.clicked.connect(self.stop_and_home)
        self.sim.clicked.connect(self.simulate_insert)
        self.timer = QTimer(self)
        self.timer.setInterval(300)
        self.timer.timeout.connect(self.poll)
        self.preset = "healthy"
        self.seed = 1

    def start(self, *, qc: bool) -> None:
        self.head.setText("Insert the control vial" if qc else "Insert the sample")
        self.msg.setText("")
        self.sim.setVisible(self.app.ctl.instr.simulated)
        self.preset, self.seed = (CONTROL["preset"], CONTROL["seed"]) if qc else (
            self.app.sim_preset, self.app.sim_seed)
        self.timer.start()

    def simulate_insert(self) -> None:
        self.app.ctl.instr.chamber.insert(self.preset, seed=self.seed)

    def stop_and_home(self) -> None:
        self.timer.stop()
        self.app.go_home()

    def poll(self) -> None:
        ch = self.app.ctl.instr.chamber
        try:
            if ch.sample_present() and ch.door_closed():
                self.timer.stop()
                self.app.run_test()
            elif ch.sample_present():
                self.msg.setText("Close the chamber door.")
        except HoloDiffError as exc:
            self.timer.stop()
            self.app.show_error("The chamber sensor does not answer", f"{exc}. Call service.")


class ProgressScreen(QWidget):
    def __init__(self, app: MainWindow):
        super().__init__()
        self.app = app
        lay = QVBoxLayout(self)
        self.head = _title("Measuring")
        lay.addWidget(self.head)
        self.stage = QLabel("")
        lay.addWidget(self.stage)
        self.bar = QProgressBar()
        self.bar.setRange(0, 100)
        self.bar.setMinimumHeight(TOUCH_PX // 2)
        lay.addWidget(self.bar)
        self.left = QLabel("")
        lay.addWidget(self.left)
        lay.addWidget(QLabel("Do not open the chamber while the test runs."))
        self.cancel = touch_button("Cancel test", name="cancel_test")
        lay.addWidget(self.cancel)
        lay.addStretch(1)
        self.cancel.clicked.connect(app.cancel_test)
        self.t0 = time.monotonic()

    def start(self, title: str) -> None:
        self.head.setText(title)
        self.bar.setValue(0)
        self.stage.setText("starting")
        self.left.setText("")
        self.t0 = time.monotonic()

    def update_progress(self, stage: str, message: str, fraction: float) -> None:
        names = {"capture": "Taking the images", "analysis": "Counting and classifying cells",
                 "storage": "Saving the result", "done": "Done"}
        self.stage.setText(f"{names.get(stage, stage)}: {message}")
        self.bar.setValue(int(100 * fraction))
        el = time.monotonic() - self.t0
        if 0.05 < fraction < 1:
            self.left.setText(f"About {max(1, int(el / fraction - el))} s left")


class ResultScreen(QWidget):
    def __init__(self, app: MainWindow):
        super().__init__()
        self.app = app
        self.uid: str | None = None
        lay = QVBoxLayout(self)
        self.head = QLabel("")
        self.head.setObjectName("big")
        lay.addWidget(self.head)
        self.banner = QLabel("")
        self.banner.setObjectName("alert")
        self.banner.setWordWrap(True)
        lay.addWidget(self.banner)
        self.tabs = QTabWidget()
        self.tabs.tabBar().setMinimumHeight(TOUCH_PX)
        # result tab
        res = QWidget()
        rl = QVBoxLayout(res)
        self.wbc = QLabel("")
        self.wbc.setObjectName("big")
        rl.addWidget(self.wbc)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["", "%", "95 % CI", "reference"])
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        rl.addWidget(self.table, 1)
        self.mdw = QLabel("")
        self.mdw.setWordWrap(True)
        rl.addWidget(self.mdw)
        self.flags = QLabel("")
        self.flags.setWordWrap(True)
        rl.addWidget(self.flags)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(res)
        self.tabs.addTab(scroll, "Result")
        # plots tab
        plots = QWidget()
        pl = QHBoxLayout(plots)
        self.scatter = Scattergram()
        self.hist = Histogram()
        pl.addWidget(self.scatter, 3)
        pl.addWidget(self.hist, 2)
        self.tabs.addTab(plots, "Plots")
        # cells tab
        self.gallery = Gallery()
        gs = QScrollArea()
        gs.setWidgetResizable(True)
        gs.setWidget(self.gallery)
        self.tabs.addTab(gs, "Cells")
        lay.addWidget(self.tabs, 1)
        self.msg = _msg()
        lay.addWidget(self.msg)
        row = QHBoxLayout()
        self.send = touch_button("Send to LIS", name="send")
        self.pdf = touch_button("Print (PDF)", name="print")
        self.done = touch_button("Done", primary=True, name="done")
        for b in (self.send, self.pdf, self.done):
            row.addWidget(b)
        lay.addLayout(row)
        self.send.clicked.connect(self.send_lis)
        self.pdf.clicked.connect(self.print_pdf)
        self.done.clicked.connect(app.go_home)

    def show_result(self, uid: str, res: dict, test) -> None:
        self.uid = uid
        self.res = res
        self.msg.setText("")
        cc = res.get("classifier_calibration")
        model = res.get("model", {})
        self.head.setText(f"Patient {test.patient_id or '-'}   sample {test.sample_id}   "
                          f"{test.started[5:16].replace('T', ' ')}\n"
                          f"model {model.get('name', '-')} {model.get('version', '')}, "
                          + (f"site calibration {cc['id']} ({cc['captures']} samples)" if cc
                             else "no site calibration"))
        wbc = res.get("wbc_per_uL")
        lo, hi = REFERENCE["wbc_per_uL"]
        flag = "" if wbc is None or lo <= wbc <= hi else (" LOW" if wbc < lo else " HIGH")
        self.wbc.setText(f"WBC {wbc / 1000:.2f} x10^3/uL{flag}   (reference {lo / 1000:.1f}-"
                         f"{hi / 1000:.1f};  {res['cells_classified']} cells counted)"
                         if wbc is not None else "WBC -")
        rows = [(c, res["differential_5part"][c], res["differential_5part_ci95"][c]) for c in CLASSES]
        rows.append(("granulocytes (3-part)", res["differential_3part"]["granulocyte"],
                     res["differential_3part_ci95"]["granulocyte"]))
        self.table.setRowCount(len(rows))
        under = res.get("under_counted") or {}
        for i, (name, v, ci) in enumerate(rows):
            rlo, rhi = REFERENCE.get(name, (None, None))  # no cited interval for granulocytes
            mark = "" if rlo is None or rlo <= v <= rhi else (" L" if v < rlo else " H")
            mark += " *" if name in under else ""
            for j, text in enumerate((name, f"{v:.1f}{mark}", f"{ci[0]:.1f}-{ci[1]:.1f}",
                                      f"{rlo:g}-{rhi:g}" if rlo is not None else "")):
                self.table.setItem(i, j, QTableWidgetItem(text))
        self.table.resizeColumnsToContents()
        m = res["mdw"]
        if m.get("sd_fl") is not None:
            self.mdw.setText(f"MDW (monocyte volume SD) {m['sd_fl']} fL, CV {m['cv_pct']} % "
                             f"(reference CV <= {REFERENCE['mdw_cv_pct'][1]:g} %; n = {m['n']:.0f})")
        else:
            self.mdw.setText(f"MDW not reported: {m.get('not_reported')}")
        flags = res.get("flags", [])
        self.banner.setText("SEPSIS SCREEN POSITIVE (high MDW): tell the doctor now."
                            if "MDW_HIGH" in flags else "")
        self.banner.setVisible("MDW_HIGH" in flags)
        # CONFIRM_DIFF names the under-counted types and how far under (the result's own line)
        advice = {**FLAG_ADVICE, "CONFIRM_DIFF": "* " + res["flag_details"]["CONFIRM_DIFF"]
                  if res.get("flag_details", {}).get("CONFIRM_DIFF")
                  else FLAG_ADVICE["CONFIRM_DIFF"]}
        self.flags.setText("\n".join(f"- {advice.get(f, f)}" for f in flags) or "No warnings.")
        cells = res.get("cells", [])
        self.scatter.set_cells(cells)
        self.hist.set_volumes([c["volume_fl"] for c in cells if c.get("class") == "monocyte"])
        gal = Path(res["capture"]) / "gallery.npz"
        if gal.exists():
            with np.load(gal) as z:
                self.gallery.set_images(z["images"], [str(c) for c in z["classes"]])
        self.tabs.setCurrentIndex(0)

    def send_lis(self) -> None:
        try:
            self.msg.setText(self.app.ctl.send_to_lis(self.uid))
        except HoloDiffError as exc:
            self.msg.setText(f"Not sent: {exc}")

    def render_report(self, painter, rect) -> None:
        painter.setFont(QFont("Sans", 10))
        lines = [self.head.text(), self.wbc.text(), ""]
        for i in range(self.table.rowCount()):
            lines.append("   ".join(self.table.item(i, j).text() for j in range(4)))
        lines += ["", self.mdw.text(), "", self.flags.text()]
        painter.drawText(rect.adjusted(60, 60, -60, -60), Qt.AlignmentFlag.AlignLeft, "\n".join(lines))

    def print_pdf(self) -> None:
        path = self.app.ctl.root / "reports" / f"{self.uid}.pdf"
        self.app.ctl.export_pdf(self.uid, path, self.render_report)
        self.msg.setText(f"Report saved: {path}")


class ErrorScreen(QWidget):
    def __init__(self, app: MainWindow):
        super().__init__()
        self.app = app
        lay = QVBoxLayout(self)
        self.head = _title("")
        lay.addWidget(self.head)
        self.text = _msg()
        lay.addWidget(self.text)
        row = QHBoxLayout()
        self.home = touch_button("Home", name="home")
        self.again = touch_button("New test", primary=True, name="new_test")
        row.addWidget(self.home)
        row.addWidget(self.again)
        lay.addLayout(row)
        lay.addStretch(1)
        self.home.clicked.connect(app.go_home)
        self.again.clicked.connect(app.start_new_test)

    def show_error(self, head: str, text: str) -> None:
        self.head.setText(head)
        self.text.setText(text)


class HistoryScreen(QWidget):
    def __init__(self, app: MainWindow):
        super().__init__()
        self.app = app
        lay = QVBoxLayout(self)
        lay.addWidget(_title("History"))
        row = QHBoxLayout()
        self.query = QLineEdit()
        self.query.setPlaceholderText("patient or sample ID (scan or type)")
        self.query.setMinimumHeight(TOUCH_PX)
        self.search = touch_button("Search", name="search")
        row.addWidget(self.query, 3)
        row.addWidget(self.search, 1)
        lay.addLayout(row)
        self.list = QListWidget()
        lay.addWidget(self.list, 1)
        row2 = QHBoxLayout()
        self.back = touch_button("Home", name="home")
        self.open = touch_button("Open result", primary=True, name="open")
        row2.addWidget(self.back)
        row2.addWidget(self.open)
        lay.addLayout(row2)
        self.msg = _msg()
        lay.addWidget(self.msg)
        self.search.clicked.connect(self.refresh)
        self.query.returnPressed.connect(self.refresh)
        self.back.clicked.connect(app.go_home)
        self.open.clicked.connect(self.open_selected)
        self.list.itemDoubleClicked.connect(lambda _: self.open_selected())
        self.rows: list[dict] = []

    def refresh(self) -> None:
        self.rows = self.app.ctl.history(self.query.text())
        self.list.clear()
        for r in self.rows:
            wbc = f"WBC {r['wbc_per_ul'] / 1000:.1f}" if r["wbc_per_ul"] else r["state"]
            self.list.addItem(f"{r['started'][:16].replace('T', ' ')}  {r['patient_id'] or '-':12} "
                              f"{r['sample_id']:12} {wbc}  {r['flags'] or ''}")
        self.msg.setText("" if self.rows else "No results found for that ID.")
        if self.rows:
            self.list.setCurrentRow(0)

    def open_selected(self) -> None:
        i = self.list.currentRow()
        if i < 0 or i >= len(self.rows):
            self.msg.setText("Touch a result first.")
            return
        r = self.rows[i]
        if r["result_id"] is None:
            self.msg.setText(f"This test has no result ({r['state']}: {r['error'] or ''}).")
            return
        self.app.open_result(r["uid"])


class QCScreen(QWidget):
    def __init__(self, app: MainWindow):
        super().__init__()
        self.app = app
        lay = QVBoxLayout(self)
        lay.addWidget(_title("Daily quality control"))
        self.status = _msg()
        lay.addWidget(self.status)
        info = QLabel(f"Control lot {CONTROL['lot']}: WBC {CONTROL['wbc_per_uL']:.0f}/uL, "
                      f"neutrophils {CONTROL['neutrophil']:g} %, lymphocytes "
                      f"{CONTROL['lymphocyte']:g} %. Insert a new control vial when asked.")
        info.setWordWrap(True)
        lay.addWidget(info)
        row = QHBoxLayout()
        self.back = touch_button("Home", name="home")
        self.run = touch_button("Run QC test", primary=True, name="run_qc")
        row.addWidget(self.back)
        row.addWidget(self.run)
        lay.addLayout(row)
        lay.addStretch(1)
        self.back.clicked.connect(app.go_home)
        self.run.clicked.connect(app.start_qc)

    def refresh(self, extra: str = "") -> None:
        ok, msg = self.app.ctl.qc_status()
        self.status.setText((extra + "\n" if extra else "") + ("QC OK: " if ok else "") + msg)


class ServiceScreen(QWidget):
    def __init__(self, app: MainWindow):
        super().__init__()
        self.app = app
        lay = QVBoxLayout(self)
        lay.addWidget(_title("Service"))
        self.info = _msg()
        lay.addWidget(self.info)
        self.bundles = QListWidget()
        lay.addWidget(QLabel("Model bundles found (USB stick or $HOLODIFF_HOME/incoming):"))
        lay.addWidget(self.bundles, 1)
        row = QHBoxLayout()
        self.back = touch_button("Home", name="home")
        self.install = touch_button("Install selected", name="install")
        self.rollback = touch_button("Roll back model", name="rollback")
        for b in (self.back, self.install, self.rollback):
            row.addWidget(b)
        lay.addLayout(row)
        self.msg = _msg()
        lay.addWidget(self.msg)
        self.back.clicked.connect(app.go_home)
        self.install.clicked.connect(self.do_install)
        self.rollback.clicked.connect(self.do_rollback)
        self.paths: list[Path] = []

    def refresh(self) -> None:
        from device.models import ModelSlots

        ctl = self.app.ctl
        slots = ModelSlots(ctl.root).list()
        cal_ok, cal = ctl.calibration_status()
        lines = [f"Model in use: {ctl.model_status()}"]
        for s in slots:
            lines.append(f"  slot {s['slot']}{' (active)' if s['active'] else ''}: "
                         + (f"{s['name']} {s['version']} #{s['counter']}" if s["verified"] else "empty"
                            if not s["reason"] or "empty" in s["reason"] else s["reason"]))
        lines.append(f"Calibration: {'OK' if cal_ok else 'NOT OK'} - {cal}")
        self.info.setText("\n".join(lines))
        dirs = [ctl.root / "incoming", *Path("/media").glob("*/*")]
        self.paths = sorted(p for d in dirs if d.is_dir() for p in d.glob("*.hdmodel"))
        self.bundles.clear()
        for p in self.paths:
            self.bundles.addItem(p.name)
        is_service = bool(ctl.session and ctl.session.role == "service")
        self.install.setEnabled(is_service)
        self.rollback.setEnabled(is_service)
        if not is_service:
            self.msg.setText("Model changes need the service role.")

    def do_install(self) -> None:
        i = self.bundles.currentRow()
        if i < 0:
            self.msg.setText("Touch a bundle first.")
            return
        self.msg.setText("Installing and running the golden self-check; this takes a minute ...")
        self.app.run_in_thread(InstallWorker(self.app.ctl, self.paths[i]), self.installed)

    def installed(self, message: str) -> None:
        self.refresh()
        self.msg.setText(message)

    def do_rollback(self) -> None:
        from device.models import ModelSlots

        try:
            b = ModelSlots(self.app.ctl.root).rollback(user=self.app.ctl.session.user,
                                                       reason="touchscreen")
            self.refresh()
            self.msg.setText(f"Rolled back to {b.name} {b.version}.")
        except HoloDiffError as exc:
            self.msg.setText(f"Not rolled back: {exc}")


# -- the window ---------------------------------------------------------------------------------
STYLE = """
QWidget {{ font-size: {base}px; }}
QLabel#title {{ font-size: {title}px; font-weight: bold; }}
QLabel#big {{ font-size: {big}px; font-weight: bold; }}
QLabel#message {{ color: #8a2b00; }}
QLabel#alert {{ background: #b00020; color: white; font-weight: bold; padding: 6px; }}
QPushButton {{ min-height: {touch}px; padding: 4px 12px; border-radius: 6px;
               background: #e8eef4; border: 1px solid #8aa; }}
QPushButton[primary="true"] {{ background: #1565c0; color: white; font-weight: bold; }}
QPushButton:disabled {{ color: #999; }}
QLineEdit {{ min-height: {touch}px; }}
QTabBar::tab {{ min-height: {touch}px; min-width: 120px; }}
"""


class MainWindow(QMainWindow):
    """The app: a stack of screens and the worker thread."""

    def __init__(self, ctl: AppController, *, size: tuple[int, int] = (800, 480)):
        super().__init__()
        self.ctl = ctl
        self.setWindowTitle("HoloDiff")
        self.setFixedSize(*size)
        h = size[1]
        self.setStyleSheet(STYLE.format(base=max(14, h // 30), title=max(20, h // 20),
                                        big=max(18, h // 24), touch=TOUCH_PX))
        self.stack = QStackedWidget()
        self.setCentralWidget(self.stack)
        self.login = LoginScreen(self)
        self.home = HomeScreen(self)
        self.sample = SampleScreen(self)
        self.confirm = ConfirmScreen(self)
        self.insert = InsertScreen(self)
        self.progress = ProgressScreen(self)
        self.result = ResultScreen(self)
        self.error = ErrorScreen(self)
        self.history = HistoryScreen(self)
        self.qc = QCScreen(self)
        self.service = ServiceScreen(self)
        for w in (self.login, self.home, self.sample, self.confirm, self.insert, self.progress,
                  self.result, self.error, self.history, self.qc, self.service):
            self.stack.addWidget(w)
        self.sim_preset, self.sim_seed = "healthy", 1
        self.ids: tuple[str, str] | None = None
        self.qc_mode = False
        self.worker = None
        self.thread: QThread | None = None
        self.idle = QTimer(self)
        self.idle.setInterval(5000)
        self.idle.timeout.connect(self.check_idle)
        self.idle.start()
        QApplication.instance().installEventFilter(self)
        self.login.reset()
        self.stack.setCurrentWidget(self.login)

    # touches keep the session alive
    def eventFilter(self, obj, ev):  # noqa: N802  (Qt)
        if ev.type() in (ev.Type.MouseButtonPress, ev.Type.KeyPress, ev.Type.TouchBegin):
            self.ctl.touch()
        return False

    def check_idle(self) -> None:
        if self.ctl.idle_expired() and self.stack.currentWidget() is not self.progress:
            self.logout("Logged out after 5 minutes without use. Log in again.")

    def logout(self, message: str) -> None:
        self.ctl.logout()
        self.login.reset(message)
        self.stack.setCurrentWidget(self.login)

    def go_home(self) -> None:
        self.home.refresh()
        self.stack.setCurrentWidget(self.home)

    def start_new_test(self) -> None:
        ok, msg = self.ctl.can_test()
        if not ok:
            self.show_error("Patient tests are locked", msg)
            return
        self.sample.reset()
        self.stack.setCurrentWidget(self.sample)

    def confirm_patient(self, sid: str, pid: str) -> None:
        self.ids = (sid, pid)
        self.confirm.show_ids(sid, pid)
        self.stack.setCurrentWidget(self.confirm)

    def ask_insert(self) -> None:
        self.qc_mode = False
        self.insert.start(qc=False)
        self.stack.setCurrentWidget(self.insert)

    def start_qc(self) -> None:
        self.qc_mode = True
        self.ids = (f"QC-{time.strftime('%Y%m%d-%H%M%S')}", None)
        self.insert.start(qc=True)
        self.stack.setCurrentWidget(self.insert)

    def run_in_thread(self, worker: QObject, done) -> None:
        self.thread = QThread(self)
        self.worker = worker
        worker.moveToThread(self.thread)
        self.thread.started.connect(worker.run)
        worker.finished.connect(done)
        worker.finished.connect(self.thread.quit)
        self.thread.start()

    def run_test(self) -> None:
        sid, pid = self.ids
        self.progress.start("Quality control test" if self.qc_mode else f"Testing sample {sid}")
        self.stack.setCurrentWidget(self.progress)
        w = TestWorker(self.ctl, sample_id=sid, patient_id=pid)
        w.progress.connect(self.progress.update_progress)
        self.run_in_thread(w, self.test_done)

    def cancel_test(self) -> None:
        if isinstance(self.worker, TestWorker):
            self.worker.cancel.set()
            self.progress.stage.setText("Cancelling ...")

    def test_done(self, out, error: str | None) -> None:
        from device.runner import Stage

        if error is not None:
            self.show_error("The test could not start", error)
            return
        if out.state is Stage.CANCELLED:
            self.show_error("Test cancelled", "The test was cancelled and nothing was reported. "
                                              "Start a new test with a new sample.")
            return
        if out.state is not Stage.DONE:
            self.show_error("The test did not finish", out.error)
            return
        if self.qc_mode:
            ok, detail = self.ctl.evaluate_qc(out.result)
            self.ctl.record_qc(out.uid, ok, detail)
            self.qc.refresh(("QC PASSED: " if ok else "QC FAILED: ") + detail)
            self.stack.setCurrentWidget(self.qc)
            return
        res, test = self.ctl.result(out.uid) if out.stored else (out.result, None)
        if test is None:
            self.show_error("Result kept but not stored", out.error or "")
            return
        self.result.show_result(out.uid, res, test)
        self.stack.setCurrentWidget(self.result)

    def show_error(self, head: str, text: str) -> None:
        self.error.show_error(head, text)
        self.stack.setCurrentWidget(self.error)

    def show_history(self) -> None:
        self.history.query.clear()
        self.history.refresh()
        self.stack.setCurrentWidget(self.history)

    def open_result(self, uid: str) -> None:
        res, test = self.ctl.result(uid)
        self.result.show_result(uid, res, test)
        self.stack.setCurrentWidget(self.result)

    def show_qc(self) -> None:
        self.qc.refresh()
        self.stack.setCurrentWidget(self.qc)

    def show_service(self) -> None:
        self.service.refresh()
        self.stack.setCurrentWidget(self.service)


def run_app(*, profile: str | None = None, simulated: bool | None = None,
            size: tuple[int, int] = (800, 480), fullscreen: bool = False) -> int:
    """``holodiff ui``."""
    import sys

    from device.instrument import open_instrument

    app = QApplication.instance() or QApplication(sys.argv[:1])
    with open_instrument(profile, simulated=simulated) as instr:
        win = MainWindow(AppController(instr), size=size)
        if fullscreen:
            win.showFullScreen()
        else:
            win.show()
        return app.exec()
