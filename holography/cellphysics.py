"""What is uncertain about white cells, drawn per sample: physics families for domain randomisation.

The legacy cell model of :mod:`holography.sample` is one guess per class. Real
cells, and the lysing reagent of a real instrument, differ from any one guess,
and the literature disagrees on several of the parameters that decide how a
cell looks in a hologram (granule volume fraction, whether the nucleus is
denser or lighter than the cytoplasm, how flat a settled cell is). A
:class:`CellPhysics` is one draw of every such parameter for one sample; each
cell then varies around it. Training draws a new one per capture over the whole
plausible range (domain randomisation: Tobin et al., IROS 2017; for holograms,
Schreck et al., "HolodecML", 2022), and the out-of-family benchmark holds one
*family* of an axis out of training (``tests/benchmarks/bench_out_of_family.py``).

Every range, its literature value and its source is in
``docs/validation/cell-model.md``; the figures used here, in short:

- Diameters in suspension: neutrophils 8.2-8.6 um, lymphocytes ~7, monocytes
  9-9.5, eosinophils ~8.7, basophils ~8.1 (Schmid-Schoenbein, Shih & Chien,
  Blood 56:866, 1980; Ting-Beall, Needham & Hochmuth, Blood 81:2774, 1993);
  a lysing reagent shrinks or swells them by up to ~10 % in diameter.
- Nucleus volume fraction: neutrophils about 0.2, lymphocytes about 0.45-0.6,
  monocytes about 0.3 (Schmid-Schoenbein et al. 1980, morphometry).
- Refractive index: cytoplasm 1.36-1.39 (Brunsting & Mullaney, Biophys. J.
  14:439, 1974: 1.37; optical diffraction tomography of leukocytes, e.g. Yoon
  et al., Sci. Rep. 7:6654, 2017: 1.36-1.39); the nucleus denser (Brunsting:
  1.39) or *lighter* than the cytoplasm (Schuermann et al., J. Biophotonics
  9:1068, 2016): both are trained on.
- Granules: neutrophil azurophil ~0.5 um and specific ~0.2-0.3 um across
  (Bainton, Ullyot & Farquhar, J. Exp. Med. 134:907, 1971), several hundred to
  thousands per cell, a sizeable share of the cytoplasm (morphometry:
  Schmid-Schoenbein et al. 1980); eosinophil specific granules 0.5-1.5 um with
  a dense crystalloid core, the most refractile (de Grooth et al., Cytometry
  8:539, 1987); basophil granules 0.2-1.2 um (Dvorak, in Bain, Blood Cells,
  5th ed.). Their volume fraction is trained from a sprinkle (the legacy
  model) to a third of the cytoplasm.
- Absorption: unstained cells are nearly transparent; the heme peroxidases of
  neutrophils (myeloperoxidase) and eosinophils (eosinophil peroxidase) absorb
  most in the blue (Soret band near 410-430 nm), so absorption falls with
  wavelength as ``(530 / lambda) ** beta`` with ``beta`` up to 4.
- Dispersion: the refraction increment of proteins is a few per cent higher in
  the blue than in the red (Cauchy dispersion; e.g. Zhernovaya et al., Phys.
  Med. Biol. 56:4013, 2011, for haemoglobin).
- Settled cells flatten on glass: height over diameter 0.55-1.0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from holography.errors import SimulationError

CLASSES = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")

#: the uncertain axes and their families (each family a disjoint part of the axis's range)
AXES: dict[str, tuple[str, ...]] = {
    "granules": ("lower", "literature", "upper"),
    "index": ("low", "mid", "high"),
    "nucleus": ("denser", "lighter"),
    "shape": ("round", "flattened"),
    "absorption": ("flat", "blue"),
}

#: granule volume fraction of the cytoplasm (the cell less its nucleus), per family and class.
#: The one morphometric measurement found puts a neutrophil's granules at 15.4 % of the cell,
#: about 20 % of its cytoplasm (Schmid-Schoenbein et al. 1980, table 2): ``literature`` is
#: centred there, ``lower`` and ``upper`` span the rest of the plausible range. Eosinophil and
#: basophil granules fill as much or more (large specific granules); monocytes hold few
#: azurophil granules, lymphocytes almost none. (A first version also trained a ``sparse``
#: family of 0.2-1.5 %, 60 times below the measurement: it only blurred the classes; see
#: docs/validation/cell-model.md.)
GRANULE_VF = {
    "lower": {"neutrophil": (0.08, 0.15), "lymphocyte": (0.0, 0.004),
              "monocyte": (0.008, 0.025), "eosinophil": (0.12, 0.20), "basophil": (0.08, 0.16)},
    "literature": {"neutrophil": (0.15, 0.23), "lymphocyte": (0.0, 0.008),
                   "monocyte": (0.02, 0.04), "eosinophil": (0.20, 0.29), "basophil": (0.15, 0.24)},
    "upper": {"neutrophil": (0.23, 0.30), "lymphocyte": (0.0, 0.012),
              "monocyte": (0.035, 0.06), "eosinophil": (0.29, 0.38), "basophil": (0.22, 0.32)},
}
#: granule radius (um) range of a class's mean
GRANULE_R_UM = {"neutrophil": (0.10, 0.25), "lymphocyte": (0.10, 0.25), "monocyte": (0.06, 0.15),
                "eosinophil": (0.25, 0.55), "basophil": (0.15, 0.55)}
#: granule refractive index above the cytoplasm
GRANULE_DN = {"neutrophil": (0.01, 0.06), "lymphocyte": (0.01, 0.05), "monocyte": (0.01, 0.05),
              "eosinophil": (0.04, 0.15), "basophil": (0.02, 0.10)}
#: granule absorption index at 530 nm
#: (eosinophil peroxidase is a heme protein; basophil granules carry no known visible pigment:
#: their dark colour in smears is the stain's)
GRANULE_KAPPA = {"neutrophil": (2e-5, 5e-4), "lymphocyte": (1e-5, 2e-4), "monocyte": (1e-5, 2e-4),
                 "eosinophil": (2e-4, 2e-3), "basophil": (2e-5, 5e-4)}
#: cytoplasm refractive index above the medium (1.335), per family
CYTOPLASM_DN = {"low": (0.020, 0.030), "mid": (0.030, 0.042), "high": (0.042, 0.058)}
#: nucleus index above the cytoplasm, per family (lighter: Schuermann et al. 2016)
NUCLEUS_DN = {"denser": (0.005, 0.030), "lighter": (-0.015, 0.005)}
#: nucleus volume fraction of the cell
NUCLEUS_VF = {"neutrophil": (0.15, 0.30), "lymphocyte": (0.40, 0.70), "monocyte": (0.20, 0.40),
              "eosinophil": (0.15, 0.30), "basophil": (0.15, 0.35)}
#: height / diameter of a settled cell, per family
ASPECT = {"round": (0.90, 1.0), "flattened": (0.55, 0.85)}
#: absorption spectral exponent: kappa(lambda) = kappa(530 nm) (530 / lambda) ** beta
BETA = {"flat": (0.0, 1.0), "blue": (1.5, 4.0)}
#: class mean diameter (um) range and its spread within a sample
#: (monocytes the largest by microscopy and micropipette morphometry, but about a neutrophil's
#: size by flow cytometry: both trained on)
DIAMETER_UM = {"neutrophil": (7.9, 9.1), "lymphocyte": (6.0, 7.7), "monocyte": (8.3, 10.3),
               "eosinophil": (8.1, 9.3), "basophil": (7.5, 8.8)}
DIAMETER_SD_UM = (0.35, 0.65)
#: more granules than this are drawn larger instead (same volume fraction): rendering cost
MAX_GRANULES = 1200
#: reference wavelength of the indices and absorption (nm)
LAMBDA_REF_NM = 530.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ClassPhysics:
    """One white-cell class's physics in one sample (the centre its cells vary around)."""

    diameter_um: tuple[float, float]
    nucleus_vf: float
    dn_cyt: float
    dn_nuc: float
    kappa_cyt: float
    kappa_nuc: float
    granule_vf: float
    granule_r_um: float
    granule_dn: float
    granule_kappa: float
    beta: float
    aspect: float
    vacuoles: tuple[int, int] = (0, 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class CellPhysics:
    """Every uncertain cell parameter of one sample, with the family drawn on each axis."""

    families: dict[str, str]
    classes: dict[str, ClassPhysics]
    dispersion: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


def _u(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(*lo_hi))


def draw_physics(rng: np.random.Generator, families: dict[str, str] | None = None, *,
                 exclude: dict[str, tuple[str, ...]] | None = None) -> CellPhysics:
    """One sample's cell physics.

    Parameters
    ----------
    rng : numpy.random.Generator
        The only source of randomness.
    families : dict, optional
        Axis -> family to use (the others drawn at random).
    exclude : dict, optional
        Axis -> families never drawn (a held-out family of the out-of-family benchmark).

    Returns
    -------
    CellPhysics
    """
    fam: dict[str, str] = {}
    families = families or {}
    exclude = exclude or {}
    for axis in families:
        if axis not in AXES:
            raise SimulationError(f"unknown physics axis {axis!r}; use one of {', '.join(AXES)}")
    for axis, names in AXES.items():
        if axis in families:
            if families[axis] not in names:
                raise SimulationError(f"unknown {axis} family {families[axis]!r}; use one of "
                                      f"{', '.join(names)}")
            fam[axis] = families[axis]
            continue
        allowed = [n for n in names if n not in exclude.get(axis, ())]
        if not allowed:
            raise SimulationError(f"every {axis} family is excluded")
        fam[axis] = str(allowed[int(rng.integers(len(allowed)))])
    dn_cyt = _u(rng, CYTOPLASM_DN[fam["index"]])
    classes = {}
    for cls in CLASSES:
        classes[cls] = ClassPhysics(
            diameter_um=(_u(rng, DIAMETER_UM[cls]), _u(rng, DIAMETER_SD_UM)),
            nucleus_vf=_u(rng, NUCLEUS_VF[cls]),
            dn_cyt=max(dn_cyt + float(rng.uniform(-0.004, 0.004)), 0.012),
            dn_nuc=_u(rng, NUCLEUS_DN[fam["nucleus"]]),
            kappa_cyt=float(np.exp(rng.uniform(math.log(5e-6), math.log(5e-5)))),
            kappa_nuc=float(np.exp(rng.uniform(math.log(5e-5), math.log(8e-4)))),
            granule_vf=_u(rng, GRANULE_VF[fam["granules"]][cls]),
            granule_r_um=_u(rng, GRANULE_R_UM[cls]),
            granule_dn=_u(rng, GRANULE_DN[cls]),
            granule_kappa=float(np.exp(rng.uniform(*np.log(GRANULE_KAPPA[cls])))),
            beta=_u(rng, BETA[fam["absorption"]]),
            aspect=_u(rng, ASPECT[fam["shape"]]),
            vacuoles=(0, 7) if cls == "monocyte" else (0, 0),
        )
    return CellPhysics(families=fam, classes=classes, dispersion=float(rng.uniform(0.0, 0.08)))


def parse_families(text: str) -> dict[str, str]:
    """``"granules=upper,index=high"`` -> ``{"granules": "upper", "index": "high"}`` (checked)."""
    out: dict[str, str] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        axis, sep, name = item.partition("=")
        if not sep or axis not in AXES or name not in AXES[axis]:
            choices = "; ".join(f"{a}={'|'.join(n)}" for a, n in AXES.items())
            raise SimulationError(f"bad physics family {item!r}; use AXIS=FAMILY from {choices}")
        out[axis] = name
    return out


def granule_layout(cp: ClassPhysics, r_cell: float, rng: np.random.Generator) -> tuple[int, float]:
    """Number and mean radius of one cell's granules from its volume fraction.

    The count fills ``granule_vf`` (varied +-30 % cell to cell) of the cytoplasm
    with granules of the class's radius; past :data:`MAX_GRANULES` the granules
    are drawn larger at the same volume fraction.
    """
    vf = cp.granule_vf * float(rng.uniform(0.7, 1.3))
    # flattening keeps the volume: r_cell is the volume-equivalent radius
    v_cyto = 4.0 / 3.0 * math.pi * r_cell**3 * (1.0 - cp.nucleus_vf)
    r = cp.granule_r_um
    n = vf * v_cyto / (4.0 / 3.0 * math.pi * r**3)
    if n > MAX_GRANULES:
        r = (vf * v_cyto / (MAX_GRANULES * 4.0 / 3.0 * math.pi)) ** (1.0 / 3.0)
        n = MAX_GRANULES
    return int(rng.poisson(n)) if n < 50 else int(round(n)), r


def spectral_factor(beta: np.ndarray | float, wavelength_nm: float) -> np.ndarray | float:
    """Absorption at ``wavelength_nm`` relative to 530 nm for spectral exponent ``beta``."""
    return (LAMBDA_REF_NM / wavelength_nm) ** np.asarray(beta)


def dispersion_factor(dispersion: float, wavelength_nm: float) -> float:
    """Index increment at ``wavelength_nm`` relative to 530 nm (Cauchy form)."""
    return 1.0 + dispersion * ((LAMBDA_REF_NM / wavelength_nm) ** 2 - 1.0)
