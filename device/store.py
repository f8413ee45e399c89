"""The results database: tests, results and a hash-chained audit log in SQLite.

Durability: WAL journal, ``synchronous=FULL`` (every commit is on disk before
the call returns, so a result that was acknowledged survives a power cut),
foreign keys on, one transaction per state change. The schema is versioned
with ``PRAGMA user_version`` and migrated forward in order at open.

Audit log: append-only (triggers refuse ``UPDATE`` and ``DELETE``), and each
row carries ``hash = SHA-256(prev_hash | canonical JSON of the row)``, so a row
edited, deleted or inserted behind the triggers' back breaks the chain; the
``AUTOINCREMENT`` counter also exposes a deleted last row. This is the
tamper-evident log idea of Schneier & Kelsey, "Secure audit logs to support
computer forensics", ACM TISSEC 2(2):159, 1999 (without their key evolution:
the analyzer has no secret to hide the log from its own administrator).

Failures to write (disk full, read-only file system, damaged file) raise
:class:`StorageError` with what to do; callers keep the result and retry
(:func:`spool_result`, :meth:`ResultsDB.ingest_spool`), they never drop it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from device.errors import AuditError, LoginError, StorageError
from holography.sample import WBC_CLASSES as CLASSES

GENESIS = "0" * 64

#: schema migrations, applied in order; version N is after the first N
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE tests (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            uid TEXT NOT NULL UNIQUE,
            sample_id TEXT NOT NULL,
            patient_id TEXT,
            operator TEXT NOT NULL,
            started TEXT NOT NULL,
            finished TEXT,
            state TEXT NOT NULL CHECK (state IN ('running', 'done', 'failed', 'cancelled')),
            capture_path TEXT,
            error TEXT)""",
        "CREATE INDEX tests_sample ON tests (sample_id)",
        "CREATE INDEX tests_patient ON tests (patient_id)",
        """CREATE TABLE results (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            test_id INTEGER NOT NULL UNIQUE REFERENCES tests (id) ON DELETE RESTRICT,
            created TEXT NOT NULL,
            wbc_per_ul REAL,
            neutrophil_pct REAL, lymphocyte_pct REAL, monocyte_pct REAL,
            eosinophil_pct REAL, basophil_pct REAL, granulocyte_pct REAL,
            mdw_sd_fl REAL,
            cells_classified INTEGER NOT NULL,
            flags TEXT NOT NULL,
            model_name TEXT, model_version TEXT, model_sha256 TEXT,
            calibration_id TEXT,
            result_json TEXT NOT NULL,
            result_sha256 TEXT NOT NULL)""",
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts TEXT NOT NULL,
            user TEXT NOT NULL,
            action TEXT NOT NULL,
            entity TEXT NOT NULL,
            old_value TEXT,
            new_value TEXT,
            reason TEXT,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL UNIQUE)""",
        """CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
           BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
        """CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
           BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
        """CREATE TRIGGER results_no_update BEFORE UPDATE ON results
           BEGIN SELECT RAISE(ABORT, 'a stored result cannot be changed'); END""",
        """CREATE TRIGGER results_no_delete BEFORE DELETE ON results
           BEGIN SELECT RAISE(ABORT, 'a stored result cannot be deleted'); END""",
    ),
    (
        # version 2: LIS transmissions, so that an unsent result is retried
        """CREATE TABLE lis_sends (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            result_id INTEGER NOT NULL REFERENCES results (id),
            ts TEXT NOT NULL,
            destination TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('acked', 'rejected', 'failed')),
            detail TEXT)""",
        "CREATE INDEX lis_sends_result ON lis_sends (result_id)",
    ),
    (
        # version 3: operators with roles and hashed PINs
        """CREATE TABLE users (
            id TEXT PRIMARY KEY,
            role TEXT NOT NULL CHECK (role IN ('nurse', 'engineer', 'service')),
            pin_salt BLOB NOT NULL,
            pin_hash BLOB NOT NULL,
            created TEXT NOT NULL,
            disabled INTEGER NOT NULL DEFAULT 0,
            failures INTEGER NOT NULL DEFAULT 0,
            locked_until TEXT)""",
    ),
    (
        # version 4: daily quality-control runs (control material through a whole test)
        """CREATE TABLE qc_runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts TEXT NOT NULL,
            user TEXT NOT NULL,
            lot TEXT NOT NULL,
            test_uid TEXT,
            passed INTEGER NOT NULL,
            detail TEXT NOT NULL)""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def now_iso() -> str:
    """UTC time, ISO 8601 with milliseconds and ``Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def audit_hash(prev_hash: str, row: dict[str, Any]) -> str:
    """Chain hash of one audit row (``ts, user, action, entity, old_value, new_value, reason``)."""
    body = {k: row[k] for k in ("ts", "user", "action", "entity", "old_value", "new_value",
                                "reason")}
    return hashlib.sha256((prev_hash + "|" + _canonical(body)).encode()).hexdigest()


def _storage_error(exc: sqlite3.Error, path: Path, doing: str) -> StorageError:
    msg = str(exc).lower()
    if "full" in msg:
        why = "the disk is full; free space (delete old captures) or call service"
    elif "readonly" in msg or "read-only" in msg:
        why = "the database is read-only (file system mounted read-only?); call service"
    elif "not a database" in msg or "malformed" in msg or "corrupt" in msg:
        why = "the database file is damaged; call service to restore it from backup"
    elif "locked" in msg or "busy" in msg:
        why = "the database is busy in another program; try again"
    else:
        why = f"{exc}; call service"
    return StorageError(f"{path}: cannot {doing}: {why}")


@dataclass(frozen=True, slots=True, kw_only=True)
class TestRecord:
    """One test as stored."""

    __test__ = False  # not a pytest class

    id: int
    uid: str
    sample_id: str
    patient_id: str | None
    operator: str
    started: str
    finished: str | None
    state: str
    capture_path: str | None
    error: str | None


class ResultsDB:
    """The analyzer's results database (one file, shared by every process with the same home).

    Parameters
    ----------
    path : path-like
        The SQLite file (created with its folder when missing).
    timeout_s : float
        How long to wait for another process's write lock.

    Raises
    ------
    StorageError
        If the file cannot be opened, is not a database, or is newer than this software.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout_s: float = 10.0):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None,
                                        check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"{self.path}: cannot open the results database ({exc}); check "
                               f"HOLODIFF_HOME and the disk") from None
        self.conn.row_factory = sqlite3.Row
        try:
            mode = self.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StorageError(f"{self.path}: the file system does not support WAL journals "
                                   f"(got {mode}); put HOLODIFF_HOME on a local disk")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.Error as exc:
            self.conn.close()
            raise _storage_error(exc, self.path, "open the results database") from None

    # -- plumbing --------------------------------------------------------------
    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def __enter__(self) -> ResultsDB:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self, doing: str) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` and :class:`StorageError`)."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _storage_error(exc, self.path, doing) from None
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise _storage_error(exc, self.path, doing) from None
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise

    def schema_version(self) -> int:
        """The schema version of the file (``PRAGMA user_version``)."""
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise StorageError(f"{self.path}: the database has schema version {version}, newer "
                               f"than this software ({SCHEMA_VERSION}); update the software")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self.transaction(f"migrate the database to schema version {target}") as c:
                for stmt in MIGRATIONS[target - 1]:
                    c.execute(stmt)
                c.execute(f"PRAGMA user_version={target}")
                self._audit(c, user="system", action="schema.migrate", entity="database",
                            old=str(target - 1), new=str(target), reason="software start")

    def integrity_check(self) -> list[str]:
        """``PRAGMA integrity_check`` and ``foreign_key_check``: ``[]`` when the file is sound."""
        rows = [r[0] for r in self.conn.execute("PRAGMA integrity_check")]
        bad = [] if rows == ["ok"] else rows
        bad += [f"foreign key: {tuple(r)}" for r in self.conn.execute("PRAGMA foreign_key_check")]
        return bad

    # -- audit -----------------------------------------------------------------
    def _audit(self, c: sqlite3.Connection, *, user: str, action: str, entity: str,
               old: str | None = None, new: str | None = None, reason: str | None = None) -> None:
        last = c.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        prev = last[0] if last else GENESIS
        row = {"ts": now_iso(), "user": user, "action": action, "entity": entity,
               "old_value": old, "new_value": new, "reason": reason}
        c.execute("INSERT INTO audit (ts, user, action, entity, old_value, new_value, reason, "
                  "prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (row["ts"], user, action, entity, old, new, reason, prev, audit_hash(prev, row)))

    def audit(self, *, user: str, action: str, entity: str, old: str | None = None,
              new: str | None = None, reason: str | None = None) -> None:
        """Append one audit row (who, what, on what, old and new value, why)."""
        with self.transaction("write the audit log") as c:
            self._audit(c, user=user, action=action, entity=entity, old=old, new=new,
                        reason=reason)

    def audit_rows(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The audit log, oldest first (the last ``limit`` rows when given)."""
        if limit is None:
            rows = self.conn.execute("SELECT * FROM audit ORDER BY id").fetchall()
        else:
            rows = self.conn.execute("SELECT * FROM (SELECT * FROM audit ORDER BY id DESC "
                                     "LIMIT ?) ORDER BY id", (limit,)).fetchall()
        return [dict(r) for r in rows]

    def verify_audit(self) -> int:
        """Check the whole chain; return the number of rows.

        Raises
        ------
        AuditError
            At the first row whose hash or link does not verify, or a missing row.
        """
        prev = GENESIS
        expected_id = None
        n = 0
        for r in self.conn.execute("SELECT * FROM audit ORDER BY id"):
            row = dict(r)
            if expected_id is not None and row["id"] != expected_id:
                raise AuditError(f"audit log: rows {expected_id}-{row['id'] - 1} are missing "
                                 f"(deleted); report this to the laboratory supervisor")
            if row["prev_hash"] != prev:
                raise AuditError(f"audit log: row {row['id']} does not follow row "
                                 f"{row['id'] - 1} (a row was deleted or inserted); report this "
                                 f"to the laboratory supervisor")
            if audit_hash(prev, row) != row["hash"]:
                raise AuditError(f"audit log: row {row['id']} was edited after it was written; "
                                 f"report this to the laboratory supervisor")
            prev = row["hash"]
            expected_id = row["id"] + 1
            n += 1
        seq = self.conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'audit'").fetchone()
        if seq is not None and expected_id is not None and seq[0] != expected_id - 1:
            raise AuditError(f"audit log: rows {expected_id}-{seq[0]} are missing (deleted); "
                             f"report this to the laboratory supervisor")
        if seq is not None and seq[0] > 0 and n == 0:
            raise AuditError("audit log: every row was deleted; report this to the laboratory "
                             "supervisor")
        return n

    # -- tests and results -----------------------------------------------------
    def begin_test(self, *, operator: str, sample_id: str, patient_id: str | None = None,
                   uid: str | None = None) -> TestRecord:
        """Record that a test started (state ``running``)."""
        uid = uid or uuid.uuid4().hex
        started = now_iso()
        with self.transaction("record the start of a test") as c:
            c.execute("INSERT INTO tests (uid, sample_id, patient_id, operator, started, state) "
                      "VALUES (?, ?, ?, ?, ?, 'running')",
                      (uid, sample_id, patient_id, operator, started))
            self._audit(c, user=operator, action="test.start", entity=f"test:{uid}",
                        new=_canonical({"sample_id": sample_id, "patient_id": patient_id}))
        return self.test(uid)

    def store_result(self, uid: str, result: dict[str, Any], *, user: str,
                     capture_path: str | None = None) -> int:
        """Store a test's result and mark the test ``done``; return the result's row id.

        The result, the test's state and the audit row are one transaction:
        when this returns the result is on disk; if it raises, nothing of it is.
        """
        text = _canonical(result)
        sha = hashlib.sha256(text.encode()).hexdigest()
        d5 = result.get("differential_5part") or {}
        d3 = result.get("differential_3part") or {}
        model = result.get("model") or {}
        calib = result.get("calibration") or {}
        with self.transaction("store the result") as c:
            t = c.execute("SELECT id, state FROM tests WHERE uid = ?", (uid,)).fetchone()
            if t is None:
                raise StorageError(f"no test {uid} in {self.path}; start the test again")
            cur = c.execute(
                "INSERT INTO results (test_id, created, wbc_per_ul, neutrophil_pct, lymphocyte_pct,"
                " monocyte_pct, eosinophil_pct, basophil_pct, granulocyte_pct, mdw_sd_fl,"
                " cells_classified, flags, model_name, model_version, model_sha256,"
                " calibration_id, result_json, result_sha256)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (t["id"], now_iso(), result.get("wbc_per_uL"), *(d5.get(k) for k in CLASSES),
                 d3.get("granulocyte"), (result.get("mdw") or {}).get("sd_fl"),
                 int(result.get("cells_classified", 0)), " ".join(result.get("flags", [])),
                 model.get("name"), model.get("version"), model.get("sha256"), calib.get("id"),
                 text, sha))
            c.execute("UPDATE tests SET state = 'done', finished = ?, capture_path = "
                      "COALESCE(?, capture_path) WHERE id = ?", (now_iso(), capture_path, t["id"]))
            self._audit(c, user=user, action="result.store", entity=f"test:{uid}",
                        old=t["state"], new=f"done sha256={sha}")
            return int(cur.lastrowid)

    def end_test(self, uid: str, *, state: str, error: str, user: str) -> None:
        """Mark a test ``failed`` or ``cancelled`` with the reason the operator was shown."""
        if state not in ("failed", "cancelled"):
            raise ValueError(f"state must be failed or cancelled, not {state!r}")
        with self.transaction("record the end of a test") as c:
            old = c.execute("SELECT state FROM tests WHERE uid = ?", (uid,)).fetchone()
            if old is None:
                raise StorageError(f"no test {uid} in {self.path}")
            c.execute("UPDATE tests SET state = ?, finished = ?, error = ? WHERE uid = ?",
                      (state, now_iso(), error, uid))
            self._audit(c, user=user, action=f"test.{state}", entity=f"test:{uid}",
                        old=old[0], new=state, reason=error)

    def recover(self) -> list[str]:
        """At start: tests left ``running`` by a crash or power cut become ``failed``."""
        uids = [r[0] for r in self.conn.execute(
            "SELECT t.uid FROM tests t LEFT JOIN results r ON r.test_id = t.id "
            "WHERE t.state = 'running' AND r.id IS NULL")]
        for uid in uids:
            self.end_test(uid, state="failed", user="system",
                          error="interrupted (power cut or crash) before a result; repeat the "
                                "test with a new sample")
        return uids

    def _test_from_row(self, r: sqlite3.Row) -> TestRecord:
        return TestRecord(**{k: r[k] for k in TestRecord.__slots__})

    def test(self, uid: str) -> TestRecord:
        """One test by its uid."""
        r = self.conn.execute("SELECT * FROM tests WHERE uid = ?", (uid,)).fetchone()
        if r is None:
            raise StorageError(f"no test {uid} in {self.path}; check the id with "
                               f"'holodiff results list'")
        return self._test_from_row(r)

    def result_of(self, uid: str) -> dict[str, Any] | None:
        """The stored result JSON of a test (``None`` if it has none); its hash is checked."""
        r = self.conn.execute("SELECT r.result_json, r.result_sha256 FROM results r JOIN tests t "
                              "ON t.id = r.test_id WHERE t.uid = ?", (uid,)).fetchone()
        if r is None:
            return None
        if hashlib.sha256(r[0].encode()).hexdigest() != r[1]:
            raise AuditError(f"result of test {uid} does not match its stored hash (edited); "
                             f"report this to the laboratory supervisor")
        return json.loads(r[0])

    def list_tests(self, *, patient_id: str | None = None, sample_id: str | None = None,
                   state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Tests, newest first, with their result's headline columns."""
        where, args = [], []
        for col, v in (("t.patient_id", patient_id), ("t.sample_id", sample_id), ("t.state", state)):
            if v is not None:
                where.append(f"{col} LIKE ?" if "%" in v else f"{col} = ?")
                args.append(v)
        sql = ("SELECT t.uid, t.sample_id, t.patient_id, t.operator, t.started, t.state, t.error,"
               " r.id AS result_id, r.wbc_per_ul, r.neutrophil_pct, r.lymphocyte_pct,"
               " r.monocyte_pct, r.eosinophil_pct, r.basophil_pct, r.mdw_sd_fl, r.flags,"
               " r.cells_classified FROM tests t LEFT JOIN results r ON r.test_id = t.id"
               + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY t.id DESC LIMIT ?")
        return [dict(r) for r in self.conn.execute(sql, (*args, limit))]

    def record_send(self, uid: str, *, destination: str, status: str, detail: str,
                    user: str) -> None:
        """Record one LIS transmission of a test's result."""
        with self.transaction("record an LIS transmission") as c:
            r = c.execute("SELECT r.id FROM results r JOIN tests t ON t.id = r.test_id "
                          "WHERE t.uid = ?", (uid,)).fetchone()
            if r is None:
                raise StorageError(f"test {uid} has no stored result to send")
            c.execute("INSERT INTO lis_sends (result_id, ts, destination, status, detail) "
                      "VALUES (?, ?, ?, ?, ?)", (r[0], now_iso(), destination, status, detail))
            self._audit(c, user=user, action=f"lis.{status}", entity=f"test:{uid}",
                        new=destination, reason=detail)

    def sends(self, uid: str) -> list[dict[str, Any]]:
        """LIS transmissions of a test's result, oldest first."""
        return [dict(r) for r in self.conn.execute(
            "SELECT s.* FROM lis_sends s JOIN results r ON r.id = s.result_id JOIN tests t "
            "ON t.id = r.test_id WHERE t.uid = ? ORDER BY s.id", (uid,))]

    # -- operators --------------------------------------------------------------
    def add_user(self, user_id: str, *, role: str, pin: str, by: str) -> None:
        """Add an operator (or replace their PIN and role); audited."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,32}", user_id):
            raise ValueError("operator ID: 1-32 letters, digits, '.', '_' or '-'")
        if not re.fullmatch(r"\d{4,8}", pin):
            raise ValueError("PIN: 4 to 8 digits")
        salt = os.urandom(16)
        with self.transaction("store the operator") as c:
            old = c.execute("SELECT role FROM users WHERE id = ?", (user_id,)).fetchone()
            c.execute("INSERT OR REPLACE INTO users (id, role, pin_salt, pin_hash, created) "
                      "VALUES (?, ?, ?, ?, ?)", (user_id, role, salt, _pin_hash(pin, salt), now_iso()))
            self._audit(c, user=by, action="user.set", entity=f"user:{user_id}",
                        old=old[0] if old else None, new=role)

    def users(self) -> list[dict[str, Any]]:
        """Operators and their roles (no PIN material)."""
        return [dict(r) for r in self.conn.execute(
            "SELECT id, role, created, disabled, locked_until FROM users ORDER BY id")]

    def login(self, user_id: str, pin: str, *, via: str) -> str:
        """Check an operator's PIN; return their role.

        Five wrong PINs in a row lock the operator for :data:`LOCKOUT_MIN` minutes.

        Raises
        ------
        LoginError
            Unknown operator, wrong PIN, disabled or locked (one message for the first two).
        """
        r = self.conn.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone()
        now = datetime.now(UTC)
        if r is not None and r["locked_until"] and now.isoformat() < r["locked_until"]:
            raise LoginError(f"operator {user_id} is locked after repeated wrong PINs until "
                             f"{r['locked_until'][11:16]} UTC; ask a supervisor")
        if r is None or r["disabled"] or not hmac.compare_digest(
                _pin_hash(pin, r["pin_salt"]), r["pin_hash"]):
            if r is not None:
                fails = r["failures"] + 1
                locked = ((now + timedelta(minutes=LOCKOUT_MIN)).isoformat()
                          if fails >= MAX_FAILURES else None)
                with self.transaction("record a failed log-in") as c:
                    c.execute("UPDATE users SET failures = ?, locked_until = ? WHERE id = ?",
                              (0 if locked else fails, locked, user_id))
                    self._audit(c, user=user_id, action="login.failed", entity=f"user:{user_id}",
                                new=via, reason="locked" if locked else None)
            raise LoginError("unknown operator ID or wrong PIN; try again")
        with self.transaction("record a log-in") as c:
            c.execute("UPDATE users SET failures = 0, locked_until = NULL WHERE id = ?", (user_id,))
            self._audit(c, user=user_id, action="login", entity=f"user:{user_id}", new=via)
        return r["role"]

    # -- quality control --------------------------------------------------------
    def record_qc(self, *, user: str, lot: str, test_uid: str | None, passed: bool,
                  detail: str) -> None:
        """Record one control run; audited."""
        with self.transaction("record the QC run") as c:
            c.execute("INSERT INTO qc_runs (ts, user, lot, test_uid, passed, detail) VALUES "
                      "(?, ?, ?, ?, ?, ?)", (now_iso(), user, lot, test_uid, int(passed), detail))
            self._audit(c, user=user, action="qc.pass" if passed else "qc.fail",
                        entity=f"qc:{lot}", new=detail)

    def last_qc(self) -> dict[str, Any] | None:
        """The newest control run."""
        r = self.conn.execute("SELECT * FROM qc_runs ORDER BY id DESC LIMIT 1").fetchone()
        return dict(r) if r else None

    # -- results that could not be stored --------------------------------------
    def ingest_spool(self, folder: str | os.PathLike[str]) -> list[str]:
        """Store every spooled result of ``folder`` (see :func:`spool_result`); return their uids."""
        done = []
        for f in sorted(Path(folder).glob("*.json")):
            try:
                item = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue  # a half-written spool file: its result is still in memory or the test ran
            uid = item["uid"]
            exists = self.conn.execute("SELECT 1 FROM tests WHERE uid = ?", (uid,)).fetchone()
            if not exists:
                self.begin_test(operator=item["operator"], sample_id=item["sample_id"],
                                patient_id=item.get("patient_id"), uid=uid)
            if self.result_of(uid) is None:
                self.store_result(uid, item["result"], user=item["operator"],
                                  capture_path=item.get("capture_path"))
            f.unlink()
            done.append(uid)
        return done


ROLES = ("nurse", "engineer", "service")
MAX_FAILURES = 5
LOCKOUT_MIN = 5


def _pin_hash(pin: str, salt: bytes) -> bytes:
    """The scrypt hash (RFC 7914) of a PIN: n = 2^14, r = 8, p = 1."""
    return hashlib.scrypt(pin.encode(), salt=salt, n=1 << 14, r=8, p=1, dklen=32)


def spool_result(folder: str | os.PathLike[str], *, uid: str, operator: str, sample_id: str,
                 patient_id: str | None, result: dict[str, Any],
                 capture_path: str | None) -> Path:
    """Write a result that the database refused to ``folder/UID.json`` (atomically).

    Raises
    ------
    OSError
        If that fails too (the disk is full): the caller keeps the result in memory.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"{uid}.json"
    tmp = folder / f".{uid}.json.partial"
    data = _canonical({"uid": uid, "operator": operator, "sample_id": sample_id,
                       "patient_id": patient_id, "result": result, "capture_path": capture_path})
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, dest)
    return dest
