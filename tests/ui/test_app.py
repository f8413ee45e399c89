"""The nurse's touchscreen as a real Qt window (offscreen), at 800x480 and 1280x720.

Every screen is saved as a PNG in ``$HOLODIFF_SCREENSHOT_DIR`` (a temporary folder when unset)
so a person can look at them.
"""

from __future__ import annotations

import os

from PyQt6.QtCore import Qt
from PyQt6.QtWidgets import QLineEdit, QPushButton

from device.runner import Stage
from ui.app.controller import check_patient_id, check_sample_id

TIMEOUT_MS = 180_000


def click(qtbot, button):
    assert button.isVisible() and button.isEnabled(), button.text()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def login(app, qtbot, user, pin):
    app.login.user.setText(user)
    app.login.pin.setText(pin)
    click(qtbot, app.login.ok)


def pass_qc(app):
    app.ctl.record_qc(None, True, "test set-up")


def run_until(app, qtbot, screen):
    qtbot.waitUntil(lambda: app.stack.currentWidget() is screen, timeout=TIMEOUT_MS)


def test_sample_and_patient_id_rules():
    assert check_sample_id(" s-12345674 ") == "S-12345674"
    assert check_sample_id("S12345674") == "S-12345674"
    for bad, words in (("S-12345670", "check digit"), ("XYZ-1", "Unknown barcode"),
                       ("", "Unknown barcode")):
        try:
            check_sample_id(bad)
        except ValueError as exc:
            assert words in str(exc)
        else:
            raise AssertionError(bad)
    assert check_patient_id("mrn0042") == "MRN0042"


def test_whole_nurse_flow_from_log_in_to_result(app, qtbot, tmp_path):
    app.shot("01-login")
    login(app, qtbot, "nurse1", "0000")
    assert "wrong PIN" in app.login.msg.text() and app.stack.currentWidget() is app.login
    app.shot("02-login-wrong-pin")
    login(app, qtbot, "nurse1", "1234")
    assert app.stack.currentWidget() is app.home
    assert "locked" in app.home.status.text() and not app.home.service.isVisible()
    app.shot("03-home-qc-needed")
    click(qtbot, app.home.new)  # QC lock-out: no patient test before the daily QC
    assert app.stack.currentWidget() is app.error and "QC" in app.error.text.text()
    app.shot("04-qc-lockout")
    click(qtbot, app.error.home)
    click(qtbot, app.home.qc)
    app.shot("05-qc")
    click(qtbot, app.qc.run)
    assert app.stack.currentWidget() is app.insert
    app.shot("06-insert-control")
    click(qtbot, app.insert.sim)
    run_until(app, qtbot, app.qc)
    assert "QC PASSED" in app.qc.status.text(), app.qc.status.text()
    app.shot("07-qc-passed")
    click(qtbot, app.qc.back)
    assert "Ready for patient tests" in app.home.status.text()
    app.shot("08-home-ready")
    click(qtbot, app.home.new)
    app.sample.sample.setText("XYZ-99")
    click(qtbot, app.sample.next)
    assert "Unknown barcode" in app.sample.msg.text()
    app.shot("09-unknown-barcode")
    app.sample.sample.setText("S-12345674")
    qtbot.keyClicks(app.sample.patient, "MRN0042")
    click(qtbot, app.sample.next)
    assert app.stack.currentWidget() is app.confirm and "MRN0042" in app.confirm.text.text()
    app.shot("10-confirm-patient")
    click(qtbot, app.confirm.ok)
    app.shot("11-insert-sample")
    seen = []
    app.progress.bar.valueChanged.connect(
        lambda v: seen.append(v) or (len(seen) == 3 and app.shot("12-progress")))
    click(qtbot, app.insert.sim)
    run_until(app, qtbot, app.result)
    assert seen and max(seen) >= 90 and seen == sorted(seen)
    assert "MRN0042" in app.result.head.text() and "WBC" in app.result.wbc.text()
    assert app.result.table.rowCount() == 6 and app.result.scatter.cells
    # the classes the model under-counts are marked, and the warning says what to do
    marked = {app.result.table.item(i, 0).text() for i in range(6)
              if app.result.table.item(i, 1).text().endswith(" *")}
    assert marked and marked == set(app.result.res["under_counted"])
    line = app.result.res["flag_details"]["CONFIRM_DIFF"]
    assert "under-counted" in line and f"- * {line}" in app.result.flags.text()
    app.shot("13-result")
    app.result.tabs.setCurrentIndex(1)
    app.shot("14-result-plots")
    app.result.tabs.setCurrentIndex(2)
    assert app.result.gallery.lay.count() >= 5
    app.shot("15-result-cells")
    app.result.tabs.setCurrentIndex(0)
    click(qtbot, app.result.send)
    assert "No LIS address" in app.result.msg.text()
    click(qtbot, app.result.pdf)
    pdf = app.result.uid and (app.ctl.root / "reports" / f"{app.result.uid}.pdf")
    assert pdf.exists() and pdf.read_bytes().startswith(b"%PDF")
    click(qtbot, app.result.done)
    click(qtbot, app.home.hist)
    app.history.query.setText("MRN0042")
    click(qtbot, app.history.search)
    assert app.history.list.count() == 1
    app.shot("16-history")
    click(qtbot, app.history.open)
    assert app.stack.currentWidget() is app.result
    click(qtbot, app.result.done)
    click(qtbot, app.home.out)
    login(app, qtbot, "svc1", "9876")
    click(qtbot, app.home.service)
    assert "Model in use: wbc5" in app.service.info.text()
    app.shot("17-service")


def test_sample_removed_mid_test(app, qtbot):
    login(app, qtbot, "nurse1", "1234")
    pass_qc(app)
    app.go_home()
    click(qtbot, app.home.new)
    app.sample.sample.setText("S-76543214")
    app.sample.patient.setText("MRN7")
    click(qtbot, app.sample.next)
    click(qtbot, app.confirm.ok)
    app.ctl.instr.chamber.schedule("remove", after_reads=3)
    click(qtbot, app.insert.sim)
    run_until(app, qtbot, app.error)
    assert "did not finish" in app.error.head.text()
    assert "insert a new sample" in app.error.text.text()
    app.shot("18-sample-removed")


def test_analysis_failure_says_what_to_do(app, qtbot, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    (tmp_path / "broken.card.json").write_text('{"classes": ["a"], "input": {"channels": 6, '
                                               '"size": 32}}')
    app.ctl.model = broken
    login(app, qtbot, "nurse1", "1234")
    pass_qc(app)
    app.ctl.instr.chamber.insert("healthy", seed=3)  # already in: the test starts at once
    click(qtbot, app.home.new)
    app.sample.sample.setText("S-12345674")
    app.sample.patient.setText("MRN8")
    click(qtbot, app.sample.next)
    click(qtbot, app.confirm.ok)
    run_until(app, qtbot, app.error)
    assert "reinstall the model" in app.error.text.text()
    app.shot("19-analysis-failed")


def test_cancel_and_failed_qc_lock_out(app, qtbot):
    login(app, qtbot, "nurse1", "1234")
    app.ctl.record_qc(None, False, "out of range: WBC 2000")
    app.go_home()
    assert "QC test failed" in app.home.status.text()
    click(qtbot, app.home.new)
    assert "failed" in app.error.text.text() and "control vial" in app.error.text.text()
    pass_qc(app)
    click(qtbot, app.error.again)
    app.sample.sample.setText("S-12345674")
    app.sample.patient.setText("MRN9")
    click(qtbot, app.sample.next)
    click(qtbot, app.confirm.ok)
    click(qtbot, app.insert.sim)
    qtbot.waitUntil(lambda: app.stack.currentWidget() is app.progress, timeout=10_000)
    click(qtbot, app.progress.cancel)
    run_until(app, qtbot, app.error)
    assert app.error.head.text() == "Test cancelled"
    app.shot("20-cancelled")
    hist = app.ctl.history("MRN9")
    assert hist[0]["state"] == str(Stage.CANCELLED)


def test_idle_log_out(app, qtbot):
    login(app, qtbot, "nurse1", "1234")
    now = [app.ctl.clock()]
    app.ctl.clock = lambda: now[0]
    app.ctl.touch()
    now[0] += 301
    app.check_idle()
    assert app.stack.currentWidget() is app.login and "5 minutes" in app.login.msg.text()
    app.shot("21-idle-logout")


def test_touch_targets_are_at_least_9_mm(app, qtbot):
    """On the 7-inch 800x480 display (154 x 86 mm, 5.2 px/mm) 9 mm is 47 px."""
    if app.size_name != "800x480":
        return
    login(app, qtbot, "svc1", "9876")
    pass_qc(app)
    small = []
    for screen in [app.stack.widget(i) for i in range(app.stack.count())]:
        if screen is app.service:
            app.service.refresh()
        app.stack.setCurrentWidget(screen)
        qtbot.wait(20)
        for w in screen.findChildren(QPushButton) + screen.findChildren(QLineEdit):
            if w.isVisible() and (w.width() < 47 or w.height() < 47):
                small.append((type(screen).__name__, w.text() or w.placeholderText(),
                              w.width(), w.height()))
    assert not small, small


def test_screenshots_folder(shot_dir):
    assert shot_dir.is_dir() and os.access(shot_dir, os.W_OK)


def test_service_installs_a_model_from_the_touchscreen(app, qtbot, tmp_path, monkeypatch):
    """The same install path as the CLI and the serial service, in a worker thread."""
    if app.size_name != "800x480":
        return
    import shutil
    from pathlib import Path

    from inference.bundle import build_bundle, keygen, read_bundle
    from inference.classify import DEFAULT_MODEL

    hw = tmp_path / "hw"
    (hw / "keys").mkdir(parents=True)
    for f in (Path(__file__).resolve().parents[2] / "hardware" / "keys").glob("*.pub"):
        shutil.copy(f, hw / "keys" / f.name)
    keygen(tmp_path / "svc.key", hw / "keys" / "svc.pub")
    monkeypatch.setenv("HOLODIFF_HARDWARE", str(hw))
    shipped = read_bundle(DEFAULT_MODEL)
    (app.ctl.root / "incoming").mkdir()
    build_bundle(app.ctl.root / "incoming" / "wbc5-1.0.1.hdmodel", model=shipped.files["model.onnx"],
                 card=shipped.card(), golden=shipped.golden(), version="1.0.1",
                 counter=shipped.counter + 1,
                 min_software="0.1.0", private_key_path=tmp_path / "svc.key")
    login(app, qtbot, "nurse1", "1234")
    assert not app.home.service.isVisible()  # nurses have no service screen
    click(qtbot, app.home.out)
    login(app, qtbot, "svc1", "9876")
    click(qtbot, app.home.service)
    assert app.service.bundles.count() == 1
    app.service.bundles.setCurrentRow(0)
    click(qtbot, app.service.install)
    qtbot.waitUntil(lambda: "Installed" in app.service.msg.text()
                    or "Not installed" in app.service.msg.text(), timeout=TIMEOUT_MS)
    assert "Installed wbc5 1.0.1 in slot A" in app.service.msg.text(), app.service.msg.text()
    assert "slot A (active): wbc5 1.0.1" in app.service.info.text()
    app.shot("22-service-installed")
    click(qtbot, app.service.rollback)
    assert "no previous model" in app.service.msg.text()


def test_qc_needs_enough_cells_and_values_within_the_allowance(app):
    from ui.app.controller import AppController

    ctl = AppController(app.ctl.instr, root=app.ctl.root)  # the analyzer's own minimum
    res = {"cells_classified": 12, "wbc_per_uL": 7000.0,
           "differential_5part": {"neutrophil": 58.0, "lymphocyte": 30.0}}
    ok, why = ctl.evaluate_qc(res)
    assert not ok and "too few to judge" in why
    res["cells_classified"] = 2000
    assert ctl.evaluate_qc(res)[0]
    res["wbc_per_uL"] = 9000.0  # 29 % high: beyond 15 % + 3 SE of 2000 cells
    ok, why = ctl.evaluate_qc(res)
    assert not ok and "WBC 9000.0" in why
