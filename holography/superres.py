"""Pixel super-resolution (PSR) from holograms shifted by sub-pixel amounts.

Several LED dies per colour sit at different lateral offsets ``d`` in the LED
plane; each shifts the hologram on the sensor by ``-d z2 / z1`` (see
:mod:`holography.simulate`). Frames of one colour therefore sample the same
hologram on grids offset by fractions of a pixel, and together they carry
detail finer than one pixel.

Registration
------------
:func:`register` estimates the shift between two frames by phase correlation,
refined to a fraction of a pixel with the upsampled matrix-multiply DFT of
Guizar-Sicairos, Thurman & Fienup, "Efficient subpixel image registration
algorithms", Opt. Lett. 33(2):156 (2008). The search is restricted to a window
around the shift the geometry predicts (when given), so that a periodic
pattern or noise cannot pull it to a wrong integer shift.

Reconstruction
--------------
:func:`shift_and_add` places every low-resolution sample at its registered
position on a grid ``factor`` times finer and averages (holes filled by
normalised convolution): fast, but it leaves the pixel-aperture blur in.
:func:`psr_least_squares` solves the forward model
``y_k = D B T(s_k) h`` (``T`` a sub-pixel translation, ``B`` the pixel's box
aperture of ``factor x factor`` fine pixels, ``D`` decimation) for the fine
hologram ``h`` by conjugate gradients on the regularised normal equations
``(sum_k A_k^T A_k + lam L^T L) h = sum_k A_k^T y_k`` with ``L`` the discrete
gradient (Tikhonov), started from shift-and-add. This is the cost function of
Bishara et al., "Lensfree on-chip microscopy over a wide field-of-view using
pixel super-resolution", Opt. Express 18(11):11181 (2010), and of Farsiu et
al., IEEE Trans. Image Process. 13(10):1327 (2004), with a quadratic penalty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from holography.errors import OpticsError
from holography.propagation import fft2, ifft2


@dataclass(frozen=True, slots=True, kw_only=True)
class Shift:
    """A registered shift (pixels, ``frame ~= reference`` translated by (dy, dx)).

    Attributes
    ----------
    dy, dx : float
        Shift in low-resolution pixels.
    peak : float
        Normalised phase-correlation peak (1 = identical up to the shift).
    residual_px : float
        Distance from the shift the geometry predicted (NaN when none was given).
    """

    dy: float
    dx: float
    peak: float
    residual_px: float = math.nan


def _correlation_at(cross: np.ndarray, ty: np.ndarray, tx: np.ndarray) -> np.ndarray:
    """Inverse DFT of ``cross`` evaluated at arbitrary (fractional) shifts by matrix products.

    ``corr[a, b] = sum_k cross[k] exp(2 pi i (ky ty[a] / ny + kx tx[b] / nx))``: the
    upsampled DFT of Guizar-Sicairos et al. (2008), on a small window only.
    """
    ny, nx = cross.shape
    ky = np.fft.fftfreq(ny) * ny
    kx = np.fft.fftfreq(nx) * nx
    row = np.exp(2j * np.pi * np.outer(ty, ky) / ny)
    col = np.exp(2j * np.pi * np.outer(kx, tx) / nx)
    return row @ cross @ col


def register(reference: np.ndarray, frame: np.ndarray, *, predicted: tuple[float, float] | None = None,
             search_px: float = 2.0, upsample: int = 20, max_freq: float = 0.3) -> Shift:
    """Sub-pixel shift of ``frame`` relative to ``reference`` by phase correlation.

    Parameters
    ----------
    reference, frame : (H, W) float arrays
        Background-normalised holograms of one colour (same shape).
    predicted : (dy, dx), optional
        Shift the geometry predicts, in pixels; the peak is searched within
        ``search_px`` of it.
    search_px : float
        Radius of that search window.
    upsample : int
        Sub-pixel refinement factor (precision ~1/upsample pixel).
    max_freq : float
        Highest spatial frequency used (cycles/pixel).

    Returns
    -------
    Shift
    """
    if reference.shape != frame.shape or reference.ndim != 2:
        raise OpticsError(f"frames to register must have one 2-D shape (got {reference.shape} "
                          f"and {frame.shape})")
    win = np.outer(np.hanning(reference.shape[0]), np.hanning(reference.shape[1])).astype(np.float32)
    a = fft2(((reference - reference.mean()) * win).astype(np.complex64))
    b = fft2(((frame - frame.mean()) * win).astype(np.complex64))
    cross = b * np.conj(a)
    cross /= np.maximum(np.abs(cross), 1e-12)
    # keep |f| < max_freq cycles/pixel: the fixed Bayer pattern and the pixels filled from
    # neighbours live near Nyquist and would pull the peak to integer shifts
    fy = np.fft.fftfreq(cross.shape[0])[:, None]
    fx = np.fft.fftfreq(cross.shape[1])[None, :]
    cross[fy**2 + fx**2 > max_freq**2] = 0
    corr = np.abs(ifft2(cross))
    ny, nx = corr.shape
    if predicted is not None:
        py, px = predicted
        yy = np.fft.fftfreq(ny) * ny
        xx = np.fft.fftfreq(nx) * nx
        dist2 = (yy[:, None] - py) ** 2 + (xx[None, :] - px) ** 2
        corr = np.where(dist2 <= search_px**2, corr, 0.0)
    iy, ix = np.unravel_index(int(np.argmax(corr)), corr.shape)
    dy0 = iy if iy <= ny // 2 else iy - ny
    dx0 = ix if ix <= nx // 2 else ix - nx
    steps = np.arange(-upsample, upsample + 1) / upsample  # +-1 px around the integer peak
    up = np.abs(_correlation_at(cross.astype(np.complex128), dy0 + steps, dx0 + steps))
    uy, ux = np.unravel_index(int(np.argmax(up)), up.shape)
    dy = dy0 + steps[uy]
    dx = dx0 + steps[ux]
    peak = float(up.max() / max(int(np.count_nonzero(cross)), 1))
    resid = math.hypot(dy - predicted[0], dx - predicted[1]) if predicted is not None else math.nan
    return Shift(dy=float(dy), dx=float(dx), peak=peak, residual_px=resid)


def register_dies(frames: list[np.ndarray], predicted: list[tuple[float, float]], *,
                  max_residual_px: float = 0.5, min_peak: float = 0.05) -> tuple[list[Shift], list[int]]:
    """Register every frame to the first, falling back to the geometry where that fails.

    A measured shift is kept only when it lies within ``max_residual_px`` of the
    predicted one and its correlation peak exceeds ``min_peak``; otherwise (a
    sparse or empty field, a failed die) the prediction is used.

    Returns
    -------
    shifts : list of Shift
        One per frame (the first is (0, 0)).
    fallbacks : list of int
        Indices of frames whose shift was taken from the geometry.
    """
    shifts = [Shift(dy=0.0, dx=0.0, peak=1.0, residual_px=0.0)]
    fallbacks = []
    for k in range(1, len(frames)):
        s = register(frames[0], frames[k], predicted=predicted[k], search_px=max(2.0, 4 * max_residual_px))
        if not (s.residual_px <= max_residual_px and s.peak >= min_peak):
            fallbacks.append(k)
            s = Shift(dy=float(predicted[k][0]), dx=float(predicted[k][1]), peak=s.peak,
                      residual_px=s.residual_px)
        shifts.append(s)
    return shifts, fallbacks


def predicted_shift_px(offset_um: tuple[float, float], *, sample_distance_um: float,
                       source_distance_um: float, pitch_um: float) -> tuple[float, float]:
    """Hologram shift (dy, dx) in pixels for an LED die at lateral offset (x, y) um."""
    k = -sample_distance_um / source_distance_um / pitch_um
    return (offset_um[1] * k, offset_um[0] * k)


def _nearest_fine(x: np.ndarray, factor: int) -> np.ndarray:
    """Index of the fine pixel nearest to low-resolution coordinate ``x`` (ties go up).

    Low-resolution pixel ``i`` covers fine pixels ``factor i .. factor i + factor - 1``,
    so its centre lies at fine coordinate ``factor i + (factor - 1) / 2``.
    """
    return np.floor(np.asarray(x, np.float64) * factor + (factor - 1) / 2 + 0.5).astype(np.int64)


def shift_and_add(frames: list[np.ndarray], shifts: list[Shift], factor: int = 2) -> np.ndarray:
    """Fuse shifted frames on a grid ``factor`` times finer (nearest fine pixel, averaged).

    Frame ``k`` is the reference translated by ``shifts[k]``; the result is the
    reference geometry. Fine pixels that no sample reached are filled from
    their neighbours.

    Returns
    -------
    (factor H, factor W) float32
    """
    if not frames or len(frames) != len(shifts):
        raise OpticsError("shift_and_add needs one shift per frame and at least one frame")
    h, w = frames[0].shape
    acc = np.zeros((h * factor, w * factor), np.float64)
    cnt = np.zeros_like(acc)
    yy, xx = np.mgrid[0:h, 0:w]
    for f, s in zip(frames, shifts, strict=True):
        # sample (i, j) of frame k sees the reference at (i - dy, j - dx) (pixel centres)
        # ties go up: np.rint's round-half-to-even put exact half-pixel shifts on the
        # reference's own fine pixels, so a 4-die half-pixel design filled a quarter of the grid
        fy = _nearest_fine(yy - s.dy, factor) % (h * factor)
        fx = _nearest_fine(xx - s.dx, factor) % (w * factor)
        np.add.at(acc, (fy, fx), f)
        np.add.at(cnt, (fy, fx), 1.0)
    out = np.where(cnt > 0, acc / np.maximum(cnt, 1), 0.0).astype(np.float32)
    good = cnt > 0
    if not good.all():
        k = np.ones((3, 3), np.float32)
        for _ in range(2 * factor):
            num = cv2.filter2D(out * good, -1, k, borderType=cv2.BORDER_REFLECT)
            den = cv2.filter2D(good.astype(np.float32), -1, k, borderType=cv2.BORDER_REFLECT)
            fill = ~good & (den > 0)
            out[fill] = num[fill] / den[fill]
            good = good | fill
            if good.all():
                break
    return out


class _Model:
    """The PSR forward operator and its adjoint on a fine grid."""

    def __init__(self, shape_lr: tuple[int, int], shifts: list[Shift], factor: int):
        h, w = shape_lr
        self.f = factor
        self.shape = (h * factor, w * factor)
        fy = np.fft.fftfreq(self.shape[0])[:, None]
        fx = np.fft.fftfreq(self.shape[1])[None, :]
        # translation by (dy, dx) LR pixels = (f dy, f dx) fine pixels
        self.phases = [np.exp(-2j * np.pi * (fy * s.dy * factor + fx * s.dx * factor)).astype(
            np.complex64) for s in shifts]

    def _translate(self, img: np.ndarray, k: int, inverse: bool) -> np.ndarray:
        ph = np.conj(self.phases[k]) if inverse else self.phases[k]
        return ifft2(fft2(img.astype(np.complex64)) * ph).real.astype(np.float32)

    def forward(self, h: np.ndarray, k: int) -> np.ndarray:
        t = self._translate(h, k, False)
        H, W = t.shape
        f = self.f
        # pixel (i, j) averages fine pixels centred on its own centre
        return t.reshape(H // f, f, W // f, f).mean(axis=(1, 3))

    def adjoint(self, y: np.ndarray, k: int) -> np.ndarray:
        f = self.f
        up = np.repeat(np.repeat(y, f, axis=0), f, axis=1) / (f * f)
        return self._translate(up, k, True)


def _laplacian(h: np.ndarray) -> np.ndarray:
    return (4 * h - np.roll(h, 1, 0) - np.roll(h, -1, 0) - np.roll(h, 1, 1)
            - np.roll(h, -1, 1)).astype(np.float32)


def psr_least_squares(frames: list[np.ndarray], shifts: list[Shift], factor: int = 2, *,
                      regularisation: float = 0.02, iterations: int = 15,
                      tolerance: float = 1e-3) -> tuple[np.ndarray, list[float]]:
    """Model-based pixel super-resolution by conjugate gradients.

    Parameters
    ----------
    frames : list of (H, W) float arrays
        Background-normalised holograms of one colour.
    shifts : list of Shift
        Their registered shifts (first usually (0, 0)).
    factor : int
        Fine-grid factor.
    regularisation : float
        Weight of the gradient (Tikhonov) penalty, relative to one frame's data term.
    iterations : int
        Upper bound on CG iterations.
    tolerance : float
        Stop when the residual norm falls below this fraction of the initial one.

    Returns
    -------
    fine : (factor H, factor W) float32
    residuals : list of float
        Relative residual norm after each iteration (convergence record).
    """
    model = _Model(frames[0].shape, shifts, factor)
    n = len(frames)

    def normal(h):
        out = np.zeros_like(h)
        for k in range(n):
            out += model.adjoint(model.forward(h, k), k)
        return out + regularisation * n * _laplacian(h) / (factor * factor)

    x = shift_and_add(frames, shifts, factor)
    b = np.zeros(model.shape, np.float32)
    for k in range(n):
        b += model.adjoint(frames[k].astype(np.float32), k)
    r = b - normal(x)
    p = r.copy()
    rs = float(np.vdot(r, r))
    r0 = math.sqrt(rs) or 1.0
    history = []
    for _ in range(iterations):
        ap = normal(p)
        alpha = rs / max(float(np.vdot(p, ap)), 1e-30)
        x += alpha * p
        r -= alpha * ap
        rs_new = float(np.vdot(r, r))
        history.append(math.sqrt(rs_new) / r0)
        if history[-1] < tolerance:
            break
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x, history


@dataclass(slots=True, kw_only=True)
class DieSet:
    """The usable frames of one LED's dies, registered to its reference die.

    Attributes
    ----------
    led : str
    amplitudes : list of (H, W) float16 arrays
        ``sqrt`` of each die's normalised hologram; the first is the reference die.
    shifts : list of Shift
        Shift of each frame relative to the reference (first (0, 0)).
    fallbacks : list of int
        Frames whose shift was taken from the geometry (registration failed).
    left_out : list of str
        Frame files not used (dark, or a die that failed), with the reason.
    """

    led: str
    amplitudes: list[np.ndarray]
    shifts: list[Shift]
    fallbacks: list[int]
    left_out: list[str]

    @property
    def frames(self) -> int:
        """Frames used (1 means no super-resolution is possible)."""
        return len(self.amplitudes)

    @property
    def residual_px(self) -> float:
        """Largest distance between a measured shift and the geometry's prediction (px)."""
        vals = [s.residual_px for k, s in enumerate(self.shifts)
                if k and k not in self.fallbacks and math.isfinite(s.residual_px)]
        return max(vals) if vals else math.nan


def psr_windows(dies: DieSet, rows: np.ndarray, cols: np.ndarray, size: int,
                factor: int = 2) -> np.ndarray:
    """Shift-and-add hologram windows around many points at once.

    Parameters
    ----------
    dies : DieSet
        Registered frames of one LED.
    rows, cols : (N,) int arrays
        Window centres in the reference die's pixels (window ``[r - size//2, r + size//2)``).
    size : int
        Window size in sensor pixels.
    factor : int
        Fine-grid factor (1: the reference die's window alone).

    Returns
    -------
    (N, factor size, factor size) float32
        Fused amplitude windows, each divided by its own median (empty chamber = 1).
        Low-resolution pixel ``i`` of the reference window sits at fine coordinate
        ``factor i + (factor - 1) / 2``. Fine pixels no die reached are filled from
        their neighbours.
    """
    n = len(rows)
    fs = factor * size
    acc = np.zeros((n, fs, fs), np.float32)
    cnt = np.zeros((fs, fs), np.float32)
    ii = np.arange(size)
    use = [0] if factor == 1 else range(dies.frames)
    for k in use:
        amp, s = dies.amplitudes[k], dies.shifts[k]
        iy, ix = int(round(s.dy)), int(round(s.dx))
        # window sample i of die k sees the reference window at i - (shift - round(shift))
        fy = _nearest_fine(ii - (s.dy - iy), factor)
        fx = _nearest_fine(ii - (s.dx - ix), factor)
        oky = (fy >= 0) & (fy < fs)
        okx = (fx >= 0) & (fx < fs)
        win = _windows(amp, rows + iy, cols + ix, size)
        sub = win[:, oky][:, :, okx]
        acc[:, fy[oky][:, None], fx[okx][None, :]] += sub
        cnt[fy[oky][:, None], fx[okx][None, :]] += 1.0
    good = cnt > 0
    acc[:, good] /= cnt[good]
    if not good.all():
        acc = _fill_holes(acc, good)
    med = np.median(acc.reshape(n, -1), axis=1)
    acc /= np.maximum(med, 1e-3)[:, None, None]
    return acc


def _windows(img: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray:
    """``size x size`` float32 windows of ``img`` around each (row, col), edge-clamped."""
    h, w = img.shape
    off = np.arange(size) - size // 2
    ry = np.clip(rows[:, None] + off[None, :], 0, h - 1)
    rx = np.clip(cols[:, None] + off[None, :], 0, w - 1)
    return img[ry[:, :, None], rx[:, None, :]].astype(np.float32)


def _fill_holes(stack: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Fill the fine pixels no sample reached by normalised 3x3 convolution (a shared mask)."""
    import scipy.ndimage as ndi

    k = np.ones((1, 3, 3), np.float32)
    g = good.astype(np.float32)[None]
    out = stack * g
    for _ in range(6):
        num = ndi.convolve(out, k, mode="nearest")
        den = ndi.convolve(g, k, mode="nearest")
        fill = (g[0] == 0) & (den[0] > 0)
        out[:, fill] = num[:, fill] / den[0][fill]
        g = g.copy()
        g[0][fill] = 1.0
        if g.all():
            break
    return out
