"""The capture folder, format ``holodiff-capture/1`` (INTERFACES.md section 1).

:func:`read_capture` validates ``capture.json`` field by field and checks the
header and size of every frame file it names without reading the pixels;
:meth:`Capture.load_frame` then reads a frame and checks its values.
:func:`write_capture` writes a folder atomically (a temporary folder renamed
when complete), so a reader never sees half a capture.

Every refusal is a :class:`~holography.errors.CaptureError` whose message is one
line naming the folder, the file or field at fault, and what to do next.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from holography.errors import CaptureError
from holography.sensors import BAYER_PATTERNS

FORMAT = "holodiff-capture/1"
BIT_DEPTHS = (8, 10, 12, 14, 16)

_FIX_META = "fix capture.json or record the capture again"
_FIX_FRAME = "record the capture again (the file is damaged or was not written by HoloDiff)"


@dataclass(frozen=True, slots=True, kw_only=True)
class SensorInfo:
    """The ``sensor`` block: model, pitch (um), size (px), Bayer order, bit depth, black level."""

    model: str
    pixel_pitch_um: float
    width: int
    height: int
    bayer: str | None
    bit_depth: int
    black_level: int

    @property
    def max_code(self) -> int:
        """Largest raw value at this bit depth."""
        return (1 << self.bit_depth) - 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Geometry:
    """The ``geometry`` block: LED pinhole -> sample (mm), sample -> sensor (um), pinhole (um)."""

    source_distance_mm: float
    sample_distance_um: float
    pinhole_um: float

    @property
    def magnification(self) -> float:
        """Geometric magnification of the point-source projection, (z1 + z2) / z1."""
        z1 = self.source_distance_mm * 1000.0
        return (z1 + self.sample_distance_um) / z1


@dataclass(frozen=True, slots=True, kw_only=True)
class Chamber:
    """The ``chamber`` block: height (um), dilution (total / blood volume), lysed."""

    height_um: float
    dilution: float
    lysed: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class FrameInfo:
    """One entry of ``frames``: file, LED name, wavelength and bandwidth (nm), die offset (um)."""

    file: str
    led: str
    wavelength_nm: float
    bandwidth_nm: float
    led_offset_um: tuple[float, float]
    exposure_us: int
    analogue_gain: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Capture:
    """A validated capture folder.

    Frames are read lazily with :meth:`load_frame`, so opening a full-sensor
    capture costs almost no memory.
    """

    root: Path
    created: str
    device: dict[str, str]
    sensor: SensorInfo
    geometry: Geometry
    chamber: Chamber
    frames: tuple[FrameInfo, ...]
    dark: str | None = None
    flats: dict[str, str] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """Frame shape (rows, columns)."""
        return (self.sensor.height, self.sensor.width)

    @property
    def leds(self) -> tuple[str, ...]:
        """LED names in order of first appearance."""
        return tuple(dict.fromkeys(f.led for f in self.frames))

    def frames_of(self, led: str) -> tuple[FrameInfo, ...]:
        """All frames lit by one LED (its dies / positions)."""
        return tuple(f for f in self.frames if f.led == led)

    def wavelength_nm(self, led: str) -> float:
        """Centre wavelength of an LED."""
        return self.frames_of(led)[0].wavelength_nm

    def _load(self, name: str, what: str) -> np.ndarray:
        arr = _load_npy(self.root / name, self.shape, what)
        top = int(arr.max(initial=0))
        if top > self.sensor.max_code:
            raise CaptureError(
                f"{self.root / name}: {what} holds value {top}, above the {self.sensor.bit_depth}-bit "
                f"maximum {self.sensor.max_code} that sensor.bit_depth allows; {_FIX_META}"
            )
        return arr

    def load_frame(self, frame: FrameInfo | int) -> np.ndarray:
        """Read one raw frame as ``(H, W) uint16``, checked against the metadata."""
        info = self.frames[frame] if isinstance(frame, int) else frame
        return self._load(info.file, f"frame of LED {info.led!r}")

    def load_dark(self) -> np.ndarray | None:
        """Read the dark frame, or ``None`` when the capture has none."""
        return None if self.dark is None else self._load(self.dark, "dark frame")

    def load_flat(self, led: str) -> np.ndarray | None:
        """Read the flat frame of one LED, or ``None`` when the capture has none for it."""
        name = self.flats.get(led)
        return None if name is None else self._load(name, f"flat frame of LED {led!r}")

    def to_json(self) -> dict[str, Any]:
        """The ``capture.json`` object of this capture."""
        out: dict[str, Any] = {
            "format": FORMAT,
            "created": self.created,
            "device": dict(self.device),
            "sensor": {
                "model": self.sensor.model, "pixel_pitch_um": self.sensor.pixel_pitch_um,
                "width": self.sensor.width, "height": self.sensor.height,
                "bayer": self.sensor.bayer, "bit_depth": self.sensor.bit_depth,
                "black_level": self.sensor.black_level,
            },
            "geometry": {
                "source_distance_mm": self.geometry.source_distance_mm,
                "sample_distance_um": self.geometry.sample_distance_um,
                "pinhole_um": self.geometry.pinhole_um,
            },
            "chamber": {"height_um": self.chamber.height_um, "dilution": self.chamber.dilution,
                        "lysed": self.chamber.lysed},
            "frames": [
                {"file": f.file, "led": f.led, "wavelength_nm": f.wavelength_nm,
                 "bandwidth_nm": f.bandwidth_nm, "led_offset_um": list(f.led_offset_um),
                 "exposure_us": f.exposure_us, "analogue_gain": f.analogue_gain}
                for f in self.frames
            ],
        }
        if self.dark is not None:
            out["dark"] = self.dark
        if self.flats:
            out["flats"] = dict(self.flats)
        return out


# --------------------------------------------------------------------------- validation


class _Fields:
    """Typed access to one JSON object that names the field at fault in every error."""

    def __init__(self, obj: Any, path: str, where: Path, allowed: set[str],
                 optional: set[str] = frozenset()):
        self.where = where
        self.path = path
        if not isinstance(obj, dict):
            self.fail(path, f"must be an object (got {type(obj).__name__})")
        unknown = sorted(set(obj) - allowed - optional)
        if unknown:
            self.fail(f"{path}.{unknown[0]}" if path else unknown[0],
                      "is not a field of holodiff-capture/1 (a typo?)")
        missing = sorted(allowed - set(obj))
        if missing:
            self.fail(f"{path}.{missing[0]}" if path else missing[0], "is missing")
        self.obj = obj

    def fail(self, name: str, why: str) -> None:
        raise CaptureError(f"{self.where}: field '{name}' {why}; {_FIX_META}")

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def number(self, key: str, lo: float, hi: float, *, lo_open: bool = False) -> float:
        v = self.obj[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            self.fail(self.name(key), f"must be a number (got {v!r})")
        if v < lo or v > hi or (lo_open and v == lo):
            rng = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
            self.fail(self.name(key), f"must be in {rng} (got {v})")
        return float(v)

    def integer(self, key: str, lo: int, hi: int) -> int:
        v = self.obj[key]
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(self.name(key), f"must be an integer (got {v!r})")
        if not lo <= v <= hi:
            self.fail(self.name(key), f"must be in [{lo}, {hi}] (got {v})")
        return int(v)

    def string(self, key: str) -> str:
        v = self.obj[key]
        if not isinstance(v, str) or not v.strip():
            self.fail(self.name(key), f"must be a non-empty string (got {v!r})")
        return v

    def filename(self, key: str, v: Any | None = None) -> str:
        v = self.obj[key] if v is None else v
        if (not isinstance(v, str) or not v or "/" in v or "\\" in v or v.startswith(".")
                or not v.endswith(".npy")):
            self.fail(self.name(key), f"must be a plain .npy file name inside the folder (got {v!r})")
        return v


def _parse(meta: Any, where: Path) -> dict[str, Any]:
    top = _Fields(meta, "", where, {"format", "created", "device", "sensor", "geometry",
                                     "chamber", "frames"}, {"dark", "flats"})
    if meta["format"] != FORMAT:
        top.fail("format", f"must be {FORMAT!r} (got {meta['format']!r}); this software reads "
                           "only that version")
    created = top.string("created")
    try:
        datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        top.fail("created", f"must be an ISO 8601 time (got {created!r})")

    dev = _Fields(meta["device"], "device", where, {"serial", "software"})
    device = {"serial": dev.string("serial"), "software": dev.string("software")}

    s = _Fields(meta["sensor"], "sensor", where, {"model", "pixel_pitch_um", "width", "height",
                                                 "bayer", "bit_depth", "black_level"})
    bayer = meta["sensor"]["bayer"]
    if bayer is not None and bayer not in BAYER_PATTERNS:
        s.fail("sensor.bayer", f"must be one of {', '.join(BAYER_PATTERNS)} or null (got {bayer!r})")
    bit_depth = s.integer("bit_depth", 8, 16)
    if bit_depth not in BIT_DEPTHS:
        s.fail("sensor.bit_depth", f"must be one of {', '.join(map(str, BIT_DEPTHS))} "
                                   f"(got {bit_depth})")
    sensor = SensorInfo(
        model=s.string("model"), pixel_pitch_um=s.number("pixel_pitch_um", 0.0, 50.0, lo_open=True),
        width=s.integer("width", 16, 20000), height=s.integer("height", 16, 20000),
        bayer=bayer, bit_depth=bit_depth,
        black_level=s.integer("black_level", 0, (1 << bit_depth) - 2),
    )
    if sensor.bayer is not None and (sensor.width % 2 or sensor.height % 2):
        s.fail("sensor.width", "and sensor.height must be even on a Bayer sensor "
                               f"(got {sensor.width}x{sensor.height})")

    g = _Fields(meta["geometry"], "geometry", where,
                {"source_distance_mm", "sample_distance_um", "pinhole_um"})
    geometry = Geometry(source_distance_mm=g.number("source_distance_mm", 1.0, 2000.0),
                        sample_distance_um=g.number("sample_distance_um", 1.0, 100000.0),
                        pinhole_um=g.number("pinhole_um", 0.0, 5000.0))
    if geometry.sample_distance_um >= geometry.source_distance_mm * 1000.0:
        g.fail("geometry.sample_distance_um", "must be smaller than the source distance "
                                              f"({geometry.sample_distance_um} um vs "
                                              f"{geometry.source_distance_mm} mm)")

    c = _Fields(meta["chamber"], "chamber", where, {"height_um", "dilution", "lysed"})
    if not isinstance(meta["chamber"]["lysed"], bool):
        c.fail("chamber.lysed", f"must be true or false (got {meta['chamber']['lysed']!r})")
    chamber = Chamber(height_um=c.number("height_um", 0.0, 10000.0, lo_open=True),
                      dilution=c.number("dilution", 1.0, 100000.0),
                      lysed=meta["chamber"]["lysed"])

    if not isinstance(meta["frames"], list) or not meta["frames"]:
        top.fail("frames", "must be a non-empty list")
    frames = []
    names: set[str] = set()
    wavelength_of: dict[str, float] = {}
    for i, fr in enumerate(meta["frames"]):
        f = _Fields(fr, f"frames[{i}]", where, {"file", "led", "wavelength_nm", "bandwidth_nm",
                                                 "led_offset_um", "exposure_us", "analogue_gain"})
        off = fr["led_offset_um"]
        if (not isinstance(off, list) or len(off) != 2
                or not all(isinstance(v, int | float) and not isinstance(v, bool)
                           and math.isfinite(v) and abs(v) <= 100000 for v in off)):
            f.fail(f"frames[{i}].led_offset_um", f"must be [x, y] in micrometres (got {off!r})")
        info = FrameInfo(file=f.filename("file"), led=f.string("led"),
                         wavelength_nm=f.number("wavelength_nm", 350.0, 1100.0),
                         bandwidth_nm=f.number("bandwidth_nm", 0.0, 300.0, lo_open=True),
                         led_offset_um=(float(off[0]), float(off[1])),
                         exposure_us=f.integer("exposure_us", 1, 10_000_000),
                         analogue_gain=f.number("analogue_gain", 1.0, 64.0))
        if info.file in names:
            f.fail(f"frames[{i}].file", f"names {info.file!r} twice")
        names.add(info.file)
        w0 = wavelength_of.setdefault(info.led, info.wavelength_nm)
        if abs(w0 - info.wavelength_nm) > 1e-6:
            f.fail(f"frames[{i}].wavelength_nm", f"differs from another frame of LED {info.led!r} "
                                                 f"({info.wavelength_nm} vs {w0})")
        frames.append(info)

    dark = None
    if "dark" in meta:
        dark = top.filename("dark")
    flats: dict[str, str] = {}
    if "flats" in meta:
        if not isinstance(meta["flats"], dict):
            top.fail("flats", "must be an object mapping LED names to .npy files")
        for led, name in meta["flats"].items():
            if led not in wavelength_of:
                top.fail(f"flats.{led}", "names an LED that lit no frame of this capture")
            flats[led] = top.filename("flats", name)
    return dict(created=created, device=device, sensor=sensor, geometry=geometry,
                chamber=chamber, frames=tuple(frames), dark=dark, flats=flats)


def _npy_header(path: Path, what: str) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            offset = fh.tell()
    except FileNotFoundError:
        raise CaptureError(f"{path}: {what} is missing; copy the whole capture folder or "
                           "record it again") from None
    except (ValueError, OSError) as exc:
        raise CaptureError(f"{path}: {what} is not a readable .npy file ({exc}); "
                           f"{_FIX_FRAME}") from None
    return tuple(shape), np.dtype(dtype), bool(fortran), offset


def _check_npy(path: Path, shape: tuple[int, int], what: str) -> int:
    got_shape, dtype, fortran, offset = _npy_header(path, what)
    if dtype != np.dtype("<u2") and dtype != np.dtype("=u2"):
        raise CaptureError(f"{path}: {what} has dtype {dtype}, but raw frames must be uint16; "
                           f"{_FIX_FRAME}")
    if got_shape != shape:
        raise CaptureError(f"{path}: {what} has shape {got_shape}, but sensor.height x "
                           f"sensor.width is {shape}; {_FIX_META}")
    if fortran:
        raise CaptureError(f"{path}: {what} is stored in Fortran order; {_FIX_FRAME}")
    need = offset + 2 * shape[0] * shape[1]
    size = path.stat().st_size
    if size < need:
        raise CaptureError(f"{path}: {what} is truncated ({size} of {need} bytes); {_FIX_FRAME}")
    return offset


def _load_npy(path: Path, shape: tuple[int, int], what: str) -> np.ndarray:
    offset = _check_npy(path, shape, what)
    with open(path, "rb") as fh:
        fh.seek(offset)
        arr = np.fromfile(fh, dtype="<u2", count=shape[0] * shape[1])
    if arr.size != shape[0] * shape[1]:
        raise CaptureError(f"{path}: {what} is truncated; {_FIX_FRAME}")
    return arr.reshape(shape)


def read_capture(path: str | os.PathLike[str]) -> Capture:
    """Open and validate a capture folder.

    Parameters
    ----------
    path : path-like
        The capture folder (holding ``capture.json``).

    Returns
    -------
    Capture

    Raises
    ------
    CaptureError
        With a one-line reason naming the file or field, when anything is wrong.
    """
    root = Path(path)
    meta_path = root / "capture.json"
    if not root.is_dir():
        raise CaptureError(f"{root}: no such capture folder; check the path")
    try:
        text = meta_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CaptureError(f"{meta_path}: capture.json is missing; this is not a capture folder "
                           "(record the capture again)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CaptureError(f"{meta_path}: cannot be read ({exc}); {_FIX_META}") from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CaptureError(f"{meta_path}: is not valid JSON (line {exc.lineno}: {exc.msg}); "
                           f"{_FIX_META}") from None
    cap = Capture(root=root, **_parse(meta, meta_path))
    for f in cap.frames:
        _check_npy(root / f.file, cap.shape, f"frame of LED {f.led!r}")
    if cap.dark is not None:
        _check_npy(root / cap.dark, cap.shape, "dark frame")
    for led, name in cap.flats.items():
        _check_npy(root / name, cap.shape, f"flat frame of LED {led!r}")
    return cap


def write_capture(path: str | os.PathLike[str], meta: dict[str, Any],
                  arrays: dict[str, np.ndarray], *, extra_files: dict[str, bytes] | None = None
                  ) -> Capture:
    """Write a capture folder atomically and return it, validated.

    The folder is assembled under a temporary name beside ``path``, every file
    is flushed to disk, and the folder is renamed into place only when whole.

    Parameters
    ----------
    path : path-like
        Destination folder; must not exist yet.
    meta : dict
        The ``capture.json`` object (validated before anything is written).
    arrays : dict
        File name -> ``(H, W) uint16`` array, for every frame, dark and flat named in ``meta``.
    extra_files : dict, optional
        Other files to place in the folder (e.g. a simulator's ``truth.json``).

    Raises
    ------
    CaptureError
        If ``meta`` is invalid, an array does not match it, or ``path`` exists.
    """
    dest = Path(path)
    if dest.exists():
        raise CaptureError(f"{dest}: already exists; choose a new folder name")
    parsed = _parse(json.loads(json.dumps(meta)), dest / "capture.json")
    shape = (parsed["sensor"].height, parsed["sensor"].width)
    named = [f.file for f in parsed["frames"]] + ([parsed["dark"]] if parsed["dark"] else [])
    named += list(parsed["flats"].values())
    for name in named:
        if name not in arrays:
            raise CaptureError(f"{dest / name}: named in capture.json but no array was given")
        a = arrays[name]
        if a.dtype != np.uint16 or a.shape != shape:
            raise CaptureError(f"{dest / name}: array is {a.dtype} {a.shape}, expected uint16 "
                               f"{shape}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        for name in named:
            with open(tmp / name, "wb") as fh:
                np.save(fh, np.ascontiguousarray(arrays[name]), allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())
        for name, data in (extra_files or {}).items():
            with open(tmp / name, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        with open(tmp / "capture.json", "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, dest)
        dir_fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return read_capture(dest)
