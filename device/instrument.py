"""The analyzer as one object: profile, camera, LED board, chamber, clock.

:func:`open_instrument` picks the real drivers on a Raspberry Pi with
picamera2 installed and the simulated twin everywhere else; nothing above this
module knows which it got.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from device.camera import Camera, SimulatedCamera, VirtualClock
from device.chamber import Chamber, GpioChamber, SimulatedChamber
from device.leds import GpioLedBoard, LedBoard, SimulatedLedBoard
from device.profiles import DEFAULT_PROFILE, HardwareProfile, default_profile_name, load_profile
from holography.simulate import LedSpec, Optics, SimConfig, VirtualBench


@dataclass(slots=True, kw_only=True)
class Instrument:
    """An opened analyzer. Close it (or use ``with``) to switch the LEDs off and free the camera."""

    profile: HardwareProfile
    camera: Camera
    leds: LedBoard
    chamber: Chamber
    simulated: bool
    sleep: Callable[[float], None] = time.sleep
    bench: VirtualBench | None = None
    closed: bool = field(default=False)

    def close(self) -> None:
        """LEDs off, camera and pins released (safe to call twice)."""
        if self.closed:
            return
        self.closed = True
        try:
            self.leds.close()
        finally:
            try:
                self.camera.close()
            finally:
                self.chamber.close()

    def __enter__(self) -> Instrument:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def hardware_present() -> bool:
    """Whether this is a Raspberry Pi with picamera2 installed and a camera attached."""
    try:
        model = Path("/proc/device-tree/model").read_text(errors="replace")
    except OSError:
        return False
    if "Raspberry Pi" not in model:
        return False
    try:
        import picamera2  # noqa: F401  the pi extra
    except ImportError:
        return False
    return any(Path("/dev").glob("video*"))


def twin_config(profile: HardwareProfile) -> SimConfig:
    """The simulator configuration that a profile describes."""
    leds = []
    for colour in profile.leds.colours:
        dies = [d for d in profile.leds.dies if d.led == colour]
        leds.append(LedSpec(name=colour, wavelength_nm=dies[0].wavelength_nm,
                            bandwidth_nm=dies[0].bandwidth_nm,
                            offsets_um=tuple(d.offset_um for d in dies)))
    optics = Optics(source_distance_mm=profile.source_distance_mm,
                    air_gap_um=profile.twin.air_gap_um, glass_um=profile.twin.glass_um,
                    chamber_height_um=profile.chamber.height_um, dilution=profile.chamber.dilution,
                    pinhole_um=profile.pinhole_um,
                    nominal_error_um=profile.sample_distance_um
                    - (profile.twin.air_gap_um + profile.twin.glass_um / 1.52))
    return SimConfig(sensor=profile.sensor.model, bayer=profile.sensor.bayer,
                     size=(profile.sensor.width, profile.sensor.height), leds=tuple(leds),
                     optics=optics)


def simulated_instrument(profile: HardwareProfile | str = DEFAULT_PROFILE, *,
                         camera_error_rate: float = 0.0, dead_dies=(),
                         seed: int | None = None) -> Instrument:
    """The simulated twin of the analyzer described by ``profile``."""
    prof = load_profile(profile) if isinstance(profile, str) else profile
    bench = VirtualBench(twin_config(prof), seed=prof.twin.seed if seed is None else seed)
    clock = VirtualClock()
    leds = SimulatedLedBoard(prof.leds, clock=clock, dead=dead_dies)
    camera = SimulatedCamera(prof.sensor, bench, leds, clock=clock,
                             error_rate=camera_error_rate)
    chamber = SimulatedChamber(prof.chamber, bench)
    return Instrument(profile=prof, camera=camera, leds=leds, chamber=chamber, simulated=True,
                      sleep=clock.sleep, bench=bench)


def real_instrument(profile: HardwareProfile | str = DEFAULT_PROFILE) -> Instrument:
    """The analyzer's real drivers (on a Raspberry Pi with the ``pi`` extra)."""
    from device.picam import Picamera2Camera

    prof = load_profile(profile) if isinstance(profile, str) else profile
    leds = GpioLedBoard(prof.leds)
    try:
        camera = Picamera2Camera(prof.sensor)
        try:
            chamber = GpioChamber(prof.chamber)
        except BaseException:
            camera.close()
            raise
    except BaseException:
        leds.close()
        raise
    return Instrument(profile=prof, camera=camera, leds=leds, chamber=chamber, simulated=False)


def open_instrument(profile: HardwareProfile | str | None = None, *,
                    simulated: bool | None = None) -> Instrument:
    """The attached analyzer, or its simulated twin where no hardware is found.

    Parameters
    ----------
    profile : HardwareProfile or str, optional
        Profile or its name (default ``$HOLODIFF_PROFILE``, else
        :data:`device.profiles.DEFAULT_PROFILE`).
    simulated : bool, optional
        Force the twin (``True``) or the hardware (``False``); default: detect.
    """
    if simulated is None:
        simulated = not hardware_present()
    prof = profile if profile is not None else default_profile_name()
    return simulated_instrument(prof) if simulated else real_instrument(prof)
