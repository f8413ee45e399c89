"""``holodiff model``: keys, signed bundles, and the analyzer's model slots (INTERFACES.md section 5)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from device.home import home
from device.models import ModelSlots
from holography import __version__
from inference.bundle import build_bundle, keygen, read_bundle

log = logging.getLogger("holodiff")


def _say(msg: str) -> None:
    log.info("%s", msg)


def cmd_model(args: argparse.Namespace) -> int:
    """Dispatch ``holodiff model ACTION``."""
    if args.action == "keygen":
        kid = keygen(args.private, args.public)
        print(f"key {kid}: private {args.private} (keep it off the analyzer and out of the "
              f"repository), public {args.public} (put it in hardware/keys/)")
        return 0
    if args.action == "sign":
        from device.golden import default_cache, reference_results

        onnx = Path(args.onnx)
        card_path = Path(args.card) if args.card else onnx.with_name(
            onnx.name.removesuffix(".onnx") + ".card.json")
        card = json.loads(card_path.read_text())
        version = args.version or str(card.get("version", "1.0.0"))
        out = Path(args.out) if args.out else Path(f"{card['name']}-{version}.hdmodel")
        log.info("running the golden capture set with %s", onnx)
        golden = reference_results(onnx, Path(args.golden_cache) if args.golden_cache
                                   else default_cache(home()), progress=_say)
        build_bundle(out, model=onnx.read_bytes(), card=card, golden=golden, version=version,
                     counter=args.counter, min_software=args.min_software,
                     private_key_path=args.key)
        b = read_bundle(out, trust=None) if not args.untrusted_ok else None
        print(f"signed {out}" + (f" (key {b.key_id}, verifies with the trust store)" if b else ""))
        return 0
    if args.action == "verify":
        b = read_bundle(args.bundle)
        m = b.manifest
        info = {"bundle": str(b.path), "name": b.name, "version": b.version,
                "counter": b.counter, "signed_by": b.key_id, "min_software": m["min_software"],
                "classes": m["classes"], "created": m["created"],
                "files": m["files"], "golden_captures": m["golden"]["captures"],
                "software_ok": True}
        from inference.bundle import BundleError, check_software

        try:
            check_software(b, __version__)
        except BundleError as exc:
            info["software_ok"] = False
            info["software"] = str(exc)
        if args.json:
            print(json.dumps(info))
        else:
            print(f"{b.path}: verified: {b.name} {b.version} (counter {b.counter}), signed by "
                  f"trusted key {b.key_id}, {len(m['files'])} files match the manifest, "
                  f"golden set {', '.join(m['golden']['captures'])}"
                  + ("" if info["software_ok"] else f"; but {info['software']}"))
        return 0 if info["software_ok"] else 2
    slots = ModelSlots()
    if args.action == "list":
        rows = slots.list()
        act = slots.active()
        if args.json:
            print(json.dumps({"slots": rows, "in_use": str(act.path), "warning": act.warning}))
            return 0
        for r in rows:
            mark = "*" if r["active"] else ("<" if r["previous"] else " ")
            desc = (f"{r['name']} {r['version']} (counter {r['counter']}, key {r['key']})"
                    if r["verified"] else f"- ({r['reason']})")
            print(f"{mark} slot {r['slot']}: {desc}")
        print(f"in use: {act.path}" + (f"\nWARNING: {act.warning}" if act.warning else ""))
        return 0
    if args.action == "install":
        rep = slots.install(args.bundle, user=args.user, force_reason=args.force_reason,
                            progress=_say)
        print(f"installed {rep.name} {rep.version} (counter {rep.counter}) in slot {rep.slot}, "
              f"now active; golden set: " + ", ".join(
                  f"{c['name']} {100 * c['agreement']:.1f} % of {c['cells']} cells"
                  for c in rep.golden.captures) + (" (forced rollback)" if rep.forced else ""))
        return 0
    if args.action == "activate":
        b = slots.activate(args.slot, user=args.user, reason=args.reason)
        print(f"slot {args.slot} active: {b.name} {b.version}")
        return 0
    b = slots.rollback(user=args.user, reason=args.reason)
    print(f"rolled back to {b.name} {b.version} (slot {slots.pointer()['active']})")
    return 0


def add_parsers(sub) -> None:
    """Register ``model`` on the top-level sub-parsers."""
    m = sub.add_parser("model", help="signed model bundles and the analyzer's model slots")
    ms = m.add_subparsers(dest="action", required=True)
    k = ms.add_parser("keygen", help="make an Ed25519 signing key pair")
    k.add_argument("--private", required=True, help="private key file to create (mode 0600)")
    k.add_argument("--public", required=True, help="public key file (for hardware/keys/)")
    s = ms.add_parser("sign", help="build and sign a .hdmodel bundle from an ONNX model, its "
                                   "card and its golden results")
    s.add_argument("--onnx", required=True, help="the INT8 ONNX model")
    s.add_argument("--card", help="model card (default: NAME.card.json beside the model)")
    s.add_argument("--version", help="semantic version (default: the card's)")
    s.add_argument("--counter", type=int, required=True, help="anti-rollback counter (must grow)")
    s.add_argument("--min-software", default=__version__)
    s.add_argument("--key", required=True, help="Ed25519 private key (PEM)")
    s.add_argument("--out", help="bundle file (default NAME-VERSION.hdmodel)")
    s.add_argument("--golden-cache", help="where golden captures are generated "
                                          "(default $HOLODIFF_HOME/golden)")
    s.add_argument("--untrusted-ok", action="store_true",
                   help="do not check the new bundle against this machine's trust store")
    v = ms.add_parser("verify", help="check a bundle: archive, signature, hashes, manifest")
    v.add_argument("bundle")
    v.add_argument("--json", action="store_true")
    li = ms.add_parser("list", help="the two slots and the model in use")
    li.add_argument("--json", action="store_true")
    i = ms.add_parser("install", help="verify, write the inactive slot, run the golden set, switch")
    i.add_argument("bundle")
    i.add_argument("--user", required=True, help="service user (audited)")
    i.add_argument("--force-reason", help="install a lower counter (a rollback) for this reason")
    a = ms.add_parser("activate", help="make a slot active")
    a.add_argument("slot", choices=["A", "B"])
    a.add_argument("--user", required=True)
    a.add_argument("--reason")
    r = ms.add_parser("rollback", help="go back to the previous slot")
    r.add_argument("--user", required=True)
    r.add_argument("--reason")
    m.set_defaults(func=cmd_model)
