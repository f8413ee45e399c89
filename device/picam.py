"""The real camera: picamera2 raw capture on a Raspberry Pi (the ``pi`` extra).

Raw Bayer frames are read unpacked (16 bits per pixel in memory, e.g. the
``SBGGR12`` format of the IMX477), with auto-exposure and auto-white-balance
off and the exposure and analogue gain set by hand. The black level comes from
the frame's metadata (``SensorBlackLevels``, reported on a 16-bit scale by
libcamera), so the capture records what the sensor really used.
References: the picamera2 manual (Raspberry Pi Ltd), sections on raw streams
and camera controls.
"""

from __future__ import annotations

import numpy as np

from device.camera import Camera
from device.errors import CameraError
from device.profiles import SensorProfile

#: how many frames to wait for a new exposure to reach the sensor
SETTLE_FRAMES = 8


def raw_format(bayer: str | None, bit_depth: int) -> str:
    """Libcamera's unpacked raw format name, e.g. ``SBGGR12`` (``R12`` for monochrome)."""
    return f"R{bit_depth}" if bayer is None else f"S{bayer}{bit_depth}"


class Picamera2Camera(Camera):
    """A Raspberry Pi camera read out raw through picamera2.

    Parameters
    ----------
    sensor : SensorProfile
        Model, Bayer order, read-out size and exposure limits.
    camera_num : int
        Which camera (0 on a single-camera Pi).
    factory : callable, optional
        Builds the ``Picamera2`` object (tests pass a byte-level fake).
    """

    def __init__(self, sensor: SensorProfile, *, camera_num: int = 0, factory=None):
        super().__init__(sensor)
        if factory is None:
            from picamera2 import Picamera2  # the pi extra, only on the analyzer

            factory = Picamera2
        self._fmt = raw_format(sensor.bayer, self.spec.bit_depth)
        try:
            self._cam = factory(camera_num)
            config = self._cam.create_still_configuration(
                raw={"format": self._fmt, "size": (sensor.width, sensor.height)}, buffer_count=2)
            self._cam.configure(config)
            self._cam.set_controls({"AeEnable": False, "AwbEnable": False,
                                    "ExposureTime": self.exposure_us,
                                    "AnalogueGain": self.analogue_gain})
            self._cam.start()
        except (RuntimeError, OSError, IndexError, ValueError) as exc:
            raise CameraError(f"cannot start the camera ({exc}); check the ribbon cable and "
                              f"that no other program uses the camera") from exc

    def _do_set_exposure(self, exposure_us: int, analogue_gain: float) -> None:
        self._cam.set_controls({"ExposureTime": exposure_us, "AnalogueGain": analogue_gain})
        for _ in range(SETTLE_FRAMES):
            md = self._cam.capture_metadata()
            if (abs(md.get("ExposureTime", 0) - exposure_us) <= max(0.02 * exposure_us, 30)
                    and abs(md.get("AnalogueGain", 0.0) - analogue_gain) < 0.05):
                return
        raise CameraError(f"the camera did not take exposure {exposure_us} us / gain "
                          f"{analogue_gain} within {SETTLE_FRAMES} frames; restart the analyzer")

    def _do_capture(self) -> tuple[np.ndarray, int]:
        try:
            request = self._cam.capture_request()
        except (RuntimeError, OSError, TimeoutError) as exc:
            raise CameraError(f"camera read-out failed ({exc}); retry the capture") from exc
        try:
            buf = request.make_array("raw")
            md = request.get_metadata()
        finally:
            request.release()
        if buf.dtype != np.uint8 or buf.ndim != 2 or buf.shape[1] % 2:
            raise CameraError(f"raw buffer is {buf.dtype} {buf.shape}; expected unpacked 16-bit "
                              f"rows (format {self._fmt})")
        rows = np.ascontiguousarray(buf).view(np.uint16)
        h, w = self.shape
        if rows.shape[0] < h or rows.shape[1] < w:
            raise CameraError(f"raw buffer {rows.shape} is smaller than the mode {self.shape}")
        data = np.array(rows[:h, :w], dtype=np.uint16)
        levels = md.get("SensorBlackLevels")
        if not levels:
            raise CameraError("frame metadata has no SensorBlackLevels; update libcamera")
        black = int(round(levels[0] / (1 << (16 - self.spec.bit_depth))))
        exp = md.get("ExposureTime")
        if exp is not None and abs(exp - self.exposure_us) > max(0.02 * self.exposure_us, 30):
            raise CameraError(f"frame exposed {exp} us, expected {self.exposure_us} us; retry")
        return data, black

    def _do_close(self) -> None:
        try:
            self._cam.stop()
        finally:
            self._cam.close()
