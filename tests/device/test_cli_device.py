"""``holodiff demo``, ``run`` and ``results`` as the installed console script."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

EXE = shutil.which("holodiff") or str(Path(sys.executable).parent / "holodiff")


def run(*args, home):
    env = dict(os.environ, HOLODIFF_HOME=str(home))
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=600)


def _profile(tmp: Path, size: int) -> Path:
    from device.profiles import load_profile

    d = json.loads(load_profile("demo-imx477").path.read_text())
    d["sensor"].update(width=size, height=size)
    p = tmp / f"small-{size}.json"
    p.write_text(json.dumps(d))
    return p


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("home")
    prof = _profile(tmp, 384)
    r = run("demo", "--profile", prof, "--json", home=tmp)
    assert r.returncode == 0, r.stderr
    demo = json.loads(r.stdout)
    r2 = run("run", "--simulated", "--profile", prof, "--sample-id", "S-123", "--operator", "nurse7",
             "--patient-id", "MRN55", "--preset", "septic", "--seed", 4, "--json", home=tmp)
    assert r2.returncode == 0, r2.stderr
    return tmp, demo, json.loads(r2.stdout), r.stderr


def test_demo_runs_a_whole_test_and_stores_it(home):
    tmp, demo, _, stderr = home
    res = demo["result"]
    assert demo["stored"] and res["format"] == "holodiff-result/1"
    assert Path(res["capture"]).parent == tmp / "captures"
    assert "HoloDiff demo" in stderr and "simulated truth" in stderr and "stored" in stderr
    assert "time to result" in stderr
    truth = json.loads((Path(res["capture"]) / "truth.json").read_text())["wbc_counts_in_frame"]
    n_true = sum(truth.values())
    assert abs(res["cells_classified"] - n_true) <= 0.2 * n_true + 3
    assert set(demo["timing_s"]) >= {"capture", "reconstruction", "detection", "classification",
                                     "storage"}


def test_results_list_show_and_audit(home):
    tmp, demo, run2, _ = home
    r = run("results", "list", "--json", home=tmp)
    rows = json.loads(r.stdout)
    assert [x["uid"] for x in rows] == [run2["test"], demo["test"]]
    assert rows[0]["patient_id"] == "MRN55" and rows[0]["state"] == "done"
    r = run("results", "list", "--patient", "MRN%", home=tmp)
    assert r.returncode == 0 and "MRN55" in r.stdout and "DEMO-" not in r.stdout
    r = run("results", "show", run2["test"][:6], "--json", home=tmp)
    shown = json.loads(r.stdout)
    assert shown["result"] == run2["result"] and shown["test"]["operator"] == "nurse7"
    r = run("results", "verify-audit", home=tmp)
    assert r.returncode == 0 and "chain intact" in r.stdout
    r = run("results", "show", "zzzz", home=tmp)
    assert r.returncode == 2 and "no test matches" in r.stderr and r.stdout == ""


def test_results_export_csv_and_hl7(home):
    tmp, demo, run2, _ = home
    r = run("results", "export", "--csv", "-", home=tmp)
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert {x["test_uid"] for x in rows} == {demo["test"], run2["test"]}
    r = run("results", "export", run2["test"][:8], "--hl7", "-", home=tmp)
    assert r.returncode == 0 and r.stdout.startswith("MSH|^~\\&|HOLODIFF")
    assert "PID|1||MRN55^^^^MR" in r.stdout and "OBX|1|NM|6690-2" in r.stdout
    out = tmp / "x.hl7"
    assert run("results", "export", "--hl7", out, home=tmp).returncode == 0
    assert out.read_bytes().count(b"\rMSH|") == 1  # two messages, CR-separated segments


def test_results_send_over_mllp_is_recorded(home):
    import threading

    from hl7apy.mllp import AbstractHandler, MLLPServer

    tmp, _, run2, _ = home

    class Ack(AbstractHandler):
        def reply(self):
            ctrl = self.incoming_message.split("\r")[0].split("|")[9]
            return f"\x0bMSH|^~\\&|LIS||HOLODIFF||20261124||ACK|1|P|2.5.1\rMSA|AA|{ctrl}\x1c\x0d"

    srv = MLLPServer("127.0.0.1", 0, {"ORU^R01^ORU_R01": (Ack,)})
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        r = run("results", "export", run2["test"], "--send", f"127.0.0.1:{srv.server_address[1]}",
                "--user", "svc", home=tmp)
    finally:
        srv.shutdown()
        srv.server_close()
    assert r.returncode == 0, r.stderr
    shown = json.loads(run("results", "show", run2["test"], "--json", home=tmp).stdout)
    assert shown["lis_sends"][-1]["status"] == "acked"
    r = run("results", "export", run2["test"], "--send", f"127.0.0.1:{srv.server_address[1]}",
            "--retries", 0, home=tmp)
    assert r.returncode == 2 and "did not accept" in r.stderr
    shown = json.loads(run("results", "show", run2["test"], "--json", home=tmp).stdout)
    assert shown["lis_sends"][-1]["status"] == "failed"


def test_tampered_audit_fails_verification(home, tmp_path):
    tmp = home[0]
    copy = tmp_path / "h"
    shutil.copytree(tmp, copy, ignore=shutil.ignore_patterns("captures"))
    c = sqlite3.connect(copy / "results.sqlite")
    c.execute("DROP TRIGGER audit_no_update")
    c.execute("UPDATE audit SET user = 'mallory' WHERE id = 3")
    c.commit()
    c.close()
    r = run("results", "verify-audit", home=copy)
    assert r.returncode == 2 and "row 3 was edited" in r.stderr and r.stdout == ""


def test_run_with_a_bad_profile_says_which(tmp_path):
    r = run("run", "--simulated", "--profile", "nonesuch", home=tmp_path)
    assert r.returncode == 2 and "no hardware profile 'nonesuch'" in r.stderr and r.stdout == ""


def test_results_before_any_test_says_what_to_do(tmp_path):
    r = run("results", "list", home=tmp_path)
    assert r.returncode == 2 and "run a test first" in r.stderr
