"""``holodiff model`` as the installed console script: keygen, sign, verify, install, list,
rollback, and one-line refusals."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXE = shutil.which("holodiff") or str(Path(sys.executable).parent / "holodiff")
REPO_KEYS = Path(__file__).resolve().parents[2] / "hardware" / "keys"
ONNX = Path(__file__).resolve().parents[2] / "inference" / "models" / "wbc5.onnx"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli-model")
    hw = tmp / "hardware"
    (hw / "keys").mkdir(parents=True)
    for f in REPO_KEYS.glob("*.pub"):
        shutil.copy(f, hw / "keys" / f.name)
    e = dict(os.environ, HOLODIFF_HOME=str(tmp / "home"), HOLODIFF_HARDWARE=str(hw))
    return tmp, e


def run(e, *args):
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, env=e,
                          timeout=600)


def test_keygen_sign_verify_install_rollback(env):
    tmp, e = env
    r = run(e, "model", "keygen", "--private", tmp / "k.key", "--public",
            tmp / "hardware" / "keys" / "k.pub")
    assert r.returncode == 0 and "private" in r.stdout
    assert (os.stat(tmp / "k.key").st_mode & 0o777) == 0o600
    r = run(e, "model", "keygen", "--private", tmp / "k.key", "--public", tmp / "x.pub")
    assert r.returncode == 2 and "refusing to overwrite" in r.stderr
    out = tmp / "wbc5-2.0.0.hdmodel"
    r = run(e, "model", "sign", "--onnx", ONNX, "--version", "2.0.0", "--counter", 10,
            "--key", tmp / "k.key", "--out", out)
    assert r.returncode == 0, r.stderr
    r = run(e, "model", "verify", out, "--json")
    info = json.loads(r.stdout)
    assert info["version"] == "2.0.0" and info["counter"] == 10 and info["software_ok"]
    r = run(e, "model", "list", "--json")
    listed = json.loads(r.stdout)
    assert listed["in_use"].endswith(".hdmodel") and not any(s["verified"] for s in listed["slots"])
    r = run(e, "model", "install", out, "--user", "svc")
    assert r.returncode == 0 and "slot A" in r.stdout and "100.0 %" in r.stdout, r.stderr
    r = run(e, "model", "install", out, "--user", "svc")  # same bundle again: into slot B
    assert r.returncode == 0
    r = run(e, "model", "rollback", "--user", "svc", "--reason", "test")
    assert r.returncode == 0 and "rolled back" in r.stdout
    r = run(e, "model", "list")
    assert "* slot A: wbc5 2.0.0" in r.stdout
    # a tampered copy is refused with one line, and nothing changes
    bad = tmp / "bad.hdmodel"
    data = bytearray(out.read_bytes())
    data[700] ^= 0xFF
    bad.write_bytes(bytes(data))
    r = run(e, "model", "install", bad, "--user", "svc")
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1
    assert "refused" in r.stderr or "not a model bundle" in r.stderr
    assert "* slot A: wbc5 2.0.0" in run(e, "model", "list").stdout
    # analysis uses the active slot
    r = run(e, "results", "audit")
    assert "model.install" in r.stdout and "model.activate" in r.stdout
