"""Raw frame handling: dark subtraction, flat normalisation, bad pixels, frame QC.

How the Bayer mosaic is used for each LED
-----------------------------------------
A monochromatic LED lights every pixel, but each colour-filter channel passes
a different fraction of it. After dark subtraction every pixel is divided by
the same pixel of that LED's flat frame (an empty-chamber exposure), which
divides out the channel response, the photo-response non-uniformity and the
illumination profile at once, leaving the hologram intensity relative to the
empty chamber on every pixel. A channel whose response to the LED (measured
from the flat, or from the frame when no flat exists) is below
``min_channel_response`` of the strongest channel is too noisy to use: its
pixels are filled from the usable neighbours by normalised convolution. With
the default threshold of 0.12 and typical filters, the green LED uses G and B
pixels, the blue LED B and G, and the red LED R only (1 pixel in 4; pixel
super-resolution recovers the rest). Hot pixels (from the dark frame) and
clipped pixels are filled the same way.

Without a flat, each channel is normalised by its own heavily low-passed
image (Bayer equalisation), which removes channel gains and the illumination
profile but not pixel-to-pixel non-uniformity.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from holography.capture import SensorInfo
from holography.errors import CaptureError
from holography.sensors import bayer_channel_map

#: a frame with more clipped pixels than this fraction is flagged SATURATED
SATURATED_LIMIT = 0.005
#: a frame whose median signal (strongest channel, above dark) is below this
#: fraction of the sensor's range is flagged DARK_FRAME (a failed LED)
DARK_SIGNAL_LIMIT = 0.02
#: robust z-score above which a dark-frame pixel is hot
HOT_PIXEL_SIGMA = 8.0
#: without a flat, each channel is divided by its own background: a Gaussian of this sigma (px)
BACKGROUND_SIGMA_PX = 40.0
#: computed on a grid decimated by this factor
BACKGROUND_DECIMATION = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class FrameQC:
    """Quality figures of one raw frame.

    Attributes
    ----------
    saturated_fraction : float
        Fraction of pixels at the top code.
    signal_fraction : float
        Median signal of the strongest channel above dark, as a fraction of the range.
    dark_fraction : float
        Fraction of pixels whose signal is below :data:`DARK_SIGNAL_LIMIT` of the range.
    hot_pixels : int
        Pixels masked as hot.
    channels_used : tuple of str
        Colour channels used directly (the others are filled from neighbours).
    """

    saturated_fraction: float
    signal_fraction: float
    dark_fraction: float
    hot_pixels: int
    channels_used: tuple[str, ...]

    @property
    def saturated(self) -> bool:
        """More than :data:`SATURATED_LIMIT` of the pixels clipped."""
        return self.saturated_fraction > SATURATED_LIMIT

    @property
    def dark(self) -> bool:
        """The LED gave (almost) no light."""
        return self.signal_fraction < DARK_SIGNAL_LIMIT


def hot_pixel_mask(dark: np.ndarray, *, sigma: float = HOT_PIXEL_SIGMA) -> np.ndarray:
    """Hot pixels of a dark frame: robust z-score above ``sigma``.

    Parameters
    ----------
    dark : (H, W) uint16
        Dark frame (black level included).
    sigma : float
        Threshold in robust standard deviations (MAD x 1.4826).

    Returns
    -------
    (H, W) bool
    """
    sample = dark[::3, ::3].astype(np.float32)  # robust statistics from a 1-in-9 sample
    med = float(np.median(sample))
    mad = float(np.median(np.abs(sample - med))) * 1.4826
    return dark > med + sigma * max(mad, 1.0)


def _channel_medians(img: np.ndarray, chan: np.ndarray, step: int = 4) -> np.ndarray:
    """Median of each colour channel, from every ``step``-th 2x2 Bayer tile (fast, robust)."""
    out = np.zeros(3, np.float64)
    parts: dict[int, list[np.ndarray]] = {0: [], 1: [], 2: []}
    for r in (0, 1):
        for c in (0, 1):
            parts[int(chan[r, c])].append(img[r::2 * step, c::2 * step].ravel())
    for c, ps in parts.items():
        out[c] = float(np.median(np.concatenate(ps))) if ps else 0.0
    return out


def _fill_sparse(out: np.ndarray, good: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> None:
    """Fill a few isolated bad pixels in place from their good 3x3 neighbours."""
    h, w = out.shape
    num = np.zeros(rows.size, np.float64)
    den = np.zeros(rows.size, np.float64)
    for dy, dx, wt in ((-1, -1, 1), (-1, 0, 2), (-1, 1, 1), (0, -1, 2), (0, 1, 2), (1, -1, 1),
                       (1, 0, 2), (1, 1, 1)):
        r = np.clip(rows + dy, 0, h - 1)
        c = np.clip(cols + dx, 0, w - 1)
        ok = good[r, c]
        num += np.where(ok, out[r, c] * wt, 0.0)
        den += np.where(ok, wt, 0.0)
    out[rows, cols] = np.where(den > 0, num / np.maximum(den, 1e-12), 1.0)


def _fill(values: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Replace pixels where ``good`` is False by a weighted mean of good neighbours (in place)."""
    out = values
    todo = ~good
    bad = np.flatnonzero(todo)
    if bad.size < 0.01 * good.size:  # hot and clipped pixels only: no full-frame filtering
        _fill_sparse(out, good, *np.unravel_index(bad, good.shape))
        return out
    del bad
    kernel = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32)
    w = good.astype(np.float32)
    for _ in range(4):
        if not todo.any():
            break
        num = cv2.filter2D(out * w, -1, kernel, borderType=cv2.BORDER_REFLECT)
        den = cv2.filter2D(w, -1, kernel, borderType=cv2.BORDER_REFLECT)
        ok = todo & (den > 0)
        np.divide(num, den, out=out, where=ok)
        np.copyto(w, np.float32(1.0), where=ok)
        todo &= ~ok
        del num, den, ok
    np.copyto(out, np.float32(1.0), where=todo)
    return out


def normalise_frame(raw: np.ndarray, *, sensor: SensorInfo, dark: np.ndarray | None = None,
                    flat: np.ndarray | None = None, hot: np.ndarray | None = None,
                    min_channel_response: float = 0.12) -> tuple[np.ndarray, FrameQC]:
    """Turn one raw frame into hologram intensity relative to the empty chamber.

    Parameters
    ----------
    raw : (H, W) uint16
        Raw mosaic, black level included.
    sensor : SensorInfo
        Sensor block of the capture (Bayer order, bit depth, black level).
    dark : (H, W) uint16, optional
        Dark frame; the black level is subtracted when absent.
    flat : (H, W) uint16, optional
        Empty-chamber frame of the same LED.
    hot : (H, W) bool, optional
        Hot-pixel mask (see :func:`hot_pixel_mask`).
    min_channel_response : float
        Channels below this fraction of the strongest are filled from neighbours.

    Returns
    -------
    intensity : (H, W) float32
        Relative intensity, median 1 over the frame.
    qc : FrameQC

    Raises
    ------
    CaptureError
        If the flat frame has no light in it.
    """
    shape = raw.shape
    chan = bayer_channel_map(sensor.bayer, shape)
    rng = float(sensor.max_code - sensor.black_level)
    offset = dark if dark is not None else np.float32(sensor.black_level)
    clipped = raw >= sensor.max_code
    sig = np.subtract(raw, offset, dtype=np.float32)
    med = _channel_medians(sig, chan)
    signal_fraction = float(med.max()) / rng
    dark_fraction = float(np.mean(sig < DARK_SIGNAL_LIMIT * rng))
    qc_used: tuple[str, ...] = ()
    if signal_fraction < DARK_SIGNAL_LIMIT:
        # a failed LED: nothing to normalise; the caller drops the frame
        qc = FrameQC(saturated_fraction=float(clipped.mean()), signal_fraction=signal_fraction,
                     dark_fraction=dark_fraction,
                     hot_pixels=int(hot.sum()) if hot is not None else 0, channels_used=qc_used)
        return np.ones(shape, np.float32), qc
    if flat is not None:
        fsig = np.subtract(flat, offset, dtype=np.float32)
        resp = _channel_medians(fsig, chan)
        if resp.max() <= DARK_SIGNAL_LIMIT * rng:
            raise CaptureError("flat frame has no light in it; record the flat frames again "
                               "(calibration: dark and flat)")
    else:
        resp = med
    present = [c for c in range(3) if np.any(chan == c)]
    strongest = max(resp[c] for c in present)
    use = [c for c in present if strongest > 0 and resp[c] >= min_channel_response * strongest]
    lut = np.zeros(3, bool)
    lut[use] = True
    good = lut[chan] & ~clipped
    if hot is not None:
        good &= ~hot
    if flat is not None:
        floor = np.float32(max(DARK_SIGNAL_LIMIT * rng * 0.25, 1.0))
        inten = sig / np.maximum(fsig, floor)
        good &= fsig > floor
    else:
        # normalised convolution (Knutsson & Westin, CVPR 1993) of each colour channel with a
        # Gaussian of sigma 40 px, computed on a grid decimated by 8 (block means, sigma 5) and
        # interpolated back: the background is smooth on that scale, and it costs ~1/60 of the
        # full-resolution blur
        inten = np.empty_like(sig)
        H, W = shape
        f = BACKGROUND_DECIMATION
        small = (max(W // f, 1), max(H // f, 1))
        for c in present:
            sel = chan == c
            plane = np.where(sel, sig, 0).astype(np.float32)
            p_s = cv2.resize(plane, small, interpolation=cv2.INTER_AREA)
            w_s = cv2.resize(sel.astype(np.float32), small, interpolation=cv2.INTER_AREA)
            sigma = BACKGROUND_SIGMA_PX / f
            p_s = cv2.GaussianBlur(p_s, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
            w_s = cv2.GaussianBlur(w_s, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
            smooth = cv2.resize(p_s / np.maximum(w_s, 1e-6), (W, H),
                                interpolation=cv2.INTER_LINEAR)
            inten[sel] = sig[sel] / np.maximum(smooth[sel], 1.0)
    sub = good[::3, ::3]
    if sub.any():
        inten /= np.float32(np.median(inten[::3, ::3][sub]))
    inten = _fill(np.asarray(inten, np.float32), good)
    qc = FrameQC(saturated_fraction=float(clipped.mean()), signal_fraction=signal_fraction,
                 dark_fraction=dark_fraction, hot_pixels=int(hot.sum()) if hot is not None else 0,
                 channels_used=tuple("RGB"[c] for c in use))
    return inten, qc
