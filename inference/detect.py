"""Cell detection, per-cell refocus and the crops the classifier sees.

From the focused fields of :func:`holography.reconstruct.reconstruct_capture`
to a list of candidate objects, each refocused on its own depth and cut out as
a fixed-size stack of channels on a fixed sample-plane grid, so that one model
serves sensors of any pixel size.

Steps
-----
1. Background: every LED's field is divided by its local background (a wide
   Gaussian mean of the complex field), so an empty region is ``1 + 0i``.
2. Detection map: the scattered energy ``|u - 1|^2`` summed over LEDs and
   smoothed at the scale of a white cell. A white cell (optical path
   difference ~0.3 um) scatters about a hundred times more than a platelet
   (~0.03 um), so one threshold on the map, set from the map's own robust noise
   level, keeps cells and drops most platelets and noise. Peaks closer than a
   cell radius are merged.
3. Refocus: each candidate's window is propagated over the chamber's depth
   range; its depth is where the scattered field is most compact, i.e. where
   the ratio ``sum|s| / sqrt(sum|s|^2)`` of ``s = u - 1`` is smallest. The
   scattered energy is conserved by propagation while its spread is least in
   focus, so the criterion holds for phase and absorbing objects alike (a
   sparsity focus measure in the spirit of the L1-norm criteria compared by
   Zhang et al., "Edge sparsity criterion for robust holographic autofocusing",
   Opt. Lett. 42(19):3824, 2017).
4. Crops: the refocused complex field of every LED, resampled to
   :data:`CROP_PIXEL_UM` in the sample plane, as channels ``Re(u) - 1`` and
   ``Im(u)`` (no phase unwrapping needed).
5. Pixel super-resolution and phase retrieval (:func:`enhanced_windows`):
   where the reconstruction kept the hologram frames
   (:attr:`holography.reconstruct.Reconstruction.dies`), the crops are made
   again from the hologram itself around each cell: the frames of an LED's
   dies are fused on a grid twice as fine (shift-and-add,
   :func:`holography.superres.psr_windows`; one die: the sensor grid), and
   the window is brought to the cell's own depth by support-constrained phase
   retrieval (:func:`holography.retrieval.retrieve_windows`) with one support
   shared by the LEDs (the cell and any neighbour in the window, from the
   plain refocused fields), which removes the twin image around the cell.
6. Shape: the cell's extent (half-maximum area of the refocused scattered
   field); two candidates of comparable strength closer than
   :data:`CLUMP_DISTANCE_UM` touch and are both marked as a clump.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np
import scipy.ndimage as ndi

from holography.capture import Capture
from holography.parallel import FFT_WORKERS_IN_THREAD, by_row_bands, ordered_map, threads
from holography.propagation import DEFAULT_WORKERS, fft2, ifft2, transfer_function
from holography.reconstruct import Reconstruction, sensor_distance
from holography.retrieval import retrieve_windows, window_support
from holography.superres import DieSet, psr_windows

#: sample-plane pixel of a crop (um) and its size (pixels): 30 um across
CROP_PIXEL_UM = 0.75
CROP_SIZE = 40
#: refocus window on the sensor grid (pixels)
WINDOW_PX = 64
#: depths searched above the fitted floor plane (sample distance, um, air-equivalent):
#: a 100 um liquid layer is 75 um air-equivalent; beyond it lies the cover glass
DEPTH_RANGE_UM = (-15.0, 200.0)
COARSE_STEP_UM = 10.0
FINE_STEP_UM = 2.5
#: memory for cached kernel stacks of the refocus windows
STACK_CACHE_BYTES = 192 << 20
#: two candidates closer than this (um), the weaker at least CLUMP_PEAK_RATIO of the stronger,
#: touch (white cells are 7-10 um across)
CLUMP_DISTANCE_UM = 11.0
CLUMP_PEAK_RATIO = 0.25
#: fine-grid factor of pixel super-resolution (LEDs with two or more usable dies)
PSR_FACTOR = 2
#: iterations of the per-cell phase retrieval (0: plain back-propagation of the hologram)
RETRIEVAL_ITERATIONS = 3
#: colours registered closer than this (sensor px) are taken as aligned
MIN_COLOUR_SHIFT_PX = 0.25
#: detection threshold in robust standard deviations of the detection map
THRESHOLD_SD = 8.0
#: smallest peak value of the detection map (mean |u-1|^2 at the cell scale) kept
MIN_PEAK = 0.01
#: cell scale (um) for smoothing and peak separation
CELL_SIGMA_UM = 1.5
PEAK_SEPARATION_UM = 5.0
#: candidates whose detection peak is below this many times the detection threshold are too faint
#: to be white cells: they are counted as other objects without being refocused or classified.
#: Measured on the 32 held-out captures (one-die 1024 px, four-die 512 px, full sensor; 12,080
#: white cells): at 2x, 2 white cells fall below it and 84 % of the other candidates (platelets,
#: red-cell ghosts, noise) do; the weakest white cell of a capture sits at 3.5-40x the threshold
#: in all but two captures (1.1x, 2.1x), the other objects' median at 1.2-1.6x in all but one
#: (2.7x).
FAINT_PEAK_RATIO = 2.0


@dataclass(slots=True)
class Candidate:
    """One detected object.

    ``x``, ``y`` are sensor pixel coordinates of the central-die frame;
    ``distance_um`` is its own sample distance after refocus; ``depth_um`` is the
    air-equivalent height above the fitted floor plane.
    """

    x: float
    y: float
    peak: float
    distance_um: float = math.nan
    depth_um: float = math.nan
    sharpness: float = math.nan
    area_um2: float = math.nan
    diameter_um: float = math.nan
    edge: bool = False
    clump: bool = False
    faint: bool = False  # below FAINT_PEAK_RATIO x the threshold: not refocused nor classified


def background_normalised(field: np.ndarray, *, sigma_px: float = 24.0,
                          out: np.ndarray | None = None) -> np.ndarray:
    """``field`` divided by its local complex background (so that empty regions read 1).

    The background varies slowly: it is a Gaussian mean (``sigma_px``) of a
    block-averaged copy (blocks of ``sigma_px / 6``), expanded back by repetition
    a band of rows at a time. ``out=field`` normalises in place (no second
    full-frame copy).
    """
    h, w = field.shape
    f = max(1, int(sigma_px // 6))
    hh, ww = h // f * f, w // f * f
    if f == 1 or not hh or not ww:
        hh, ww, f = h, w, 1
    blocks = field[:hh, :ww].reshape(hh // f, f, ww // f, f).mean(axis=(1, 3))
    re = ndi.gaussian_filter(blocks.real, sigma_px / f, mode="reflect")
    im = ndi.gaussian_filter(blocks.imag, sigma_px / f, mode="reflect")
    bg = (re + 1j * im).astype(np.complex64)
    bg[np.abs(bg) < 1e-6] = 1.0
    inv = np.complex64(1.0) / bg
    out = np.empty_like(field, np.complex64) if out is None else out
    cols = np.minimum(np.arange(w) // f, inv.shape[1] - 1)
    band = 64 * f
    for r0 in range(0, h, band):
        rows = np.minimum(np.arange(r0, min(r0 + band, h)) // f, inv.shape[0] - 1)
        np.multiply(inv[np.ix_(rows, cols)], field[r0:r0 + band], out=out[r0:r0 + band])
    return out


def detection_map(fields: dict[str, np.ndarray], pixel_um: float, *,
                  shifts: dict[str, tuple[int, int]] | None = None) -> np.ndarray:
    """Scattered energy ``|u - 1|^2`` averaged over LEDs, smoothed at the cell scale.

    ``shifts`` (LED -> integer rows, columns) moves an LED's energy back onto
    the focus LED's grid.
    """
    def energy(led: str) -> np.ndarray:
        u = fields[led]
        e = np.empty(u.shape, np.float32)
        for r0 in range(0, u.shape[0], 256):  # in bands: no full-frame complex temporary
            e[r0:r0 + 256] = np.abs(u[r0:r0 + 256] - np.complex64(1.0)) ** 2
        sh = (shifts or {}).get(led, (0, 0))
        return np.roll(e, (-sh[0], -sh[1]), axis=(0, 1)) if any(sh) else e

    acc = None
    for e in ordered_map(energy, list(fields)):
        if acc is None:
            acc = e
        else:
            acc += e
            del e
    acc /= max(1, len(fields))
    sigma = CELL_SIGMA_UM / pixel_um
    return by_row_bands(lambda a: ndi.gaussian_filter(a, sigma, mode="reflect"), acc,
                        int(4.0 * sigma + 0.5) + 1)


def _windows(field: np.ndarray, rows: np.ndarray, cols: np.ndarray, n: int,
             out: np.ndarray) -> None:
    """``n x n`` windows of ``field`` centred on (rows, cols) into ``out`` (edge-padded)."""
    h, w = field.shape
    for i, (r, c) in enumerate(zip(rows, cols, strict=True)):
        r0, c0 = int(r) - n // 2, int(c) - n // 2
        if r0 >= 0 and c0 >= 0 and r0 + n <= h and c0 + n <= w:
            out[i] = field[r0:r0 + n, c0:c0 + n]
        else:
            out[i] = field[np.ix_(np.clip(np.arange(r0, r0 + n), 0, h - 1),
                                  np.clip(np.arange(c0, c0 + n), 0, w - 1))]


def find_peaks(emap: np.ndarray, pixel_um: float, *, threshold_sd: float = THRESHOLD_SD,
               min_peak: float = MIN_PEAK) -> tuple[np.ndarray, float]:
    """Local maxima of the detection map above its threshold.

    Returns
    -------
    (N, 3) array of (row, col, value), and the threshold used.
    """
    sample = emap[::4, ::4]
    med = float(np.median(sample))
    mad = float(np.median(np.abs(sample - med))) * 1.4826
    thr = max(med + threshold_sd * mad, min_peak)
    size = max(3, int(round(PEAK_SEPARATION_UM / pixel_um)) | 1)
    # a dilation by a square is a maximum filter (cv2's is several times faster than ndimage's)
    mx = cv2.dilate(emap, np.ones((size, size), np.uint8), borderType=cv2.BORDER_REPLICATE)
    rr, cc = np.nonzero((emap == mx) & (emap > thr))
    vals = emap[rr, cc]
    order = np.argsort(vals)[::-1]
    return np.stack([rr[order], cc[order], vals[order]], axis=1), thr


def _taper(n: int) -> np.ndarray:
    edge = n // 8
    t = np.ones(n, np.float32)
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0, math.pi, edge, dtype=np.float32))
    t[:edge] = ramp
    t[-edge:] = ramp[::-1]
    return np.outer(t, t)


class Refocuser:
    """Propagates small windows of the focused fields to other depths.

    Transfer functions of the window size are cached per LED and depth, so the
    cost per cell is one forward FFT per LED and one inverse FFT per depth tried.
    """

    def __init__(self, wavelengths_nm: dict[str, float], sensor_pitch_um: float,
                 source_distance_um: float, *, window_px: int = WINDOW_PX):
        self.wl = wavelengths_nm
        self.p = sensor_pitch_um
        self.z1 = source_distance_um
        self.n = window_px
        self.taper = _taper(window_px)
        self._stacks: dict[tuple, np.ndarray] = {}
        self._stack_bytes = 0

    def kernel_stack(self, led: str, plane_um: float, relative_um: np.ndarray,
                     decimation: int = 1) -> np.ndarray:
        """Kernels from ``plane_um`` to ``plane_um + relative_um`` (plane rounded to 0.5 um, cached).

        ``decimation`` 2 gives the kernels of the window's central half band on a
        grid twice as coarse (the cheap coarse search).
        """
        plane = round(2.0 * plane_um) / 2.0
        key = (led, plane, relative_um.tobytes(), decimation)
        st = self._stacks.get(key)
        if st is None:
            if self._stack_bytes > STACK_CACHE_BYTES:
                self._stacks.clear()
                self._stack_bytes = 0
            st = self._kernels(led, plane, plane + relative_um, decimation)
            self._stacks[key] = st
            self._stack_bytes += st.nbytes
        return st

    def kernels_at(self, led: str, planes_um: np.ndarray, distances_um: np.ndarray) -> np.ndarray:
        """(N, n, n) kernels from each window's plane to its own distance (one per cell).

        The step is rounded to 0.5 um of sensor-equivalent distance (as in
        :meth:`kernel_stack`), so cells share kernels; a kernel is looked up once
        per distinct step.
        """
        d0 = np.array([sensor_distance(float(p), self.z1) for p in planes_um])
        d = np.array([sensor_distance(float(z), self.z1) for z in distances_um])
        steps = np.round(2.0 * (d - d0)) / 2.0
        out = np.empty((len(steps), self.n, self.n), np.complex64)
        for dz in np.unique(steps):
            out[steps == dz] = transfer_function((self.n, self.n), pitch_um=self.p,
                                                 wavelength_nm=self.wl[led], distance_um=-float(dz))
        return out

    def _kernels(self, led: str, plane_um: float, distances_um: np.ndarray,
                 decimation: int = 1) -> np.ndarray:
        d0 = sensor_distance(plane_um, self.z1)
        n = self.n // decimation
        out = np.empty((len(distances_um), n, n), np.complex64)
        for i, z in enumerate(distances_um):
            # the window was focused at plane_um; propagate by the sensor-equivalent difference
            dz = round(2.0 * (sensor_distance(float(z), self.z1) - d0)) / 2.0
            out[i] = transfer_function((n, n), pitch_um=self.p * decimation,
                                       wavelength_nm=self.wl[led], distance_um=-dz)
        return out


def compactness(s: np.ndarray, core: int) -> np.ndarray:
    """``sum|s| / sqrt(sum|s|^2)`` over the central ``core`` pixels of each plane (lower = sharper)."""
    n = s.shape[-1]
    a = (n - core) // 2
    m = np.abs(s[..., a:a + core, a:a + core])
    return m.sum(axis=(-1, -2)) / np.sqrt((m * m).sum(axis=(-1, -2)) + 1e-12)


#: channel slots by wavelength band (nm): one model input layout whatever the LEDs are named
SLOTS = (("blue", 400.0, 500.0), ("green", 500.0, 580.0), ("red", 580.0, 700.0))
N_CHANNELS = 2 * len(SLOTS)
#: most candidates analysed in one capture (a guard against a frame of noise)
MAX_CANDIDATES = 20000


def slot_of(wavelength_nm: float) -> int | None:
    """Channel slot of an LED by its wavelength (None: outside every band)."""
    for i, (_, lo, hi) in enumerate(SLOTS):
        if lo <= wavelength_nm < hi:
            return i
    return None


@dataclass(slots=True)
class Detections:
    """Candidates of one capture with their crops.

    ``crops`` is (N, N_CHANNELS, CROP_SIZE, CROP_SIZE) float32: per slot
    ``Re(u) - 1`` and ``Im(u)`` of the refocused field on a CROP_PIXEL_UM grid.
    ``slots_present`` says which wavelength slots had a field.
    """

    candidates: list[Candidate]
    crops: np.ndarray
    slots_present: tuple[bool, ...]
    threshold: float
    pixel_um: float
    imaged_area_mm2: float
    enhancement: dict = dataclasses.field(default_factory=dict)
    plain_crops: np.ndarray | None = None  # the crops cut from the plain fields (keep_plain)


def _bspline3(t: np.ndarray) -> np.ndarray:
    """Cubic B-spline basis function."""
    t = np.abs(t)
    out = np.where(t < 1, 2.0 / 3.0 - t * t + 0.5 * t ** 3, 0.0)
    return np.where((t >= 1) & (t < 2), (2 - t) ** 3 / 6.0, out)


@functools.lru_cache(maxsize=8)
def _prefilter(n: int) -> np.ndarray:
    """Matrix of the cubic-spline prefilter on ``n`` samples (coefficients = F @ samples)."""
    return ndi.spline_filter1d(np.eye(n), order=3, axis=0, mode="nearest")


def _interp_matrices(n: int, centres: np.ndarray, step_px: float) -> np.ndarray:
    """(N, CROP_SIZE, n): :func:`_interp_matrix` for each of ``centres`` at once.

    Double precision, as the crops the shipped model was trained on (single
    precision moved a few borderline INT8 calls in the held-out evaluation).
    The basis is evaluated on the four samples its support covers at each
    point (the same values as over the whole window: zero elsewhere).
    """
    x = np.asarray(centres, np.float64)[:, None] + (np.arange(CROP_SIZE) - (CROP_SIZE - 1) / 2) \
        * step_px
    k = np.floor(x).astype(np.int64)[..., None] + np.arange(-1, 3)  # (N, CROP_SIZE, 4)
    w = _bspline3(x[..., None] - k)
    # columns padded by 3 on each side so taps outside the window land in the padding
    basis = np.zeros((len(x), CROP_SIZE, n + 6))
    np.put_along_axis(basis, np.clip(k + 3, 0, n + 5), w, axis=2)
    return basis[:, :, 3:3 + n] @ _prefilter(n)


def _interp_matrix(n: int, centre: float, step_px: float) -> np.ndarray:
    """(CROP_SIZE, n) matrix of cubic-spline interpolation at CROP_SIZE points around ``centre``.

    The same interpolant as ``scipy.ndimage.map_coordinates(order=3)``, written as a
    matrix so that a crop is two small matrix products; exact where the points lie
    two samples or more inside the window (the sub-window is cut with that margin).
    """
    x = centre + (np.arange(CROP_SIZE) - (CROP_SIZE - 1) / 2) * step_px
    basis = _bspline3(x[:, None] - np.arange(n)[None, :])
    return basis @ _prefilter(n)


def _touching(peaks: np.ndarray, pixel_um: float) -> np.ndarray:
    """Per peak: whether another peak of comparable strength lies within CLUMP_DISTANCE_UM."""
    from scipy.spatial import cKDTree

    out = np.zeros(len(peaks), bool)
    if len(peaks) < 2:
        return out
    tree = cKDTree(peaks[:, :2])
    for i, j in tree.query_pairs(CLUMP_DISTANCE_UM / pixel_um):
        a, b = peaks[i, 2], peaks[j, 2]
        if min(a, b) >= CLUMP_PEAK_RATIO * max(a, b):
            out[i] = out[j] = True
    return out


def enhanced_windows(dies: DieSet, rows: np.ndarray, cols: np.ndarray, distances_um: np.ndarray,
                     support: np.ndarray, *, wavelength_nm: float, sensor_pitch_um: float,
                     source_distance_um: float, size: int = WINDOW_PX, psr: bool = True,
                     iterations: int = RETRIEVAL_ITERATIONS) -> tuple[np.ndarray, int, np.ndarray]:
    """Each cell's field at its own depth, from the hologram, by PSR and phase retrieval.

    Parameters
    ----------
    dies : DieSet
        The LED's registered frames.
    rows, cols : (N,) int
        Cell positions in the reference frame (sensor pixels).
    distances_um : (N,) float
        Each cell's sample distance for this LED (um).
    support : (N, size, size) bool
        Object support of each window on the sensor grid.
    wavelength_nm, sensor_pitch_um, source_distance_um : float
        The LED's wavelength, the sensor's pixel pitch and the source distance ``z1``.
    size : int
        Window size in sensor pixels.
    psr : bool
        Fuse the dies on a grid :data:`PSR_FACTOR` times finer (when there are several).
    iterations : int
        Phase-retrieval iterations (0: plain back-propagation).

    Returns
    -------
    field : (N, f size, f size) complex64
        Sample-plane field, background 1; sensor pixel ``i`` at fine ``f i + (f - 1) / 2``.
    factor : int
        ``f``: the fine-grid factor used.
    mismatch : (N, iterations) float32
        Retrieval convergence record.
    """
    f = PSR_FACTOR if psr and dies.frames > 1 else 1
    amp = psr_windows(dies, rows, cols, size, f)
    big = f * size
    kern = np.empty((len(rows), big, big), np.complex64)
    for i, z in enumerate(distances_um):
        d = round(2.0 * sensor_distance(float(z), source_distance_um)) / 2.0
        kern[i] = transfer_function((big, big), pitch_um=sensor_pitch_um / f,
                                    wavelength_nm=wavelength_nm, distance_um=d)
    sup = support if f == 1 else support.repeat(f, axis=1).repeat(f, axis=2)
    field, mismatch = retrieve_windows(amp, sup, kern, weight=_taper(big), iterations=iterations)
    return field, f, mismatch


def detect_cells(rec: Reconstruction, wavelengths_nm: dict[str, float], *, sensor_pitch_um: float,
                 source_distance_um: float, threshold_sd: float = THRESHOLD_SD,
                 progress=None, chunk: int = 64, psr: bool = True,
                 retrieval_iterations: int = RETRIEVAL_ITERATIONS,
                 keep_plain: bool = False, enhance: bool = True,
                 in_place: bool = False, faint_ratio: float = FAINT_PEAK_RATIO) -> Detections:
    """Find, refocus and crop every candidate object of a reconstruction.

    Candidates are processed in chunks: the windows of a chunk are transformed
    in one batched FFT, the depth search of the whole chunk is one batched
    inverse FFT per step set.

    Parameters
    ----------
    rec : Reconstruction
        Focused fields (``keep_fields=True``) and the fitted plane.
    wavelengths_nm : dict
        LED name -> wavelength.
    sensor_pitch_um, source_distance_um : float
        From the capture's metadata.
    threshold_sd : float
        Detection threshold in robust SDs of the detection map.
    progress : callable, optional
        Called with (done, total) while candidates are refocused.
    chunk : int
        Candidates per batch.
    psr, retrieval_iterations
        Crops from the hologram frames kept by the reconstruction
        (:func:`enhanced_windows`): pixel super-resolution where an LED has several
        dies, and this many phase-retrieval iterations. Without kept frames
        (the default, ``ReconOptions(keep_dies=False)``) the crops are cut from the plain
        fields.
    keep_plain : bool
        Also return the crops cut from the plain fields (``plain_crops``; for
        measuring what the enhancement buys).
    enhance : bool
        False: the crops are cut from the plain fields (what models trained on
        plain crops expect).
    in_place : bool
        Normalise ``rec.fields`` by their background in place (saves a copy of
        every field; the analysis has no other use for them afterwards).
    faint_ratio : float
        Candidates whose peak is below this many times the threshold are kept as
        ``faint`` (position and peak only, zero crops: too faint for a white cell);
        0 refocuses every candidate.
    """
    leds_all = list(rec.fields)
    fields = dict(zip(leds_all, ordered_map(
        lambda led: background_normalised(rec.fields[led], out=rec.fields[led] if in_place
                                          else None), leds_all), strict=True))
    slots = {}
    for led in fields:
        s = slot_of(wavelengths_nm[led])
        if s is not None and s not in slots.values():
            slots[led] = s
    fields = {led: u for led, u in fields.items() if led in slots}
    h, w = next(iter(fields.values())).shape if fields else (0, 0)
    area = h * w * rec.pixel_um ** 2 * 1e-6
    present = tuple(i in slots.values() for i in range(len(SLOTS)))
    empty = np.zeros((0, N_CHANNELS, CROP_SIZE, CROP_SIZE), np.float32)
    if not fields or rec.plane is None:
        return Detections([], empty, present, math.nan, rec.pixel_um, area)
    # between colours: LED -> (integer, fractional) shift of its field against the focus LED's
    ishift, fshift = {}, {}
    for led in fields:
        sh = rec.led_shift_px.get(led)
        dy, dx = (sh.dy, sh.dx) if sh is not None and math.hypot(sh.dy, sh.dx) >= \
            MIN_COLOUR_SHIFT_PX else (0.0, 0.0)
        ishift[led] = (int(round(dy)), int(round(dx)))
        fshift[led] = (dy - ishift[led][0], dx - ishift[led][1])
    emap = detection_map(fields, rec.pixel_um, shifts=ishift)
    peaks, thr = find_peaks(emap, rec.pixel_um, threshold_sd=threshold_sd)
    del emap
    peaks = peaks[:MAX_CANDIDATES]
    if not len(peaks):
        return Detections([], empty, present, thr, rec.pixel_um, area)
    touching = _touching(peaks, rec.pixel_um)
    # the peaks are sorted by strength: the faint ones are the tail
    n_strong = int(np.count_nonzero(peaks[:, 2] >= faint_ratio * thr))
    ref = Refocuser(wavelengths_nm, sensor_pitch_um, source_distance_um)
    focus_led = rec.focus_led if rec.focus_led in fields else next(iter(fields))
    leds = list(fields)
    n = ref.n
    o = n // 2
    px_mm = rec.pixel_um / 1000.0
    step = CROP_PIXEL_UM / rec.pixel_um
    edge_px = 8.0 / rec.pixel_um
    rad = int(round(6.0 / rec.pixel_um))
    yy, xx = np.mgrid[-rad:rad + 1, -rad:rad + 1]
    sub = int(math.ceil(CROP_SIZE * step / 2 + 3))  # half size of the sub-window resampled
    crops = np.zeros((len(peaks), N_CHANNELS, CROP_SIZE, CROP_SIZE), np.float32)
    plain_crops = np.zeros_like(crops) if keep_plain else None
    cands: list[Candidate] = []
    offsets = {led: rec.led_distance_um[led] - rec.plane.distance_um for led in leds}
    coarse_rel = np.arange(DEPTH_RANGE_UM[0], DEPTH_RANGE_UM[1] + 1e-6, COARSE_STEP_UM)
    fine_rel = np.arange(-COARSE_STEP_UM, COARSE_STEP_UM + 1e-6, FINE_STEP_UM)
    enhanced_leds = [led for led in leds if led in rec.dies] if enhance else []
    if len(enhanced_leds) < len(leds):
        enhanced_leds = []  # one kind of crop for all LEDs of a capture
    stats: dict[str, list] = {led: [] for led in enhanced_leds}
    jf = leds.index(focus_led)
    h2 = n // 4
    band = np.r_[0:h2, n - h2:n]
    ns = 2 * sub + 1
    cut = slice(o - sub, o + sub + 1)
    n_threads = min(threads(), max(1, (n_strong + chunk - 1) // chunk))
    fw = FFT_WORKERS_IN_THREAD if n_threads > 1 else DEFAULT_WORKERS

    def run_chunk(k0: int) -> tuple[list[Candidate], dict[str, np.ndarray]]:
        pk = peaks[k0:min(k0 + chunk, n_strong)]
        m = len(pk)
        rows, cols = pk[:, 0].astype(int), pk[:, 1].astype(int)
        # the plane under each cell (the chamber may be tilted)
        local = rec.plane.at((cols - w / 2) * px_mm, (rows - h / 2) * px_mm)
        win = np.empty((m, len(leds), n, n), np.complex64)
        for j, led in enumerate(leds):
            _windows(fields[led], rows + ishift[led][0], cols + ishift[led][1], n, win[:, j])
        win -= np.complex64(1.0)
        win *= ref.taper
        spec = fft2(win, workers=fw)
        del win
        # coarse search, focus LED, on the central half band (a grid twice as coarse, a
        # quarter of the work): the transfer functions depend on each cell's plane
        low = spec[:, jf][:, band][:, :, band]
        stack = np.empty((m, len(coarse_rel), n // 2, n // 2), np.complex64)
        for i in range(m):
            np.multiply(low[i][None], ref.kernel_stack(
                focus_led, local[i] + offsets[focus_led], coarse_rel - offsets[focus_led], 2),
                out=stack[i])
        crit = compactness(ifft2(stack, workers=fw, overwrite=True), 12).astype(np.float64)
        best = coarse_rel[np.argmin(crit, axis=1)]
        at_floor = crit[:, int(np.argmin(np.abs(coarse_rel)))]
        stack = np.empty((m, len(fine_rel), n, n), np.complex64)
        for i in range(m):
            np.multiply(spec[i, jf][None], ref.kernel_stack(
                focus_led, local[i] + offsets[focus_led], best[i] + fine_rel - offsets[focus_led]),
                out=stack[i])
        cf = compactness(ifft2(stack, workers=fw, overwrite=True), 24)
        del stack
        # the sharpest fine step, refined by a parabola through it and its neighbours
        j = np.argmin(cf, axis=1)
        z = local + best + fine_rel[j]
        inner = np.flatnonzero((j > 0) & (j < len(fine_rel) - 1))
        lo, mid, hi = (cf[inner, j[inner] + d] for d in (-1, 0, 1))
        den = lo - 2 * mid + hi
        ok = den > 0
        vertex = np.clip(0.5 * (lo[ok] - hi[ok]) / den[ok], -0.5, 0.5).astype(np.float64)
        z[inner[ok]] += vertex * FINE_STEP_UM
        # every LED at the cell's own depth
        for j, led in enumerate(leds):
            spec[:, j] *= ref.kernels_at(led, local + offsets[led], z + offsets[led])
        final = ifft2(spec, workers=fw, overwrite=True)
        del spec
        better: dict[str, tuple[np.ndarray, int]] = {}
        mis_out: dict[str, np.ndarray] = {}
        if enhanced_leds:
            sup = window_support(final + np.complex64(1.0), rec.pixel_um)
            for led in enhanced_leds:
                fld, fac, mis = enhanced_windows(
                    rec.dies[led], rows + ishift[led][0], cols + ishift[led][1],
                    z + offsets[led], sup,
                    wavelength_nm=wavelengths_nm[led], sensor_pitch_um=sensor_pitch_um,
                    source_distance_um=source_distance_um, psr=psr,
                    iterations=retrieval_iterations)
                fld -= np.complex64(1.0)
                better[led] = (fld, fac)
                mis_out[led] = mis
        # each cell centred on its scattered energy's centroid (focus LED)
        g = np.abs(final[:, jf, o - rad:o + rad + 1, o - rad:o + rad + 1]) ** 2
        tot = g.sum(axis=(1, 2))
        safe = np.where(tot > 0, tot, 1.0)
        dys = np.where(tot > 0, (g * yy).sum(axis=(1, 2)) / safe, 0.0).astype(np.float64)
        dxs = np.where(tot > 0, (g * xx).sum(axis=(1, 2)) / safe, 0.0).astype(np.float64)
        sub_final = final[:, :, cut, cut]
        my = _interp_matrices(ns, sub + dys, step)
        mx = _interp_matrices(ns, sub + dxs, step)
        patches = np.matmul(np.matmul(my[:, None], sub_final), mx[:, None].transpose(0, 1, 3, 2))
        for j, led in enumerate(leds):
            fy, fx = fshift[led]
            if led not in better and (fy or fx):
                patches[:, j] = np.matmul(
                    np.matmul(_interp_matrices(ns, sub + dys + fy, step), sub_final[:, j]),
                    _interp_matrices(ns, sub + dxs + fx, step).transpose(0, 2, 1))
        out = patches
        if better:
            out = patches.copy()
            for i in range(m):
                dy, dx = dys[i], dxs[i]
                for j, led in enumerate(leds):
                    if led not in better:
                        continue
                    fy, fx = fshift[led]
                    fld, fac = better[led]
                    st = step * fac
                    cy, cx = fac * (o + dy + fy) + (fac - 1) / 2, fac * (o + dx + fx) + (fac - 1) / 2
                    # a sub-window with 8 samples' margin: the spline prefilter's edge effect
                    # there is below 1e-4 of the full window's interpolant
                    hs = int(math.ceil(CROP_SIZE * st / 2)) + 8
                    r0, c0 = int(round(cy)) - hs, int(round(cx)) - hs
                    if r0 >= 0 and c0 >= 0 and r0 + 2 * hs < fld.shape[-1] and \
                            c0 + 2 * hs < fld.shape[-1]:
                        out[i, j] = (_interp_matrix(2 * hs + 1, cy - r0, st)
                                     @ fld[i, r0:r0 + 2 * hs + 1, c0:c0 + 2 * hs + 1]
                                     @ _interp_matrix(2 * hs + 1, cx - c0, st).T)
                    else:
                        big = fld.shape[-1]
                        out[i, j] = (_interp_matrix(big, cy, st) @ fld[i]
                                     @ _interp_matrix(big, cx, st).T)
        for j, led in enumerate(leds):
            sl = slots[led]
            crops[k0:k0 + m, 2 * sl] = out[:, j].real
            crops[k0:k0 + m, 2 * sl + 1] = out[:, j].imag
            if plain_crops is not None:
                plain_crops[k0:k0 + m, 2 * sl] = patches[:, j].real
                plain_crops[k0:k0 + m, 2 * sl + 1] = patches[:, j].imag
        sf = slots[focus_led]
        gs = np.hypot(crops[k0:k0 + m, 2 * sf], crops[k0:k0 + m, 2 * sf + 1])
        top = gs.max(axis=(1, 2))
        half = np.where(top[:, None, None] > 0, gs > 0.5 * top[:, None, None], gs > 0)
        areas = half.sum(axis=(1, 2)) * CROP_PIXEL_UM ** 2
        out_c = []
        for i in range(m):
            a_um2 = float(areas[i])
            yc, xc = rows[i] + float(dys[i]), cols[i] + float(dxs[i])
            out_c.append(Candidate(
                x=float(xc), y=float(yc), peak=float(pk[i, 2]), distance_um=float(z[i]),
                depth_um=float(z[i] - local[i]), sharpness=float(at_floor[i] / cf[i].min()),
                area_um2=a_um2, diameter_um=2.0 * math.sqrt(a_um2 / math.pi),
                edge=bool(xc < edge_px or yc < edge_px or xc > w - 1 - edge_px
                          or yc > h - 1 - edge_px),
                clump=bool(touching[k0 + i])))
        return out_c, mis_out

    starts = range(0, n_strong, chunk)
    # chunks run side by side (holography.parallel); each writes its own rows of the crops
    for k0, (chunk_cands, mis_out) in zip(starts, ordered_map(run_chunk, starts, threads=n_threads),
                                          strict=True):
        cands.extend(chunk_cands)
        for led, mis in mis_out.items():
            stats[led].append(mis)
        if progress is not None:
            progress(min(k0 + chunk, n_strong), n_strong)
    for k in range(n_strong, len(peaks)):
        yc, xc = float(peaks[k, 0]), float(peaks[k, 1])
        cands.append(Candidate(
            x=xc, y=yc, peak=float(peaks[k, 2]), faint=True, clump=bool(touching[k]),
            edge=bool(xc < edge_px or yc < edge_px or xc > w - 1 - edge_px
                      or yc > h - 1 - edge_px)))
    info: dict = {}
    for led in enhanced_leds:
        ds = rec.dies[led]
        mis = np.concatenate(stats[led]) if stats[led] else np.zeros((0, 0))
        info[led] = {
            "frames": ds.frames,
            "factor": PSR_FACTOR if psr and ds.frames > 1 else 1,
            "shift_residual_px": None if math.isnan(ds.residual_px) else round(ds.residual_px, 3),
            "shifts_from_geometry": len(ds.fallbacks),
            "left_out": list(ds.left_out),
            "retrieval_iterations": retrieval_iterations,
            "colour_shift_px": [round(rec.led_shift_px[led].dy, 3), round(rec.led_shift_px[led].dx, 3)]
            if led in rec.led_shift_px else None,
            "retrieval_mismatch": [round(float(np.median(mis[:, 0])), 4),
                                   round(float(np.median(mis[:, -1])), 4)]
            if mis.size else None,
        }
    return Detections(cands, crops, present, thr, rec.pixel_um, area, info, plain_crops)


def detect_in_capture(capture: Capture, rec: Reconstruction, *, progress=None, psr: bool = True,
                      retrieval_iterations: int = RETRIEVAL_ITERATIONS,
                      keep_plain: bool = False, enhance: bool = True,
                      in_place: bool = False, faint_ratio: float = FAINT_PEAK_RATIO) -> Detections:
    """:func:`detect_cells` with the wavelengths and geometry taken from the capture's metadata."""
    return detect_cells(rec, {led: capture.wavelength_nm(led) for led in capture.leds},
                        sensor_pitch_um=capture.sensor.pixel_pitch_um,
                        source_distance_um=capture.geometry.source_distance_mm * 1000.0,
                        progress=progress, psr=psr, retrieval_iterations=retrieval_iterations,
                        keep_plain=keep_plain, enhance=enhance, in_place=in_place,
                        faint_ratio=faint_ratio)
