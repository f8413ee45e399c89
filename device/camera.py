"""The camera: raw Bayer frames with manual exposure and analogue gain.

:class:`Camera` validates settings against the hardware profile and checks
every frame a driver returns (dtype, shape, bit depth) before anyone uses it;
the real driver (:class:`device.picam.Picamera2Camera`, the ``pi`` extra) and
the simulated twin (:class:`SimulatedCamera`) implement only the ``_do_*`` hooks.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from device.errors import CameraError
from device.leds import SimulatedLedBoard
from device.profiles import SensorProfile
from holography.sensors import SENSORS
from holography.simulate import LedSpec, VirtualBench


@dataclass(frozen=True, slots=True, kw_only=True)
class RawFrame:
    """One raw frame as read out: ``data`` is ``(H, W) uint16`` with the black level in it."""

    data: np.ndarray
    exposure_us: int
    analogue_gain: float
    black_level: int


class VirtualClock:
    """Time of the simulated twin: advances by exposures and waits, not by computing time."""

    def __init__(self) -> None:
        self.t_s = 0.0

    def __call__(self) -> float:
        """Seconds of instrument time."""
        return self.t_s

    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` of instrument time pass."""
        self.t_s += max(0.0, float(seconds))


class Camera(abc.ABC):
    """A raw-mode camera with auto-exposure and auto-white-balance off.

    Parameters
    ----------
    sensor : SensorProfile
        Model, Bayer order, read-out window and exposure limits.
    """

    def __init__(self, sensor: SensorProfile):
        self.profile = sensor
        self.spec = SENSORS[sensor.model]
        self.exposure_us = max(sensor.exposure_us_min, min(2000, sensor.exposure_us_max))
        self.analogue_gain = sensor.analogue_gain
        self.black_level = self.spec.black_level

    @property
    def shape(self) -> tuple[int, int]:
        """Frame shape (rows, columns)."""
        return (self.profile.height, self.profile.width)

    @property
    def max_code(self) -> int:
        """Largest raw value."""
        return self.spec.max_code

    def set_exposure(self, exposure_us: float, analogue_gain: float | None = None) -> int:
        """Set the exposure (clamped to the profile's range, whole us) and analogue gain.

        Returns
        -------
        int
            The exposure actually set, in us.

        Raises
        ------
        CameraError
            If the exposure is not a finite positive number or the gain is outside 1-16.
        """
        if not np.isfinite(exposure_us) or exposure_us <= 0:
            raise CameraError(f"exposure {exposure_us!r} us is not a positive number")
        gain = self.analogue_gain if analogue_gain is None else float(analogue_gain)
        if not 1.0 <= gain <= 16.0:
            raise CameraError(f"analogue gain {gain} is outside 1-16")
        e = int(round(min(max(exposure_us, self.profile.exposure_us_min),
                          self.profile.exposure_us_max)))
        self._do_set_exposure(e, gain)
        self.exposure_us, self.analogue_gain = e, gain
        return e

    def capture(self) -> RawFrame:
        """Expose and read out one raw frame.

        Raises
        ------
        CameraError
            If the driver fails or returns a frame of the wrong dtype, shape or range.
        """
        data, black = self._do_capture()
        if not isinstance(data, np.ndarray) or data.dtype != np.uint16 or data.shape != self.shape:
            got = f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}"
            raise CameraError(f"camera returned {got}, expected uint16 {self.shape}; restart the "
                              f"analyzer, and call service if it happens again")
        if int(data.max(initial=0)) > self.max_code:
            raise CameraError(f"camera returned values above {self.max_code} ({self.spec.bit_depth}-"
                              f"bit); the sensor mode is wrong: check the hardware profile")
        self.black_level = black
        return RawFrame(data=data, exposure_us=self.exposure_us, analogue_gain=self.analogue_gain,
                        black_level=black)

    def close(self) -> None:
        """Stop the camera and release it."""
        self._do_close()

    def __enter__(self) -> Camera:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @abc.abstractmethod
    def _do_set_exposure(self, exposure_us: int, analogue_gain: float) -> None: ...

    @abc.abstractmethod
    def _do_capture(self) -> tuple[np.ndarray, int]:
        """The raw frame and its black level (raw counts at the sensor's bit depth)."""

    def _do_close(self) -> None:
        """Release the hardware."""


class SimulatedCamera(Camera):
    """The twin: renders what the lit die shows through the sample in the virtual chamber.

    Parameters
    ----------
    sensor : SensorProfile
        As for the real camera.
    bench : VirtualBench
        The simulated optics, sensor and chamber contents.
    leds : SimulatedLedBoard
        The twin LED board, asked which die is lit at each exposure.
    clock : VirtualClock
        Advanced by every exposure and read-out.
    error_rate : float
        Probability that a read-out fails (a transient CSI error), for fault tests.
    readout_ms : float
        Read-out time added to the clock per frame.
    rng : numpy.random.Generator, optional
        Draws the read-out failures.
    """

    def __init__(self, sensor: SensorProfile, bench: VirtualBench, leds: SimulatedLedBoard, *,
                 clock: VirtualClock, error_rate: float = 0.0, readout_ms: float = 100.0,
                 rng: np.random.Generator | None = None):
        super().__init__(sensor)
        if bench.shape != self.shape:
            raise CameraError(f"virtual bench renders {bench.shape}, profile reads {self.shape}")
        self.bench = bench
        self.leds = leds
        self.clock = clock
        self.error_rate = error_rate
        self.readout_ms = readout_ms
        self.rng = rng or np.random.default_rng(0)
        self._led_specs = {c.name: c for c in bench.config.leds}
        self.frames_read = 0

    def _do_set_exposure(self, exposure_us: int, analogue_gain: float) -> None:
        pass

    def _do_capture(self) -> tuple[np.ndarray, int]:
        emission = self.leds.emission()
        self.clock.sleep(self.exposure_us * 1e-6 + self.readout_ms * 1e-3)
        self.leds.lit()  # an exposure longer than the on-time limit is cut here
        if self.error_rate and self.rng.random() < self.error_rate:
            raise CameraError("camera read-out timed out (CSI error); retry the capture")
        if emission is None:
            data = self.bench.frame(None, exposure_us=self.exposure_us,
                                    analogue_gain=self.analogue_gain)
        else:
            die, power = emission
            spec: LedSpec = self._led_specs[die.led]
            data = self.bench.frame(spec, die.offset_um, exposure_us=self.exposure_us,
                                    analogue_gain=self.analogue_gain, power=power)
        self.frames_read += 1
        return data, self.spec.black_level

