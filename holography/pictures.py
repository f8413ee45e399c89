"""PNG pictures of holograms and reconstructed fields, for people to look at."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def to_uint8(img: np.ndarray, *, lo_pct: float = 0.5, hi_pct: float = 99.5) -> np.ndarray:
    """Scale a real image to 0-255 between two percentiles."""
    a = np.asarray(img, np.float32)
    lo, hi = np.percentile(a, [lo_pct, hi_pct])
    if hi <= lo:
        hi = lo + 1e-6
    return np.clip((a - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)


def save_png(path: str | Path, img: np.ndarray, **kw: float) -> Path:
    """Write a real image as an 8-bit PNG (percentile-scaled); returns the path."""
    path = Path(path)
    if not cv2.imwrite(str(path), to_uint8(img, **kw)):
        raise OSError(f"{path}: could not write PNG; check the folder exists and is writable")
    return path


def save_field(folder: str | Path, name: str, field: np.ndarray) -> list[Path]:
    """Write amplitude and phase PNGs of a complex field; returns the paths."""
    folder = Path(folder)
    return [save_png(folder / f"{name}_amplitude.png", np.abs(field)),
            save_png(folder / f"{name}_phase.png", np.angle(field))]
