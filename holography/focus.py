"""Autofocus: a sharpness metric of the complex field and a coarse-to-fine search.

Metric
------
The Tamura coefficient of the gradient of the reconstructed amplitude,
``ToG = sqrt(std(G) / mean(G))`` with ``G = |grad |U||`` (Memmolo et al.,
"Automatic focusing in digital holography and its use for stretched
holograms", Opt. Lett. 36(10):1945, 2011). It measures how sparse the edges
are: defocused fringes spread edges over the whole tile, a focused cell packs
them into its outline. It needs no threshold, does not depend on the
illumination level, and was chosen against the alternatives on our own
simulated captures. White cells are strong phase objects (OPD ~0.3 um,
~3 rad) with absorbing nuclei and granules; on them the amplitude ToG peaked
within 12 um of the true depth (0-3 um in green), while the Tamura
coefficient of the complex gradient (Zhang et al., Opt. Lett. 42(19):3824,
2017) peaked 6-32 um short of it in the reconstruction pipeline, and at our
prominence threshold left one test capture with cells unfocused.

Known limitation (measured, not yet mended): on cells of half or less the
simulated refractive-index contrast the amplitude ToG misses the depth by
45-90 um, since a weak phase object has almost no amplitude contrast at focus;
the complex-gradient metric stays within -21..+3 um there. Real cells'
contrast after lysis must be checked on the first real captures; the
per-cell refocusing of the analysis should use a phase-aware criterion.

Search
------
Coarse: the low-pass band of the tile's spectrum (decimated, see
:meth:`holography.propagation.Propagator.at_lowpass`) is refocused over the
whole search range at a step below its depth of field. Fine: around the
coarse peak at finer band and step, then a parabola through the best three
points. Both stages reuse the tile's one forward FFT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from holography.propagation import SERIAL_KERNEL_SAMPLES, Propagator

#: a focus curve whose peak stands less than this fraction above its median is
#: taken as "no focus found". Measured on simulated captures: an empty chamber
#: gives ~0.01, a leukopenic sample (2,500 WBC/uL) ~0.15.
PROMINENCE_MIN = 0.04


@numba.njit(cache=True, inline="always")
def _amplitude_row(u, out, i):  # pragma: no cover - numba
    for j in range(u.shape[1]):
        v = u[i, j]
        out[i, j] = math.sqrt(v.real * v.real + v.imag * v.imag)


@numba.njit(parallel=True, cache=True)
def _amplitude(u, out):  # pragma: no cover - numba
    for i in numba.prange(u.shape[0]):
        _amplitude_row(u, out, i)


@numba.njit(cache=True)
def _amplitude_serial(u, out):  # pragma: no cover - numba
    for i in range(u.shape[0]):
        _amplitude_row(u, out, i)


@numba.njit(cache=True, inline="always")
def _grad_row(a, i, rows):  # pragma: no cover - numba
    r1 = 0.0
    r2 = 0.0
    for j in range(a.shape[1] - 1):
        gx = a[i, j + 1] - a[i, j]
        gy = a[i + 1, j] - a[i, j]
        g2 = gx * gx + gy * gy
        r1 += math.sqrt(g2)
        r2 += g2
    rows[i, 0] = r1
    rows[i, 1] = r2


@numba.njit(cache=True)
def _sum_rows(a, rows):  # pragma: no cover - numba
    # rows summed in order: the same result however many threads made them
    s1 = 0.0
    s2 = 0.0
    for i in range(rows.shape[0]):
        s1 += rows[i, 0]
        s2 += rows[i, 1]
    return s1, s2, (a.shape[0] - 1) * (a.shape[1] - 1)


@numba.njit(parallel=True, cache=True)
def _grad_moments(a):  # pragma: no cover - numba
    rows = np.empty((max(a.shape[0] - 1, 0), 2))
    for i in numba.prange(a.shape[0] - 1):
        _grad_row(a, i, rows)
    return _sum_rows(a, rows)


@numba.njit(cache=True)
def _grad_moments_serial(a):  # pragma: no cover - numba
    rows = np.empty((max(a.shape[0] - 1, 0), 2))
    for i in range(a.shape[0] - 1):
        _grad_row(a, i, rows)
    return _sum_rows(a, rows)


def tamura_of_gradient(field: np.ndarray) -> float:
    """Tamura coefficient of the gradient magnitude of a field's amplitude.

    Parameters
    ----------
    field : (H, W) complex array
        The field (or a real amplitude image).

    Returns
    -------
    float
        ``sqrt(std(G) / mean(G))``; larger is sharper.
    """
    f = np.asarray(field)
    # small fields (a cell's window) serially: a parallel launch costs more than the work
    serial = f.size <= SERIAL_KERNEL_SAMPLES
    if np.iscomplexobj(f):
        amp = np.empty(f.shape, np.float32)
        (_amplitude_serial if serial else _amplitude)(f, amp)
    else:
        amp = np.ascontiguousarray(f, dtype=np.float32)
    s1, s2, n = (_grad_moments_serial if serial else _grad_moments)(amp)
    mean = s1 / n
    if mean <= 0:
        return 0.0
    var = max(s2 / n - mean * mean, 0.0)
    return math.sqrt(math.sqrt(var) / mean)


@dataclass(frozen=True, slots=True, kw_only=True)
class FocusResult:
    """Outcome of one autofocus search (distances in the propagator's frame).

    Attributes
    ----------
    distance_um : float
        Best distance (NaN when not found).
    found : bool
        A clear peak inside the range.
    prominence : float
        Peak height above the curve's median, as a fraction of the median.
    reason : str
        Why it was not found ('' when found).
    evaluations : int
        Inverse FFTs spent (at any resolution).
    """

    distance_um: float
    found: bool
    prominence: float
    reason: str
    evaluations: int
    coarse_distances_um: tuple[float, ...] = ()
    coarse_metric: tuple[float, ...] = ()


def _parabola_peak(x: np.ndarray, y: np.ndarray) -> float:
    k = int(np.argmax(y))
    if k == 0 or k == len(y) - 1:
        return float(x[k])
    x0, x1, x2 = x[k - 1:k + 2]
    y0, y1, y2 = y[k - 1:k + 2]
    den = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / den
    b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / den
    if a >= 0:
        return float(x[k])
    return float(np.clip(-b / (2 * a), x0, x2))


def _metric(prop: Propagator, z: float, lowpass: int, border: int) -> float:
    u = prop.at_lowpass(z, lowpass) if lowpass > 1 else prop.at(z)
    b = border // lowpass
    return tamura_of_gradient(u[b:u.shape[0] - b, b:u.shape[1] - b] if b else u)


def coarse_scan(prop: Propagator, distances_um: np.ndarray, *, lowpass: int = 2,
                border: int = 0) -> np.ndarray:
    """Focus metric at each distance on the low-pass band (decimated by ``lowpass``).

    ``border`` pixels (full-resolution) on each side are left out of the metric
    (a tile's margin, whose content wraps around in the FFT).
    """
    return np.array([_metric(prop, float(z), lowpass, border) for z in distances_um])


def autofocus(prop: Propagator, *, z_min_um: float, z_max_um: float, coarse_step_um: float,
              fine_step_um: float, lowpass: int = 2, fine_lowpass: int = 2,
              border: int = 0, prominence_min: float = PROMINENCE_MIN) -> FocusResult:
    """Find the distance at which the field is sharpest.

    Parameters
    ----------
    prop : Propagator
        The tile's spectrum (forward FFT paid once).
    z_min_um, z_max_um : float
        Search range (the propagator's distance frame).
    coarse_step_um, fine_step_um : float
        Steps of the two stages.
    lowpass, fine_lowpass : int
        Decimation of the band used by each stage (1 = full resolution).
    border : int
        Pixels on each side left out of the metric.
    prominence_min : float
        Minimum peak prominence (fraction above the curve's median) to accept a focus.

    Returns
    -------
    FocusResult
    """
    zs = np.arange(z_min_um, z_max_um + 0.5 * coarse_step_um, coarse_step_um)
    m = coarse_scan(prop, zs, lowpass=lowpass, border=border)
    k = int(np.argmax(m))
    med = float(np.median(m))
    prom = (float(m[k]) - med) / med if med > 0 else 0.0
    evals = len(zs)
    base = dict(coarse_distances_um=tuple(map(float, zs)), coarse_metric=tuple(map(float, m)))
    if k == 0 or k == len(zs) - 1:
        return FocusResult(distance_um=math.nan, found=False, prominence=prom,
                           reason="sharpest plane lies at the edge of the search range",
                           evaluations=evals, **base)
    if prom < prominence_min:
        return FocusResult(distance_um=math.nan, found=False, prominence=prom,
                           reason="no clear focus (empty or featureless field)",
                           evaluations=evals, **base)
    zf = np.arange(zs[k] - coarse_step_um, zs[k] + coarse_step_um + 0.5 * fine_step_um,
                   fine_step_um)
    mf = coarse_scan(prop, zf, lowpass=fine_lowpass, border=border)
    evals += len(zf)
    return FocusResult(distance_um=_parabola_peak(zf, mf), found=True, prominence=prom,
                       reason="", evaluations=evals, **base)


def refine(prop: Propagator, center_um: float, *, half_range_um: float, step_um: float,
           lowpass: int = 2, border: int = 0) -> tuple[float, float, int]:
    """Fine search only, around a known distance.

    Returns
    -------
    (distance, prominence, evaluations)
        The prominence is the peak's height above the lower end of the scanned
        curve, as a fraction of it (0 when the peak sits at either end).
    """
    # a grid aligned to multiples of the step, so that tiles share cached transfer functions
    center_um = round(center_um / step_um) * step_um
    zf = np.arange(center_um - half_range_um, center_um + half_range_um + 0.5 * step_um, step_um)
    mf = coarse_scan(prop, zf, lowpass=lowpass, border=border)
    k = int(np.argmax(mf))
    prom = 0.0 if k in (0, len(zf) - 1) else float((mf[k] - mf.min()) / max(mf.min(), 1e-12))
    return _parabola_peak(zf, mf), prom, len(zf)


@dataclass(frozen=True, slots=True, kw_only=True)
class FocalPlane:
    """The sample plane fitted over the frame: ``z = z0 + sx * (x - xc) + sy * (y - yc)``.

    Attributes
    ----------
    distance_um : float
        Sample distance at the frame centre (air-equivalent, sensor to sample).
    slope_x_um_per_mm, slope_y_um_per_mm : float
        Tilt of the sample plane along x (columns) and y (rows).
    residual_um : float
        RMS residual of the tiles used.
    tiles_used : int
        Tiles that entered the fit.
    """

    distance_um: float
    slope_x_um_per_mm: float
    slope_y_um_per_mm: float
    residual_um: float
    tiles_used: int

    @property
    def tilt_mrad(self) -> float:
        """Magnitude of the tilt in milliradians."""
        return math.hypot(self.slope_x_um_per_mm, self.slope_y_um_per_mm)

    def at(self, x_mm, y_mm):
        """Plane distance at a position relative to the frame centre (mm; floats or arrays)."""
        return self.distance_um + self.slope_x_um_per_mm * x_mm + self.slope_y_um_per_mm * y_mm


def fit_plane(x_mm: np.ndarray, y_mm: np.ndarray, z_um: np.ndarray, weights: np.ndarray,
              *, outlier_um: float = 8.0) -> FocalPlane:
    """Robust weighted plane fit through tile focus distances.

    Tiles more than ``max(outlier_um, 3 MAD)`` from the fit are dropped and
    the fit repeated (a tile dominated by floating cells or dust is an outlier).
    With fewer than 3 tiles only the mean distance is fitted (no tilt).
    """
    x, y, z, w = (np.asarray(a, float) for a in (x_mm, y_mm, z_um, weights))
    keep = np.isfinite(z)
    coef = np.array([np.nan, 0.0, 0.0])
    for _ in range(5):
        n = int(keep.sum())
        if n == 0:
            return FocalPlane(distance_um=math.nan, slope_x_um_per_mm=0.0, slope_y_um_per_mm=0.0,
                              residual_um=math.nan, tiles_used=0)
        if n < 3 or np.ptp(x[keep]) < 1e-6 or np.ptp(y[keep]) < 1e-6:
            zk = z[keep]
            coef = np.array([float(np.median(zk)), 0.0, 0.0])
        else:
            A = np.column_stack([np.ones(n), x[keep], y[keep]]) * np.sqrt(w[keep])[:, None]
            coef, *_ = np.linalg.lstsq(A, z[keep] * np.sqrt(w[keep]), rcond=None)
        res = z - (coef[0] + coef[1] * x + coef[2] * y)
        mad = float(np.median(np.abs(res[keep]))) * 1.4826
        new = np.isfinite(z) & (np.abs(res) <= max(outlier_um, 3 * mad))
        if (new == keep).all():
            break
        keep = new
    rms = float(np.sqrt(np.mean(res[keep] ** 2))) if keep.any() else math.nan
    return FocalPlane(distance_um=float(coef[0]), slope_x_um_per_mm=float(coef[1]),
                      slope_y_um_per_mm=float(coef[2]), residual_um=rms,
                      tiles_used=int(keep.sum()))


def focus_curve(amplitude: np.ndarray, *, pitch_um: float, wavelength_nm: float,
                distances_um: np.ndarray, medium_index: float = 1.0, pad_px: int = 128,
                window: tuple[slice, slice] | None = None) -> np.ndarray:
    """Focus metric of a hologram refocused at each distance (back-propagation).

    Parameters
    ----------
    amplitude : (H, W) float array
        Square root of the background-normalised hologram.
    pitch_um, wavelength_nm, medium_index : float
        Sampling and optics of the (plane-wave equivalent) hologram.
    distances_um : (N,) array
        Distances from the hologram back to candidate object planes (positive).
    pad_px : int
        Reflective padding on each side (keeps the FFT's wrap-around away).
    window : (slice, slice), optional
        Region of the unpadded image in which the metric is computed (one object).

    Returns
    -------
    (N,) float array
        Tamura of gradient at each distance.
    """
    a = np.pad(np.asarray(amplitude, np.float32), pad_px, mode="reflect")
    prop = Propagator(a, pitch_um=pitch_um, wavelength_nm=wavelength_nm,
                      medium_index=medium_index)
    h, w = amplitude.shape
    ys, xs = window if window is not None else (slice(0, h), slice(0, w))
    out = []
    for z in np.asarray(distances_um, float):
        u = prop.at(-float(z))[pad_px:pad_px + h, pad_px:pad_px + w]
        out.append(tamura_of_gradient(u[ys, xs]))
    return np.array(out)
