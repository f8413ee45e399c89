"""Calibration procedures: frames and captures in, calibration results out.

Each procedure is a pure function of recorded data (the device layer records
it, :mod:`device.calibrate`), returns a :class:`CalResult` with its values,
its acceptance limits and whether it passed, and never touches the store.

- Dark and flat frames per LED die: averages, with noise figures (temporal
  noise from the difference of two frames, EMVA 1288 release 4.0 section 6;
  photo-response non-uniformity of the flat after its smooth illumination
  profile is divided out).
- Sample distance per LED: autofocus of a capture of the sample or a target
  (:func:`holography.reconstruct.reconstruct_capture`): the fitted plane and
  the distance at the frame centre for every wavelength.
- Sub-pixel shift of every LED die: phase correlation of each die's frame with
  the colour's first die (:func:`holography.superres.register_dies`), against
  the shift the geometry predicts.
- Bead sizing: polystyrene beads of known diameter, reconstructed, segmented
  on the scattered-field magnitude averaged over the LEDs, each bead sized at
  half of its own peak on a 4x interpolated grid (equivalent-circle
  diameter); mean, CV and bias against the nominal diameter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from holography.capture import Capture, SensorInfo
from holography.raw import normalise_frame
from holography.reconstruct import reconstruct_capture
from holography.sensors import bayer_channel_map
from holography.superres import predicted_shift_px, register_dies

#: acceptance limits of each procedure
LIMITS = {
    "dark_flat": {"dark_offset_max_dn": 8.0, "dark_noise_max_dn": 6.0,
                  "flat_level_min": 0.25, "flat_level_max": 0.85, "flat_saturated_max": 0.001},
    "distance": {"led_spread_max_um": 40.0, "residual_max_um": 10.0},
    "shifts": {"residual_max_px": 0.5, "fallbacks_max": 0},
    # bead limits from the method's measured performance on simulated 8 um beads (512-768 px
    # windows, three sensors; tests/benchmarks/bench_calibration.py): bias +2 to +5 %, CV 2-12 %,
    # the worst on the IMX477's 1.55 um pixels in a 512 px window
    "beads": {"bias_max_pct": 6.0, "cv_max_pct": 15.0, "beads_min": 30},
}


@dataclass(slots=True, kw_only=True)
class CalResult:
    """Outcome of one procedure."""

    kind: str
    values: dict[str, Any]
    passed: bool
    reasons: list[str] = field(default_factory=list)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def check(self, ok: bool, reason: str) -> None:
        """Fail the result with ``reason`` unless ``ok``."""
        if not ok:
            self.passed = False
            self.reasons.append(reason)


def _mean_u16(frames: list[np.ndarray]) -> np.ndarray:
    return np.rint(np.mean([f.astype(np.float64) for f in frames], axis=0)).astype(np.uint16)


def _temporal_noise(frames: list[np.ndarray]) -> float:
    if len(frames) < 2:
        return math.nan
    d = frames[0].astype(np.float64) - frames[1].astype(np.float64)
    return float(np.std(d) / math.sqrt(2.0))


def dark_flat(darks: list[np.ndarray], flats: dict[str, list[np.ndarray]], sensor: SensorInfo,
              *, die_leds: dict[str, str] | None = None,
              exposures_us: dict[str, int] | None = None) -> CalResult:
    """Average dark and per-die flat frames and measure their noise.

    Parameters
    ----------
    darks : list of (H, W) uint16
        Frames with every LED off (at least 2).
    flats : dict
        Die name -> its empty-chamber frames (at least 2 each).
    sensor : SensorInfo
        Bit depth and black level.
    die_leds : dict, optional
        Die name -> LED colour, recorded with the values.
    exposures_us : dict, optional
        Die name -> exposure used, recorded with the values.
    """
    lim = LIMITS["dark_flat"]
    rng = float(sensor.max_code - sensor.black_level)
    dark = _mean_u16(darks)
    res = CalResult(kind="dark_flat", values={}, passed=True, arrays={"dark": dark})
    dark_mean = float(dark.mean())
    dark_noise = _temporal_noise(darks)
    res.values["dark"] = {"mean_dn": round(dark_mean, 2), "temporal_noise_dn": round(dark_noise, 3),
                          "frames": len(darks),
                          "hot_pixels": int(np.count_nonzero(dark > sensor.black_level + 64))}
    res.check(abs(dark_mean - sensor.black_level) <= lim["dark_offset_max_dn"],
              f"dark level {dark_mean:.1f} DN is not the black level {sensor.black_level}: light "
              f"leak or wrong sensor mode; close the door and repeat")
    res.check(dark_noise <= lim["dark_noise_max_dn"],
              f"dark noise {dark_noise:.2f} DN above {lim['dark_noise_max_dn']}: sensor fault")
    per_die = {}
    chan = bayer_channel_map(sensor.bayer, dark.shape)
    for die, frames in flats.items():
        flat = _mean_u16(frames)
        res.arrays[f"flat_{die}"] = flat
        sig = flat.astype(np.float32) - float(sensor.black_level)
        # the colour channel that sees this LED best, as its own half-resolution plane
        best = max(np.unique(chan), key=lambda c: float(np.median(sig[chan == c])))
        r0, c0 = next((r, c) for r in (0, 1) for c in (0, 1) if chan[r, c] == best)
        plane = sig[r0::2, c0::2] if sensor.bayer else sig
        level = float(np.percentile(plane, 99.5)) / rng
        smooth = cv2.GaussianBlur(plane, (0, 0), 12)
        rel = plane / np.maximum(smooth, 1.0)
        h, w = rel.shape
        core = rel[h // 4:3 * h // 4, w // 4:3 * w // 4]
        sat = float(np.mean(flat >= sensor.max_code))
        noise = (float(np.std(frames[0].astype(np.float64)[r0::2, c0::2]
                              - frames[1].astype(np.float64)[r0::2, c0::2]) / math.sqrt(2.0))
                 if len(frames) > 1 else math.nan)
        per_die[die] = {"led": (die_leds or {}).get(die), "channel": "RGB"[int(best)],
                        "level": round(level, 4),
                        "prnu_pct": round(100 * float(np.std(core)), 3),
                        "temporal_noise_dn": round(noise, 3),
                        "saturated_fraction": sat, "frames": len(frames),
                        "exposure_us": (exposures_us or {}).get(die)}
        res.check(lim["flat_level_min"] <= level <= lim["flat_level_max"],
                  f"flat of die {die} at {level:.2f} of range (needs {lim['flat_level_min']}-"
                  f"{lim['flat_level_max']}): LED or exposure fault; call service")
        res.check(sat <= lim["flat_saturated_max"], f"flat of die {die} is saturated")
    res.values["flats"] = per_die
    return res


def sample_distance(capture: Capture) -> CalResult:
    """Autofocus a capture of the sample (or a target): distance per LED and the fitted plane."""
    lim = LIMITS["distance"]
    rec = reconstruct_capture(capture)
    res = CalResult(kind="distance", values={}, passed=True)
    plane = rec.plane
    res.check(plane is not None and math.isfinite(plane.distance_um) and "OUT_OF_FOCUS" not in rec.flags,
              "no focus found: is there a sample or target in the chamber? insert one and repeat")
    if plane is None or not math.isfinite(plane.distance_um):
        return res
    per_led = {k: round(v, 2) for k, v in rec.led_distance_um.items()}
    spread = max(per_led.values()) - min(per_led.values()) if per_led else 0.0
    res.values = {"sample_distance_um": round(plane.distance_um, 2), "per_led_um": per_led,
                  "tilt_um_per_mm": [round(plane.slope_x_um_per_mm, 3),
                                     round(plane.slope_y_um_per_mm, 3)],
                  "plane_residual_um": round(plane.residual_um, 3), "led_spread_um": round(spread, 2),
                  "tiles_focused": sum(t.found for t in rec.tiles), "tiles": len(rec.tiles)}
    res.check(spread <= lim["led_spread_max_um"],
              f"LED distances differ by {spread:.1f} um (limit {lim['led_spread_max_um']}): check "
              f"the LED board and the chamber seating")
    res.check(plane.residual_um <= lim["residual_max_um"],
              f"focus plane residual {plane.residual_um:.1f} um: chamber warped or dirty; clean and "
              f"repeat")
    return res


def die_shifts(capture: Capture, *, sample_distance_um: float | None = None) -> CalResult:
    """Measured sub-pixel shift of every die against its colour's first die."""
    lim = LIMITS["shifts"]
    res = CalResult(kind="shifts", values={}, passed=True)
    z2 = sample_distance_um or capture.geometry.sample_distance_um
    z1 = capture.geometry.source_distance_mm * 1000.0
    dark = capture.load_dark()
    per = {}
    total_fallbacks = 0
    for led in capture.leds:
        frames_info = capture.frames_of(led)
        if len(frames_info) < 2:
            continue
        frames = [normalise_frame(capture.load_frame(f), sensor=capture.sensor, dark=dark,
                                  flat=capture.load_flat(led))[0] for f in frames_info]
        o0 = frames_info[0].led_offset_um
        pred = []
        for f in frames_info:
            p = predicted_shift_px((f.led_offset_um[0] - o0[0], f.led_offset_um[1] - o0[1]),
                                   sample_distance_um=z2, source_distance_um=z1,
                                   pitch_um=capture.sensor.pixel_pitch_um)
            pred.append(p)
        shifts, fallbacks = register_dies(frames, pred, max_residual_px=lim["residual_max_px"])
        total_fallbacks += len(fallbacks)
        per[led] = [{"offset_um": list(f.led_offset_um), "dy_px": round(s.dy, 4),
                     "dx_px": round(s.dx, 4), "predicted_px": [round(p[0], 4), round(p[1], 4)],
                     "residual_px": round(s.residual_px, 4) if math.isfinite(s.residual_px) else None,
                     "peak": round(s.peak, 4), "from_geometry": k in fallbacks}
                    for k, (f, s, p) in enumerate(zip(frames_info, shifts, pred, strict=True))]
    res.values = {"per_led": per, "fallbacks": total_fallbacks}
    res.check(bool(per), "the capture has one die per colour: there are no shifts to calibrate")
    res.check(total_fallbacks <= lim["fallbacks_max"],
              f"{total_fallbacks} die shift(s) could not be measured (too few objects or a dead "
              f"die); repeat with a fuller sample or target")
    return res


def bead_sizing(capture: Capture, *, nominal_um: float) -> CalResult:
    """Diameter of calibration beads against their nominal diameter."""
    lim = LIMITS["beads"]
    rec = reconstruct_capture(capture)
    res = CalResult(kind="beads", values={}, passed=True)
    leds = list(rec.fields)
    if not leds:
        res.check(False, "no LED frame could be reconstructed; check the LEDs and repeat")
        return res
    s0 = np.mean([np.abs(rec.fields[k] - 1) for k in leds], axis=0).astype(np.float32)
    bg = float(np.median(s0))
    mad = float(np.median(np.abs(s0 - bg))) * 1.4826
    mask = (s0 > max(bg + 8 * mad, 0.25)).astype(np.uint8)
    n, _, stats, cent = cv2.connectedComponentsWithStats(mask, connectivity=8)
    up = 4
    dia = []
    H, W = s0.shape
    lo_um, hi_um = 0.5 * nominal_um, 1.8 * nominal_um
    for k in range(1, n):
        w, h, area = stats[k, cv2.CC_STAT_WIDTH], stats[k, cv2.CC_STAT_HEIGHT], stats[k, cv2.CC_STAT_AREA]
        if area < 5:
            continue
        r = int(max(w, h))
        cx, cy = int(cent[k][0]), int(cent[k][1])
        if cx - r < 0 or cy - r < 0 or cx + r + 1 > W or cy + r + 1 > H:
            continue  # cut by the frame edge
        crop = s0[cy - r:cy + r + 1, cx - r:cx + r + 1]
        big = cv2.resize(crop, None, fx=up, fy=up, interpolation=cv2.INTER_CUBIC)
        thr = bg + 0.5 * (float(np.percentile(big, 99)) - bg)
        nn, _, ss, _ = cv2.connectedComponentsWithStats((big > thr).astype(np.uint8))
        if nn < 2:
            continue
        a = float(ss[1:, cv2.CC_STAT_AREA].max()) / up ** 2
        d = 2.0 * math.sqrt(a / math.pi) * rec.pixel_um
        if lo_um <= d <= hi_um:
            dia.append(d)
    d = np.array(dia)
    res.values = {"nominal_um": nominal_um, "beads": int(d.size)}
    res.check(d.size >= lim["beads_min"], f"only {d.size} beads found (needs {lim['beads_min']}): "
                                          f"use the bead suspension, mixed, and repeat")
    if d.size:
        mean = float(d.mean())
        cv = 100.0 * float(d.std(ddof=1)) / mean if d.size > 1 else math.nan
        bias = 100.0 * (mean / nominal_um - 1.0)
        res.values.update(mean_um=round(mean, 3), cv_pct=round(cv, 2), bias_pct=round(bias, 2),
                          volume_scale=round((nominal_um / mean) ** 3, 4))
        res.check(abs(bias) <= lim["bias_max_pct"],
                  f"bead diameter bias {bias:+.1f} % (limit +-{lim['bias_max_pct']} %): check the "
                  f"bead lot and the sample distance calibration")
        res.check(math.isfinite(cv) and cv <= lim["cv_max_pct"],
                  f"bead diameter CV {cv:.1f} % (limit {lim['cv_max_pct']} %): beads clumped or "
                  f"out of focus; remix and repeat")
    return res
