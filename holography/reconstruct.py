"""From a capture folder to focused complex fields of the sample plane.

Steps (see DESIGN.md's data path):

1. Raw frames -> relative intensity (:mod:`holography.raw`), QC of every frame.
2. Per LED, the frame of the central die is taken and its amplitude ``sqrt(I)`` split into
   overlapping tiles (``tile_px`` core + ``margin_px`` each side, edges padded
   by reflection and tapered towards the background), so that a full-sensor
   capture never needs more than a few tiles' worth of FFT memory.
3. Autofocus (:mod:`holography.focus`) on the focus LED: a coarse search over
   ``nominal +- search_um`` on the few tiles with most hologram energy gives a
   global distance; every tile is then refined around it; a plane (distance at
   the frame centre and tilt) is fitted robustly over the tiles.
4. Each LED is refocused per tile at the plane's distance at that tile
   (with its own small offset, refined on a few tiles: the distance is
   wavelength dependent in practice) and the tile cores are stitched.
5. The hologram amplitudes are kept (float16) for the per-cell pixel
   super-resolution and phase retrieval of the analysis
   (:mod:`inference.detect`); where an LED lit several dies, the other dies'
   frames are registered to the central die's frame to a fraction of a pixel
   (:class:`holography.superres.DieSet`).

Geometry: every propagation is done on the sensor grid (pitch ``p``) over the
sensor-equivalent distance ``D = z2 (z1 + z2) / z1``, which by the Fresnel
scaling theorem is the point-source hologram's plane-wave equivalent; the
result, read with pitch ``p / M`` (``M = (z1 + z2) / z1``), is the sample plane.
All distances reported are sample distances ``z2`` (air-equivalent, sample to
sensor) and all sizes are in the sample plane.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.ndimage as ndi

from holography.capture import Capture, FrameInfo
from holography.focus import FocalPlane, FocusResult, autofocus, fit_plane, refine
from holography.parallel import FFT_WORKERS_IN_THREAD, ordered_map, threads
from holography.propagation import DEFAULT_WORKERS, Propagator, fft2, ifft2, transfer_function
from holography.raw import FrameQC, hot_pixel_mask, normalise_frame
from holography.retrieval import retrieve_leds, twin_image_energy
from holography.superres import DieSet, Shift, predicted_shift_px, register

FLAG_SATURATED = "SATURATED"
FLAG_DARK_FRAME = "DARK_FRAME"
FLAG_OUT_OF_FOCUS = "OUT_OF_FOCUS"


def sensor_distance(z2_um: float, z1_um: float) -> float:
    """Sensor-plane equivalent propagation distance ``z2 (z1 + z2) / z1`` (Fresnel scaling)."""
    return z2_um * (z1_um + z2_um) / z1_um


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconOptions:
    """Options of :func:`reconstruct_capture`.

    Attributes
    ----------
    search_um : float
        Autofocus searches ``nominal +- search_um`` (clipped at ``min_distance_um``).
    coarse_step_um, fine_step_um, fine_range_um : float
        Steps of the coarse search, of the per-tile refinement, and its half range.
    tile_px, margin_px : int
        Tile core and margin (pixels); ``tile_px + 2 margin_px`` should be an FFT-friendly size.
    focus_tiles : int
        Tiles used by the coarse search.
    leds : tuple of str or None
        LEDs to reconstruct (None: all that are not dark).
    keep_fields : bool
        Keep the stitched complex fields (False: focus and QC only).
    keep_dies : bool
        Keep the hologram amplitudes, registering the dies of an LED with
        several, for the analysis's per-cell super-resolution and phase
        retrieval; needs ``keep_fields``.
    """

    search_um: float = 1000.0
    min_distance_um: float = 100.0
    coarse_step_um: float = 30.0
    fine_step_um: float = 3.0
    fine_range_um: float = 30.0
    tile_px: int = 768
    margin_px: int = 128
    focus_tiles: int = 4
    leds: tuple[str, ...] | None = None
    keep_fields: bool = True
    keep_dies: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TileFocus:
    """Autofocus outcome of one tile (core rows/cols in sensor pixels)."""

    row0: int
    col0: int
    rows: int
    cols: int
    distance_um: float
    prominence: float
    found: bool


@dataclass(slots=True, kw_only=True)
class Reconstruction:
    """Focused fields and everything learnt on the way.

    Attributes
    ----------
    fields : dict
        LED name -> (H, W) complex64 field on the sensor pixel grid (sample plane).
    pixel_um : float
        Pixel size of the fields in the sample plane, ``p / M``.
    magnification : float
        ``M`` at the fitted sample distance.
    plane : FocalPlane
        Fitted sample plane (sample distances, um; slopes um/mm of the sample plane).
    led_distance_um : dict
        Sample distance at the frame centre used for each LED.
    tiles : list of TileFocus
    qc : dict
        Frame file -> FrameQC.
    flags : list of str
        QC flag codes (``SATURATED``, ``DARK_FRAME``, ``OUT_OF_FOCUS``).
    flag_details : dict
        Flag code -> one line for a person.
    fft_pairs : float
        Work done, in FFT-pair equivalents of one full frame.
    focus_led : str
        LED the plane was found with.
    dies : dict
        LED -> :class:`holography.superres.DieSet` (``keep_dies``).
    led_shift_px : dict
        LED -> shift of its field relative to the focus LED's (registered between
        colours: an LED whose dies sit beside the focus LED's sees the sample
        shifted on the sensor).
    """

    fields: dict[str, np.ndarray] = field(default_factory=dict)
    pixel_um: float = math.nan
    magnification: float = math.nan
    plane: FocalPlane | None = None
    led_distance_um: dict[str, float] = field(default_factory=dict)
    tiles: list[TileFocus] = field(default_factory=list)
    qc: dict[str, FrameQC] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    flag_details: dict[str, str] = field(default_factory=dict)
    fft_pairs: float = 0.0
    focus_led: str | None = None
    dies: dict[str, DieSet] = field(default_factory=dict)
    led_shift_px: dict[str, Shift] = field(default_factory=dict)

    def flag(self, code: str, detail: str) -> None:
        """Raise a QC flag once, with its explanation."""
        if code not in self.flags:
            self.flags.append(code)
            self.flag_details[code] = detail


def _tiles(shape: tuple[int, int], core: int) -> list[tuple[int, int, int, int]]:
    h, w = shape
    out = []
    for r0 in range(0, h, core):
        for c0 in range(0, w, core):
            out.append((r0, c0, min(core, h - r0), min(core, w - c0)))
    return out


def _taper(n: int, margin: int) -> np.ndarray:
    w = np.ones(n, np.float32)
    ramp = margin // 2
    if ramp > 0:
        t = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, ramp, dtype=np.float32))
        w[:ramp] = t
        w[-ramp:] = t[::-1]
    return w


class _TileSource:
    """Extracts padded, tapered amplitude tiles of one frame."""

    def __init__(self, amplitude: np.ndarray, core: int, margin: int):
        self.a = amplitude
        self.core = core
        self.margin = margin
        h, w = amplitude.shape
        self.size = (min(core, h) + 2 * margin, min(core, w) + 2 * margin)
        self.window = np.outer(_taper(self.size[0], margin), _taper(self.size[1], margin))

    def tile(self, r0: int, c0: int) -> np.ndarray:
        m = self.margin
        h, w = self.a.shape
        th, tw = self.size
        rows = np.clip(np.arange(r0 - m, r0 - m + th), -h + 1, 2 * h - 2)
        cols = np.clip(np.arange(c0 - m, c0 - m + tw), -w + 1, 2 * w - 2)
        rows = np.where(rows < 0, -rows, np.where(rows >= h, 2 * h - 2 - rows, rows))
        cols = np.where(cols < 0, -cols, np.where(cols >= w, 2 * w - 2 - cols, cols))
        t = self.a[np.ix_(rows, cols)]
        return (1.0 + (t - 1.0) * self.window).astype(np.complex64)


def _pick_reference(frames: tuple[FrameInfo, ...]) -> FrameInfo:
    return min(frames, key=lambda f: math.hypot(*f.led_offset_um))


def reconstruct_capture(capture: Capture, options: ReconOptions | None = None) -> Reconstruction:
    """Reconstruct a capture: QC, autofocus, plane fit, focused field per LED.

    Parameters
    ----------
    capture : Capture
        A validated capture (:func:`holography.capture.read_capture`).
    options : ReconOptions, optional
        Search range, tiling, LEDs; defaults when omitted.

    Returns
    -------
    Reconstruction
        Never raises for bad optics: a capture that cannot be focused is
        reconstructed at its nominal distance and flagged ``OUT_OF_FOCUS``.
    """
    opt = options or ReconOptions()
    rec = Reconstruction()
    sensor = capture.sensor
    p = sensor.pixel_pitch_um
    z1 = capture.geometry.source_distance_mm * 1000.0
    nominal = capture.geometry.sample_distance_um
    dark = capture.load_dark()
    hot = hot_pixel_mask(dark) if dark is not None else None
    full_pair = capture.shape[0] * capture.shape[1]

    amplitudes: dict[str, np.ndarray] = {}
    others: dict[str, list[tuple[FrameInfo, np.ndarray]]] = {}
    left_out: dict[str, list[str]] = {}
    references: dict[str, FrameInfo] = {}
    flats = {led: capture.load_flat(led) for led in capture.leds}
    for led in capture.leds:
        references[led] = _pick_reference(capture.frames_of(led))

    def wanted(led: str) -> bool:
        return opt.leds is None or led in opt.leds

    def load(info: FrameInfo) -> tuple[FrameInfo, np.ndarray | None, FrameQC]:
        # every frame is read and checked (QC of all frames); only the used ones are kept
        inten, qc = normalise_frame(capture.load_frame(info), sensor=sensor, dark=dark,
                                    flat=flats[info.led], hot=hot)
        led = info.led
        keep = wanted(led) and not qc.dark and (
            info is references[led] or (opt.keep_dies and len(capture.frames_of(led)) > 1))
        amp = None
        if keep:
            amp = np.sqrt(np.maximum(inten, 0.0, out=inten), out=inten)
            if info is not references[led]:
                amp = amp.astype(np.float16)
        return info, amp, qc

    jobs = [info for led in capture.leds for info in capture.frames_of(led)]
    for info, amp, qc in ordered_map(load, jobs):  # frames two at a time
        led = info.led
        rec.qc[info.file] = qc
        if wanted(led) and qc.dark:
            left_out.setdefault(led, []).append(f"{info.file} (dark)")
        elif amp is None:
            pass
        elif info is references[led]:
            amplitudes[led] = amp
        else:
            others.setdefault(led, []).append((info, amp))
    flats.clear()
    for led in capture.leds:
        ref = references[led]
        if led not in amplitudes and others.get(led):
            # the central die failed: the die nearest it stands in, moved back by the shift
            # its offset predicts at the nominal distance, so the colours stay registered
            others[led].sort(key=lambda fa: math.dist(fa[0].led_offset_um, ref.led_offset_um))
            info, amp = others[led].pop(0)
            dy, dx = predicted_shift_px(
                (info.led_offset_um[0] - ref.led_offset_um[0],
                 info.led_offset_um[1] - ref.led_offset_um[1]),
                sample_distance_um=nominal, source_distance_um=z1, pitch_um=p)
            amplitudes[led] = ndi.shift(amp.astype(np.float32), (-dy, -dx), order=3,
                                        mode="nearest")
    saturated = {f: q.saturated_fraction for f, q in rec.qc.items() if q.saturated}
    if saturated:
        worst = max(saturated, key=saturated.get)
        rec.flag(FLAG_SATURATED, f"{len(saturated)} frame(s) saturated, worst {worst} with "
                                 f"{100 * saturated[worst]:.2f} % of pixels clipped; lower the "
                                 "exposure or LED current and repeat")
    darks = [f for f, q in rec.qc.items() if q.dark]
    if darks:
        rec.flag(FLAG_DARK_FRAME, f"{len(darks)} of {len(rec.qc)} frames dark "
                                  f"({', '.join(darks)}): an LED did not light; check the LED "
                                  "board, then repeat the test")
    if not amplitudes:
        rec.flag(FLAG_OUT_OF_FOCUS, "no usable frame to focus on")
        return rec

    focus_led = "green" if "green" in amplitudes else max(
        amplitudes, key=lambda k: rec.qc[references[k].file].signal_fraction)
    rec.focus_led = focus_led
    core, margin = opt.tile_px, opt.margin_px
    if max(capture.shape) <= core + 2 * margin:
        core = max(capture.shape)
    tiles = _tiles(capture.shape, core)
    src = _TileSource(amplitudes[focus_led], core, margin)
    tile_pixels = src.size[0] * src.size[1]
    wl = capture.wavelength_nm(focus_led)

    def D(z2: float) -> float:
        return sensor_distance(z2, z1)

    # --- coarse search on the tiles with most hologram energy
    energy = []
    for r0, c0, nr, nc in tiles:
        a = amplitudes[focus_led][r0:r0 + nr, c0:c0 + nc]
        energy.append(float(np.var(a)))
    order = np.argsort(energy)[::-1][:max(1, opt.focus_tiles)]
    z_lo = max(opt.min_distance_um, nominal - opt.search_um)
    z_hi = nominal + opt.search_um
    coarse: list[FocusResult] = []
    evals = 0.0
    props: dict[int, Propagator] = {}
    fw = FFT_WORKERS_IN_THREAD if threads() > 1 else DEFAULT_WORKERS

    def search(k: int) -> tuple[Propagator, FocusResult]:
        r0, c0, _, _ = tiles[k]
        prop = Propagator(src.tile(r0, c0), pitch_um=p, wavelength_nm=wl, workers=fw)
        return prop, _autofocus_z2(prop, z_lo, z_hi, opt, z1, margin)

    for k, (prop, res) in zip(order, ordered_map(search, [int(k) for k in order]), strict=True):
        props[int(k)] = prop
        coarse.append(res)
        evals += res.evaluations / 8  # a half-band inverse FFT is 1/8 of a pair
    found = [r.distance_um for r in coarse if r.found]
    if not found:
        reason = next((r.reason for r in coarse), "no tile")
        rec.flag(FLAG_OUT_OF_FOCUS, f"no sample plane found between {z_lo:.0f} and {z_hi:.0f} um "
                                    f"({reason}); check the chamber is seated and filled, and the "
                                    "sample distance calibration")
        z_global = nominal
    else:
        z_global = float(np.median(found))

    # --- per-tile refinement around the global distance
    xs, ys, zs, ws = [], [], [], []
    cy, cx = capture.shape[0] / 2, capture.shape[1] / 2
    spectra: dict[int, np.ndarray] = {}  # the focus LED's tile spectra, reused below
    def refine_tile(i: int) -> tuple[float, float, int, np.ndarray | None]:
        r0, c0, _, _ = tiles[i]
        prop = props.pop(i, None) or Propagator(src.tile(r0, c0), pitch_um=p, wavelength_nm=wl,
                                                workers=fw)
        kept = prop.spectrum if opt.keep_fields else None  # reused for the focus LED's field
        if found:
            return (*_refine_z2(prop, z_global, opt, z1, margin), kept)
        return math.nan, 0.0, 0, kept

    refined = ordered_map(refine_tile, range(len(tiles)))
    for i, ((r0, c0, nr, nc), (z_t, prom, n, spectrum)) in enumerate(zip(tiles, refined,
                                                                         strict=True)):
        evals += 0.5 + n / 8
        if spectrum is not None:
            spectra[i] = spectrum
        ok = bool(found) and prom > 0.005
        rec.tiles.append(TileFocus(row0=r0, col0=c0, rows=nr, cols=nc,
                                   distance_um=z_t if ok else math.nan, prominence=prom, found=ok))
        m_t = (z1 + z_global) / z1
        xs.append((c0 + nc / 2 - cx) * p / m_t / 1000.0)
        ys.append((r0 + nr / 2 - cy) * p / m_t / 1000.0)
        zs.append(z_t if ok else math.nan)
        ws.append(min(prom, 0.5) + 1e-3)
    plane = fit_plane(np.array(xs), np.array(ys), np.array(zs), np.array(ws))
    if not math.isfinite(plane.distance_um):
        plane = FocalPlane(distance_um=z_global, slope_x_um_per_mm=0.0, slope_y_um_per_mm=0.0,
                           residual_um=math.nan, tiles_used=0)
        if found:
            rec.flag(FLAG_OUT_OF_FOCUS, "tiles gave no consistent focus; check the chamber and "
                                        "repeat the test")
    rec.plane = plane
    rec.magnification = (z1 + plane.distance_um) / z1
    rec.pixel_um = p / rec.magnification

    # --- per-LED distance offset and reconstruction
    for led, amp in amplitudes.items():
        lsrc = src if led == focus_led else _TileSource(amp, core, margin)
        offset = 0.0
        if led != focus_led and found:
            def led_refine(k: int, lsrc=lsrc, led=led) -> tuple[float, float, float, int]:
                r0, c0, _, _ = tiles[k]
                z_p = plane.at(xs[k], ys[k])
                prop = Propagator(lsrc.tile(r0, c0), pitch_um=p,
                                  wavelength_nm=capture.wavelength_nm(led), workers=fw)
                return (z_p, *_refine_z2(prop, z_p, opt, z1, margin))

            offs = []
            for z_p, z_t, prom, n in ordered_map(led_refine, [int(k) for k in order[:2]]):
                evals += n / 8 + 0.5
                if prom > 0.005:
                    offs.append(z_t - z_p)
            offset = float(np.median(offs)) if offs else 0.0
        rec.led_distance_um[led] = plane.distance_um + offset
        if not opt.keep_fields:
            continue
        out = np.empty(capture.shape, np.complex64)
        wl_led = capture.wavelength_nm(led)

        def focus_tile(i: int, led=led, lsrc=lsrc, offset=offset, wl_led=wl_led,
                       out=out) -> None:
            r0, c0, nr, nc = tiles[i]
            # tiles share transfer functions at 0.5 um steps, far below the depth of field
            z_t = round(2.0 * (plane.at(xs[i], ys[i]) + offset)) / 2.0
            if led == focus_led:
                spec = spectra.pop(i)
            else:
                spec = fft2(lsrc.tile(r0, c0), workers=fw, overwrite=True)
            spec *= transfer_function(spec.shape, pitch_um=p, wavelength_nm=wl_led,
                                      distance_um=-D(z_t))
            u = ifft2(spec, workers=fw, overwrite=True)
            out[r0:r0 + nr, c0:c0 + nc] = u[margin:margin + nr, margin:margin + nc]

        for _ in ordered_map(focus_tile, range(len(tiles))):  # each tile writes its own core
            pass
        evals += len(tiles) * (0.5 if led == focus_led else 1.0)
        rec.fields[led] = out
        if opt.keep_dies:
            rec.dies[led] = register_led_dies(
                capture, references[led], amp, others.pop(led, []),
                sample_distance_um=rec.led_distance_um[led], left_out=left_out.get(led, []))
            evals += 3 * len(rec.dies[led].shifts) * min(512, *capture.shape) ** 2 / tile_pixels
    if opt.keep_fields and focus_led in rec.fields:
        for led in rec.fields:
            rec.led_shift_px[led] = (Shift(dy=0.0, dx=0.0, peak=1.0, residual_px=0.0)
                                     if led == focus_led else _colour_shift(
                                         capture, rec, references, led, focus_led))
            evals += 1.5 * min(REGISTER_PX, *capture.shape) ** 2 / tile_pixels
    rec.fft_pairs = evals * tile_pixels / full_pair
    return rec


def _colour_shift(capture: Capture, rec: Reconstruction, references: dict[str, FrameInfo],
                  led: str, focus_led: str) -> Shift:
    """Shift of ``led``'s focused field relative to the focus LED's (between colours).

    Measured by phase correlation of the focused amplitudes on the central
    square, searched around the shift the reference dies' offsets predict; the
    prediction is used when the measurement is weak or far from it.
    """
    a, b = references[focus_led], references[led]
    z1 = capture.geometry.source_distance_mm * 1000.0
    pred = predicted_shift_px((b.led_offset_um[0] - a.led_offset_um[0],
                               b.led_offset_um[1] - a.led_offset_um[1]),
                              sample_distance_um=rec.plane.distance_um, source_distance_um=z1,
                              pitch_um=capture.sensor.pixel_pitch_um)
    win = _central_square(capture.shape)
    s = register(np.abs(rec.fields[focus_led][win]), np.abs(rec.fields[led][win]), predicted=pred,
                 search_px=2.0)
    if s.residual_px <= MAX_SHIFT_RESIDUAL_PX and s.peak >= MIN_REGISTER_PEAK:
        return s
    return Shift(dy=float(pred[0]), dx=float(pred[1]), peak=s.peak, residual_px=s.residual_px)


#: dies and colours are registered on the central REGISTER_PX square of the frames
REGISTER_PX = 512


def _central_square(shape: tuple[int, int]) -> tuple[slice, slice]:
    """Slices of the central ``REGISTER_PX`` square (or smaller frame) of a frame."""
    h, w = shape
    n = min(REGISTER_PX, h, w)
    return slice((h - n) // 2, (h - n) // 2 + n), slice((w - n) // 2, (w - n) // 2 + n)
#: a measured die shift is trusted within this distance of the geometry's prediction (px)
MAX_SHIFT_RESIDUAL_PX = 0.5
#: smallest normalised phase-correlation peak of a trusted registration
MIN_REGISTER_PEAK = 0.05


def register_led_dies(capture: Capture, ref_info: FrameInfo, reference: np.ndarray,
                      others: list[tuple[FrameInfo, np.ndarray]], *, sample_distance_um: float,
                      left_out: list[str] | None = None) -> DieSet:
    """Register the frames of an LED's other dies to its central die's frame.

    Each shift is measured by phase correlation on the central
    :data:`REGISTER_PX` square, searched around the shift the die offsets of
    the metadata predict. A measured shift farther than
    :data:`MAX_SHIFT_RESIDUAL_PX` from the prediction is measured again
    without the prediction: when that correlation is strong, the metadata's
    die offset is wrong and the measurement is used (its residual says how
    wrong); when it is weak too (an empty or featureless field) the
    prediction is used.
    """
    z1 = capture.geometry.source_distance_mm * 1000.0
    p = capture.sensor.pixel_pitch_um
    win = _central_square(reference.shape)
    ref_win = reference[win].astype(np.float32)
    amps = [reference.astype(np.float16)]
    shifts = [Shift(dy=0.0, dx=0.0, peak=1.0, residual_px=0.0)]
    fallbacks: list[int] = []
    for info, amp in others:
        rel = (info.led_offset_um[0] - ref_info.led_offset_um[0],
               info.led_offset_um[1] - ref_info.led_offset_um[1])
        pred = predicted_shift_px(rel, sample_distance_um=sample_distance_um,
                                  source_distance_um=z1, pitch_um=p)
        frame = amp[win].astype(np.float32)
        s = register(ref_win, frame, predicted=pred, search_px=2.0)
        if not (s.residual_px <= MAX_SHIFT_RESIDUAL_PX and s.peak >= MIN_REGISTER_PEAK):
            free = register(ref_win, frame)
            if free.peak >= max(MIN_REGISTER_PEAK, s.peak):
                s = Shift(dy=free.dy, dx=free.dx, peak=free.peak,
                          residual_px=math.hypot(free.dy - pred[0], free.dx - pred[1]))
            else:
                fallbacks.append(len(amps))
                s = Shift(dy=float(pred[0]), dx=float(pred[1]), peak=s.peak,
                          residual_px=s.residual_px)
        amps.append(amp)
        shifts.append(s)
    return DieSet(led=ref_info.led, amplitudes=amps, shifts=shifts, fallbacks=fallbacks,
                  left_out=list(left_out or []))


def _autofocus_z2(prop: Propagator, z_lo: float, z_hi: float, opt: ReconOptions, z1: float,
                  border: int) -> FocusResult:
    """Autofocus in sample-distance terms on a sensor-grid propagator (back-propagation)."""
    # search in the sensor-equivalent distance, negated (we propagate back to the sample)
    d_lo, d_hi = sensor_distance(z_lo, z1), sensor_distance(z_hi, z1)
    mag = (z1 + 0.5 * (z_lo + z_hi)) / z1
    res = autofocus(prop, z_min_um=-d_hi, z_max_um=-d_lo, coarse_step_um=opt.coarse_step_um * mag,
                    fine_step_um=opt.fine_step_um * mag, border=border)
    if not res.found:
        return res
    return FocusResult(distance_um=_z2_from_d(-res.distance_um, z1), found=True,
                       prominence=res.prominence, reason="", evaluations=res.evaluations,
                       coarse_distances_um=res.coarse_distances_um,
                       coarse_metric=res.coarse_metric)


def _refine_z2(prop: Propagator, z2: float, opt: ReconOptions, z1: float,
               border: int) -> tuple[float, float, int]:
    mag = (z1 + z2) / z1
    d, prom, n = refine(prop, -sensor_distance(z2, z1), half_range_um=opt.fine_range_um * mag,
                        step_um=opt.fine_step_um * mag, border=border)
    return _z2_from_d(-d, z1), prom, n


def _z2_from_d(d_um: float, z1_um: float) -> float:
    """Invert ``D = z2 (z1 + z2) / z1`` for ``z2``."""
    return (-z1_um + math.sqrt(z1_um * z1_um + 4.0 * z1_um * d_um)) / 2.0


def reference_amplitudes(capture: Capture, *, leds: tuple[str, ...] | None = None,
                         window: tuple[slice, slice] | None = None
                         ) -> dict[str, tuple[np.ndarray, float]]:
    """Hologram amplitude ``sqrt(I)`` of each LED's central-die frame, dark-, flat- and hot-pixel corrected.

    Parameters
    ----------
    capture : Capture
        A validated capture.
    leds : tuple of str, optional
        LEDs to load (default: all).
    window : (slice, slice), optional
        Region of the frame to keep.

    Returns
    -------
    dict
        LED -> (amplitude (H, W) float32, wavelength in nm).
    """
    dark = capture.load_dark()
    hot = hot_pixel_mask(dark) if dark is not None else None
    out = {}
    for led in leds or capture.leds:
        ref = _pick_reference(capture.frames_of(led))
        inten, _ = normalise_frame(capture.load_frame(ref), sensor=capture.sensor, dark=dark,
                                   flat=capture.load_flat(led), hot=hot)
        if window is not None:
            inten = inten[window]
        out[led] = (np.sqrt(np.maximum(inten, 0.0)), capture.wavelength_nm(led))
    return out


def retrieve_region(capture: Capture, rec: Reconstruction, *, size: int = 512,
                    iterations: int = 20) -> dict[str, dict]:
    """Twin-image-free fields of the central ``size`` x ``size`` region of a reconstructed capture.

    Uses the reference frame of every LED that was reconstructed, the LED's own
    fitted distance, and one support shared by all LEDs
    (:func:`holography.retrieval.retrieve_leds`).

    Returns
    -------
    dict
        LED -> ``{"field": complex64 array, "twin_reduction": float, "iterations": int}``.
    """
    if rec.plane is None or not rec.led_distance_um:
        return {}
    h, w = capture.shape
    n = min(size, h, w)
    r0, c0 = (h - n) // 2, (w - n) // 2
    z1 = capture.geometry.source_distance_mm * 1000.0
    amps = reference_amplitudes(capture, leds=tuple(rec.led_distance_um),
                                window=(slice(r0, r0 + n), slice(c0, c0 + n)))
    # one distance for the shared support: the mean of the LEDs' own distances
    z = float(np.mean(list(rec.led_distance_um.values())))
    support, plain, results = retrieve_leds(amps, pitch_um=capture.sensor.pixel_pitch_um,
                                            distance_um=sensor_distance(z, z1),
                                            iterations=iterations)
    out = {}
    for led, res in results.items():
        before = twin_image_energy(plain[led], support)
        after = twin_image_energy(res.field, support)
        out[led] = {"field": res.field, "iterations": res.iterations,
                    "twin_reduction": before / after if after > 0 else math.inf}
    return out
