"""The results database: durability settings, migrations, audit chain, full and read-only
disks, and power cuts (SIGKILL of a writer process at random moments)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from device.errors import AuditError, StorageError
from device.home import pending_dir
from device.runner import Stage, TestRunner
from device.store import MIGRATIONS, SCHEMA_VERSION, ResultsDB
from holography.capture import read_capture

RESULT = {"format": "holodiff-result/1", "wbc_per_uL": 6500.0, "cells_classified": 400,
          "flags": ["MDW_HIGH"], "differential_5part": {"neutrophil": 60.0, "lymphocyte": 30.0,
                                                        "monocyte": 7.0, "eosinophil": 2.5,
                                                        "basophil": 0.5},
          "differential_3part": {"lymphocyte": 30.0, "monocyte": 7.0, "granulocyte": 63.0},
          "mdw": {"sd_fl": 70.0, "cv_pct": 21.0}, "model": {"name": "wbc5", "version": "1"}}


@pytest.fixture
def db(tmp_path):
    d = ResultsDB(tmp_path / "results.sqlite")
    yield d
    d.close()


def test_durability_settings_and_schema(db):
    c = db.conn
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert c.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert c.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.schema_version() == SCHEMA_VERSION
    assert db.integrity_check() == []


def test_result_round_trip_and_queryable_columns(db):
    t = db.begin_test(operator="n1", sample_id="S1", patient_id="P9")
    db.store_result(t.uid, RESULT, user="n1")
    assert db.result_of(t.uid) == RESULT
    row = db.list_tests(patient_id="P9")[0]
    assert row["wbc_per_ul"] == 6500.0 and row["monocyte_pct"] == 7.0 and row["flags"] == "MDW_HIGH"
    assert db.list_tests(sample_id="S%")[0]["uid"] == t.uid
    with pytest.raises(StorageError):  # one result per test
        db.store_result(t.uid, RESULT, user="n1")
    with pytest.raises(sqlite3.IntegrityError, match="cannot be changed"):
        db.conn.execute("UPDATE results SET wbc_per_ul = 1")


def test_migration_from_version_1_keeps_data(tmp_path):
    path = tmp_path / "old.sqlite"
    c = sqlite3.connect(path, isolation_level=None)
    for stmt in MIGRATIONS[0]:
        c.execute(stmt)
    c.execute("PRAGMA user_version=1")
    c.execute("INSERT INTO tests (uid, sample_id, operator, started, state) "
              "VALUES ('u1', 'S', 'n', '2026-01-01', 'failed')")
    c.close()
    with ResultsDB(path) as db:
        assert db.schema_version() == SCHEMA_VERSION
        assert db.test("u1").sample_id == "S"
        assert db.audit_rows()[-1]["action"] == "schema.migrate"
    c = sqlite3.connect(path)
    c.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    c.commit()
    c.close()
    with pytest.raises(StorageError, match="newer than this software"):
        ResultsDB(path)


def _tamper(db: ResultsDB, sql: str, *args) -> None:
    """What someone with the file and sqlite3 could do: drop the guard, change rows."""
    c = db.conn
    c.execute("DROP TRIGGER audit_no_update")
    c.execute("DROP TRIGGER audit_no_delete")
    c.execute(sql, args)


def _filled(db):
    for i in range(4):
        t = db.begin_test(operator="n1", sample_id=f"S{i}")
        db.store_result(t.uid, RESULT, user="n1")
    return db.verify_audit()


def test_audit_is_append_only(db):
    _filled(db)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.conn.execute("UPDATE audit SET user = 'x' WHERE id = 2")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.conn.execute("DELETE FROM audit WHERE id = 2")


@pytest.mark.parametrize("sql, args, words", [
    ("UPDATE audit SET user = ? WHERE id = 3", ("mallory",), "row 3 was edited"),
    ("UPDATE audit SET reason = ? WHERE id = 5", ("none",), "row 5 was edited"),
    ("DELETE FROM audit WHERE id = 4", (), "missing"),
    ("DELETE FROM audit WHERE id = (SELECT MAX(id) FROM audit)", (), "missing"),
    ("INSERT INTO audit (id, ts, user, action, entity, prev_hash, hash) "
     "VALUES ((SELECT MAX(id) FROM audit) + 1, 't', 'm', 'x', 'y', ?, 'h')", ("0" * 64,),
     "does not follow"),
    ("INSERT INTO audit (id, ts, user, action, entity, prev_hash, hash) "
     "VALUES (100, 't', 'm', 'x', 'y', ?, 'h')", ("0" * 64,), "missing"),
])
def test_audit_chain_detects_tampering(db, sql, args, words):
    n = _filled(db)
    assert n >= 9
    _tamper(db, sql, *args)
    with pytest.raises(AuditError, match=words):
        db.verify_audit()


def test_edited_result_is_detected(db):
    t = db.begin_test(operator="n1", sample_id="S1")
    db.store_result(t.uid, RESULT, user="n1")
    db.conn.execute("DROP TRIGGER results_no_update")
    db.conn.execute("UPDATE results SET result_json = replace(result_json, '6500', '9999')")
    with pytest.raises(AuditError, match="does not match its stored hash"):
        db.result_of(t.uid)


def test_damaged_file_gives_a_clear_error(tmp_path):
    p = tmp_path / "results.sqlite"
    p.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError, match="damaged"):
        ResultsDB(p)


# -- full and read-only disks: the result is kept and stored later ----------------------------
def test_disk_full_keeps_the_result_and_retries(twin, tmp_path, monkeypatch):
    runner = TestRunner(twin, root=tmp_path)
    c = runner.db.conn

    def fill_disk(p):  # once the test has started, the disk fills up (SQLite's own SQLITE_FULL)
        if p.stage is Stage.ANALYSIS:
            c.execute(f"PRAGMA max_page_count={c.execute('PRAGMA page_count').fetchone()[0]}")

    out = runner.run(operator="n", sample_id="FULL-1", cells=True, progress=fill_disk)
    assert out.state is Stage.DONE and not out.stored
    assert "disk is full" in out.error and "kept" in out.error
    assert (pending_dir(tmp_path) / f"{out.uid}.json").exists()
    assert runner.retry_pending() == 1  # still full
    runner.db.conn.execute("PRAGMA max_page_count=1073741823")
    assert runner.retry_pending() == 0
    assert runner.db.result_of(out.uid) == json.loads(json.dumps(out.result))
    assert not list(pending_dir(tmp_path).glob("*.json"))
    runner.close()


def _read_only_during_analysis(runner):
    def hook(p):
        if p.stage is Stage.ANALYSIS:
            runner.db.conn.execute("PRAGMA query_only=1")
    return hook


def test_read_only_database_and_no_spool_space_keep_the_result_in_memory(twin, tmp_path,
                                                                           monkeypatch):
    import device.runner as runner_mod

    runner = TestRunner(twin, root=tmp_path)
    runner.db.conn.execute("PRAGMA query_only=1")
    with pytest.raises(StorageError, match="read-only"):  # refused before the sample is used
        runner.run(operator="n", sample_id="RO-0")
    assert twin.camera.frames_read == 0
    runner.db.conn.execute("PRAGMA query_only=0")

    def no_space(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runner_mod, "spool_result", no_space)
    out = runner.run(operator="n", sample_id="RO-1", progress=_read_only_during_analysis(runner))
    assert not out.stored and "read-only" in out.error
    assert runner.pending == [out]
    runner.db.conn.execute("PRAGMA query_only=0")
    assert runner.retry_pending() == 0
    assert runner.db.result_of(out.uid)["cells_classified"] == out.result["cells_classified"]
    runner.close()


def test_spooled_result_is_stored_by_the_next_runner(twin, tmp_path):
    runner = TestRunner(twin, root=tmp_path)
    out = runner.run(operator="n", sample_id="SP-1", progress=_read_only_during_analysis(runner))
    assert not out.stored
    runner.close()  # the analyzer restarts with the result only in the spool
    again = TestRunner(twin, root=tmp_path)
    assert again.db.result_of(out.uid) is not None
    again.close()


# -- power cuts ----------------------------------------------------------------------------------
WRITER = Path(__file__).with_name("powercut_writer.py")


def _trial(home: Path, mode: str, rng: random.Random, window_s: tuple[float, float]) -> list:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, str(WRITER), str(home), mode], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, env=env, text=True)
    assert p.stdout.readline().strip() == "READY"
    time.sleep(rng.uniform(*window_s))
    os.kill(p.pid, signal.SIGKILL)
    out, _ = p.communicate()
    return [line.split()[1:] for line in out.splitlines() if line.startswith("ACK ")]


def _check_after_restart(home: Path, acked: dict[str, str], checked: set[int]) -> None:
    """After a kill: the file is sound, the chain verifies, every acknowledged result is there
    with its hash, and no stored result is half written (new rows re-hashed, once each)."""
    with ResultsDB(home / "results.sqlite") as db:
        assert db.integrity_check() == []
        db.verify_audit()
        stored = dict(db.conn.execute("SELECT t.uid, r.result_sha256 FROM results r "
                                      "JOIN tests t ON t.id = r.test_id"))
        for uid, sha in acked.items():
            assert stored.get(uid) == sha, f"acknowledged result {uid} lost or changed"
        for rid, text, sha in db.conn.execute("SELECT id, result_json, result_sha256 FROM results"):
            if rid not in checked:
                assert hashlib.sha256(text.encode()).hexdigest() == sha
                checked.add(rid)
        db.recover()
        assert db.conn.execute("SELECT COUNT(*) FROM tests WHERE state = 'running'").fetchone()[0] == 0


def test_power_cut_during_result_writes(tmp_path):
    trials = int(os.environ.get("HOLODIFF_POWERCUT_TRIALS", "12"))
    rng = random.Random(2026)
    acked: dict[str, str] = {}
    checked: set[int] = set()
    for _ in range(trials):
        acked.update(dict(_trial(tmp_path, "results", rng, (0.0, 0.25))))
        _check_after_restart(tmp_path, acked, checked)
    assert len(acked) > trials  # the writer got results out between the kills
    print(f"power cut during result writes: {trials} kills, {len(acked)} acknowledged results kept")


def test_power_cut_during_whole_tests(tmp_path):
    trials = int(os.environ.get("HOLODIFF_POWERCUT_TEST_TRIALS", "3"))
    rng = random.Random(7)
    acked: dict[str, str] = {}
    checked: set[int] = set()
    for _ in range(trials):
        acked.update(dict(_trial(tmp_path, "tests", rng, (1.0, 6.0))))
        _check_after_restart(tmp_path, acked, checked)
        caps = tmp_path / "captures"
        for c in caps.iterdir() if caps.exists() else []:
            if not c.name.startswith("."):
                read_capture(c)  # every capture folder that exists is whole
    runner_partial = list((tmp_path / "captures").glob(".*.partial")) if (
        tmp_path / "captures").exists() else []
    if runner_partial:  # a new runner removes what a cut left half-written
        from device.runner import remove_partial_captures

        assert remove_partial_captures(tmp_path / "captures") == runner_partial
    print(f"power cut during whole tests: {trials} kills, {len(acked)} acknowledged results kept")
