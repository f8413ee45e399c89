"""The simulated instrument: a physical forward model that writes capture folders.

From a synthetic blood sample (:mod:`holography.sample`) to raw Bayer frames:

1. Geometry. The LED pinhole is ``z1`` above the sample; below the sample are
   the chamber liquid (n = 1.335), the chamber floor glass (n = 1.52) and an air
   gap to the sensor. The sample-to-sensor distance of the capture format is
   the air-equivalent ``z2 = gap + glass / 1.52 + h / 1.335``. The chamber may be
   tilted (its floor height changes linearly across the field).
2. Point-source projection (Fresnel scaling theorem): each object appears on
   the sensor magnified by ``M = (z1 + z2) / z1`` and shifted by ``-d z2 / z1``
   for an LED die at lateral offset ``d``; it is propagated as a plane-wave
   hologram over ``M`` times each layer thickness.
3. Objects are thin phase-and-amplitude screens ``t = exp(i k0 OPD - k0 A)``
   grouped in depth bins (1 um for cells and beads, 10 um for the rest); every
   bin's ``t - 1`` is propagated to the sensor with the exact layered angular
   spectrum transfer function (:func:`holography.render.radial_transfer`)
   and the scattered fields are summed, so overlapping objects at one depth
   and objects at different depths are both handled.
4. Partial coherence: the LED spectrum (Gaussian, FWHM ``bandwidth_nm``) and
   the pinhole size damp the scattered field's spectrum by the closed-form
   envelopes of temporal and spatial coherence (e.g. Ozcan & McLeod,
   "Lensless imaging and sensing", Annu. Rev. Biomed. Eng. 18:77, 2016, sec. 2).
   The ``|s|^2`` term is taken from the damped field, an approximation that
   matters only for strong scatterers.
5. The sensor: intensity ``|1 + s|^2`` on a grid ``oversample`` times finer
   than the pixels is averaged over each pixel's area (100 % fill factor),
   multiplied by the illumination profile of the die (cos^4 fall-off of a
   point source), the channel response of its colour filter, photo-response
   non-uniformity (1 %), then photon shot noise, read noise, dark signal,
   hot pixels, black level, clipping and quantisation to the bit depth.

Frames are rendered in overlapping tiles, so a full-sensor capture needs no
more memory than a tile.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy.ndimage

from holography import __version__
from holography.capture import Capture, write_capture
from holography.cellphysics import dispersion_factor, spectral_factor
from holography.errors import SimulationError
from holography.propagation import band_limit, fft2, ifft2
from holography.render import (
    accumulate_propagated,
    radial_transfer,
    render_objects,
    screen_minus_one,
)
from holography.sample import (
    KINDS,
    N_MEDIUM,
    WBC_CLASSES,
    Sample,
    SampleSpec,
    get_spec,
    make_sample,
)
from holography.sensors import SensorSpec, bayer_channel_map, channel_response, get_sensor

N_GLASS = 1.52
FAULTS = ("saturated", "failed_led", "defocused", "empty_chamber", "corrupt_file", "tilted")


@dataclass(frozen=True, slots=True, kw_only=True)
class LedSpec:
    """One LED colour: name, centre wavelength and FWHM (nm), die offsets (um) in the LED plane.

    :func:`simulate_capture` places its dies itself (``n_dies``) and adds a single
    offset given here to all of them: the colour's position in a multi-colour
    package, which shifts that colour's holograms against the others'.
    """

    name: str
    wavelength_nm: float
    bandwidth_nm: float
    offsets_um: tuple[tuple[float, float], ...] = ((0.0, 0.0),)


DEFAULT_LEDS = (
    LedSpec(name="blue", wavelength_nm=470.0, bandwidth_nm=25.0),
    LedSpec(name="green", wavelength_nm=530.0, bandwidth_nm=30.0),
    LedSpec(name="red", wavelength_nm=625.0, bandwidth_nm=18.0),
)
#: die offsets of a 4-die LED (um): multi-pixel shifts with varied sub-pixel fractions
FOUR_DIES = ((0.0, 0.0), (160.0, 45.0), (45.0, 160.0), (165.0, 170.0))


@dataclass(frozen=True, slots=True, kw_only=True)
class Optics:
    """The instrument's optical build, true values (the metadata may differ).

    Attributes
    ----------
    source_distance_mm : float
        LED pinhole to the chamber floor.
    air_gap_um, glass_um : float
        Air gap above the sensor and floor-glass thickness below the chamber.
    chamber_height_um, cover_glass_um : float
        Inner chamber height; cover glass on top (dust sits on it).
    dilution : float
        Total volume / blood volume.
    pinhole_um : float
        Pinhole diameter.
    tilt_um_per_mm : (float, float)
        Chamber floor slope along x and y.
    nominal_error_um : float
        Metadata sample distance minus the true one (what autofocus must find).
    """

    source_distance_mm: float = 40.0
    air_gap_um: float = 600.0
    glass_um: float = 500.0
    chamber_height_um: float = 100.0
    cover_glass_um: float = 170.0
    dilution: float = 10.0
    pinhole_um: float = 50.0
    tilt_um_per_mm: tuple[float, float] = (0.0, 0.0)
    nominal_error_um: float = 0.0

    @property
    def floor_distance_um(self) -> float:
        """Air-equivalent distance from the chamber floor to the sensor (at the tilt pivot)."""
        return self.air_gap_um + self.glass_um / N_GLASS


@dataclass(frozen=True, slots=True, kw_only=True)
class SimConfig:
    """Everything the simulator needs besides the sample.

    ``size`` is the (width, height) of the recorded region in sensor pixels
    (``None``: the full sensor).
    """

    sensor: str = "imx477"
    bayer: str | None = "sensor-default"
    size: tuple[int, int] | None = (1024, 1024)
    leds: tuple[LedSpec, ...] = DEFAULT_LEDS
    optics: Optics = field(default_factory=Optics)
    oversample: int = 2
    exposure_fill: float = 0.55
    full_well_scale: float = 1.0
    read_noise_scale: float = 1.0
    tile_px: int = 768
    margin_px: int = 128
    faults: tuple[str, ...] = ()
    flat_frames: int = 8
    #: fraction of a pixel's signal each 4-neighbour receives (0: none)
    crosstalk: float = 0.0
    #: scale of the colour filters' R, G, B responses against the sensor's nominal curves
    qe_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        bad = [f for f in self.faults if f not in FAULTS]
        if bad:
            raise SimulationError(f"unknown fault {bad[0]!r}; use any of {', '.join(FAULTS)}")
        if self.oversample < 1 or self.oversample > 4:
            raise SimulationError(f"oversample must be 1-4 (got {self.oversample})")
        if not 0.0 <= self.crosstalk <= 0.2:
            raise SimulationError(f"crosstalk must be 0-0.2 (got {self.crosstalk})")


@dataclass(slots=True)
class _Placed:
    """Objects with their simulated depth bin, magnification and sensor position."""

    sample: Sample
    distance_um: np.ndarray  # air-equivalent z2 per object (bin centre)
    layers: dict[float, tuple[np.ndarray, np.ndarray]]
    sx_um: np.ndarray
    sy_um: np.ndarray
    mag: np.ndarray


def _place(sample: Sample, optics: Optics, axis_um: tuple[float, float]) -> _Placed:
    o = sample.objects
    z1 = optics.source_distance_mm * 1000.0
    tx, ty = (t * 1e-3 for t in optics.tilt_um_per_mm)
    floor = optics.floor_distance_um + tx * (o["x_um"] - axis_um[0]) + ty * (o["y_um"] - axis_um[1])
    h = np.where(o["on_cover"] == 1,
                 sample.chamber_height_um + sample.cover_glass_um * N_MEDIUM / N_GLASS, o["h_um"])
    z2 = floor + h / N_MEDIUM
    cells = np.isin(o["kind"], [KINDS.index(k) for k in (*WBC_CLASSES, "bead")])
    q = np.where(cells, 1.0, 10.0)
    zb = np.round(z2 / q) * q
    layers = {}
    for z in np.unique(zb):
        liquid_eq = max(z - optics.floor_distance_um, 0.0)
        gap = optics.air_gap_um + min(z - optics.floor_distance_um, 0.0)
        thick = np.array([gap, optics.glass_um, liquid_eq * N_MEDIUM])
        index = np.array([1.0, N_GLASS, N_MEDIUM])
        layers[float(z)] = (thick, index)
    mag = (z1 + zb) / z1
    sx = axis_um[0] + mag * (o["x_um"] - axis_um[0])
    sy = axis_um[1] + mag * (o["y_um"] - axis_um[1])
    return _Placed(sample=sample, distance_um=zb, layers=layers, sx_um=sx, sy_um=sy, mag=mag)


def at_wavelength(sample: Sample, wavelength_nm: float) -> tuple[np.ndarray, np.ndarray]:
    """The sample's objects and parts with absorption and index at ``wavelength_nm``.

    A sample with a drawn cell physics carries an absorption spectral exponent
    per object and part and an index dispersion (:mod:`holography.cellphysics`);
    otherwise the arrays are returned as they are.
    """
    if sample.beta is None and not sample.dispersion:
        return sample.objects, sample.parts
    o, p = sample.objects.copy(), sample.parts.copy()
    if sample.beta is not None:
        f = spectral_factor(sample.beta, wavelength_nm)
        o["kappa"] *= f
        o["kappa_nuc"] *= f
        p["kappa"] *= spectral_factor(sample.part_beta, wavelength_nm)
    if sample.dispersion:
        g = dispersion_factor(sample.dispersion, wavelength_nm)
        wbc = np.isin(o["kind"], [KINDS.index(k) for k in WBC_CLASSES])
        o["dn"] = np.where(wbc, o["dn"] * g, o["dn"])
        o["dn_nuc"] = np.where(wbc, o["dn_nuc"] * g, o["dn_nuc"])
        p["dn"] *= g
    return o, p


def _tile_intensity(placed: _Placed, led: LedSpec, die: tuple[float, float], *,
                    origin_um: tuple[float, float], shape: tuple[int, int], pitch: float,
                    sub_pitch: float, optics: Optics, oversample: int,
                    arrays: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Hologram intensity on one sensor tile, (shape) float32, relative to no sample.

    ``arrays``: the objects and parts at the LED's wavelength (:func:`at_wavelength`).
    """
    ny, nx = shape[0] * oversample, shape[1] * oversample
    x0 = origin_um[0] + 0.5 * sub_pitch
    y0 = origin_um[1] + 0.5 * sub_pitch
    o, o_parts = arrays if arrays is not None else (placed.sample.objects, placed.sample.parts)
    z1 = optics.source_distance_mm * 1000.0
    k0 = 2.0 * math.pi / (led.wavelength_nm * 1e-3)
    sigma_l = led.bandwidth_nm * 1e-3 / 2.3548
    reach = 200.0
    inside = ((placed.sx_um > origin_um[0] - reach)
              & (placed.sx_um < origin_um[0] + nx * sub_pitch + reach)
              & (placed.sy_um > origin_um[1] - reach)
              & (placed.sy_um < origin_um[1] + ny * sub_pitch + reach))
    acc = np.zeros((ny, nx), np.complex64)
    t = np.empty((ny, nx), np.complex64)
    inv_lambda = 1.0 / (led.wavelength_nm * 1e-3)
    f2_max = 2.0 * (0.5 / sub_pitch) ** 2
    n_tab = 8192
    for z in np.unique(placed.distance_um[inside]):
        sel = np.nonzero(inside & (placed.distance_um == z))[0]
        m = (z1 + z) / z1
        opd = np.zeros((ny, nx), np.float32)
        att = np.zeros((ny, nx), np.float32)
        render_objects(opd, att, o, o_parts, sel.astype(np.int64),
                       placed.sx_um[sel], placed.sy_um[sel], placed.mag[sel], x0, y0, sub_pitch, 2)
        screen_minus_one(t, opd, att, k0)
        spec = fft2(t)
        thick, index = placed.layers[float(z)]
        z_eq = float(z) * m
        phase, amp = radial_transfer(f2_max, n_tab, inv_lambda, thick * m, index, z_eq, sigma_l,
                                     optics.pinhole_um * z / z1)
        f_lim = band_limit(max(ny, nx), sub_pitch, 1.0 / inv_lambda, z_eq)
        shift = -np.asarray(die) * z / z1
        accumulate_propagated(acc, spec, sub_pitch, phase, amp, f2_max / (n_tab - 1), f_lim,
                              float(shift[0]), float(shift[1]))
    s = ifft2(acc, overwrite=True)
    inten = np.abs(s + np.complex64(1.0)) ** 2
    return inten.reshape(shape[0], oversample, shape[1], oversample).mean(axis=(1, 3))


def render_intensity(placed: _Placed, led: LedSpec, die: tuple[float, float], *,
                     frame_shape: tuple[int, int], pitch: float, config: SimConfig) -> np.ndarray:
    """Noise-free relative hologram intensity of a whole frame, tile by tile.

    Neighbouring pixels share ``config.crosstalk`` of a pixel's signal each (optical
    and electrical crosstalk of a small-pixel sensor).
    """
    H, W = frame_shape
    out = np.empty((H, W), np.float32)
    core, margin = config.tile_px, config.margin_px
    arrays = at_wavelength(placed.sample, led.wavelength_nm)
    if H <= core + 2 * margin and W <= core + 2 * margin:
        th, tw = H + 2 * margin, W + 2 * margin
        inten = _tile_intensity(placed, led, die, origin_um=(-margin * pitch, -margin * pitch),
                                shape=(th, tw), pitch=pitch, sub_pitch=pitch / config.oversample,
                                optics=config.optics, oversample=config.oversample, arrays=arrays)
        out[:] = inten[margin:margin + H, margin:margin + W]
        return _crosstalk(out, config.crosstalk)
    for r0 in range(0, H, core):
        for c0 in range(0, W, core):
            r1, c1 = min(r0 + core, H), min(c0 + core, W)
            inten = _tile_intensity(
                placed, led, die, origin_um=((c0 - margin) * pitch, (r0 - margin) * pitch),
                shape=(core + 2 * margin, core + 2 * margin), pitch=pitch,
                sub_pitch=pitch / config.oversample, optics=config.optics,
                oversample=config.oversample, arrays=arrays)
            out[r0:r1, c0:c1] = inten[margin:margin + r1 - r0, margin:margin + c1 - c0]
    return _crosstalk(out, config.crosstalk)


def _crosstalk(inten: np.ndarray, c: float) -> np.ndarray:
    """Each pixel keeps ``1 - 4 c`` of its signal and gives ``c`` to each 4-neighbour."""
    if c <= 0.0:
        return inten
    k = np.array([[0.0, c, 0.0], [c, 1.0 - 4.0 * c, c], [0.0, c, 0.0]], np.float32)
    return scipy.ndimage.convolve(inten, k, mode="nearest")


def _illumination(shape: tuple[int, int], pitch: float, die: tuple[float, float],
                  distance_um: float) -> np.ndarray:
    """Relative irradiance of a point source at height ``distance_um`` (cos^4 law)."""
    H, W = shape
    y = (np.arange(H) - H / 2 + 0.5) * pitch - die[1]
    x = (np.arange(W) - W / 2 + 0.5) * pitch - die[0]
    r2 = y[:, None] ** 2 + x[None, :] ** 2
    return (1.0 + r2 / distance_um**2) ** -2.0


class _SensorModel:
    """Fixed-pattern properties of one simulated sensor and its noise."""

    def __init__(self, spec: SensorSpec, bayer: str | None, shape: tuple[int, int],
                 rng: np.random.Generator, config: SimConfig):
        self.spec = spec
        self.bayer = bayer
        self.shape = shape
        self.rng = rng
        self.chan = bayer_channel_map(bayer, shape)
        self.prnu = (1.0 + 0.01 * rng.standard_normal(shape)).astype(np.float32)
        self.dsnu = (0.4 * rng.standard_normal(shape)).astype(np.float32)
        hot = rng.random(shape) < 1e-4
        self.hot_dn = np.where(hot, rng.uniform(100, 1500, shape), 0.0).astype(np.float32)
        self.full_well = spec.full_well_e * config.full_well_scale
        self.read_e = spec.read_noise_e * config.read_noise_scale
        self.gain = self.full_well / (spec.max_code - spec.black_level)

    def expose(self, electrons: np.ndarray, *, frames: int = 1,
               analogue_gain: float = 1.0) -> np.ndarray:
        """Raw uint16 frame (average of ``frames`` exposures) from mean electrons."""
        rng = self.rng
        e = rng.poisson(np.clip(electrons, 0, None) * frames).astype(np.float32) / frames
        e += rng.standard_normal(self.shape).astype(np.float32) * (self.read_e / math.sqrt(frames))
        dn = e * (analogue_gain / self.gain) + self.spec.black_level + self.dsnu + self.hot_dn
        return np.clip(np.rint(dn), 0, self.spec.max_code).astype(np.uint16)


def simulate_capture(out_dir: str | Path, *, preset: str = "healthy", seed: int = 0,
                     config: SimConfig | None = None, n_dies: int = 1,
                     sample: Sample | None = None, spec: SampleSpec | None = None) -> Capture:
    """Simulate one test and write it as a ``holodiff-capture/1`` folder plus ``truth.json``.

    Parameters
    ----------
    out_dir : path-like
        Capture folder to create (must not exist).
    preset : str
        Sample preset (see :data:`holography.sample.PRESETS`, or ``random``).
    seed : int
        Seed of the only random generator used.
    config : SimConfig, optional
        Sensor, optics, LEDs, faults.
    n_dies : int
        Dies per LED colour (1 or 4 from :data:`FOUR_DIES`; more repeat with jitter).
    sample : Sample, optional
        Objects to image instead of a preset's blood (a resolution target, beads),
        in sample-plane micrometres with the optical axis at the frame centre
        ``(W p / 2, H p / 2)``.
    spec : SampleSpec, optional
        Blood to simulate instead of the preset's (``preset`` then only names it).

    Returns
    -------
    Capture
        The written, re-validated capture.
    """
    cfg = config or SimConfig()
    rng = np.random.default_rng(seed)
    spec_sensor = get_sensor(cfg.sensor)
    bayer = spec_sensor.bayer if cfg.bayer == "sensor-default" else cfg.bayer
    W, H = cfg.size if cfg.size is not None else (spec_sensor.width, spec_sensor.height)
    if W % 2 or H % 2 or W < 32 or H < 32:
        raise SimulationError(f"frame size must be even and at least 32 px (got {W}x{H})")
    if n_dies < 1:
        raise SimulationError(f"n_dies must be at least 1 (got {n_dies})")
    optics = cfg.optics
    if "defocused" in cfg.faults:
        optics = replace(optics, nominal_error_um=optics.nominal_error_um - 800.0)
    if "tilted" in cfg.faults and optics.tilt_um_per_mm == (0.0, 0.0):
        optics = replace(optics, tilt_um_per_mm=(6.0, -4.0))
    cfg = replace(cfg, optics=optics)
    pitch = spec_sensor.pixel_pitch_um
    axis = (W * pitch / 2, H * pitch / 2)
    z1 = optics.source_distance_mm * 1000.0
    m_floor = (z1 + optics.floor_distance_um) / z1
    # sample-plane region that projects onto the frame, plus a margin of fringes
    reach = 150.0
    field_um = (axis[0] - (axis[0] + reach) / m_floor, axis[1] - (axis[1] + reach) / m_floor,
                axis[0] + (axis[0] + reach) / m_floor, axis[1] + (axis[1] + reach) / m_floor)
    preset_name = "empty" if "empty_chamber" in cfg.faults else preset
    sample_spec = spec if spec is not None and preset_name == preset else get_spec(preset_name, rng)
    if sample is None:
        sample = make_sample(sample_spec, field_um=field_um,
                             chamber_height_um=optics.chamber_height_um, dilution=optics.dilution,
                             rng=rng, cover_glass_um=optics.cover_glass_um)
    placed = _place(sample, optics, axis)
    sensor = _SensorModel(spec_sensor, bayer, (H, W), rng, cfg)
    fixed_offsets = FOUR_DIES if n_dies > 1 else ((0.0, 0.0),)
    dies = [fixed_offsets[i % len(fixed_offsets)] for i in range(n_dies)]
    dies = [(d[0] + (rng.uniform(-8, 8) if i >= len(fixed_offsets) else 0.0),
             d[1] + (rng.uniform(-8, 8) if i >= len(fixed_offsets) else 0.0))
            for i, d in enumerate(dies)]
    failed_led = cfg.leds[int(rng.integers(len(cfg.leds)))].name if "failed_led" in cfg.faults else None
    exposure = cfg.exposure_fill * (2.5 if "saturated" in cfg.faults else 1.0)

    arrays: dict[str, np.ndarray] = {}
    frames_meta = []
    flats_meta = {}
    dark_e = np.zeros((H, W), np.float32)
    arrays["dark.npy"] = sensor.expose(dark_e, frames=cfg.flat_frames)
    for led in cfg.leds:
        resp = channel_response(led.wavelength_nm)
        qe = np.array([resp["R"], resp["G"], resp["B"]], np.float32) * np.array(cfg.qe_scale,
                                                                                 np.float32)
        qe_px = qe[sensor.chan] / qe[np.unique(sensor.chan)].max()
        scale = exposure * sensor.full_well
        illum0 = _illumination((H, W), pitch, (0.0, 0.0), z1 + optics.floor_distance_um)
        flat_e = illum0 * qe_px * sensor.prnu * (cfg.exposure_fill * sensor.full_well)
        arrays[f"flat_{led.name}.npy"] = sensor.expose(flat_e, frames=cfg.flat_frames)
        flats_meta[led.name] = f"flat_{led.name}.npy"
        # a colour's own die position in a multi-colour package shifts all its dies
        base = led.offsets_um[0] if len(led.offsets_um) == 1 else (0.0, 0.0)
        for die0 in dies:
            die = (die0[0] + base[0], die0[1] + base[1])
            name = f"f{len(frames_meta):03d}.npy"
            power = float(rng.uniform(0.95, 1.05))
            if led.name == failed_led:
                power = 0.0
            inten = render_intensity(placed, led, die, frame_shape=(H, W), pitch=pitch, config=cfg)
            illum = _illumination((H, W), pitch, die, z1 + optics.floor_distance_um)
            arrays[name] = sensor.expose(inten * illum * qe_px * sensor.prnu * (scale * power))
            frames_meta.append({
                "file": name, "led": led.name, "wavelength_nm": led.wavelength_nm,
                "bandwidth_nm": led.bandwidth_nm, "led_offset_um": [die[0], die[1]],
                "exposure_us": int(round(2000 * exposure / cfg.exposure_fill)),
                "analogue_gain": 1.0})
    nominal = optics.floor_distance_um + optics.nominal_error_um
    meta = {
        "format": "holodiff-capture/1",
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": {"serial": "SIM-0001", "software": __version__},
        "sensor": {"model": spec_sensor.model, "pixel_pitch_um": pitch, "width": W, "height": H,
                   "bayer": bayer, "bit_depth": spec_sensor.bit_depth,
                   "black_level": spec_sensor.black_level},
        "geometry": {"source_distance_mm": optics.source_distance_mm,
                     "sample_distance_um": round(nominal, 3), "pinhole_um": optics.pinhole_um},
        "chamber": {"height_um": optics.chamber_height_um, "dilution": optics.dilution,
                    "lysed": True},
        "frames": frames_meta,
        "dark": "dark.npy",
        "flats": flats_meta,
    }
    truth = _truth(placed, sample_spec, preset_name, seed, cfg, axis, pitch, dies)
    extra = {"truth.json": json.dumps(truth, indent=1).encode()}
    cap = write_capture(out_dir, meta, arrays, extra_files=extra)
    if "corrupt_file" in cfg.faults:
        victim = Path(out_dir) / frames_meta[-1]["file"]
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) // 3])
    return cap


def _truth(placed: _Placed, spec: Any, preset: str, seed: int, cfg: SimConfig,
           axis: tuple[float, float], pitch: float, dies: list) -> dict[str, Any]:
    o = placed.sample.objects
    z1 = cfg.optics.source_distance_mm * 1000.0
    objs = []
    for k in range(o.size):
        kind = KINDS[o["kind"][k]]
        x_px = placed.sx_um[k] / pitch - 0.5
        y_px = placed.sy_um[k] / pitch - 0.5
        objs.append({
            "kind": kind, "x_px": round(float(x_px), 3), "y_px": round(float(y_px), 3),
            "x_um": round(float(o["x_um"][k]), 3), "y_um": round(float(o["y_um"][k]), 3),
            "height_um": round(float(o["h_um"][k]), 3),
            "distance_um": round(float(placed.distance_um[k]), 3),
            "diameter_um": round(float(2 * o["a_um"][k]), 4),
            "volume_fl": round(float(4 / 3 * math.pi * o["a_um"][k] ** 2 * o["c_um"][k]), 3),
            "clump": int(o["clump"][k]),
        })
    W = int(round(axis[0] * 2 / pitch))
    H = int(round(axis[1] * 2 / pitch))
    in_frame = [c for c in objs if 0 <= c["x_px"] < W and 0 <= c["y_px"] < H]
    counts = {c: sum(1 for x in in_frame if x["kind"] == c) for c in WBC_CLASSES}
    cfg_d = asdict(cfg)
    return {
        "format": "holodiff-sim-truth/1",
        "preset": preset, "seed": seed,
        "sample": asdict(spec) if hasattr(spec, "__dataclass_fields__") else str(spec),
        "config": cfg_d,
        "optics": {
            "floor_distance_um": cfg.optics.floor_distance_um,
            "true_sample_distance_um": cfg.optics.floor_distance_um,
            "nominal_error_um": cfg.optics.nominal_error_um,
            "tilt_um_per_mm": list(cfg.optics.tilt_um_per_mm),
            "source_distance_um": z1,
            "axis_px": [axis[0] / pitch - 0.5, axis[1] / pitch - 0.5],
        },
        "dies_um": [list(d) for d in dies],
        "wbc_counts_in_frame": counts,
        "objects": objs,
    }


#: exposure (us) at analogue gain 1 that fills ``SimConfig.exposure_fill`` of the full well in
#: the centre of an empty-chamber frame for an LED of nominal power
REFERENCE_EXPOSURE_US = 2000.0


class VirtualBench:
    """The simulated instrument frame by frame: what the device twin's camera records.

    :func:`simulate_capture` writes a whole capture at once; the device layer's
    simulated camera instead asks for one raw frame at a time, with the LED die,
    exposure and analogue gain its acquisition sequence chose, while a sample
    is in the chamber or not (empty-chamber flats). Same physics and sensor
    model as :func:`simulate_capture`.

    Parameters
    ----------
    config : SimConfig
        Sensor, window size, optics. ``config.size`` is the read-out window.
    seed : int
        Seed of the bench's own generator (sensor fixed pattern, noise, LED powers).
    led_power : dict, optional
        Relative optical power per LED colour name (default: drawn in 0.7-1.3,
        so that per-LED exposure setting has something to correct).
    """

    def __init__(self, config: SimConfig | None = None, *, seed: int = 0,
                 led_power: dict[str, float] | None = None):
        self.config = cfg = config or SimConfig()
        self.rng = np.random.default_rng(seed)
        self.sensor_spec = get_sensor(cfg.sensor)
        self.bayer = self.sensor_spec.bayer if cfg.bayer == "sensor-default" else cfg.bayer
        W, H = cfg.size if cfg.size is not None else (self.sensor_spec.width,
                                                       self.sensor_spec.height)
        if W % 2 or H % 2 or W < 32 or H < 32:
            raise SimulationError(f"frame size must be even and at least 32 px (got {W}x{H})")
        self.shape = (H, W)
        self.pitch = self.sensor_spec.pixel_pitch_um
        self.axis = (W * self.pitch / 2, H * self.pitch / 2)
        self.sensor = _SensorModel(self.sensor_spec, self.bayer, self.shape, self.rng, cfg)
        self.led_power = dict(led_power) if led_power is not None else {
            led.name: float(self.rng.uniform(0.7, 1.3)) for led in cfg.leds}
        self._placed: _Placed | None = None
        self._spec: Any = None
        self._preset = "empty"
        self._sample_seed = 0
        self._cache: dict[tuple[str, float, float], np.ndarray] = {}
        self._qe: dict[str, np.ndarray] = {}

    # -- the chamber ---------------------------------------------------------
    def load_sample(self, preset: str = "healthy", *, seed: int = 0,
                    spec: SampleSpec | None = None, sample: Sample | None = None) -> None:
        """Put a sample in the chamber (a preset's blood, a given spec, or given objects)."""
        optics = self.config.optics
        z1 = optics.source_distance_mm * 1000.0
        m_floor = (z1 + optics.floor_distance_um) / z1
        ax, ay = self.axis
        reach = 150.0
        field_um = (ax - (ax + reach) / m_floor, ay - (ay + reach) / m_floor,
                    ax + (ax + reach) / m_floor, ay + (ay + reach) / m_floor)
        rng = np.random.default_rng(seed)
        sample_spec = spec if spec is not None else get_spec(preset, rng)
        if sample is None:
            sample = make_sample(sample_spec, field_um=field_um,
                                 chamber_height_um=optics.chamber_height_um,
                                 dilution=optics.dilution, rng=rng,
                                 cover_glass_um=optics.cover_glass_um)
        self._placed = _place(sample, optics, self.axis)
        self._spec = sample_spec
        self._preset = preset
        self._sample_seed = seed
        self._cache.clear()

    def unload(self) -> None:
        """Empty the chamber."""
        self._placed = None
        self._spec = None
        self._preset = "empty"
        self._cache.clear()

    @property
    def loaded(self) -> bool:
        """Whether a sample is in the chamber."""
        return self._placed is not None

    def truth(self, dies: list[tuple[float, float]] | None = None) -> dict[str, Any]:
        """The simulator's truth about the loaded sample (as ``truth.json`` of a capture)."""
        if self._placed is None:
            raise SimulationError("no sample is loaded in the virtual chamber")
        return _truth(self._placed, self._spec, self._preset, self._sample_seed, self.config,
                      self.axis, self.pitch, list(dies or [(0.0, 0.0)]))

    # -- the camera ------------------------------------------------------------
    def _qe_px(self, led: LedSpec) -> np.ndarray:
        if led.name not in self._qe:
            resp = channel_response(led.wavelength_nm)
            qe = np.array([resp["R"], resp["G"], resp["B"]], np.float32)
            self._qe[led.name] = qe[self.sensor.chan] / qe[np.unique(self.sensor.chan)].max()
        return self._qe[led.name]

    def frame(self, led: LedSpec | None, die: tuple[float, float] = (0.0, 0.0), *,
              exposure_us: float, analogue_gain: float = 1.0, power: float = 1.0) -> np.ndarray:
        """One raw frame, ``(H, W) uint16``, black level included.

        Parameters
        ----------
        led : LedSpec or None
            The lit LED colour, or ``None`` for a dark frame (all LEDs off).
        die : (float, float)
            Lateral offset of the lit die in the LED plane, um.
        exposure_us, analogue_gain : float
            Camera settings; the signal scales with both, the full well clips.
        power : float
            Relative drive of the die (PWM duty over its nominal one; 0 for a dead die).
        """
        cfg = self.config
        optics = cfg.optics
        if led is None:
            return self.sensor.expose(np.zeros(self.shape, np.float32),
                                      analogue_gain=analogue_gain)
        z1 = optics.source_distance_mm * 1000.0
        rate = cfg.exposure_fill * self.sensor.full_well / REFERENCE_EXPOSURE_US
        scale = rate * exposure_us * power * self.led_power.get(led.name, 1.0)
        illum = _illumination(self.shape, self.pitch, die, z1 + optics.floor_distance_um)
        if self._placed is None:
            inten = np.float32(1.0)
        else:
            key = (led.name, float(die[0]), float(die[1]))
            if key not in self._cache:
                self._cache[key] = render_intensity(self._placed, led, die, frame_shape=self.shape,
                                                    pitch=self.pitch, config=cfg)
            inten = self._cache[key]
        electrons = inten * illum * self._qe_px(led) * self.sensor.prnu * np.float32(scale)
        return self.sensor.expose(electrons, analogue_gain=analogue_gain)
