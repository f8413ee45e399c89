"""Where the analyzer keeps its state: ``$HOLODIFF_HOME`` (INTERFACES.md section 3).

Layout under the home folder::

    results.sqlite        tests, results, audit log (device.store)
    captures/             capture folders of tests, one per test
    calibration/          calibration records and their frames (calibration.store)
    models/               model slots A and B and the active pointer (device.models)
    pending/              results that could not be stored yet, kept for retry
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The state folder: ``$HOLODIFF_HOME``, else the user data folder.

    ``$XDG_DATA_HOME/holodiff`` (default ``~/.local/share/holodiff``); on the
    analyzer the systemd unit sets ``HOLODIFF_HOME=/var/lib/holodiff``.
    """
    env = os.environ.get("HOLODIFF_HOME")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "holodiff"


def database_path(root: Path | None = None) -> Path:
    """The results database under ``root`` (default: :func:`home`)."""
    return (root or home()) / "results.sqlite"


def captures_dir(root: Path | None = None) -> Path:
    """Folder of the capture folders of tests."""
    return (root or home()) / "captures"


def pending_dir(root: Path | None = None) -> Path:
    """Folder of results waiting to be stored (written when the database refused them)."""
    return (root or home()) / "pending"
