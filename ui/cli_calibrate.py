"""``holodiff calibrate`` and ``holodiff users``: calibration on the analyzer, operators."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys

from calibration.store import CalibrationStore
from device.home import database_path, home
from device.instrument import open_instrument
from device.store import ResultsDB

log = logging.getLogger("holodiff")


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Run a calibration procedure, or show the store."""
    store = CalibrationStore(home())
    if args.action in ("list", "show", "status"):
        if args.action == "list":
            recs = store.records()
            if args.json:
                print(json.dumps(recs))
            site = store.classifier()
            for r in [] if args.json else recs:
                state = 'PASS' if r['passed'] else 'FAIL'
                if r["kind"] == "classifier" and r["values"].get("cleared"):
                    state = "CLEARED"
                    r = {**r, "reasons": [f"withdrew {r['values'].get('replaces')}"]}
                elif r["kind"] == "classifier":
                    state = "ACTIVE" if site and site["id"] == r["id"] else (
                        "OLD" if r["passed"] else "REJECTED")
                    m = r["values"].get("model", {})
                    cv = r["values"].get("cross_validated", {})
                    r = {**r, "reasons": [f"model {m.get('name')} {m.get('version')}, "
                                          f"{r['values'].get('n_captures')} captures, 5-part MAE "
                                          f"{cv.get('without', {}).get('mae_5part')} -> "
                                          f"{cv.get('with', {}).get('mae_5part')}", *r["reasons"]]}
                print(f"{r['id']:40} {state:8}  by {r['user']:10} "
                      f"expires {r['expires'][:10]}  {'; '.join(r['reasons'])}")
            return 0
        if args.action == "show":
            print(json.dumps(store.get(args.id), indent=1))
            return 0
        with open_instrument(args.profile, simulated=True if args.simulated else None) as instr:
            sp = instr.profile.sensor
            st = store.status(window=(sp.width, sp.height), simulated=instr.simulated)
        if args.json:
            print(json.dumps({"ok": st.ok, "calibration_id": st.calibration_id,
                              "message": st.message}))
        else:
            print(f"{'OK' if st.ok else 'BLOCKED'}: {st.message} ({st.calibration_id})")
        return 0 if st.ok else 2
    from device import calibrate

    if args.action == "classifier":
        return _calibrate_classifier(args, calibrate)
    with open_instrument(args.profile, simulated=True if args.simulated else None) as instr:
        if instr.simulated and args.preset:
            instr.chamber.insert(args.preset, seed=args.seed)
        elif instr.simulated and args.action == "dark-flat":
            instr.chamber.remove()
        elif instr.simulated:
            instr.chamber.insert("beads" if args.action == "beads" else "healthy", seed=args.seed)
        say = lambda m: log.info("%s", m)  # noqa: E731
        if args.action == "dark-flat":
            rec = calibrate.calibrate_dark_flat(instr, user=args.user, progress=say)
        elif args.action == "distance":
            rec = calibrate.calibrate_distance(instr, user=args.user, progress=say)
        elif args.action == "shifts":
            rec = calibrate.calibrate_shifts(instr, user=args.user, progress=say)
        else:
            rec = calibrate.calibrate_beads(instr, user=args.user, diameter_um=args.diameter,
                                            progress=say)
    if args.json:
        print(json.dumps(rec))
    else:
        print(f"{rec['id']}: {'PASS' if rec['passed'] else 'FAIL'}"
              + "".join(f"\n  {r}" for r in rec["reasons"])
              + f"\n  {json.dumps(rec['values'])[:600]}")
    return 0 if rec["passed"] else 2


def _authenticate(user: str, pin_stdin: bool) -> str:
    """The role of ``user`` after their PIN (asked on the terminal, or one line of stdin)."""
    from device.errors import LoginError

    pin = sys.stdin.readline().strip() if pin_stdin else getpass.getpass(f"PIN for {user}: ")
    with ResultsDB(database_path()) as db:
        try:
            return db.login(user, pin, via="cli")
        except LoginError as exc:
            raise PermissionError(str(exc)) from None


def _calibrate_classifier(args: argparse.Namespace, calibrate) -> int:
    """``holodiff calibrate classifier``: a site calibration from a method comparison."""
    from device.models import ModelSlots
    from holography.errors import HoloDiffError

    try:
        role = _authenticate(args.user, args.pin_stdin)
        if args.clear:
            rec = calibrate.clear_classifier_calibration(user=args.user, role=role,
                                                         reason=args.reason or "")
            print(json.dumps(rec) if args.json else
                  f"{rec['id']}: site calibration withdrawn"
                  + (f" ({rec['values']['replaces']})" if rec["values"]["replaces"] else "")
                  + "; analyses use the model alone until the next calibration")
            return 0
        if not args.reference:
            raise OSError("give --reference FILE.csv (or --clear to withdraw the site calibration)")
        if args.model:
            model = args.model
        else:
            act = ModelSlots().active()
            if act.warning:
                log.warning("%s", act.warning)
            model = str(act.path)
        rec = calibrate.calibrate_classifier(args.reference, user=args.user, role=role,
                                             model=model, progress=lambda m: log.info("%s", m))
    except (HoloDiffError, PermissionError, OSError) as exc:
        print(f"holodiff: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rec))
        return 0 if rec["passed"] else 2
    cv = rec["values"]["cross_validated"]
    print(f"{rec['id']}: {'ACTIVE' if rec['passed'] else 'REJECTED'} for model "
          f"{rec['values']['model']['name']} {rec['values']['model']['version']}, "
          f"{rec['values']['n_captures']} captures")
    print(f"  cross-validated 5-part mean absolute error {cv['without']['mae_5part']:.2f} -> "
          f"{cv['with']['mae_5part']:.2f} points; 3-part {cv['without']['mae_3part']:.2f} -> "
          f"{cv['with']['mae_3part']:.2f}")
    for c, v in cv["with"]["per_class"].items():
        print(f"    {c:<11} {cv['without']['per_class'][c]:5.2f} -> {v:5.2f}")
    for r in rec["reasons"]:
        print(f"  {r}")
    return 0 if rec["passed"] else 2


def cmd_users(args: argparse.Namespace) -> int:
    """Add or list operators."""
    with ResultsDB(database_path()) as db:
        if args.action == "list":
            rows = db.users()
            if args.json:
                print(json.dumps(rows))
            for r in [] if args.json else rows:
                print(f"{r['id']:16} {r['role']:9} since {r['created'][:10]}"
                      + ("  LOCKED" if r["locked_until"] else ""))
            return 0
        pin = args.pin or getpass.getpass(f"PIN for {args.id} (4-8 digits): ")
        try:
            db.add_user(args.id, role=args.role, pin=pin, by=args.by)
        except ValueError as exc:
            print(f"holodiff: error: {exc}", file=sys.stderr)
            return 2
        print(f"operator {args.id} ({args.role}) saved")
        return 0


def add_parsers(sub) -> None:
    """Register ``calibrate`` and ``users``."""
    c = sub.add_parser("calibrate", help="calibration procedures on the attached (or simulated) "
                                         "analyzer, and the calibration store")
    cs = c.add_subparsers(dest="action", required=True)
    for name, text in (("dark-flat", "dark frames and a flat per LED die (empty chamber)"),
                       ("distance", "sample distance per LED by autofocus (sample or target in)"),
                       ("shifts", "sub-pixel shift of every LED die (sample or target in)"),
                       ("beads", "bead sizing against the nominal diameter (beads in)")):
        p = cs.add_parser(name, help=text)
        p.add_argument("--user", required=True, help="engineer (audited)")
        p.add_argument("--profile")
        p.add_argument("--simulated", action="store_true", help="calibrate the simulated twin")
        p.add_argument("--preset", help="simulated twin: what to put in the chamber")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--json", action="store_true")
        if name == "beads":
            p.add_argument("--diameter", type=float, required=True, help="nominal bead diameter, um")
    k = cs.add_parser("classifier", help="site calibration of the classifier from a method "
                                         "comparison against the reference analyzer (engineer "
                                         "or service)")
    k.add_argument("--clear", action="store_true", help="withdraw the active site calibration "
                   "(audited); analyses then use the model alone")
    k.add_argument("--reason", help="why (with --clear; audited)")
    k.add_argument("--reference", help="CSV: capture,neutrophil,lymphocyte,"
                   "monocyte,eosinophil,basophil[,wbc_per_uL,mdw_sd_fl] (INTERFACES.md section 7)")
    k.add_argument("--user", required=True, help="engineer or service operator (audited)")
    k.add_argument("--pin-stdin", action="store_true", help="read the PIN as one line of stdin")
    k.add_argument("--model", help="model to calibrate (default: the active model slot)")
    k.add_argument("--json", action="store_true")
    li = cs.add_parser("list", help="every calibration record")
    li.add_argument("--json", action="store_true")
    sh = cs.add_parser("show", help="one record")
    sh.add_argument("id")
    st = cs.add_parser("status", help="may patient tests run?")
    st.add_argument("--profile")
    st.add_argument("--simulated", action="store_true")
    st.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_calibrate)

    u = sub.add_parser("users", help="operators and their roles (nurse, engineer, service)")
    us = u.add_subparsers(dest="action", required=True)
    a = us.add_parser("add", help="add an operator or change their PIN and role")
    a.add_argument("id")
    a.add_argument("--role", required=True, choices=["nurse", "engineer", "service"])
    a.add_argument("--pin", help="4-8 digits (asked for when not given)")
    a.add_argument("--by", default="console", help="who adds (audited)")
    ul = us.add_parser("list")
    ul.add_argument("--json", action="store_true")
    u.set_defaults(func=cmd_users)
