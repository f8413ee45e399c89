"""A synthetic lysed, diluted blood sample in the chamber: the simulator's world.

Objects are ellipsoids (a body, with nucleus lobes, granules and vacuoles
inside it for white cells) described by refractive-index contrast with the
medium and an absorption index. Positions are in the sample plane (um, same
origin as sensor coordinates, see :mod:`holography.simulate`); ``h_um`` is the
height of an object's centre above the chamber floor.

Figures and where they come from (approximate; the simulator varies them):

- White-cell diameters in suspension: neutrophils about 8.2-8.6 um, lymphocytes
  about 7 um, monocytes about 9-9.5 um, eosinophils close to neutrophils,
  basophils slightly smaller (Schmid-Schoenbein, Shih & Chien, "Morphometry of
  human leukocytes", Blood 56(5):866, 1980; Ting-Beall, Needham & Hochmuth,
  "Volume and osmotic properties of human neutrophils", Blood 81(10):2774, 1993).
- Refractive indices: cytoplasm about 1.37, nucleus about 1.39 (Brunsting &
  Mullaney, "Differential light scattering from spherical mammalian cells",
  Biophys. J. 14(6):439, 1974); medium (isotonic diluent) 1.335.
- Nucleus shape per class (segmented 3-5 lobes, round, kidney-shaped, bilobed)
  and granules (fine neutral granules of neutrophils; large refractile
  eosinophil granules, which scatter and depolarise strongly: de Grooth et al.,
  Cytometry 8(6):539, 1987; large basophil granules) follow standard
  haematology morphology (e.g. Bain, Blood Cells: A Practical Guide, 5th ed.).
- Monocyte distribution width: healthy monocyte volume CV about 14 %, larger
  and more varied monocytes in sepsis (Crouser et al., "Monocyte distribution
  width: a novel indicator of sepsis-2 and sepsis-3 in high-risk emergency
  department patients", Crit. Care Med. 47(8):1018, 2019).
- Platelets 150-400 x10^3/uL, ~2-3 um discs; a lysing reagent leaves few
  red-cell ghosts, faint thin discs ~7.5 um across.
- White cells are hard spheres: settled ones form a monolayer on the floor and
  can touch but not overlap, a clump is cells resting against one another, and
  a floating cell may lie above another but not inside it (:class:`_HardSpheres`).
  The other objects are small or faint and are placed independently.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from holography.cellphysics import CellPhysics, granule_layout
from holography.errors import SimulationError

WBC_CLASSES = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")
OTHER_KINDS = ("platelet", "rbc_ghost", "debris", "lipid", "dust", "bubble", "bead")
KINDS = WBC_CLASSES + OTHER_KINDS
KIND_ID = {k: i for i, k in enumerate(KINDS)}
N_MEDIUM = 1.335

OBJECT_DTYPE = np.dtype([
    ("kind", "i4"), ("x_um", "f8"), ("y_um", "f8"), ("h_um", "f8"),
    ("a_um", "f8"), ("c_um", "f8"), ("dn", "f8"), ("kappa", "f8"),
    ("dn_nuc", "f8"), ("kappa_nuc", "f8"), ("lobe0", "i4"), ("nlobe", "i4"),
    ("gran0", "i4"), ("ngran", "i4"), ("clump", "i4"), ("on_cover", "i4"),
])
PART_DTYPE = np.dtype([("dx", "f8"), ("dy", "f8"), ("dz", "f8"), ("r", "f8"), ("dn", "f8"),
                       ("kappa", "f8")])

# class: (mean diameter um, sd um)
WBC_DIAMETER = {"neutrophil": (8.5, 0.45), "lymphocyte": (7.0, 0.50), "monocyte": (9.4, 0.45),
                "eosinophil": (8.7, 0.45), "basophil": (8.1, 0.45)}


@dataclass(frozen=True, slots=True, kw_only=True)
class SampleSpec:
    """What is in the blood and how the chamber holds it.

    Concentrations are per uL of whole blood (before dilution).
    """

    wbc_per_uL: float = 7000.0
    differential: dict[str, float] = field(default_factory=lambda: {
        "neutrophil": 0.58, "lymphocyte": 0.30, "monocyte": 0.07, "eosinophil": 0.04,
        "basophil": 0.01})
    band_fraction: float = 0.02
    monocyte_diameter_um: tuple[float, float] = (9.4, 0.45)
    platelets_per_uL: float = 250_000.0
    ghosts_per_uL: float = 10_000.0
    debris_per_uL: float = 1_500.0
    lipid_per_uL: float = 500.0
    dust_per_mm2: float = 1.0
    bubbles_per_mm2: float = 0.0
    beads_per_uL: float = 0.0
    bead_diameter_um: tuple[float, float] = (8.0, 0.08)
    floating_fraction: float = 0.05
    clump_fraction: float = 0.01
    size_scale: float = 1.0
    index_scale: float = 1.0
    #: the cells' physics drawn for this sample (:mod:`holography.cellphysics`); None: the
    #: legacy one-guess-per-class model below
    physics: CellPhysics | None = None

    def __post_init__(self) -> None:
        unknown = set(self.differential) - set(WBC_CLASSES)
        if unknown:
            raise SimulationError(f"unknown white-cell class {sorted(unknown)[0]!r}")
        total = sum(self.differential.values())
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise SimulationError(f"differential fractions must sum to 1 (got {total:.4f})")
        if self.wbc_per_uL < 0:
            raise SimulationError("wbc_per_uL must not be negative")


PRESETS: dict[str, SampleSpec] = {
    "healthy": SampleSpec(),
    "septic": SampleSpec(
        wbc_per_uL=15000.0, band_fraction=0.25, monocyte_diameter_um=(9.9, 0.85),
        differential={"neutrophil": 0.84, "lymphocyte": 0.08, "monocyte": 0.06,
                      "eosinophil": 0.01, "basophil": 0.01}, debris_per_uL=4000.0,
        clump_fraction=0.03),
    "lymphocytosis": SampleSpec(
        wbc_per_uL=12000.0, differential={"neutrophil": 0.30, "lymphocyte": 0.60,
                                          "monocyte": 0.07, "eosinophil": 0.02,
                                          "basophil": 0.01}),
    "eosinophilia": SampleSpec(
        wbc_per_uL=9000.0, differential={"neutrophil": 0.50, "lymphocyte": 0.27,
                                         "monocyte": 0.07, "eosinophil": 0.15,
                                         "basophil": 0.01}),
    "leukopenia": SampleSpec(wbc_per_uL=2500.0),
    "empty": SampleSpec(wbc_per_uL=0.0, platelets_per_uL=0.0, ghosts_per_uL=0.0,
                        debris_per_uL=0.0, lipid_per_uL=0.0, dust_per_mm2=0.0),
    "beads": SampleSpec(wbc_per_uL=0.0, platelets_per_uL=0.0, ghosts_per_uL=0.0,
                        debris_per_uL=200.0, lipid_per_uL=0.0, beads_per_uL=7000.0,
                        floating_fraction=0.0, clump_fraction=0.0),
}


def random_spec(rng: np.random.Generator) -> SampleSpec:
    """A random but plausible sample: any differential, count and debris load."""
    frac = rng.dirichlet([6.0, 3.0, 0.8, 0.5, 0.15])
    return SampleSpec(
        wbc_per_uL=float(rng.uniform(1500, 25000)),
        differential=dict(zip(WBC_CLASSES, (float(f) for f in frac / frac.sum()), strict=True)),
        band_fraction=float(rng.uniform(0, 0.3)),
        monocyte_diameter_um=(float(rng.uniform(9.0, 10.2)), float(rng.uniform(0.35, 1.0))),
        platelets_per_uL=float(rng.uniform(50e3, 450e3)),
        ghosts_per_uL=float(rng.uniform(0, 30e3)),
        debris_per_uL=float(rng.uniform(0, 6000)),
        lipid_per_uL=float(rng.uniform(0, 2000)),
        dust_per_mm2=float(rng.uniform(0, 4)),
        bubbles_per_mm2=float(rng.choice([0.0, rng.uniform(0, 0.5)])),
        floating_fraction=float(rng.uniform(0, 0.15)),
        clump_fraction=float(rng.uniform(0, 0.05)),
        size_scale=float(rng.uniform(0.93, 1.07)),
        index_scale=float(rng.uniform(0.85, 1.15)),
    )


def get_spec(preset: str, rng: np.random.Generator) -> SampleSpec:
    """The :class:`SampleSpec` of a preset name (``random`` draws one)."""
    if preset == "random":
        return random_spec(rng)
    try:
        return PRESETS[preset]
    except KeyError:
        names = ", ".join(sorted([*PRESETS, "random"]))
        raise SimulationError(f"unknown preset {preset!r}; use one of {names}") from None


@dataclass(slots=True)
class Sample:
    """Objects in the chamber plus their nucleus lobes and granules."""

    objects: np.ndarray
    parts: np.ndarray
    chamber_height_um: float
    cover_glass_um: float
    #: absorption spectral exponent per object and per part (None: absorption flat in
    #: wavelength apart from k0), and the index dispersion (:mod:`holography.cellphysics`)
    beta: np.ndarray | None = None
    part_beta: np.ndarray | None = None
    dispersion: float = 0.0


#: random positions tried for a white cell before the sample is declared too dense
PLACE_TRIES = 1000


class _HardSpheres:
    """White cells placed so far, as spheres that must not interpenetrate.

    Cells settled on the chamber floor form a monolayer: two of them can touch
    but not overlap, and a floating cell cannot sit inside another. Each new
    cell is placed at random where it overlaps none already placed (random
    sequential adsorption of hard spheres: Feder, "Random sequential
    adsorption", J. Theor. Biol. 87(2):237, 1980); at blood-cell densities the
    floor is a few per cent covered, far below the jamming limit, so a free spot
    is found in a few tries. The spheres sit in a grid of ``bin_um`` squares
    (larger than any two radii together) for the neighbour look-up.
    """

    def __init__(self, bin_um: float = 20.0):
        self.bin = bin_um
        self.grid: dict[tuple[int, int], list[tuple[float, float, float, float]]] = {}

    def fits(self, x: float, y: float, h: float, r: float) -> bool:
        i, j = int(math.floor(x / self.bin)), int(math.floor(y / self.bin))
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                for x2, y2, h2, r2 in self.grid.get((i + di, j + dj), ()):
                    if (x - x2) ** 2 + (y - y2) ** 2 + (h - h2) ** 2 < (r + r2) ** 2:
                        return False
        return True

    def put(self, x: float, y: float, h: float, r: float) -> None:
        if 2 * r > self.bin:
            raise SimulationError(f"a white cell of {2 * r:.1f} um is larger than the placement "
                                  f"grid ({self.bin:.0f} um)")
        key = (int(math.floor(x / self.bin)), int(math.floor(y / self.bin)))
        self.grid.setdefault(key, []).append((x, y, h, r))


class _Builder:
    def __init__(self, rng: np.random.Generator, spec: SampleSpec):
        self.rng = rng
        self.spec = spec
        self.objs: list[tuple] = []
        self.parts: list[tuple] = []
        self.beta: list[float] = []
        self.part_beta: list[float] = []

    def _parts(self, rows: list[tuple], beta: float = 0.0) -> tuple[int, int]:
        start = len(self.parts)
        self.parts.extend(rows)
        self.part_beta.extend([beta] * len(rows))
        return start, len(rows)

    def add(self, kind: str, x: float, y: float, h: float, a: float, c: float, dn: float,
            kappa: float, *, dn_nuc: float = 0.0, kappa_nuc: float = 0.0,
            lobes: list[tuple] = (), grans: list[tuple] = (), clump: int = -1,
            on_cover: bool = False, beta: float = 0.0) -> None:
        l0, nl = self._parts(list(lobes))
        g0, ng = self._parts(list(grans), beta)
        self.beta.append(beta)
        self.objs.append((KIND_ID[kind], x, y, h, a, c, dn * self.spec.index_scale, kappa,
                          dn_nuc * self.spec.index_scale, kappa_nuc, l0, nl, g0, ng, clump,
                          int(on_cover)))

    # ---- white cells
    def _in_ball(self, n: int, radius: float) -> np.ndarray:
        v = self.rng.normal(size=(n, 3))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return v * (radius * self.rng.uniform(0, 1, n) ** (1 / 3))[:, None]

    def _granules(self, n: int, r_lo: float, r_hi: float, dn: float, kappa: float,
                  cell_r: float) -> list[tuple]:
        rows = []
        for p in self._in_ball(n, cell_r * 0.82):
            rows.append((p[0], p[1], p[2], self.rng.uniform(r_lo, r_hi), dn, kappa))
        return rows

    def _chain(self, n: int, arc_r: float, lobe_r: float, span: float) -> list[tuple]:
        rng = self.rng
        rot = rng.uniform(0, 2 * math.pi)
        tilt = rng.uniform(-0.4, 0.4)
        rows = []
        for t in np.linspace(-span / 2, span / 2, n):
            ang = rot + t
            dz = arc_r * math.sin(t) * tilt
            rows.append((arc_r * math.cos(ang), arc_r * math.sin(ang), dz,
                         lobe_r * rng.uniform(0.9, 1.1), 0.0, 0.0))
        return rows

    def wbc(self, cls: str, spot, h_floor: bool, height: float, clump: int = -1) -> float:
        """Draw a white cell of ``cls`` and place it where ``spot(r, h)`` says; its radius.

        ``spot`` gets the cell's radius and the height of its centre and returns
        ``(x, y)`` (see :class:`_HardSpheres`).
        """
        rng, spec = self.rng, self.spec
        if spec.physics is not None:
            return self._wbc_physics(cls, spot, h_floor, height, clump)
        mean, sd = spec.monocyte_diameter_um if cls == "monocyte" else WBC_DIAMETER[cls]
        d = max(rng.normal(mean, sd), mean * 0.6) * spec.size_scale
        r = d / 2
        dn_cyt = rng.normal(1.370, 0.004) - N_MEDIUM
        dn_nuc = rng.normal(1.390, 0.004) - (dn_cyt + N_MEDIUM)
        kappa, kappa_nuc = 2e-5, rng.uniform(2e-4, 6e-4)
        lobes: list[tuple]
        grans: list[tuple] = []
        if cls == "neutrophil":
            if rng.random() < spec.band_fraction:
                lobes = self._chain(6, r * 0.5, r * 0.26, rng.uniform(2.6, 3.6))
            else:
                lobes = self._chain(int(rng.integers(3, 6)), r * 0.48, r * 0.31,
                                    rng.uniform(2.2, 3.6))
            grans = self._granules(int(rng.integers(60, 100)), 0.10, 0.18, 0.035, 1e-4, r)
        elif cls == "lymphocyte":
            off = self._in_ball(1, r * 0.08)[0]
            lobes = [(off[0], off[1], off[2], r * rng.uniform(0.78, 0.88), 0.0, 0.0)]
            if rng.random() < 0.1:
                grans = self._granules(int(rng.integers(5, 15)), 0.15, 0.25, 0.03, 1e-4, r)
            dn_nuc *= 0.95
        elif cls == "monocyte":
            lobes = self._chain(7, r * 0.42, r * 0.33, rng.uniform(2.4, 3.4))
            grans = self._granules(int(rng.integers(10, 30)), 0.10, 0.16, 0.02, 5e-5, r)
            grans += self._granules(int(rng.integers(0, 7)), 0.3, 0.6, -0.02, 0.0, r)
            dn_nuc *= 0.85
        elif cls == "eosinophil":
            lobes = self._chain(2, r * 0.45, r * 0.36, rng.uniform(1.6, 2.4))
            grans = self._granules(int(rng.integers(25, 45)), 0.25, 0.45, 0.09, 8e-4, r)
        elif cls == "basophil":
            lobes = self._chain(int(rng.integers(2, 4)), r * 0.4, r * 0.32, rng.uniform(1.6, 2.6))
            grans = self._granules(int(rng.integers(15, 35)), 0.3, 0.6, 0.05, 1.5e-3, r)
        else:  # pragma: no cover - guarded by callers
            raise SimulationError(f"unknown white-cell class {cls!r}")
        h = r if h_floor else rng.uniform(r, height - r)
        x, y = spot(r, h)
        self.add(cls, x, y, h, r, r, dn_cyt, kappa, dn_nuc=dn_nuc, kappa_nuc=kappa_nuc,
                 lobes=lobes, grans=grans, clump=clump)
        return r

    def _wbc_physics(self, cls: str, spot, h_floor: bool, height: float, clump: int) -> float:
        """:meth:`wbc` with the sample's drawn :class:`~holography.cellphysics.CellPhysics`.

        The nucleus (lobes filling the class's nucleus volume fraction), the granules
        (filling their volume fraction of the cytoplasm, outside the nucleus), the
        indices, absorption and its spectrum, and the flattening of a settled cell
        all come from the sample's physics; each cell varies around it.
        """
        rng, spec = self.rng, self.spec
        cp = spec.physics.classes[cls]
        mean, sd = cp.diameter_um
        if cls == "monocyte":
            # a preset's monocyte size (e.g. septic: larger and more varied) scales the drawn one
            mean *= spec.monocyte_diameter_um[0] / WBC_DIAMETER["monocyte"][0]
            sd *= spec.monocyte_diameter_um[1] / WBC_DIAMETER["monocyte"][1]
        d = max(rng.normal(mean, sd), mean * 0.6) * spec.size_scale
        r = d / 2
        # a settled cell flattens at constant volume; a floating one stays round
        asp = float(np.clip(cp.aspect * rng.uniform(0.95, 1.05), 0.5, 1.0)) if h_floor else 1.0
        a, c = r * asp ** (-1 / 3), r * asp ** (2 / 3)
        dn_cyt = max(rng.normal(cp.dn_cyt, 0.003), 0.008)
        dn_nuc = rng.normal(cp.dn_nuc, 0.003)
        kappa = cp.kappa_cyt * rng.uniform(0.7, 1.3)
        kappa_nuc = cp.kappa_nuc * rng.uniform(0.7, 1.3)
        r_nuc = r * cp.nucleus_vf ** (1 / 3)  # radius of a sphere of the nucleus's volume
        zs = asp ** (2 / 3)  # lobes of a flattened cell lie flatter
        if cls == "neutrophil":
            if rng.random() < spec.band_fraction:
                n, arc, span, over = 6, 0.5, rng.uniform(2.6, 3.6), 1.45
            else:  # 2-5 lobes, most often 3 (the Arneth count of normal blood)
                n = int(rng.choice([2, 3, 4, 5], p=[0.2, 0.45, 0.3, 0.05]))
                n, arc, span, over = n, 0.48, rng.uniform(2.2, 3.6), 1.08
        elif cls == "monocyte":
            n, arc, span, over = 7, 0.42, rng.uniform(2.4, 3.4), 1.45
        elif cls == "eosinophil":  # bilobed, sometimes three lobes
            n, arc, span, over = 2 if rng.random() < 0.85 else 3, 0.45, rng.uniform(1.6, 2.4), 1.05
        elif cls == "basophil":
            n, arc, span, over = int(rng.integers(2, 4)), 0.4, rng.uniform(1.6, 2.6), 1.08
        else:
            n, arc, span, over = 1, 0.0, 0.0, 1.0
        if n == 1:
            off = self._in_ball(1, r * 0.08)[0]
            lobes = [(off[0], off[1], off[2] * zs, min(r_nuc, 0.95 * c), 0.0, 0.0)]
        else:
            lr = min(r_nuc * n ** (-1 / 3) * over, 0.6 * r)
            arc_r = min(arc * r, 0.95 * r - lr)
            lobes = [(x, y, z * zs, min(q, 0.95 * c), 0.0, 0.0)
                     for x, y, z, q, _, _ in self._chain(n, arc_r, lr, span)]
        ng, gr = granule_layout(cp, r, rng)
        grans: list[tuple] = []
        if ng:
            pos = self._in_cytoplasm(ng, a, c, lobes)
            radii = gr * rng.uniform(0.8, 1.2, len(pos))
            dns = cp.granule_dn * spec.index_scale * rng.uniform(0.8, 1.2, len(pos))
            grans = [(p[0], p[1], p[2], q, g, cp.granule_kappa)
                     for p, q, g in zip(pos, radii, dns, strict=True)]
        nv = int(rng.integers(cp.vacuoles[0], cp.vacuoles[1] + 1)) if cp.vacuoles[1] else 0
        if nv:
            pos = self._in_cytoplasm(nv, a * 0.8, c * 0.8, lobes)
            grans += [(p[0], p[1], p[2], rng.uniform(0.3, 0.6), -0.7 * dn_cyt * spec.index_scale,
                       0.0) for p in pos]
        h = c if h_floor else rng.uniform(r, height - r)
        x, y = spot(a, h)
        self.add(cls, x, y, h, a, c, dn_cyt, kappa, dn_nuc=dn_nuc, kappa_nuc=kappa_nuc,
                 lobes=lobes, grans=grans, clump=clump, beta=cp.beta)
        return a

    def _in_cytoplasm(self, n: int, a: float, c: float, lobes: list[tuple]) -> np.ndarray:
        """``n`` points uniform in the ellipsoid (a, a, c) scaled by 0.9, outside the lobes."""
        out = np.zeros((0, 3))
        lob = np.array([(p[0], p[1], p[2], p[3]) for p in lobes]).reshape(-1, 4)
        for _ in range(20):
            p = self._in_ball(2 * n + 8, 0.9) * np.array([a, a, c])
            if len(lob):
                d2 = ((p[:, None, :] - lob[None, :, :3]) ** 2).sum(-1)
                p = p[(d2 > lob[None, :, 3] ** 2).all(axis=1)]
            out = np.concatenate([out, p])
            if len(out) >= n:
                break
        if len(out) < n:  # a cell all nucleus: the rest go anywhere in it
            out = np.concatenate([out, self._in_ball(n - len(out), 0.9) * np.array([a, a, c])])
        return out[:n]


def make_sample(spec: SampleSpec, *, field_um: tuple[float, float, float, float],
                chamber_height_um: float, dilution: float, rng: np.random.Generator,
                cover_glass_um: float = 170.0) -> Sample:
    """Place the objects of a blood sample in a region of the chamber.

    Parameters
    ----------
    spec : SampleSpec
        What the blood holds.
    field_um : (x0, y0, x1, y1)
        Sample-plane region to fill, in micrometres.
    chamber_height_um : float
        Inner height of the chamber.
    dilution : float
        Total volume / blood volume.
    rng : numpy.random.Generator
        Source of randomness (the only one).
    cover_glass_um : float
        Cover glass thickness (dust sits on its outer face).

    Returns
    -------
    Sample
    """
    x0, y0, x1, y1 = field_um
    area_mm2 = (x1 - x0) * (y1 - y0) * 1e-6
    blood_uL = area_mm2 * chamber_height_um * 1e-3 / dilution
    b = _Builder(rng, spec)
    H = chamber_height_um

    def xy() -> tuple[float, float]:
        return float(rng.uniform(x0, x1)), float(rng.uniform(y0, y1))

    n_wbc = int(rng.poisson(spec.wbc_per_uL * blood_uL))
    classes = list(spec.differential)
    probs = np.array([spec.differential[c] for c in classes])
    labels = rng.choice(len(classes), size=n_wbc, p=probs / probs.sum()) if n_wbc else []
    cells = _HardSpheres()

    def free_spot(r: float, h: float) -> tuple[float, float]:
        for _ in range(PLACE_TRIES):
            x, y = xy()
            if cells.fits(x, y, h, r):
                cells.put(x, y, h, r)
                return x, y
        raise SimulationError(f"{n_wbc} white cells do not fit in the chamber without overlapping; "
                              "lower wbc_per_uL")

    def clump_spot(members: list[tuple[float, float, float, float]], r: float,
                   h: float) -> tuple[float, float]:
        # each new member rests against one already there, touching it (the first, or one
        # with no room left around the others, starts anywhere free)
        for _ in range(PLACE_TRIES if members else 0):
            px, py, ph, pr = members[int(rng.integers(len(members)))]
            ang = rng.uniform(0, 2 * math.pi)
            # centres r + pr apart in 3-D: the cells touch whatever their heights
            d = math.sqrt(max((pr + r) ** 2 - (ph - h) ** 2, 0.0)) * (1 + 1e-6)
            x, y = px + d * math.cos(ang), py + d * math.sin(ang)
            if cells.fits(x, y, h, r):
                cells.put(x, y, h, r)
                members.append((x, y, h, r))
                return x, y
        x, y = free_spot(r, h)
        members.append((x, y, h, r))
        return x, y

    clump_id = 0
    i = 0
    while i < n_wbc:
        floating = rng.random() < spec.floating_fraction
        if rng.random() < spec.clump_fraction and i + 1 < n_wbc:
            k = int(min(rng.integers(2, 5), n_wbc - i))
            spot = functools.partial(clump_spot, [])
            for j in range(k):
                b.wbc(classes[labels[i + j]], spot, True, H, clump=clump_id)
            clump_id += 1
            i += k
            continue
        b.wbc(classes[labels[i]], free_spot, not floating, H)
        i += 1
    for _ in range(int(rng.poisson(spec.platelets_per_uL * blood_uL))):
        a = rng.uniform(0.9, 1.5)
        b.add("platelet", *xy(), rng.uniform(0.5, H - 0.5), a, a * 0.4,
              rng.uniform(0.02, 0.05), 2e-4)
    for _ in range(int(rng.poisson(spec.ghosts_per_uL * blood_uL))):
        a = rng.uniform(3.4, 4.0)
        b.add("rbc_ghost", *xy(), rng.uniform(0.3, H - 0.3), a, 0.15, rng.uniform(0.005, 0.015),
              1e-4)
    for _ in range(int(rng.poisson(spec.debris_per_uL * blood_uL))):
        n = int(rng.integers(2, 8))
        pts = [(p[0], p[1], p[2], rng.uniform(0.3, 1.2), 0.0, 0.0)
               for p in b._in_ball(n, rng.uniform(0.8, 3.0))]
        ext = max(math.hypot(p[0], p[1]) + p[3] for p in pts)
        b.add("debris", *xy(), rng.uniform(ext, H - ext) if H > 2 * ext else H / 2, ext, ext,
              0.0, 0.0, dn_nuc=rng.uniform(0.05, 0.12), kappa_nuc=rng.uniform(2e-3, 1e-2),
              lobes=pts)
    for _ in range(int(rng.poisson(spec.lipid_per_uL * blood_uL))):
        a = rng.uniform(0.5, 2.0)
        b.add("lipid", *xy(), H - a - rng.uniform(0, 2), a, a, 1.47 - N_MEDIUM, 0.0)
    for _ in range(int(rng.poisson(spec.beads_per_uL * blood_uL))):
        a = max(rng.normal(*spec.bead_diameter_um), 1.0) / 2
        b.add("bead", *xy(), a, a, a, 1.59 - N_MEDIUM, 1e-5)
    for _ in range(int(rng.poisson(spec.dust_per_mm2 * area_mm2))):
        n = int(rng.integers(3, 12))
        pts = [(p[0], p[1], 0.0, rng.uniform(0.8, 3.0), 0.0, 0.0)
               for p in b._in_ball(n, rng.uniform(2.0, 8.0))]
        ext = max(math.hypot(p[0], p[1]) + p[3] for p in pts)
        b.add("dust", *xy(), 0.0, ext, 3.0, 0.0, 0.0, dn_nuc=0.3,
              kappa_nuc=rng.uniform(0.02, 0.08), lobes=pts, on_cover=True)
    for _ in range(int(rng.poisson(spec.bubbles_per_mm2 * area_mm2))):
        a = rng.uniform(15, min(45, H / 2))
        b.add("bubble", *xy(), H - a, a, a, 1.0 - N_MEDIUM, 0.0)
    objects = np.array(b.objs, dtype=OBJECT_DTYPE) if b.objs else np.zeros(0, OBJECT_DTYPE)
    parts = np.array(b.parts, dtype=PART_DTYPE) if b.parts else np.zeros(0, PART_DTYPE)
    if spec.physics is None:
        return Sample(objects=objects, parts=parts, chamber_height_um=H,
                      cover_glass_um=cover_glass_um)
    return Sample(objects=objects, parts=parts, chamber_height_um=H, cover_glass_um=cover_glass_um,
                  beta=np.array(b.beta, np.float64), part_beta=np.array(b.part_beta, np.float64),
                  dispersion=spec.physics.dispersion)
