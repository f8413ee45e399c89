"""Errors of the device layer; every one derives from :class:`holography.errors.HoloDiffError`.

Messages are for people: what happened and what to do next, on one line.
"""

from __future__ import annotations

from holography.errors import HoloDiffError


class ProfileError(HoloDiffError, ValueError):
    """A hardware profile (``hardware/profiles/*.json``) is missing, malformed or inconsistent."""


class HardwareError(HoloDiffError, RuntimeError):
    """A driver refused a request or the hardware did not respond (LED, camera, chamber)."""


class LedError(HardwareError):
    """The LED board refused a switch: unknown die, another die lit, duty or on-time limit."""


class CameraError(HardwareError):
    """The camera refused a setting or did not deliver a valid frame."""


class SampleError(HoloDiffError, RuntimeError):
    """The chamber is not ready for a test: no sample, door open, or sample removed mid-test."""


class TestAborted(HoloDiffError, RuntimeError):
    """A test was cancelled by the operator before it finished."""

    __test__ = False  # not a pytest class


class StorageError(HoloDiffError, OSError):
    """The results database could not be written or read (disk full, read-only, damaged)."""


class AuditError(HoloDiffError, ValueError):
    """The audit log's hash chain does not verify: a row was edited, deleted or inserted."""


class ExportError(HoloDiffError, RuntimeError):
    """A result could not be exported or sent to the LIS (connection refused, NAK, timeout)."""


class LoginError(HoloDiffError, PermissionError):
    """An operator could not log in (unknown ID, wrong PIN, locked) or lacks the role for an action."""
