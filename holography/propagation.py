"""Band-limited angular-spectrum propagation and the point-source geometry.

The angular spectrum method propagates a complex field ``U`` sampled at pitch
``dx`` over a distance ``z`` in a medium of index ``n`` as

    U_z = IFFT{ FFT{U} * H },   H(fx, fy) = exp(i 2 pi z (sqrt((n/lambda)^2 - fx^2 - fy^2) - n/lambda))

(the carrier ``exp(i k z)`` is removed so that an empty background stays real
and positive). Evanescent components are set to zero, and ``H`` is band-limited
to the frequencies whose phase it samples without aliasing:
``|f| <= 1 / (lambda_m sqrt((2 df z)^2 + 1))`` per axis, with ``df`` the
frequency step of the grid (Matsushima & Shimobaba, "Band-limited angular
spectrum method for numerical simulation of free-space propagation in far and
near fields", Opt. Express 17(22):19662, 2009).

Transfer functions are built by a numba kernel (parallel on large grids) and cached per
(shape, pitch, wavelength, distance, medium) in a bounded LRU cache. FFTs are
``scipy.fft`` in single precision with worker threads.

Point-source (lensless, LED behind a pinhole) holograms are reconstructed with
the Fresnel scaling theorem: a hologram recorded with a point source at
``z1`` above the sample and the sensor ``z2`` below it equals a plane-wave
hologram of the sample magnified by ``M = (z1 + z2) / z1``; in sample-plane
coordinates (pixel pitch ``p / M``) it is propagated over ``z2 / M``
(e.g. Goodman, Introduction to Fourier Optics, 3rd ed., sec. 4.2 and 9;
Garcia-Sucerquia et al., Appl. Opt. 45(5):836, 2006).
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numba
import numpy as np
import scipy.fft

from holography.errors import OpticsError

DEFAULT_WORKERS = max(1, os.cpu_count() or 1)


@numba.njit(cache=True, inline="always")
def _asm_rows(out, i, dy, dx, inv_lambda, z, fy_lim, fx_lim):  # pragma: no cover - numba
    # H depends on fx^2 and fy^2 only: one quadrant of the FFT-ordered grid is computed and
    # mirrored (index k and n - k hold the same |f|), a quarter of the sqrt and sincos
    ny, nx = out.shape
    inv_l2 = inv_lambda * inv_lambda
    two_pi_z = 2.0 * math.pi * z
    fy = i / (ny * dy)
    i2 = ny - i
    for j in range(nx // 2 + 1):
        fx = j / (nx * dx)
        arg = inv_l2 - fx * fx - fy * fy
        if arg <= 0.0 or fx > fx_lim or fy > fy_lim:
            v = complex(0.0, 0.0)
        else:
            ph = two_pi_z * (math.sqrt(arg) - inv_lambda)
            v = complex(math.cos(ph), math.sin(ph))
        j2 = nx - j
        out[i, j] = v
        if 0 < j2 < nx:
            out[i, j2] = v
        if 0 < i2 < ny:
            out[i2, j] = v
            if 0 < j2 < nx:
                out[i2, j2] = v


@numba.njit(parallel=True, cache=True)
def _asm_kernel(out, dy, dx, inv_lambda, z, fy_lim, fx_lim):  # pragma: no cover - numba
    for i in numba.prange(out.shape[0] // 2 + 1):
        _asm_rows(out, i, dy, dx, inv_lambda, z, fy_lim, fx_lim)


@numba.njit(cache=True)
def _asm_kernel_serial(out, dy, dx, inv_lambda, z, fy_lim, fx_lim):  # pragma: no cover - numba
    for i in range(out.shape[0] // 2 + 1):
        _asm_rows(out, i, dy, dx, inv_lambda, z, fy_lim, fx_lim)


#: up to this many samples a transfer function is built on the calling thread: starting the
#: parallel kernel costs more than the work (a 64 x 64 cell window: 0.03 ms on one thread, over
#: 1 ms through the thread pool while the analysis's other threads are busy). Larger grids keep
#: the parallel kernel even on the analysis's threads: full-sensor reconstruction, medians of
#: four interleaved runs, 4.4 s so, 4.6 s serial up to 256 x 256, 4.7 s serial on every thread
SERIAL_KERNEL_SAMPLES = 128 * 128


@numba.njit(parallel=True, cache=True)
def _multiply_inplace(a, b):  # pragma: no cover - numba
    ny, nx = a.shape
    for i in numba.prange(ny):
        for j in range(nx):
            a[i, j] *= b[i, j]


def band_limit(n: int, pitch_um: float, wavelength_medium_um: float, distance_um: float) -> float:
    """Matsushima-Shimobaba band limit (cycles/um) along an axis of ``n`` samples."""
    df = 1.0 / (n * pitch_um)
    return 1.0 / (wavelength_medium_um * math.sqrt((2.0 * df * distance_um) ** 2 + 1.0))


class _TransferCache:
    """Bounded LRU of transfer functions, by total bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple, build) -> np.ndarray:
        with self._lock:
            h = self._items.get(key)
            if h is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return h
        h = build()
        h.setflags(write=False)
        with self._lock:
            self.misses += 1
            if key not in self._items:
                self._items[key] = h
                self._bytes += h.nbytes
                while self._bytes > self.max_bytes and len(self._items) > 1:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= old.nbytes
        return h

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


#: building a kernel costs a few percent of the FFT it serves, so the cache is kept small:
#: it must hold a focus search's kernels (about 90 of a 512 x 512 band), not every tile's
TRANSFER_CACHE = _TransferCache(max_bytes=int(os.environ.get("HOLODIFF_TF_CACHE_MB", "256")) << 20)


def _check_optics(pitch_um: float, wavelength_nm: float, medium_index: float) -> None:
    if not (pitch_um > 0 and math.isfinite(pitch_um)):
        raise OpticsError(f"pixel pitch must be a positive number of micrometres (got {pitch_um})")
    if not (50.0 <= wavelength_nm <= 20000.0):
        raise OpticsError(f"wavelength must be given in nanometres, 50-20000 (got {wavelength_nm})")
    if not (1.0 <= medium_index <= 4.0):
        raise OpticsError(f"medium refractive index must be in [1, 4] (got {medium_index})")


def transfer_function(shape: tuple[int, int], *, pitch_um: float | tuple[float, float],
                      wavelength_nm: float, distance_um: float, medium_index: float = 1.0,
                      band_limited: bool = True) -> np.ndarray:
    """Angular-spectrum transfer function in FFT order (cached, read-only).

    Parameters
    ----------
    shape : (int, int)
        Grid shape (rows, columns).
    pitch_um : float or (float, float)
        Sample pitch in micrometres (one value, or (dy, dx)).
    wavelength_nm : float
        Vacuum wavelength in nanometres.
    distance_um : float
        Propagation distance in micrometres (negative propagates backwards).
    medium_index : float
        Refractive index of the medium the light travels through.
    band_limited : bool
        Apply the Matsushima-Shimobaba band limit.

    Returns
    -------
    (H, W) complex64 array
        Not writeable: it is shared through the cache.
    """
    dy, dx = (pitch_um, pitch_um) if np.isscalar(pitch_um) else pitch_um
    _check_optics(min(dy, dx), wavelength_nm, medium_index)
    if not math.isfinite(distance_um):
        raise OpticsError(f"propagation distance must be finite (got {distance_um})")
    ny, nx = int(shape[0]), int(shape[1])
    lam_m = wavelength_nm * 1e-3 / medium_index
    key = (ny, nx, float(dy), float(dx), float(wavelength_nm), float(distance_um),
           float(medium_index), bool(band_limited))

    def build() -> np.ndarray:
        out = np.empty((ny, nx), np.complex64)
        if band_limited:
            fy_lim = band_limit(ny, dy, lam_m, distance_um)
            fx_lim = band_limit(nx, dx, lam_m, distance_um)
        else:
            fy_lim = fx_lim = math.inf
        kernel = _asm_kernel_serial if ny * nx <= SERIAL_KERNEL_SAMPLES else _asm_kernel
        kernel(out, float(dy), float(dx), 1.0 / lam_m, float(distance_um), fy_lim, fx_lim)
        return out

    return TRANSFER_CACHE.get(key, build)


def fft2(a: np.ndarray, *, workers: int = DEFAULT_WORKERS, overwrite: bool = False) -> np.ndarray:
    """Single-precision 2-D FFT (complex64 in, complex64 out)."""
    return scipy.fft.fft2(a, workers=workers, overwrite_x=overwrite)


def ifft2(a: np.ndarray, *, workers: int = DEFAULT_WORKERS, overwrite: bool = False) -> np.ndarray:
    """Single-precision inverse 2-D FFT."""
    return scipy.fft.ifft2(a, workers=workers, overwrite_x=overwrite)


def propagate(field: np.ndarray, *, pitch_um: float | tuple[float, float], wavelength_nm: float,
              distance_um: float, medium_index: float = 1.0, band_limited: bool = True,
              workers: int = DEFAULT_WORKERS, overwrite: bool = False) -> np.ndarray:
    """Propagate a complex field by the band-limited angular spectrum method.

    Parameters
    ----------
    field : (H, W) array
        Complex (or real) field; computed in complex64.
    pitch_um, wavelength_nm, distance_um, medium_index, band_limited
        As in :func:`transfer_function`.
    workers : int
        FFT worker threads.
    overwrite : bool
        Allow the input (if complex64) to be used as scratch memory.

    Returns
    -------
    (H, W) complex64 array

    References
    ----------
    Matsushima & Shimobaba, Opt. Express 17(22):19662 (2009).
    """
    a = np.asarray(field)
    if a.ndim != 2:
        raise OpticsError(f"field must be 2-D (got shape {a.shape})")
    if a.dtype != np.complex64:
        a = a.astype(np.complex64)
        overwrite = True
    h = transfer_function(a.shape, pitch_um=pitch_um, wavelength_nm=wavelength_nm,
                          distance_um=distance_um, medium_index=medium_index,
                          band_limited=band_limited)
    spec = fft2(a, workers=workers, overwrite=overwrite)
    _multiply_inplace(spec, h)
    return ifft2(spec, workers=workers, overwrite=True)


class Propagator:
    """The spectrum of one field, kept so that it can be refocused at many distances.

    The forward FFT is paid once; every :meth:`at` costs one multiply and one
    inverse FFT. :meth:`at_lowpass` refocuses only the central part of the
    spectrum (a band-limited, decimated image) for a cheap coarse search.
    """

    def __init__(self, field: np.ndarray, *, pitch_um: float, wavelength_nm: float,
                 medium_index: float = 1.0, workers: int = DEFAULT_WORKERS):
        a = np.asarray(field)
        if a.ndim != 2:
            raise OpticsError(f"field must be 2-D (got shape {a.shape})")
        _check_optics(pitch_um, wavelength_nm, medium_index)
        self.shape = a.shape
        self.pitch_um = float(pitch_um)
        self.wavelength_nm = float(wavelength_nm)
        self.medium_index = float(medium_index)
        self.workers = workers
        self.spectrum = fft2(a.astype(np.complex64), workers=workers, overwrite=True)
        self._low: dict[int, np.ndarray] = {}

    def at(self, distance_um: float) -> np.ndarray:
        """The field at ``distance_um`` from the recorded plane, full resolution."""
        h = transfer_function(self.shape, pitch_um=self.pitch_um,
                              wavelength_nm=self.wavelength_nm, distance_um=distance_um,
                              medium_index=self.medium_index)
        spec = self.spectrum * h
        return ifft2(spec, workers=self.workers, overwrite=True)

    def _low_spectrum(self, factor: int) -> np.ndarray:
        if factor not in self._low:
            ny, nx = self.shape
            my, mx = ny // factor, nx // factor
            ky = np.r_[0:(my + 1) // 2, ny - my // 2:ny]
            kx = np.r_[0:(mx + 1) // 2, nx - mx // 2:nx]
            self._low[factor] = np.ascontiguousarray(
                self.spectrum[np.ix_(ky, kx)] / np.float32(factor * factor))
        return self._low[factor]

    def at_lowpass(self, distance_um: float, factor: int = 2) -> np.ndarray:
        """The field at ``distance_um`` on a grid ``factor`` times coarser (low-pass band only)."""
        low = self._low_spectrum(factor)
        h = transfer_function(low.shape, pitch_um=self.pitch_um * factor,
                              wavelength_nm=self.wavelength_nm, distance_um=distance_um,
                              medium_index=self.medium_index)
        return ifft2(low * h, workers=self.workers, overwrite=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class PointSourceGeometry:
    """Lensless point-source geometry and its plane-wave equivalent (Fresnel scaling).

    Attributes
    ----------
    source_distance_um : float
        LED pinhole -> sample plane, ``z1``.
    sample_distance_um : float
        Sample plane -> sensor, ``z2`` (air-equivalent).
    sensor_pitch_um : float
        Sensor pixel pitch.
    """

    source_distance_um: float
    sample_distance_um: float
    sensor_pitch_um: float

    def __post_init__(self) -> None:
        if not (self.source_distance_um > 0 and self.sample_distance_um > 0
                and self.sensor_pitch_um > 0):
            raise OpticsError("source distance, sample distance and pixel pitch must be positive "
                              f"(got {self.source_distance_um}, {self.sample_distance_um}, "
                              f"{self.sensor_pitch_um} um)")

    @property
    def magnification(self) -> float:
        """M = (z1 + z2) / z1."""
        return (self.source_distance_um + self.sample_distance_um) / self.source_distance_um

    @property
    def sample_pitch_um(self) -> float:
        """Sensor pitch referred to the sample plane, p / M."""
        return self.sensor_pitch_um / self.magnification

    @property
    def effective_distance_um(self) -> float:
        """Plane-wave-equivalent distance in sample-plane coordinates, z2 / M = z1 z2 / (z1 + z2)."""
        return self.sample_distance_um / self.magnification

    @staticmethod
    def sample_distance_from_effective(effective_um: float, source_distance_um: float) -> float:
        """Invert ``z_eff = z1 z2 / (z1 + z2)`` for ``z2``."""
        if effective_um >= source_distance_um:
            raise OpticsError(f"effective distance {effective_um} um is not below the source "
                              f"distance {source_distance_um} um")
        return effective_um * source_distance_um / (source_distance_um - effective_um)
