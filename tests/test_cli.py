"""The ``holodiff`` command, run as the installed console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXE = shutil.which("holodiff") or str(Path(sys.executable).parent / "holodiff")


def run(*args, home=None):
    env = dict(os.environ)
    if home is not None:
        env["HOLODIFF_HOME"] = str(home)
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=600)


def test_help_for_every_command():
    for cmd in ("demo", "run", "results", "simulate", "reconstruct", "analyze", "evaluate"):
        r = run(cmd, "--help")
        assert r.returncode == 0 and "usage: holodiff" in r.stdout


def test_simulate_then_reconstruct_json(tmp_path):
    r = run("simulate", "--out", tmp_path / "c", "--width", 256, "--height", 256, "--seed", 3,
            "--sensor", "imx219", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["frames"] == 3
    r = run("reconstruct", tmp_path / "c", "--json", "--pictures", tmp_path / "pics")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["flags"] == [] and rep["tiles"] == 1
    assert 900 < rep["sample_distance_um"] < 960
    assert sorted(p.name for p in (tmp_path / "pics").iterdir()) == [
        "blue_amplitude.png", "blue_phase.png", "green_amplitude.png", "green_phase.png",
        "hologram_blue_raw.png", "red_amplitude.png", "red_phase.png"]
    assert "sample distance" in r.stderr  # progress goes to stderr


def test_bad_capture_fails_with_one_line_and_empty_stdout(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "capture.json").write_text('{"format": "holodiff-capture/1"}')
    r = run("reconstruct", tmp_path / "c", "--json")
    assert r.returncode != 0
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "capture.json" in lines[0] and "missing" in lines[0]


def test_simulate_refuses_an_existing_folder(tmp_path):
    (tmp_path / "c").mkdir()
    r = run("simulate", "--out", tmp_path / "c", "--width", 64, "--height", 64)
    assert r.returncode != 0 and "already exists" in r.stderr and r.stdout == ""


@pytest.mark.parametrize("fault", ["defocused", "saturated"])
def test_simulated_faults_are_reported(tmp_path, fault):
    r = run("simulate", "--out", tmp_path / "c", "--width", 384, "--height", 384, "--fault",
            fault, "--seed", 4)
    assert r.returncode == 0, r.stderr
    rep = json.loads(run("reconstruct", tmp_path / "c", "--json").stdout)
    if fault == "saturated":
        assert "SATURATED" in rep["flags"]
    else:
        assert rep["flags"] == [] and rep["sample_distance_um"] > 900


def test_analyze_json_several_captures_and_a_bad_one(tmp_path):
    for name, seed in (("a", 21), ("b", 22)):
        r = run("simulate", "--out", tmp_path / name, "--width", 256, "--height", 256, "--seed",
                seed, "--preset", "lymphocytosis")
        assert r.returncode == 0, r.stderr
    r = run("analyze", tmp_path / "a", tmp_path / "b", "--json", "--cells", "--jobs", 2)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2
    res = [json.loads(x) for x in lines]
    assert [Path(x["capture"]).name for x in res] == ["a", "b"]
    for x in res:
        assert x["format"] == "holodiff-result/1" and len(x["cells"]) == x["cells_detected"]
        assert x["timing_s"]["total"] > 0
    # a damaged capture: one line on stderr, nothing on stdout, non-zero exit
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "capture.json").write_text("{not json")
    r = run("analyze", tmp_path / "bad", "--json")
    assert r.returncode != 0 and r.stdout == ""
    errors = [x for x in r.stderr.splitlines() if "error" in x]
    assert len(errors) == 1 and "capture.json" in errors[0]
    # with a good one beside it, the good result is still printed
    r = run("analyze", tmp_path / "a", tmp_path / "bad", "--json", "--jobs", 1)
    assert r.returncode != 0 and len(r.stdout.strip().splitlines()) == 1
    # human-readable report without --json
    r = run("analyze", tmp_path / "a")
    assert r.returncode == 0 and "lymphocyte" in r.stdout and "95 % CI" in r.stdout


def test_analyze_refuses_a_broken_model(tmp_path):
    r = run("simulate", "--out", tmp_path / "a", "--width", 64, "--height", 64)
    (tmp_path / "m.onnx").write_bytes(b"garbage")
    (tmp_path / "m.card.json").write_text('{"classes": ["a"], "input": {"channels": 6, "size": 32}}')
    r = run("analyze", tmp_path / "a", "--model", tmp_path / "m.onnx", "--json")
    assert r.returncode != 0 and r.stdout == "" and "cannot be loaded" in r.stderr


def test_reconstruct_with_phase_retrieval(tmp_path):
    r = run("simulate", "--out", tmp_path / "c", "--width", 384, "--height", 384, "--seed", 7)
    assert r.returncode == 0, r.stderr
    r = run("reconstruct", tmp_path / "c", "--json", "--retrieve", 256, "--pictures",
            tmp_path / "pics")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert set(rep["retrieval"]) == {"blue", "green", "red"}
    assert all(v["twin_reduction"] > 2.0 for v in rep["retrieval"].values())
    assert (tmp_path / "pics" / "green_retrieved_phase.png").is_file()
    bad = run("reconstruct", tmp_path / "c", "--retrieve", 8)
    assert bad.returncode != 0 and "at least 64 px" in bad.stderr and bad.stdout == ""
