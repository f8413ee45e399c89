"""The HoloDiff error hierarchy.

Every error we raise derives from :class:`HoloDiffError` and mixes in the
builtin it resembles, so callers may catch either. Messages are for people:
what happened, where (file and field), and what to do next, on one line.
"""

from __future__ import annotations


class HoloDiffError(Exception):
    """Root of every error raised by HoloDiff code."""


class CaptureError(HoloDiffError, ValueError):
    """A capture folder, its ``capture.json`` or one of its frame files is invalid.

    Raised by :func:`holography.capture.read_capture` and when a frame is loaded.
    """


class OpticsError(HoloDiffError, ValueError):
    """Optical parameters that cannot describe a real instrument (negative distance, ...)."""


class SimulationError(HoloDiffError, ValueError):
    """A simulator request that cannot be honoured (unknown preset, bad parameter)."""
