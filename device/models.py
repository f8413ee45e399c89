"""Model slots A and B: install signed bundles, check them, switch atomically, roll back.

Layout under ``$HOLODIFF_HOME/models``::

    A/bundle.hdmodel     a verified bundle (or nothing)
    B/bundle.hdmodel
    active.json          {"active": "A", "previous": "B"}, replaced atomically

Installing (:meth:`ModelSlots.install`) verifies the bundle (signature, every
hash, manifest; :mod:`inference.bundle`), the software version, and the
anti-rollback counter (a lower counter than the active model's is refused
unless a service user forces it with a reason, which is audited); then writes
the *inactive* slot (temporary file, fsync, rename), verifies what was
written, runs the golden capture set through the analysis with it
(:mod:`device.golden`), and only then replaces the pointer. A failure or a
power cut at any step leaves the active model active and whole.

At start (:meth:`ModelSlots.active`) the active slot is verified again; if it
does not verify, the other slot is used if it does, else the factory bundle
shipped with the software, and the reason is returned for the screen and the
log and written to the audit log.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device.errors import StorageError
from device.golden import GoldenReport, check_golden, default_cache
from device.home import database_path, home
from device.store import ResultsDB
from holography import __version__
from holography.errors import HoloDiffError
from inference.bundle import Bundle, BundleError, check_software, read_bundle
from inference.classify import DEFAULT_MODEL

SLOTS = ("A", "B")
BUNDLE_FILE = "bundle.hdmodel"


class SlotError(HoloDiffError, ValueError):
    """A slot operation was refused (no such slot, empty slot, counter, golden mismatch)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ActiveModel:
    """The model tests use now: the bundle file, where it came from, and any warning."""

    path: Path
    bundle: Bundle
    slot: str | None  # None: the factory bundle
    warning: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class InstallReport:
    """What an install did."""

    slot: str
    name: str
    version: str
    counter: int
    golden: GoldenReport
    forced: bool


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def describe(slot: str | None, b: Bundle) -> str:
    """How the audit log names a model in a slot."""
    return f"{slot or 'factory'}: {b.name} {b.version} #{b.counter} {b.manifest_sha256[:12]}"


class ModelSlots:
    """The analyzer's two model slots and the pointer to the active one.

    Parameters
    ----------
    root : path, optional
        State folder (default :func:`device.home.home`).
    factory : path, optional
        The bundle shipped with the software, used when no slot verifies.
    golden_cache : path, optional
        Where the golden captures are generated (default :func:`device.golden.default_cache`).
    on_step : callable, optional
        Called with the name of each install step before it runs (tests cut power there).
    """

    def __init__(self, root: Path | None = None, *, factory: Path | None = None,
                 golden_cache: Path | None = None, on_step: Callable[[str], None] | None = None):
        self.root = Path(root) if root is not None else home()
        self.dir = self.root / "models"
        self.factory = Path(factory) if factory is not None else DEFAULT_MODEL
        self.golden_cache = golden_cache or default_cache(self.root)
        self.on_step = on_step or (lambda step: None)

    # -- pointer and slots ---------------------------------------------------------------
    def pointer(self) -> dict[str, str | None]:
        """``{"active": slot or None, "previous": slot or None}``."""
        try:
            p = json.loads((self.dir / "active.json").read_text())
            if p.get("active") in (*SLOTS, None) and p.get("previous") in (*SLOTS, None):
                return {"active": p.get("active"), "previous": p.get("previous")}
        except (OSError, ValueError):
            pass
        return {"active": None, "previous": None}

    def _set_pointer(self, active: str | None, previous: str | None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.dir / "active.json",
                      json.dumps({"active": active, "previous": previous}).encode())

    def slot_path(self, slot: str) -> Path:
        """The bundle file of a slot."""
        if slot not in SLOTS:
            raise SlotError(f"no model slot {slot!r}; use A or B")
        return self.dir / slot / BUNDLE_FILE

    def verify_slot(self, slot: str) -> Bundle:
        """The slot's bundle, verified; :class:`BundleError` or :class:`SlotError` if not."""
        p = self.slot_path(slot)
        if not p.exists():
            raise SlotError(f"model slot {slot} is empty")
        return read_bundle(p)

    def list(self) -> list[dict[str, Any]]:
        """Both slots: what they hold, whether it verifies, which is active and previous."""
        ptr = self.pointer()
        rows = []
        for s in SLOTS:
            row: dict[str, Any] = {"slot": s, "active": ptr["active"] == s,
                                   "previous": ptr["previous"] == s}
            try:
                b = self.verify_slot(s)
                row.update(name=b.name, version=b.version, counter=b.counter, key=b.key_id,
                           verified=True, reason=None)
            except (BundleError, SlotError) as exc:
                row.update(name=None, version=None, counter=None, key=None, verified=False,
                           reason=str(exc))
            rows.append(row)
        return rows

    def _audit(self, **kw) -> None:
        with ResultsDB(database_path(self.root)) as db:
            db.audit(entity="model", **kw)

    def _reconcile(self, slot: str | None, b: Bundle) -> None:
        """Audit a switch that a power cut left unaudited (the pointer moved, the log did not)."""
        try:
            with ResultsDB(database_path(self.root)) as db:
                last = db.conn.execute("SELECT new_value FROM audit WHERE entity = 'model' "
                                       "ORDER BY id DESC LIMIT 1").fetchone()
                now = describe(slot, b)
                if last is not None and last[0] != now:
                    db.audit(user="system", action="model.reconcile", entity="model",
                             old=last[0], new=now,
                             reason="the active model changed without an audit row "
                                    "(power cut during an install or switch)")
        except StorageError:
            pass

    # -- start-up ------------------------------------------------------------------------
    def active(self) -> ActiveModel:
        """The model to use, verified now; falls back (and says why) when the active slot fails.

        Raises
        ------
        BundleError
            If neither slot nor the factory bundle verifies (the analyzer cannot test).
        """
        ptr = self.pointer()
        act = ptr["active"]
        if act is None:
            factory = read_bundle(self.factory)
            return ActiveModel(path=self.factory, bundle=factory, slot=None)
        try:
            b = self.verify_slot(act)
            self._reconcile(act, b)
            return ActiveModel(path=self.slot_path(act), bundle=b, slot=act)
        except (BundleError, SlotError) as exc:
            why = str(exc)
        other = SLOTS[1 - SLOTS.index(act)]
        try:
            b = self.verify_slot(other)
            use, path = other, self.slot_path(other)
        except (BundleError, SlotError):
            b = read_bundle(self.factory)
            use, path = None, self.factory
        self._set_pointer(use, None)
        what = f"slot {use}" if use else "the factory model"
        msg = (f"model slot {act} does not verify ({why}); using {what} ({b.name} {b.version}); "
               f"call service to reinstall the model")
        try:
            self._audit(user="system", action="model.fallback", old=f"{act}: does not verify",
                        new=describe(use, b), reason=why)
        except StorageError:
            pass  # the fallback itself must not depend on the database
        return ActiveModel(path=path, bundle=b, slot=use, warning=msg)

    # -- install, activate, rollback -------------------------------------------------------
    def install(self, bundle_path: str | os.PathLike[str], *, user: str,
                force_reason: str | None = None,
                progress: Callable[[str], None] | None = None) -> InstallReport:
        """Verify a bundle, write it to the inactive slot, run the golden set, then switch.

        Raises
        ------
        BundleError
            Bad archive, signature, hashes, manifest or software version.
        SlotError
            Counter lower than the active one (without a forced reason), or equal with other content.
        device.golden.GoldenMismatch
            The model does not reproduce its golden results.
        """
        say = progress or (lambda m: None)
        self.on_step("verify")
        b = read_bundle(bundle_path)
        check_software(b, __version__)
        ptr = self.pointer()
        forced = False
        current = None
        if ptr["active"] is not None:
            try:
                current = self.verify_slot(ptr["active"])
            except (BundleError, SlotError):
                current = None
        if current is not None:
            if b.counter < current.counter:
                if not force_reason:
                    raise SlotError(f"bundle counter {b.counter} is lower than the active model's "
                                    f"({current.counter}): a rollback; refused (a service user "
                                    f"may force it with a reason)")
                forced = True
            elif b.counter == current.counter and b.manifest_sha256 != current.manifest_sha256:
                raise SlotError(f"bundle counter {b.counter} equals the active model's but the "
                                f"content differs; a new model needs a higher counter; refused")
        target = SLOTS[1] if ptr["active"] == SLOTS[0] else SLOTS[0]
        say(f"writing slot {target}")
        self.on_step("write")
        slot_dir = self.dir / target
        slot_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(slot_dir / BUNDLE_FILE, Path(bundle_path).read_bytes())
        self.on_step("reverify")
        written = self.verify_slot(target)
        if written.manifest_sha256 != b.manifest_sha256:
            raise SlotError(f"slot {target} does not hold what was written; check the storage")
        self.on_step("golden")
        say("running the golden capture set")
        try:
            report = check_golden(self.slot_path(target), b.golden(), self.golden_cache,
                                  progress=say)
        except HoloDiffError:
            shutil.rmtree(slot_dir, ignore_errors=True)  # never leave a failing model in a slot
            raise
        self.on_step("switch")
        self._set_pointer(target, ptr["active"])
        self.on_step("audit")
        self._audit(user=user, action="model.install.forced" if forced else "model.install",
                    old=describe(ptr["active"], current) if current else None,
                    new=describe(target, b), reason=force_reason or f"signed by key {b.key_id}")
        return InstallReport(slot=target, name=b.name, version=b.version, counter=b.counter,
                             golden=report, forced=forced)

    def activate(self, slot: str, *, user: str, reason: str | None = None) -> Bundle:
        """Make ``slot`` active (it must verify); the old active becomes previous."""
        b = self.verify_slot(slot)
        ptr = self.pointer()
        if ptr["active"] == slot:
            return b
        self._set_pointer(slot, ptr["active"])
        old = None
        if ptr["active"] is not None:
            try:
                old = describe(ptr["active"], self.verify_slot(ptr["active"]))
            except (BundleError, SlotError) as exc:
                old = f"{ptr['active']}: {exc}"
        self._audit(user=user, action="model.activate", old=old, new=describe(slot, b),
                    reason=reason)
        return b

    def rollback(self, *, user: str, reason: str | None = None) -> Bundle:
        """Go back to the previous slot."""
        prev = self.pointer()["previous"]
        if prev is None:
            raise SlotError("no previous model to roll back to")
        return self.activate(prev, user=user, reason=reason or "rollback")
