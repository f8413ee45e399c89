"""Iterative phase retrieval with an object-support constraint (twin-image suppression).

An in-line hologram records only intensity; back-propagating its square root
gives the object plus its out-of-focus twin image, spread around every cell.
Cells occupy a small part of a lysed, diluted sample, so a support constraint
removes the twin: alternate between the sensor, where the measured amplitude
is imposed and the current phase kept, and the sample plane, where the field
outside the support (the cells, dilated) is replaced by the empty-chamber
background (Fienup, "Phase retrieval algorithms: a comparison", Appl. Opt.
21(15):2758, 1982; for lensless in-line holograms with an object support,
Mudanyali et al., "Compact, light-weight and cost-effective microscope based
on lensless incoherent holography for telemedicine applications", Lab Chip
10(11):1417, 2010).

Several LEDs share one support, found from all their reconstructions; each
colour is then retrieved at its own wavelength and distance. Convergence is
measured (the relative amplitude mismatch at the sensor before each
correction) and the iterations are bounded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from holography.errors import OpticsError
from holography.propagation import fft2, ifft2, transfer_function


@dataclass(frozen=True, slots=True, kw_only=True)
class RetrievalResult:
    """Outcome of :func:`retrieve`.

    Attributes
    ----------
    field : (H, W) complex64
        Retrieved sample-plane field.
    mismatch : tuple of float
        Relative sensor-amplitude mismatch at each iteration.
    iterations : int
        Iterations run.
    """

    field: np.ndarray
    mismatch: tuple[float, ...]
    iterations: int


def support_mask(fields: list[np.ndarray], *, threshold_sd: float = 12.0, smooth_px: float = 1.5,
                 dilate_px: int = 3) -> np.ndarray:
    """Object support from one or more back-propagated sample-plane fields.

    The deviation from the background ``|u - median(u)|`` is smoothed, averaged
    over the fields, and thresholded at ``median + threshold_sd`` robust SDs,
    then dilated so the support holds each cell's edge.

    Returns
    -------
    (H, W) bool
    """
    if not fields:
        raise OpticsError("support_mask needs at least one field")
    dev = np.zeros(fields[0].shape, np.float32)
    for u in fields:
        bg = np.median(u.real) + 1j * np.median(u.imag)
        dev += cv2.GaussianBlur(np.abs(u - bg).astype(np.float32), (0, 0), smooth_px)
    dev /= len(fields)
    sample = dev[::2, ::2]
    med = float(np.median(sample))
    mad = float(np.median(np.abs(sample - med))) * 1.4826
    mask = dev > med + threshold_sd * max(mad, 1e-6)
    if dilate_px > 0 and mask.any():
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate_px + 1, 2 * dilate_px + 1))
        mask = cv2.dilate(mask.astype(np.uint8), k) > 0
    return mask


def retrieve(amplitude: np.ndarray, support: np.ndarray, *, pitch_um: float, wavelength_nm: float,
             distance_um: float, iterations: int = 20, tolerance: float = 1e-3) -> RetrievalResult:
    """Support-constrained phase retrieval of one in-line hologram.

    Parameters
    ----------
    amplitude : (H, W) float
        Square root of the background-normalised hologram (sensor plane).
    support : (H, W) bool
        Object support in the sample plane (same grid).
    pitch_um, wavelength_nm : float
        Grid pitch and vacuum wavelength.
    distance_um : float
        Propagation distance from the sample plane to the sensor (positive), in
        the same frame as ``pitch_um`` (for point-source holograms on the sensor
        grid: the sensor-equivalent distance).
    iterations : int
        Upper bound on iterations.
    tolerance : float
        Stop when the mismatch changes by less than this between iterations.

    Returns
    -------
    RetrievalResult
    """
    a = np.asarray(amplitude, np.float32)
    if a.shape != support.shape:
        raise OpticsError(f"amplitude {a.shape} and support {support.shape} differ in shape")
    h_fwd = transfer_function(a.shape, pitch_um=pitch_um, wavelength_nm=wavelength_nm,
                              distance_um=distance_um)
    h_back = transfer_function(a.shape, pitch_um=pitch_um, wavelength_nm=wavelength_nm,
                               distance_um=-distance_um)
    u = ifft2(fft2(a.astype(np.complex64)) * h_back)
    outside = ~support
    norm = float(np.linalg.norm(a - a.mean())) or 1.0
    history: list[float] = []
    for _ in range(iterations):
        if outside.any():
            bg = complex(np.mean(u[outside]))
            u[outside] = bg
        d = ifft2(fft2(u) * h_fwd)
        mag = np.abs(d)
        history.append(float(np.linalg.norm(mag - a)) / norm)
        d *= a / np.maximum(mag, 1e-6)
        u = ifft2(fft2(d, overwrite=True) * h_back, overwrite=True)
        if len(history) > 1 and abs(history[-2] - history[-1]) < tolerance * max(history[0], 1e-12):
            break
    return RetrievalResult(field=u.astype(np.complex64), mismatch=tuple(history),
                           iterations=len(history))


def twin_image_energy(field: np.ndarray, support: np.ndarray, *, ring_px: int = 25) -> float:
    """Mean squared deviation from the background in a ring around the support.

    The twin image of each cell spreads into the empty space around it; this
    is the figure that retrieval should lower.
    """
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring_px + 1, 2 * ring_px + 1))
    ring = (cv2.dilate(support.astype(np.uint8), k) > 0) & ~support
    if not ring.any():
        return math.nan
    bg = np.median(field.real[ring]) + 1j * np.median(field.imag[ring])
    return float(np.mean(np.abs(field[ring] - bg) ** 2))


def retrieve_leds(amplitudes: dict[str, tuple[np.ndarray, float]], *, pitch_um: float,
                  distance_um: float, iterations: int = 20
                  ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, RetrievalResult]]:
    """Retrieve several LEDs' holograms of one region with one shared support.

    Parameters
    ----------
    amplitudes : dict
        LED name -> (amplitude (H, W), wavelength in nm), all on one grid.
    pitch_um, distance_um : float
        Grid pitch and sample-to-sensor propagation distance (see :func:`retrieve`).
    iterations : int
        Upper bound per LED.

    Returns
    -------
    support : (H, W) bool
    plain : dict
        LED -> plain back-propagated field (for comparison).
    results : dict
        LED -> RetrievalResult.
    """
    plain = {led: ifft2(fft2(a.astype(np.complex64)) * transfer_function(
        a.shape, pitch_um=pitch_um, wavelength_nm=wl, distance_um=-distance_um))
        for led, (a, wl) in amplitudes.items()}
    support = support_mask(list(plain.values()))
    results = {led: retrieve(a, support, pitch_um=pitch_um, wavelength_nm=wl,
                             distance_um=distance_um, iterations=iterations)
               for led, (a, wl) in amplitudes.items()}
    return support, plain, results


def retrieve_windows(amplitude: np.ndarray, support: np.ndarray, kernels: np.ndarray, *,
                     weight: np.ndarray, iterations: int = 4
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Support-constrained retrieval of many small hologram windows at once.

    The batched form of :func:`retrieve` for per-cell windows: each window has
    its own propagation kernel (the cell's own depth) and support. Windows cut
    from a larger hologram hold fringes of objects outside them, so the
    measured amplitude is imposed with ``weight`` (1 in the interior, tapering
    to 0 at the border, where the current estimate is kept).

    Parameters
    ----------
    amplitude : (N, S, S) float32
        Hologram amplitude windows, background 1.
    support : (N, S, S) bool
        Object support of each window in the sample plane.
    kernels : (N, S, S) complex64
        Transfer function sample plane -> sensor of each window (its conjugate
        propagates back).
    weight : (S, S) float32
        Weight of the measured amplitude (the window taper).
    iterations : int
        Iterations (0: plain back-propagation).

    Returns
    -------
    field : (N, S, S) complex64
        Sample-plane fields (background 1).
    mismatch : (N, iterations) float32
        Relative weighted amplitude mismatch at the sensor before each correction.
    """
    a = amplitude.astype(np.complex64) * weight + (1.0 - weight)
    back = np.conj(kernels)
    u = ifft2(fft2(a, overwrite=True) * back, overwrite=True)
    outside = ~support
    amp = amplitude.astype(np.float32)
    norm = np.sqrt(np.sum((weight * (amp - 1.0)) ** 2, axis=(1, 2))) + 1e-9
    history = np.zeros((len(amp), iterations), np.float32)
    for it in range(iterations):
        u[outside] = 1.0
        d = ifft2(fft2(u, overwrite=True) * kernels, overwrite=True)
        mag = np.abs(d)
        history[:, it] = np.sqrt(np.sum((weight * (mag - amp)) ** 2, axis=(1, 2))) / norm
        target = weight * amp + (1.0 - weight) * mag
        d *= (target / np.maximum(mag, 1e-6)).astype(np.float32)
        u = ifft2(fft2(d, overwrite=True) * back, overwrite=True)
    return u.astype(np.complex64, copy=False), history


def window_support(fields: np.ndarray, pixel_um: float, *, cell_radius_um: float = 7.0,
                   relative: float = 0.3, dilate_um: float = 1.5) -> np.ndarray:
    """Shared support of per-cell windows from their plain back-propagated fields.

    ``fields`` is (N, L, S, S) (L wavelengths, background 1, each window centred
    on a cell focused in it). The support is the central disk of
    ``cell_radius_um`` plus every pixel whose scattered amplitude ``|u - 1|``,
    smoothed and averaged over the wavelengths, exceeds ``relative`` times that
    of the window's centre (a neighbouring cell), dilated by ``dilate_um``.

    Returns
    -------
    (N, S, S) bool
    """
    import scipy.ndimage as ndi

    n, _, s, _ = fields.shape
    dev = np.abs(fields - np.complex64(1.0)).mean(axis=1)
    sig = max(0.5, 1.0 / pixel_um)
    dev = ndi.gaussian_filter(dev, (0, sig, sig), mode="nearest")
    c = s // 2
    r = max(2, int(round(cell_radius_um / pixel_um)))
    yy, xx = np.mgrid[:s, :s] - c
    disk = yy ** 2 + xx ** 2 <= r * r
    centre = dev[:, disk].max(axis=1)
    mask = dev > relative * centre[:, None, None]
    mask |= disk[None]
    k = max(1, int(round(dilate_um / pixel_um)))
    st = np.zeros((1, 2 * k + 1, 2 * k + 1), bool)
    st[0] = (np.mgrid[-k:k + 1, -k:k + 1] ** 2).sum(axis=0) <= k * k
    return ndi.binary_dilation(mask, structure=st)
