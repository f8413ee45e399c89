"""Acquisition sequences: from the chamber to a ``holodiff-capture/1`` folder.

One test is recorded as:

1. check the chamber: door shut, sample in;
2. per LED colour, set the exposure against the target: a metering frame
   with the colour's first working die, scaled until the brightest 0.5 % of
   the pixels of that colour's best filter channel sit at ``target_fill`` of
   the raw range (the empty-chamber background dominates a lysed sample, so
   this is the flat level); a colour that gives no light at the longest
   exposure stops the test;
3. dark frames (all LEDs off) at the longest exposure used, averaged;
4. one frame per LED die, the chamber checked before each (a sample taken
   out mid-test stops it), each die lit only for its own exposure;
5. the flats of the active calibration, where it has them for this sensor
   window, are copied in;
6. the folder is written atomically (:func:`holography.capture.write_capture`:
   a temporary folder renamed when complete), so a power cut leaves either no
   capture or a whole one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from device.errors import CameraError, HardwareError, SampleError, TestAborted
from device.instrument import Instrument
from device.profiles import DieSpec
from holography import __version__
from holography.capture import Capture, write_capture
from holography.sensors import bayer_channel_map, channel_response

#: below this fraction of the range at the longest exposure an LED counts as dead
DEAD_LEVEL = 0.02
#: level above which a metering frame counts as saturated
SATURATED_LEVEL = 0.97
#: read-out retries after a transient camera error
RETRIES = 2


def _check_chamber(instr: Instrument) -> None:
    if not instr.chamber.door_closed():
        raise SampleError("the chamber door is open; close it and start the test again")
    if not instr.chamber.sample_present():
        raise SampleError("no sample in the chamber (or it was removed during the test); insert "
                          "a new sample and start the test again")


def _capture(instr: Instrument) -> np.ndarray:
    for attempt in range(RETRIES + 1):
        try:
            return instr.camera.capture().data
        except CameraError:
            if attempt == RETRIES:
                raise
    raise AssertionError("unreachable")


def _frame(instr: Instrument, die: DieSpec) -> np.ndarray:
    """One frame with ``die`` lit only for it; waits out the board's recovery time first."""
    instr.sleep(instr.profile.leds.min_off_ms * 1e-3 + 1e-3)
    with instr.leds.lighting(die.name):
        return _capture(instr)


def _level(raw: np.ndarray, mask: np.ndarray, black: int, max_code: int) -> float:
    """Brightest 0.5 % of the masked pixels as a fraction of the raw range above black."""
    v = raw[::2, ::2][mask[::2, ::2]] if mask[::2, ::2].any() else raw[mask]
    return float(np.percentile(v, 99.5) - black) / float(max_code - black)


def set_exposures(instr: Instrument, *, progress: Callable[[str], None] | None = None
                  ) -> dict[str, int]:
    """Exposure per LED colour (us) that puts the bright background at the target fill.

    Raises
    ------
    HardwareError
        If a colour gives no light from any of its dies at the longest exposure.
    """
    prof = instr.profile
    cam = instr.camera
    target = prof.acquisition.target_fill
    chan = bayer_channel_map(prof.sensor.bayer, cam.shape)
    out = {}
    for colour in prof.leds.colours:
        resp = channel_response(next(d.wavelength_nm for d in prof.leds.dies if d.led == colour))
        best = int(np.argmax([resp["R"], resp["G"], resp["B"]])) if prof.sensor.bayer else 1
        mask = chan == best
        level = 0.0
        exposure = 0.0
        for die in [d for d in prof.leds.dies if d.led == colour]:
            exposure = float(min(max(2000, prof.sensor.exposure_us_min), prof.sensor.exposure_us_max))
            for _ in range(prof.acquisition.metering_steps + 2):
                exposure = cam.set_exposure(exposure)
                level = _level(_frame(instr, die), mask, cam.black_level, cam.max_code)
                if level >= SATURATED_LEVEL:
                    new = exposure / 4.0
                elif level < DEAD_LEVEL and exposure >= prof.sensor.exposure_us_max:
                    break
                else:
                    new = exposure * target / max(level, 1e-3)
                new = min(max(new, prof.sensor.exposure_us_min), prof.sensor.exposure_us_max)
                if abs(level / target - 1.0) < 0.08 or int(round(new)) == exposure:
                    break
                exposure = new
            if level >= DEAD_LEVEL:
                break
            if progress:
                progress(f"LED die {die.name} gives no light; trying the next die of {colour}")
        if level < DEAD_LEVEL:
            raise HardwareError(f"LED {colour} gives no light at {prof.sensor.exposure_us_max} us "
                                f"from any die; the LED board has failed: call service")
        out[colour] = int(exposure)
        if progress:
            progress(f"exposure {colour}: {int(exposure)} us (level {level:.2f} of range)")
    return out


def acquire_capture(instr: Instrument, dest: str | Path, *,
                    flats: dict[str, np.ndarray] | None = None,
                    sample_distance_um: float | None = None,
                    extra_meta: dict | None = None,
                    progress: Callable[[str], None] | None = None,
                    cancelled: Callable[[], bool] | None = None) -> Capture:
    """Record one test from the sample in the chamber into a new capture folder.

    Parameters
    ----------
    instr : Instrument
        The opened analyzer (real or twin).
    dest : path-like
        Capture folder to create (must not exist).
    flats : dict, optional
        LED colour -> empty-chamber flat ``(H, W) uint16`` from the calibration store.
    sample_distance_um : float, optional
        Nominal sample distance from the distance calibration (default: the profile's).
    extra_meta : dict, optional
        Written beside ``capture.json`` as ``test.json`` (test id, sample id, operator).
    progress : callable, optional
        Called with one line per step.
    cancelled : callable, optional
        Polled between frames; when it returns true the test stops with :class:`TestAborted`.

    Raises
    ------
    SampleError
        Door open, no sample, or the sample removed during the sequence.
    HardwareError
        An LED gives no light, the LED board or the camera refused.
    TestAborted
        The operator cancelled.
    """
    prof = instr.profile
    cam = instr.camera

    def check() -> None:
        if cancelled is not None and cancelled():
            raise TestAborted("test cancelled by the operator; nothing was recorded")
        _check_chamber(instr)

    try:
        check()
        exposures = set_exposures(instr, progress=progress)
        check()
        cam.set_exposure(max(exposures.values()))
        instr.leds.off()
        darks = [cam.capture().data.astype(np.float64) for _ in range(prof.acquisition.dark_frames)]
        arrays: dict[str, np.ndarray] = {
            "dark.npy": np.rint(np.mean(darks, axis=0)).astype(np.uint16)}
        frames = []
        for die in prof.leds.dies:
            check()
            exposure = cam.set_exposure(exposures[die.led])
            name = f"f{len(frames):03d}.npy"
            arrays[name] = _frame(instr, die)
            frames.append({"file": name, "led": die.led, "wavelength_nm": die.wavelength_nm,
                           "bandwidth_nm": die.bandwidth_nm,
                           "led_offset_um": [die.offset_um[0], die.offset_um[1]],
                           "exposure_us": exposure, "analogue_gain": cam.analogue_gain})
            if progress:
                progress(f"frame {len(frames)}/{len(prof.leds.dies)}: die {die.name}")
        check()
    finally:
        instr.leds.off()
    flats_meta = {}
    for colour, flat in (flats or {}).items():
        if colour in exposures and flat.shape == cam.shape and flat.dtype == np.uint16:
            flats_meta[colour] = f"flat_{colour}.npy"
            arrays[f"flat_{colour}.npy"] = flat
    meta = {
        "format": "holodiff-capture/1",
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": {"serial": prof.serial, "software": __version__},
        "sensor": {"model": prof.sensor.model, "pixel_pitch_um": cam.spec.pixel_pitch_um,
                   "width": prof.sensor.width, "height": prof.sensor.height,
                   "bayer": prof.sensor.bayer, "bit_depth": cam.spec.bit_depth,
                   "black_level": int(cam.black_level)},
        "geometry": {"source_distance_mm": prof.source_distance_mm,
                     "sample_distance_um": round(sample_distance_um or prof.sample_distance_um, 3),
                     "pinhole_um": prof.pinhole_um},
        "chamber": {"height_um": prof.chamber.height_um, "dilution": prof.chamber.dilution,
                    "lysed": True},
        "frames": frames,
        "dark": "dark.npy",
        "flats": flats_meta,
    }
    extra = {}
    if instr.bench is not None and instr.bench.loaded:
        dies = [d.offset_um for d in prof.leds.dies if d.led == prof.leds.colours[0]]
        extra["truth.json"] = json.dumps(instr.bench.truth(dies), indent=1).encode()
    if extra_meta:
        extra["test.json"] = json.dumps(extra_meta, indent=1).encode()
    return write_capture(dest, meta, arrays, extra_files=extra)
