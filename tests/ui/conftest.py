"""Fixtures of the UI tests: the app on a small simulated analyzer, screenshots."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from device.instrument import simulated_instrument
from device.profiles import load_profile, parse_profile
from device.store import ResultsDB
from ui.app.controller import AppController
from ui.app.main import MainWindow

SIZES = {"800x480": (800, 480), "1280x720": (1280, 720)}


@pytest.fixture(scope="session")
def shot_dir():
    d = Path(os.environ.get("HOLODIFF_SCREENSHOT_DIR") or tempfile.mkdtemp(prefix="hd-shots-"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(params=list(SIZES))
def app(request, qtbot, tmp_path, shot_dir):
    """The app on a 256x256 twin, with a nurse, an engineer and a service user."""
    d = json.loads(load_profile("demo-imx477").path.read_text())
    d["sensor"].update(width=256, height=256)
    instr = simulated_instrument(parse_profile(d))
    with ResultsDB(tmp_path / "results.sqlite") as db:
        db.add_user("nurse1", role="nurse", pin="1234", by="console")
        db.add_user("svc1", role="service", pin="9876", by="console")
    # the 256x256 test window counts about ten cells: the flow tests accept such a short QC count
    # (test_qc_needs_enough_cells checks the real minimum)
    ctl = AppController(instr, root=tmp_path, qc_min_cells=5)
    win = MainWindow(ctl, size=SIZES[request.param])
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    win.size_name = request.param

    def shot(name: str) -> Path:
        qtbot.wait(50)
        p = shot_dir / f"{name}-{request.param}.png"
        assert win.grab().save(str(p)), p
        return p

    win.shot = shot
    yield win
    win.close()
    instr.close()
