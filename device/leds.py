"""The LED board: one die lit at a time, PWM duty and on-time limits.

:class:`LedBoard` validates every request and calls a small ``_do_*`` hook
that the real driver (:class:`GpioLedBoard`, gpiozero PWM) and the simulated
twin (:class:`SimulatedLedBoard`) each implement, so both refuse exactly the
same things: an unknown die, a second die while one is lit (the board has one
constant-current driver), a duty above the board's limit, a switch-on sooner
than ``min_off_ms`` after the last switch-off (the driver's recovery time), and
a die left on longer than ``max_on_ms`` (thermal limit: the board cuts it, and
the next frame taken under it is refused).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from device.errors import LedError
from device.profiles import DieSpec, LedBoardSpec


@dataclass(frozen=True, slots=True, kw_only=True)
class LedEvent:
    """One switch of the board, as the twin records it."""

    t_s: float
    die: str | None
    duty: float
    event: str  # "on", "off", "cut", "refused"


class LedBoard(abc.ABC):
    """One die at a time, within the board's duty and on-time limits.

    Parameters
    ----------
    spec : LedBoardSpec
        The board from the hardware profile.
    clock : callable, optional
        Monotonic seconds (tests pass a fake clock).
    """

    def __init__(self, spec: LedBoardSpec, *, clock=time.monotonic):
        self.spec = spec
        self._clock = clock
        self._lit: DieSpec | None = None
        self._duty = 0.0
        self._on_since = 0.0
        self._off_since = -1e9

    @property
    def dies(self) -> tuple[DieSpec, ...]:
        """All dies of the board."""
        return self.spec.dies

    def lit(self) -> DieSpec | None:
        """The die now lit, or ``None``; a die past its on-time limit is cut off first."""
        if self._lit is not None and (self._clock() - self._on_since) * 1e3 > self.spec.max_on_ms:
            die = self._lit
            self._do_off(die)
            self._lit = None
            self._off_since = self._clock()
            self._note(die.name, 0.0, "cut")
            raise LedError(f"LED die {die.name} was on longer than {self.spec.max_on_ms:.0f} ms "
                           f"and was cut by the board; shorten the exposure")
        return self._lit

    def on(self, name: str, duty: float | None = None) -> DieSpec:
        """Light die ``name`` at ``duty`` (default: the die's own duty from the profile).

        Raises
        ------
        LedError
            Unknown die, another die lit, duty out of range, or too soon after the last one.
        """
        try:
            die = self.spec.die(name)
        except KeyError:
            self._note(name, 0.0, "refused")
            raise LedError(f"no LED die {name!r} on this board; use one of "
                           f"{', '.join(d.name for d in self.dies)}") from None
        duty = die.duty if duty is None else float(duty)
        if not 0.0 < duty <= self.spec.max_duty:
            self._note(name, duty, "refused")
            raise LedError(f"duty {duty:.3f} for die {name} is outside 0-{self.spec.max_duty}; "
                           f"use a smaller duty")
        current = self.lit()
        if current is not None:
            self._note(name, duty, "refused")
            raise LedError(f"die {current.name} is still on; switch it off before lighting {name}")
        if (self._clock() - self._off_since) * 1e3 < self.spec.min_off_ms:
            self._note(name, duty, "refused")
            raise LedError(f"die {name} switched on less than {self.spec.min_off_ms:.0f} ms after "
                           f"the last one; wait and try again")
        self._do_on(die, duty)
        self._lit, self._duty, self._on_since = die, duty, self._clock()
        self._note(name, duty, "on")
        return die

    def off(self) -> None:
        """Switch off whatever is lit (idempotent, never raises for a cut die)."""
        if self._lit is not None:
            die = self._lit
            self._do_off(die)
            self._lit = None
            self._off_since = self._clock()
            self._note(die.name, 0.0, "off")

    @contextmanager
    def lighting(self, name: str, duty: float | None = None) -> Iterator[DieSpec]:
        """``with board.lighting("green-0"): ...``: lit inside, always off after."""
        die = self.on(name, duty)
        try:
            yield die
        finally:
            self.off()

    def close(self) -> None:
        """Everything off; release the pins."""
        self.off()
        self._do_close()

    def __enter__(self) -> LedBoard:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _note(self, die: str | None, duty: float, event: str) -> None:
        """Record a switch (the twin keeps them; the real board logs nothing here)."""

    @abc.abstractmethod
    def _do_on(self, die: DieSpec, duty: float) -> None: ...

    @abc.abstractmethod
    def _do_off(self, die: DieSpec) -> None: ...

    def _do_close(self) -> None:
        """Release hardware resources."""


class SimulatedLedBoard(LedBoard):
    """The twin: records every switch and refusal; dies can be marked dead (no light).

    Parameters
    ----------
    dead : iterable of str
        Dies that switch on but emit nothing (a failed die, for fault tests).
    """

    def __init__(self, spec: LedBoardSpec, *, clock=time.monotonic, dead=()):
        super().__init__(spec, clock=clock)
        self.events: list[LedEvent] = []
        self.dead = set(dead)

    def _note(self, die: str | None, duty: float, event: str) -> None:
        self.events.append(LedEvent(t_s=self._clock(), die=die, duty=duty, event=event))

    def _do_on(self, die: DieSpec, duty: float) -> None:
        pass

    def _do_off(self, die: DieSpec) -> None:
        pass

    def emission(self) -> tuple[DieSpec, float] | None:
        """What the camera twin sees: the lit die and its relative power, or ``None``."""
        die = self.lit()
        if die is None:
            return None
        return die, (0.0 if die.name in self.dead else self._duty / die.duty)


class GpioLedBoard(LedBoard):
    """The real board: one gpiozero ``PWMLED`` per die (lgpio pin factory on a Pi 5).

    Imported and constructed only on the analyzer (``pip install '.[pi]'``);
    tests drive it through gpiozero's mock pin factory.
    """

    def __init__(self, spec: LedBoardSpec, *, clock=time.monotonic, pin_factory=None):
        super().__init__(spec, clock=clock)
        from gpiozero import PWMLED  # the pi extra

        self._pwm = {}
        try:
            for d in spec.dies:
                self._pwm[d.name] = PWMLED(d.gpio, initial_value=0.0,
                                           frequency=int(spec.pwm_frequency_hz),
                                           pin_factory=pin_factory)
        except Exception as exc:  # gpiozero raises many kinds; all mean the same to the user
            self._do_close()
            raise LedError(f"cannot open the LED board's GPIO pins ({exc}); check the wiring and "
                           f"that no other program holds the pins") from exc

    def _do_on(self, die: DieSpec, duty: float) -> None:
        self._pwm[die.name].value = duty

    def _do_off(self, die: DieSpec) -> None:
        self._pwm[die.name].value = 0.0

    def _do_close(self) -> None:
        for pwm in self._pwm.values():
            pwm.value = 0.0
            pwm.close()
        self._pwm = {}
