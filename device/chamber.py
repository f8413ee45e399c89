"""The sample chamber: sample-present and door sensors, temperature where fitted.

The real chamber (:class:`GpioChamber`) reads two switches through gpiozero
and, if the profile names one, a 1-Wire DS18B20 temperature file; the twin
(:class:`SimulatedChamber`) is scripted: a test inserts and removes samples and
can schedule a removal or a door opening after a number of sensor reads, so a
"sample removed mid-test" fault happens at a chosen point of the sequence.
"""

from __future__ import annotations

import abc
from pathlib import Path

from device.errors import HardwareError
from device.profiles import ChamberSpec
from holography.sample import SampleSpec
from holography.simulate import VirtualBench


class Chamber(abc.ABC):
    """Sensors of the sample chamber."""

    def __init__(self, spec: ChamberSpec):
        self.spec = spec

    @abc.abstractmethod
    def sample_present(self) -> bool:
        """Whether a sample cartridge sits in the chamber."""

    @abc.abstractmethod
    def door_closed(self) -> bool:
        """Whether the chamber's light-tight door is shut."""

    def temperature_c(self) -> float | None:
        """Chamber temperature in degrees Celsius, or ``None`` without a sensor."""
        return None

    def close(self) -> None:
        """Release the pins."""


class SimulatedChamber(Chamber):
    """The twin: a virtual chamber whose contents the bench renders.

    Parameters
    ----------
    spec : ChamberSpec
        Height and dilution from the profile.
    bench : VirtualBench
        Where an inserted sample is placed.
    temperature_c : float or None
        What the twin's sensor reads.
    """

    def __init__(self, spec: ChamberSpec, bench: VirtualBench, *, temperature_c: float | None = 24.0):
        super().__init__(spec)
        self.bench = bench
        self._door = True
        self._temp = temperature_c
        self._reads = 0
        self._script: list[tuple[int, str]] = []

    def insert(self, preset: str = "healthy", *, seed: int = 0, spec: SampleSpec | None = None) -> None:
        """Insert a sample (a simulated blood preset or spec) and close the door."""
        self.bench.load_sample(preset, seed=seed, spec=spec)
        self._door = True

    def remove(self) -> None:
        """Take the sample out."""
        self.bench.unload()

    def open_door(self) -> None:
        """Open the door (light leaks in; a test must stop)."""
        self._door = False

    def close_door(self) -> None:
        """Shut the door."""
        self._door = True

    def schedule(self, event: str, *, after_reads: int) -> None:
        """Run ``event`` (``remove`` or ``open_door``) after ``after_reads`` more sensor reads."""
        if event not in ("remove", "open_door"):
            raise ValueError(f"unknown chamber event {event!r}")
        self._script.append((self._reads + after_reads, event))

    def _tick(self) -> None:
        self._reads += 1
        for when, event in list(self._script):
            if self._reads > when:
                self._script.remove((when, event))
                getattr(self, event)()

    def sample_present(self) -> bool:
        """Whether a sample is loaded in the virtual chamber."""
        self._tick()
        return self.bench.loaded

    def door_closed(self) -> bool:
        """The scripted door state."""
        return self._door

    def temperature_c(self) -> float | None:
        """The twin's fixed reading."""
        return self._temp


class GpioChamber(Chamber):
    """The real chamber: switches on GPIO (closed = low, pulled up), DS18B20 temperature."""

    def __init__(self, spec: ChamberSpec, *, pin_factory=None):
        super().__init__(spec)
        from gpiozero import DigitalInputDevice  # the pi extra

        if spec.sample_gpio is None or spec.door_gpio is None:
            raise HardwareError("the hardware profile names no sample or door sensor pin; "
                                "add chamber.sample_gpio and chamber.door_gpio")
        self._sample = DigitalInputDevice(spec.sample_gpio, pull_up=True, pin_factory=pin_factory)
        self._door = DigitalInputDevice(spec.door_gpio, pull_up=True, pin_factory=pin_factory)

    def sample_present(self) -> bool:
        """Sample switch closed."""
        return bool(self._sample.is_active)

    def door_closed(self) -> bool:
        """Door switch closed."""
        return bool(self._door.is_active)

    def temperature_c(self) -> float | None:
        """DS18B20 reading (``t=`` in millidegrees), ``None`` without a sensor."""
        if not self.spec.temperature_path:
            return None
        try:
            text = Path(self.spec.temperature_path).read_text()
        except OSError as exc:
            raise HardwareError(f"cannot read the chamber temperature sensor ({exc.strerror}); "
                                f"check its wiring") from None
        lines = text.strip().splitlines()
        if len(lines) != 2 or not lines[0].endswith("YES") or "t=" not in lines[1]:
            raise HardwareError("the chamber temperature sensor gave a bad reading (CRC); "
                                "check its wiring")
        return int(lines[1].split("t=")[1]) / 1000.0

    def close(self) -> None:
        """Release the pins."""
        self._sample.close()
        self._door.close()
