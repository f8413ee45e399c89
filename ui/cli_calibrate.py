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
            for r in [] if args.json else recs:
                print(f"{r['id']:40} {'PASS' if r['passed'] else 'FAIL'}  by {r['user']:10} "
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
