"""Image sensors HoloDiff supports, with the figures the simulator needs.

The geometric figures (pixel pitch, active array, raw bit depth, black level)
are those of the Raspberry Pi camera modules' raw modes as documented by
Raspberry Pi Ltd for the HQ camera (Sony IMX477), Camera Module 3 (IMX708) and
Camera Module 2 (IMX219). The noise figures (full-well capacity, read noise)
are typical values for back-illuminated CMOS pixels of these pitches and are
approximate; the simulator varies them when making training data.

Spectral response per colour-filter channel follows the shape of the curves
measured for the IMX219 by Pagnutti et al., "Laying the foundation to use
Raspberry Pi 3 V2 camera module imagery for scientific and engineering
purposes", J. Electron. Imaging 26(1):013014 (2017); the table below is a
coarse reading of that shape (relative quantum efficiency, not absolute), used
for all three sensors. The real response of an instrument is measured from its
flat frames, so the analysis never relies on this table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from holography.errors import OpticsError

BAYER_PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")

# wavelength (nm), relative response of the R, G and B channels
_QE_TABLE = np.array(
    [
        # nm     R      G      B
        [400.0, 0.03, 0.05, 0.35],
        [430.0, 0.03, 0.08, 0.70],
        [450.0, 0.03, 0.15, 0.85],
        [470.0, 0.04, 0.30, 0.80],
        [490.0, 0.04, 0.55, 0.60],
        [510.0, 0.05, 0.80, 0.35],
        [530.0, 0.07, 0.88, 0.18],
        [550.0, 0.10, 0.82, 0.09],
        [570.0, 0.22, 0.62, 0.05],
        [590.0, 0.60, 0.30, 0.04],
        [610.0, 0.78, 0.15, 0.04],
        [625.0, 0.76, 0.10, 0.04],
        [650.0, 0.62, 0.07, 0.04],
        [680.0, 0.35, 0.06, 0.05],
        [700.0, 0.20, 0.06, 0.06],
    ]
)


@dataclass(frozen=True, slots=True, kw_only=True)
class SensorSpec:
    """A camera sensor in raw mode.

    Attributes
    ----------
    model : str
        Short name as used in capture metadata (``imx477``, ...).
    pixel_pitch_um : float
        Pixel pitch in micrometres.
    width, height : int
        Full raw frame in pixels.
    bit_depth : int
        Bits per raw sample.
    black_level : int
        Black level in raw counts at that bit depth.
    bayer : str
        Default colour-filter order (pixel (0, 0) first). The order of a real
        capture depends on the readout flips and is read from the camera.
    full_well_e : float
        Full-well capacity in electrons.
    read_noise_e : float
        Read noise in electrons RMS.
    """

    model: str
    pixel_pitch_um: float
    width: int
    height: int
    bit_depth: int
    black_level: int
    bayer: str
    full_well_e: float
    read_noise_e: float

    @property
    def max_code(self) -> int:
        """Largest raw value the sensor can report."""
        return (1 << self.bit_depth) - 1

    @property
    def gain_e_per_dn(self) -> float:
        """Conversion gain at analogue gain 1: full well maps to the top code."""
        return self.full_well_e / (self.max_code - self.black_level)


SENSORS: dict[str, SensorSpec] = {
    "imx477": SensorSpec(model="imx477", pixel_pitch_um=1.55, width=4056, height=3040,
                         bit_depth=12, black_level=256, bayer="BGGR",
                         full_well_e=8000.0, read_noise_e=3.0),
    "imx708": SensorSpec(model="imx708", pixel_pitch_um=1.40, width=4608, height=2592,
                         bit_depth=10, black_level=64, bayer="RGGB",
                         full_well_e=6000.0, read_noise_e=2.5),
    "imx219": SensorSpec(model="imx219", pixel_pitch_um=1.12, width=3280, height=2464,
                         bit_depth=10, black_level=64, bayer="BGGR",
                         full_well_e=4500.0, read_noise_e=2.5),
}


def get_sensor(model: str) -> SensorSpec:
    """Return the :class:`SensorSpec` for ``model``.

    Raises
    ------
    OpticsError
        If the model is unknown.
    """
    try:
        return SENSORS[model.lower()]
    except KeyError:
        raise OpticsError(
            f"unknown sensor model {model!r}; use one of {', '.join(sorted(SENSORS))}"
        ) from None


def channel_response(wavelength_nm: float) -> dict[str, float]:
    """Relative response of the R, G and B filter channels at a wavelength.

    Parameters
    ----------
    wavelength_nm : float
        Illumination wavelength in nanometres (400-700).

    Returns
    -------
    dict
        ``{"R": r, "G": g, "B": b}``, each in (0, 1].
    """
    if not 380.0 <= wavelength_nm <= 720.0:
        raise OpticsError(f"wavelength {wavelength_nm} nm is outside 380-720 nm")
    wl = _QE_TABLE[:, 0]
    return {c: float(np.interp(wavelength_nm, wl, _QE_TABLE[:, i + 1]))
            for i, c in enumerate("RGB")}


def bayer_channel_map(bayer: str | None, shape: tuple[int, int]) -> np.ndarray:
    """Colour channel index (0 = R, 1 = G, 2 = B) of every pixel of a mosaic.

    Parameters
    ----------
    bayer : str or None
        One of :data:`BAYER_PATTERNS`, or ``None`` for a monochrome sensor
        (every pixel gets channel 1).
    shape : (int, int)
        Frame shape (rows, columns).

    Returns
    -------
    (H, W) uint8 array
    """
    h, w = shape
    if bayer is None:
        return np.ones((h, w), np.uint8)
    if bayer not in BAYER_PATTERNS:
        raise OpticsError(f"unknown Bayer pattern {bayer!r}; use one of {BAYER_PATTERNS}")
    idx = {"R": 0, "G": 1, "B": 2}
    tile = np.array([[idx[bayer[0]], idx[bayer[1]]], [idx[bayer[2]], idx[bayer[3]]]], np.uint8)
    reps = ((h + 1) // 2, (w + 1) // 2)
    return np.tile(tile, reps)[:h, :w]
