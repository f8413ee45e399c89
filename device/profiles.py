"""Hardware profiles: the sensor, LED board, geometry and chamber of one analyzer build.

A profile is a data file ``hardware/profiles/NAME.json`` (format
``holodiff-hardware/1``) that the device loads and validates before it drives
anything. Unknown keys are errors, so a typo cannot silently become a default.
Profiles are looked up in ``$HOLODIFF_HARDWARE/profiles``, then in the
``hardware/profiles`` folder of the source tree, then in
``/usr/share/holodiff/hardware/profiles`` (the analyzer's image).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device.errors import ProfileError
from holography.sensors import BAYER_PATTERNS, SENSORS
from inference.bundle import hardware_dirs

FORMAT = "holodiff-hardware/1"
DEFAULT_PROFILE = "hd1-imx477"
_FIX = "fix the profile file (see hardware/README.md)"


@dataclass(frozen=True, slots=True, kw_only=True)
class DieSpec:
    """One LED die: its colour, spectrum, lateral position and GPIO pin."""

    name: str
    led: str
    wavelength_nm: float
    bandwidth_nm: float
    offset_um: tuple[float, float]
    gpio: int
    duty: float


@dataclass(frozen=True, slots=True, kw_only=True)
class LedBoardSpec:
    """The LED board: its dies and the limits the hardware enforces."""

    pwm_frequency_hz: float
    max_duty: float
    max_on_ms: float
    min_off_ms: float
    dies: tuple[DieSpec, ...]

    def die(self, name: str) -> DieSpec:
        """The die called ``name``."""
        for d in self.dies:
            if d.name == name:
                return d
        raise KeyError(name)

    @property
    def colours(self) -> tuple[str, ...]:
        """LED colour names in board order, each once."""
        return tuple(dict.fromkeys(d.led for d in self.dies))


@dataclass(frozen=True, slots=True, kw_only=True)
class SensorProfile:
    """Camera sensor, its raw read-out window and the exposure range."""

    model: str
    bayer: str | None
    width: int
    height: int
    exposure_us_min: int
    exposure_us_max: int
    analogue_gain: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ChamberSpec:
    """The sample chamber and its sensors."""

    height_um: float
    dilution: float
    sample_gpio: int | None
    door_gpio: int | None
    temperature_path: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class AcquisitionSpec:
    """How a test is recorded."""

    dark_frames: int
    target_fill: float
    metering_steps: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TwinSpec:
    """Settings of the simulated twin only (ignored on real hardware)."""

    air_gap_um: float
    glass_um: float
    seed: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HardwareProfile:
    """A validated ``holodiff-hardware/1`` profile."""

    name: str
    description: str
    serial: str
    sensor: SensorProfile
    leds: LedBoardSpec
    source_distance_mm: float
    sample_distance_um: float
    pinhole_um: float
    chamber: ChamberSpec
    acquisition: AcquisitionSpec
    twin: TwinSpec
    path: Path | None = None


class _Obj:
    """Strict reader of one JSON object: every key known, every value checked."""

    def __init__(self, obj: Any, where: str, keys: set[str], optional: set[str] = frozenset()):
        self.where = where
        if not isinstance(obj, dict):
            raise ProfileError(f"{where}: must be an object; {_FIX}")
        unknown = sorted(set(obj) - keys - optional)
        if unknown:
            raise ProfileError(f"{where}: unknown key {unknown[0]!r}; {_FIX}")
        missing = sorted(keys - set(obj))
        if missing:
            raise ProfileError(f"{where}: missing key {missing[0]!r}; {_FIX}")
        self.obj = obj

    def num(self, key: str, lo: float, hi: float) -> float:
        v = self.obj[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) \
                or not lo <= v <= hi:
            raise ProfileError(f"{self.where}.{key}: {v!r} is not a number in {lo}-{hi}; {_FIX}")
        return float(v)

    def int(self, key: str, lo: int, hi: int) -> int:
        v = self.obj[key]
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ProfileError(f"{self.where}.{key}: {v!r} is not an integer in {lo}-{hi}; {_FIX}")
        return v

    def opt_int(self, key: str, lo: int, hi: int) -> int | None:
        return None if self.obj.get(key) is None else self.int(key, lo, hi)

    def str(self, key: str) -> str:
        v = self.obj[key]
        if not isinstance(v, str) or not v:
            raise ProfileError(f"{self.where}.{key}: must be a non-empty string; {_FIX}")
        return v


def parse_profile(obj: Any, where: str = "profile") -> HardwareProfile:
    """Validate a profile object and return it as a :class:`HardwareProfile`.

    Raises
    ------
    ProfileError
        On any unknown or missing key, value out of range, or inconsistency.
    """
    top = _Obj(obj, where, {"format", "name", "description", "serial", "sensor", "led_board",
                            "geometry", "chamber", "acquisition", "twin"})
    if obj["format"] != FORMAT:
        raise ProfileError(f"{where}.format: {obj['format']!r} is not {FORMAT!r}; {_FIX}")
    s = _Obj(obj["sensor"], f"{where}.sensor", {"model", "bayer", "width", "height",
                                                 "exposure_us_min", "exposure_us_max",
                                                 "analogue_gain"})
    model = s.str("model")
    if model not in SENSORS:
        raise ProfileError(f"{where}.sensor.model: {model!r} is not one of "
                           f"{', '.join(SENSORS)}; {_FIX}")
    full = SENSORS[model]
    bayer = obj["sensor"]["bayer"]
    if bayer is not None and bayer not in BAYER_PATTERNS:
        raise ProfileError(f"{where}.sensor.bayer: {bayer!r} is not one of "
                           f"{', '.join(BAYER_PATTERNS)} or null; {_FIX}")
    sensor = SensorProfile(model=model, bayer=bayer, width=s.int("width", 32, full.width),
                           height=s.int("height", 32, full.height),
                           exposure_us_min=s.int("exposure_us_min", 1, 10_000_000),
                           exposure_us_max=s.int("exposure_us_max", 1, 10_000_000),
                           analogue_gain=s.num("analogue_gain", 1.0, 16.0))
    if sensor.width % 2 or sensor.height % 2:
        raise ProfileError(f"{where}.sensor: width and height must be even (a whole Bayer "
                           f"tile); {_FIX}")
    if sensor.exposure_us_min >= sensor.exposure_us_max:
        raise ProfileError(f"{where}.sensor: exposure_us_min must be below exposure_us_max; {_FIX}")
    lb = _Obj(obj["led_board"], f"{where}.led_board",
              {"pwm_frequency_hz", "max_duty", "max_on_ms", "min_off_ms", "dies"})
    max_duty = lb.num("max_duty", 0.01, 1.0)
    dies = []
    if not isinstance(obj["led_board"]["dies"], list) or not obj["led_board"]["dies"]:
        raise ProfileError(f"{where}.led_board.dies: must be a non-empty list; {_FIX}")
    for i, d in enumerate(obj["led_board"]["dies"]):
        dw = f"{where}.led_board.dies[{i}]"
        o = _Obj(d, dw, {"name", "led", "wavelength_nm", "bandwidth_nm", "offset_um", "gpio",
                         "duty"})
        off = d["offset_um"]
        if not (isinstance(off, list) and len(off) == 2
                and all(isinstance(v, int | float) and math.isfinite(v) and abs(v) < 5000
                        for v in off)):
            raise ProfileError(f"{dw}.offset_um: must be [x, y] in um (|v| < 5000); {_FIX}")
        dies.append(DieSpec(name=o.str("name"), led=o.str("led"),
                            wavelength_nm=o.num("wavelength_nm", 380.0, 720.0),
                            bandwidth_nm=o.num("bandwidth_nm", 1.0, 100.0),
                            offset_um=(float(off[0]), float(off[1])), gpio=o.int("gpio", 0, 27),
                            duty=o.num("duty", 0.01, max_duty)))
    names = [d.name for d in dies]
    if len(set(names)) != len(names):
        raise ProfileError(f"{where}.led_board.dies: die names must be unique; {_FIX}")
    pins = [d.gpio for d in dies]
    if len(set(pins)) != len(pins):
        raise ProfileError(f"{where}.led_board.dies: two dies share a GPIO pin; {_FIX}")
    for colour in dict.fromkeys(d.led for d in dies):
        wl = {d.wavelength_nm for d in dies if d.led == colour}
        if len(wl) > 1:
            raise ProfileError(f"{where}.led_board.dies: dies of LED {colour!r} have different "
                               f"wavelengths; {_FIX}")
    leds = LedBoardSpec(pwm_frequency_hz=lb.num("pwm_frequency_hz", 50.0, 100_000.0),
                        max_duty=max_duty, max_on_ms=lb.num("max_on_ms", 1.0, 60_000.0),
                        min_off_ms=lb.num("min_off_ms", 0.0, 60_000.0), dies=tuple(dies))
    g = _Obj(obj["geometry"], f"{where}.geometry",
             {"source_distance_mm", "sample_distance_um", "pinhole_um"})
    c = _Obj(obj["chamber"], f"{where}.chamber", {"height_um", "dilution"},
             {"sample_gpio", "door_gpio", "temperature_path"})
    temp = obj["chamber"].get("temperature_path")
    if temp is not None and not isinstance(temp, str):
        raise ProfileError(f"{where}.chamber.temperature_path: must be a path or null; {_FIX}")
    chamber = ChamberSpec(height_um=c.num("height_um", 10.0, 1000.0),
                          dilution=c.num("dilution", 1.0, 1000.0),
                          sample_gpio=c.opt_int("sample_gpio", 0, 27),
                          door_gpio=c.opt_int("door_gpio", 0, 27), temperature_path=temp)
    used = set(pins) & {p for p in (chamber.sample_gpio, chamber.door_gpio) if p is not None}
    if used:
        raise ProfileError(f"{where}.chamber: GPIO {sorted(used)[0]} is also an LED die's pin; {_FIX}")
    a = _Obj(obj["acquisition"], f"{where}.acquisition",
             {"dark_frames", "target_fill", "metering_steps"})
    t = _Obj(obj["twin"], f"{where}.twin", {"air_gap_um", "glass_um", "seed"})
    return HardwareProfile(
        name=top.str("name"), description=top.str("description"), serial=top.str("serial"),
        sensor=sensor, leds=leds,
        source_distance_mm=g.num("source_distance_mm", 5.0, 500.0),
        sample_distance_um=g.num("sample_distance_um", 50.0, 10_000.0),
        pinhole_um=g.num("pinhole_um", 1.0, 1000.0), chamber=chamber,
        acquisition=AcquisitionSpec(dark_frames=a.int("dark_frames", 1, 64),
                                    target_fill=a.num("target_fill", 0.1, 0.9),
                                    metering_steps=a.int("metering_steps", 1, 10)),
        twin=TwinSpec(air_gap_um=t.num("air_gap_um", 0.0, 10_000.0),
                      glass_um=t.num("glass_um", 0.0, 10_000.0), seed=t.int("seed", 0, 2**31)))


def default_profile_name() -> str:
    """``$HOLODIFF_PROFILE`` (set on the analyzer by ``/etc/holodiff/holodiff.env``) or the default."""
    return os.environ.get("HOLODIFF_PROFILE") or DEFAULT_PROFILE


def profile_dirs() -> list[Path]:
    """Folders searched for profiles, first match wins."""
    return hardware_dirs("profiles")


def load_profile(name_or_path: str | os.PathLike[str] = DEFAULT_PROFILE) -> HardwareProfile:
    """Load and validate a profile by name (``hd1-imx477``) or by file path.

    Raises
    ------
    ProfileError
        If no such profile exists, it is not JSON, or it does not validate.
    """
    p = Path(name_or_path)
    if p.suffix != ".json":
        for d in profile_dirs():
            if (d / f"{p.name}.json").is_file():
                p = d / f"{p.name}.json"
                break
        else:
            known = sorted({f.stem for d in profile_dirs() if d.is_dir() for f in d.glob("*.json")})
            raise ProfileError(f"no hardware profile {str(name_or_path)!r}; use one of "
                               f"{', '.join(known) or '(none found)'}")
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(f"{p}: cannot read ({exc.strerror}); check the path") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProfileError(f"{p}: not valid JSON ({exc}); {_FIX}") from None
    prof = parse_profile(obj, str(p))
    object.__setattr__(prof, "path", p)
    return prof
