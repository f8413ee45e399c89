"""``holodiff demo``, ``run`` and ``results``: tests on the analyzer and the results database."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from device.errors import ExportError, StorageError
from device.home import database_path
from device.instrument import open_instrument
from device.profiles import DEFAULT_PROFILE
from device.runner import Progress, Stage, TestRunner
from device.store import ResultsDB
from holography.sample import PRESETS

log = logging.getLogger("holodiff")
DEMO_PROFILE = "demo-imx477"


def _progress(p: Progress) -> None:
    log.info("[%3.0f %%] %s: %s", 100 * p.fraction, p.stage, p.message)


def _run_test(args: argparse.Namespace, *, profile: str, simulated: bool | None,
              title: str, prefix: str) -> int:
    from ui.cli import format_report

    t0 = time.perf_counter()
    if not args.sample_id:
        args.sample_id = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not args.operator:
        args.operator = os.environ.get("USER") or "console"
    with open_instrument(profile, simulated=simulated) as instr:
        if instr.simulated:
            log.info("simulated analyzer (%s): inserting a simulated %s sample (seed %d)",
                     instr.profile.name, args.preset, args.seed)
            instr.chamber.insert(args.preset, seed=args.seed)
        runner = TestRunner(instr, model=args.model)
        if runner.model_warning:
            log.warning("WARNING: %s", runner.model_warning)
        try:
            for uid in runner.recovered:
                log.info("test %s was interrupted earlier and is marked failed", uid[:8])
            out = runner.run(operator=args.operator, sample_id=args.sample_id,
                             patient_id=args.patient_id, progress=_progress, cells=args.cells)
        finally:
            runner.close()
    if out.state is not Stage.DONE:
        print(f"holodiff: error: test {out.uid[:8]} {out.state}: {out.error}", file=sys.stderr)
        return 2
    res = out.result
    lines = [title, f"  test               {out.uid}  sample {out.sample_id}"
             + (f"  patient {args.patient_id}" if args.patient_id else ""),
             format_report(res)]
    t = out.timing_s
    lines.append(f"  time to result     {time.perf_counter() - t0:.1f} s (capture {t['capture']:.1f},"
                 f" reconstruction {t['reconstruction']:.1f}, detection {t['detection']:.1f}, "
                 f"classification {t['classification']:.1f}, storage {t['storage']:.2f})")
    truth_file = Path(out.capture_path) / "truth.json"
    if truth_file.exists():
        truth = json.loads(truth_file.read_text())["wbc_counts_in_frame"]
        n = sum(truth.values())
        lines.append(f"  simulated truth    {n} white cells: " + ", ".join(
            f"{k[:4]} {100 * v / n:.1f} %" for k, v in truth.items()) if n else
            "  simulated truth    no white cells")
    lines.append(f"  stored             {database_path(runner.root)}" if out.stored else
                 f"  NOT STORED YET     {out.error}")
    print("\n".join(lines), file=sys.stderr)
    if args.json:
        print(json.dumps({"test": out.uid, "sample_id": out.sample_id, "stored": out.stored,
                          "timing_s": out.timing_s, "result": res}))
    return 0 if out.stored else 3


def cmd_demo(args: argparse.Namespace) -> int:
    """``holodiff demo``: one whole test on the built-in simulated analyzer."""
    return _run_test(args, profile=args.profile, simulated=True,
                     title="HoloDiff demo (simulated analyzer)", prefix="DEMO")


def cmd_run(args: argparse.Namespace) -> int:
    """``holodiff run``: one test on the attached analyzer (its twin where none is found)."""
    simulated = True if args.simulated else (False if args.hardware else None)
    return _run_test(args, profile=args.profile, simulated=simulated, title="HoloDiff test",
                     prefix="RUN")


def _open_db() -> ResultsDB:
    path = database_path()
    if not path.exists():
        raise StorageError(f"{path}: no results database yet; run a test first "
                           f"(or set HOLODIFF_HOME to the analyzer's state folder)")
    return ResultsDB(path)


def _resolve(db: ResultsDB, prefix: str) -> str:
    rows = [r[0] for r in db.conn.execute("SELECT uid FROM tests WHERE uid LIKE ? LIMIT 2",
                                          (prefix.lower() + "%",))]
    if len(rows) != 1:
        raise StorageError(f"{'no' if not rows else 'more than one'} test matches {prefix!r}; "
                           f"see 'holodiff results list'")
    return rows[0]


def _items(db: ResultsDB, uids: list[str]) -> list[dict]:
    if not uids:
        uids = [r["uid"] for r in db.list_tests(state="done", limit=1_000_000)][::-1]
    items = []
    for u in uids:
        uid = _resolve(db, u)
        t = db.test(uid)
        res = db.result_of(uid)
        if res is None:
            raise StorageError(f"test {uid[:8]} has no result ({t.state}: {t.error})")
        items.append({"uid": uid, "sample_id": t.sample_id, "patient_id": t.patient_id,
                      "observed": t.started, "result": res})
    return items


def cmd_results(args: argparse.Namespace) -> int:
    """``holodiff results list/show/export/audit/verify-audit``."""
    from device import lis
    from ui.cli import format_report

    with _open_db() as db:
        if args.action == "list":
            rows = db.list_tests(patient_id=args.patient, sample_id=args.sample, limit=args.limit)
            if args.json:
                print(json.dumps(rows))
                return 0
            print(f"{'test':8}  {'started':23}  {'sample':14} {'patient':12} {'state':9} "
                  f"{'WBC/uL':>8} {'N%':>5} {'L%':>5} {'M%':>5} {'E%':>5} {'B%':>5}  flags")
            for r in rows:
                nums = [r["wbc_per_ul"], r["neutrophil_pct"], r["lymphocyte_pct"],
                        r["monocyte_pct"], r["eosinophil_pct"], r["basophil_pct"]]
                cols = " ".join(f"{v:>{5 if i else 8}.{1 if i else 0}f}" if v is not None
                                else f"{'-':>{5 if i else 8}}" for i, v in enumerate(nums))
                print(f"{r['uid'][:8]}  {r['started']:23}  {r['sample_id'][:14]:14} "
                      f"{(r['patient_id'] or '-')[:12]:12} {r['state']:9} {cols}  "
                      f"{r['flags'] or (r['error'] or '')[:40]}")
            return 0
        if args.action == "show":
            uid = _resolve(db, args.test)
            t = db.test(uid)
            res = db.result_of(uid)
            if args.json:
                print(json.dumps({"test": {k: getattr(t, k) for k in t.__slots__},
                                  "result": res, "lis_sends": db.sends(uid) if res else []}))
                return 0
            print(f"test {t.uid}  sample {t.sample_id}  patient {t.patient_id or '-'}  "
                  f"operator {t.operator}\n  started {t.started}  finished {t.finished}  "
                  f"state {t.state}" + (f"\n  error: {t.error}" if t.error else ""))
            if res is not None:
                print(format_report(res))
            return 0
        if args.action == "verify-audit":
            n = db.verify_audit()
            bad = db.integrity_check()
            if bad:
                raise StorageError(f"{db.path}: integrity check failed: {bad[0]}; call service")
            print(f"audit log verified: {n} rows, chain intact; database integrity ok")
            return 0
        if args.action == "audit":
            for r in db.audit_rows(limit=args.limit):
                print(f"{r['id']:6} {r['ts']} {r['user']:10} {r['action']:16} {r['entity']:42} "
                      f"{r['old_value'] or ''} -> {r['new_value'] or ''}"
                      + (f"  ({r['reason']})" if r["reason"] else ""))
            return 0
        # export
        items = _items(db, args.tests)
        if not items:
            raise StorageError("no stored results to export")
        if args.csv:
            text = lis.csv_rows(items)
            _write(args.csv, text)
        if args.hl7 or args.send:
            serial = "HD-0001"
            msgs = [(it, lis.build_oru(it["result"], test_uid=it["uid"], sample_id=it["sample_id"],
                                       patient_id=it["patient_id"], observed=it["observed"],
                                       device_serial=serial)) for it in items]
            if args.hl7:
                _write(args.hl7, "".join(m.replace("\r", "\n") + "\n" for _, m in msgs)
                       if args.hl7 == "-" else "".join(m + "\r" for _, m in msgs))
            if args.send:
                host, _, port = args.send.rpartition(":")
                if not host or not port.isdigit():
                    raise ExportError(f"--send needs HOST:PORT, got {args.send!r}")
                failed = 0
                for it, m in msgs:
                    dest = f"{host}:{port}"
                    try:
                        ack = lis.send_mllp(m, host, int(port), retries=args.retries,
                                            backoff_s=args.backoff, timeout_s=args.timeout)
                        db.record_send(it["uid"], destination=dest, status="acked",
                                       detail=ack.code, user=args.user)
                        log.info("test %s sent to %s: %s", it["uid"][:8], dest, ack.code)
                    except ExportError as exc:
                        failed += 1
                        db.record_send(it["uid"], destination=dest,
                                       status="rejected" if "rejected" in str(exc) else "failed",
                                       detail=str(exc), user=args.user)
                        print(f"holodiff: error: test {it['uid'][:8]}: {exc}", file=sys.stderr)
                return 2 if failed else 0
        if not (args.csv or args.hl7 or args.send):
            raise ExportError("say what to export: --csv FILE, --hl7 FILE or --send HOST:PORT "
                              "('-' for stdout)")
        return 0


def _write(dest: str, text: str) -> None:
    if dest == "-":
        sys.stdout.write(text)
        return
    p = Path(dest)
    tmp = p.with_name(f".{p.name}.partial")
    tmp.write_text(text, encoding="utf-8", newline="")
    tmp.replace(p)
    log.info("wrote %s", p)


def _test_options(p: argparse.ArgumentParser, *, demo: bool) -> None:
    p.add_argument("--sample-id", help="sample (tube) ID (default " + ("DEMO" if demo else "RUN")
                   + "-<date>-<time>)")
    p.add_argument("--operator", default="demo" if demo else None,
                   help="operator ID")
    p.add_argument("--patient-id", help="patient ID (medical record number)")
    p.add_argument("--profile", default=DEMO_PROFILE if demo else None,
                   help="hardware profile: a name in hardware/profiles or a .json file (default: "
                        + (DEMO_PROFILE if demo else f"$HOLODIFF_PROFILE, else {DEFAULT_PROFILE}")
                        + ")")
    p.add_argument("--preset", default="healthy", choices=sorted([*PRESETS, "random"]),
                   help="simulated analyzer only: the blood in the virtual chamber")
    p.add_argument("--seed", type=int, default=1, help="simulated analyzer only: sample seed")
    p.add_argument("--model", help="classifier .onnx file (default: the shipped model)")
    p.add_argument("--cells", action="store_true", help="keep every cell in the stored result")
    p.add_argument("--json", action="store_true", help="print the test and its result as JSON")


def add_parsers(sub) -> None:
    """Register ``demo``, ``run`` and ``results`` on the top-level sub-parsers."""
    d = sub.add_parser("demo", help="a whole test on the built-in simulated analyzer: sample, "
                                    "capture, analysis, stored result, printed report")
    _test_options(d, demo=True)
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("run", help="run a test on the attached analyzer (its simulated twin "
                                   "where no hardware is found)")
    _test_options(r, demo=False)
    g = r.add_mutually_exclusive_group()
    g.add_argument("--simulated", action="store_true", help="use the simulated twin")
    g.add_argument("--hardware", action="store_true", help="require the real analyzer")
    r.set_defaults(func=cmd_run)

    res = sub.add_parser("results", help="the results database: list, show, export (CSV, HL7, "
                                         "MLLP), audit log")
    rs = res.add_subparsers(dest="action", required=True)
    li = rs.add_parser("list", help="tests, newest first")
    li.add_argument("--patient", help="patient ID ('%%' wildcards allowed)")
    li.add_argument("--sample", help="sample ID ('%%' wildcards allowed)")
    li.add_argument("--limit", type=int, default=50)
    li.add_argument("--json", action="store_true")
    sh = rs.add_parser("show", help="one test and its result")
    sh.add_argument("test", help="test ID (a unique prefix is enough)")
    sh.add_argument("--json", action="store_true")
    ex = rs.add_parser("export", help="export results as CSV or HL7 v2.5.1 ORU^R01, or send "
                                      "them over MLLP")
    ex.add_argument("tests", nargs="*", help="test IDs (default: every stored result)")
    ex.add_argument("--csv", metavar="FILE", help="write CSV ('-' for stdout)")
    ex.add_argument("--hl7", metavar="FILE", help="write HL7 messages ('-' for stdout)")
    ex.add_argument("--send", metavar="HOST:PORT", help="send each result to an LIS over MLLP")
    ex.add_argument("--retries", type=int, default=3)
    ex.add_argument("--backoff", type=float, default=1.0, help="seconds before the first retry")
    ex.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for an ACK")
    ex.add_argument("--user", default="cli", help="who sends (for the audit log)")
    rs.add_parser("verify-audit", help="check the audit log's hash chain and the database")
    au = rs.add_parser("audit", help="print the audit log")
    au.add_argument("--limit", type=int, default=50)
    res.set_defaults(func=cmd_results)
