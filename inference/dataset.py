"""Labelled crops from the simulator: training, calibration and held-out test sets.

Every capture is made under optical conditions drawn at random
(domain randomisation: sensor, Bayer order, LED wavelengths and bandwidths,
pinhole, source and sample distances, chamber, tilt, metadata error, exposure,
noise) and analysed by the very pipeline the instrument runs
(:func:`holography.reconstruct.reconstruct_capture` then
:func:`inference.detect.detect_cells`); each candidate is labelled by matching
it one-to-one with the simulator's truth.

Training and test conditions are disjoint: for the air gap, the LED bandwidths,
the pinhole, the source distance and the read noise, ``split="test"`` draws
from intervals that ``split="train"`` never uses (see :data:`SPLITS`), and the
two use different seed ranges. Training fields are crowded with white cells in
near-equal class proportions (many labelled cells per second of simulation);
test captures hold ordinary blood (the ``random`` preset and the named ones).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from holography.capture import read_capture
from holography.cellphysics import AXES, draw_physics
from holography.reconstruct import ReconOptions, reconstruct_capture
from holography.sample import WBC_CLASSES, SampleSpec, random_spec
from holography.sensors import SENSORS
from holography.simulate import DEFAULT_LEDS, LedSpec, Optics, SimConfig, simulate_capture
from inference.detect import Detections, detect_in_capture

#: model classes: the five white cells and everything else
CLASSES = (*WBC_CLASSES, "other")
OTHER = len(WBC_CLASSES)
#: a candidate matches a truth object within this distance (um, sample plane)
MATCH_UM = 5.0
BAYERS = ("RGGB", "BGGR", "GRBG", "GBRG")

#: intervals per split: train and test never share a value of these parameters
SPLITS = {
    "train": {"air_gap_um": ((300.0, 650.0), (850.0, 1200.0)),
              "bandwidth_nm": ((10.0, 21.0), (30.0, 40.0)),
              "pinhole_um": ((20.0, 45.0), (75.0, 120.0)),
              "source_distance_mm": ((30.0, 37.0), (44.0, 55.0)),
              "read_noise_scale": ((0.6, 1.0), (1.4, 2.0))},
    "test": {"air_gap_um": ((650.0, 850.0),),
             "bandwidth_nm": ((21.0, 30.0),),
             "pinhole_um": ((45.0, 75.0),),
             "source_distance_mm": ((37.0, 44.0),),
             "read_noise_scale": ((1.0, 1.4),)},
}
#: seeds of the two splits never overlap
SEED_BASE = {"train": 1_000_000, "test": 5_000_000}
#: with the per-cell enhanced crops, every MULTI_DIE_EVERY-th capture lights 4 dies per LED
#: (pixel super-resolution), the others 1
MULTI_DIE_EVERY = 3


def dies_of(index: int, enhanced: bool = True) -> int:
    """LED dies per colour of capture ``index`` of a data set.

    1, or 4 for every third capture of a set made for the enhanced crops (the
    plain crops use the central die only: more dies would only cost time).
    """
    return 4 if enhanced and index % MULTI_DIE_EVERY == MULTI_DIE_EVERY - 1 else 1


def _draw(rng: np.random.Generator, intervals: tuple[tuple[float, float], ...]) -> float:
    widths = np.array([b - a for a, b in intervals])
    i = int(rng.choice(len(intervals), p=widths / widths.sum()))
    return float(rng.uniform(*intervals[i]))


def random_config(rng: np.random.Generator, split: str, *, size: tuple[int, int] | None,
                  sensor: str | None = None, n_dies: int = 1) -> SimConfig:
    """Optical, LED and sensor conditions drawn for ``split`` ("train" or "test")."""
    iv = SPLITS[split]
    leds = []
    for led in DEFAULT_LEDS:
        offsets = led.offsets_um
        leds.append(LedSpec(name=led.name, wavelength_nm=led.wavelength_nm + float(rng.uniform(-12, 12)),
                            bandwidth_nm=_draw(rng, iv["bandwidth_nm"]), offsets_um=offsets))
    optics = Optics(
        source_distance_mm=_draw(rng, iv["source_distance_mm"]),
        air_gap_um=_draw(rng, iv["air_gap_um"]),
        glass_um=float(rng.uniform(300, 700)),
        chamber_height_um=float(rng.uniform(80, 120)),
        pinhole_um=_draw(rng, iv["pinhole_um"]),
        tilt_um_per_mm=(float(rng.uniform(-4, 4)), float(rng.uniform(-4, 4))),
        nominal_error_um=float(rng.uniform(-200, 200)),
    )
    name = sensor or str(rng.choice(sorted(SENSORS)))
    bayer = "sensor-default" if rng.random() < 0.5 else str(rng.choice(BAYERS))
    cfg = SimConfig(sensor=name, bayer=bayer, size=size, leds=tuple(leds), optics=optics,
                    exposure_fill=float(rng.uniform(0.3, 0.7)),
                    full_well_scale=float(rng.uniform(0.7, 1.3)),
                    read_noise_scale=_draw(rng, iv["read_noise_scale"]))
    if split == "train":
        # sensor crosstalk and colour-filter response: drawn (from their own generator, so
        # the held-out test captures stay as they were) over what small-pixel sensors show
        sub = np.random.default_rng(rng.integers(2**32))
        cfg = replace(cfg, crosstalk=float(sub.uniform(0.0, 0.06)),
                      qe_scale=tuple(float(v) for v in sub.uniform(0.8, 1.2, 3)))
    return cfg


def crowded_spec(rng: np.random.Generator, physics: str | dict = "random") -> SampleSpec:
    """A training sample: white cells crowded in near-equal class proportions, varied debris.

    ``physics``: ``"random"`` draws the cells' physics over every family of
    :data:`holography.cellphysics.AXES` (domain randomisation), a dict of axis ->
    excluded families leaves those out, ``"legacy"`` keeps one guess per class.
    """
    base = random_spec(rng)
    frac = rng.dirichlet([8.0] * len(WBC_CLASSES))
    phys = None
    if physics != "legacy":
        phys = draw_physics(np.random.default_rng(rng.integers(2**32)),
                            exclude=physics if isinstance(physics, dict) else None)
    return replace(base, wbc_per_uL=float(rng.uniform(15000, 35000)),
                   differential=dict(zip(WBC_CLASSES, (float(f) for f in frac / frac.sum()),
                                         strict=True)),
                   bubbles_per_mm2=0.0, physics=phys)


def family_codes(spec: SampleSpec) -> np.ndarray:
    """Per axis of :data:`~holography.cellphysics.AXES`, the index of the sample's family (-1: legacy)."""
    if spec.physics is None:
        return np.full(len(AXES), -1, np.int8)
    return np.array([names.index(spec.physics.families[a]) for a, names in AXES.items()], np.int8)


@dataclass(slots=True)
class Labelled:
    """Crops of one capture with their labels from the truth."""

    crops: np.ndarray        # (N, C, S, S) float32
    labels: np.ndarray       # (N,) int: index in CLASSES
    volume_fl: np.ndarray    # (N,) float: truth volume of a matched white cell, else nan
    depth_um: np.ndarray     # (N,) float: truth depth of the matched object above the floor
    clump: np.ndarray        # (N,) bool: the matched truth cell belongs to a clump
    features: np.ndarray     # (N, 4): detection features (peak, diameter, depth, sharpness)
    plain_crops: np.ndarray  # (N, C, S, S): the same cells cut from the plain fields
    capture: np.ndarray | None = None  # (N,) int: index of the capture in its set
    family: np.ndarray | None = None   # (N, len(AXES)) int8: the capture's physics families


def match(cands_xy: np.ndarray, truth: dict, pixel_um: float, shape: tuple[int, int]
          ) -> tuple[np.ndarray, list[int]]:
    """One-to-one match of candidates to truth objects (Hungarian, within MATCH_UM).

    Returns
    -------
    (index, wbc_in_frame)
        Per candidate the matched truth index or -1; the truth indices of the
        white cells whose centres lie in the frame.
    """
    objs = truth["objects"]
    h, w = shape
    out = np.full(len(cands_xy), -1)
    wbc = [i for i, o in enumerate(objs)
           if o["kind"] in WBC_CLASSES and 0 <= o["x_px"] < w and 0 <= o["y_px"] < h]
    if not objs or not len(cands_xy):
        return out, wbc
    xy = np.array([[o["x_px"], o["y_px"]] for o in objs])
    radius = MATCH_UM / pixel_um
    tree = cKDTree(xy)
    pairs = tree.query_ball_point(cands_xy, r=radius)
    near = sorted({j for p in pairs for j in p})
    if not near:
        return out, wbc
    col = {j: n for n, j in enumerate(near)}
    big = 1e6
    cost = np.full((len(cands_xy), len(near)), big)
    for i, p in enumerate(pairs):
        for j in p:
            d = math.dist(cands_xy[i], xy[j])
            # prefer white cells when several objects lie under one candidate
            cost[i, col[j]] = d - (radius if objs[j]["kind"] in WBC_CLASSES else 0.0)
    rows, cols = linear_sum_assignment(cost)
    for r, c in zip(rows, cols, strict=True):
        if cost[r, c] < big / 2:
            out[r] = near[c]
    return out, wbc


def label_detections(det: Detections, truth: dict, shape: tuple[int, int]) -> Labelled:
    """Labels of each candidate from the simulator's truth."""
    xy = np.array([[c.x, c.y] for c in det.candidates]).reshape(-1, 2)
    idx, _ = match(xy, truth, det.pixel_um, shape)
    objs = truth["objects"]
    floor = truth["optics"]["floor_distance_um"]
    n = len(det.candidates)
    labels = np.full(n, OTHER, np.int64)
    vol = np.full(n, np.nan, np.float32)
    depth = np.full(n, np.nan, np.float32)
    clump = np.zeros(n, bool)
    for k, j in enumerate(idx):
        if j < 0:
            continue
        o = objs[j]
        depth[k] = o["distance_um"] - floor
        if o["kind"] in WBC_CLASSES:
            labels[k] = WBC_CLASSES.index(o["kind"])
            vol[k] = o["volume_fl"]
            clump[k] = o["clump"] >= 0
    feats = np.array([[c.peak, c.diameter_um, c.depth_um, c.sharpness] for c in det.candidates],
                     np.float32).reshape(-1, 4)
    plain = det.plain_crops if det.plain_crops is not None else det.crops
    # faint candidates never reach the classifier (inference.detect.FAINT_PEAK_RATIO)
    k = np.flatnonzero([not c.faint for c in det.candidates])
    return Labelled(det.crops[k], labels[k], vol[k], depth[k], clump[k], feats[k], plain[k])


def analyse_for_training(capture_dir: Path, *, enhanced: bool = True
                         ) -> tuple[Detections, dict, tuple[int, int]]:
    """Reconstruct and detect one simulated capture; return its detections and truth.

    ``enhanced``: make the per-cell enhanced crops too (``crops``, with the plain ones
    in ``plain_crops``); otherwise ``crops`` are the plain ones.
    """
    cap = read_capture(capture_dir)
    rec = reconstruct_capture(cap, ReconOptions(keep_dies=enhanced))
    det = detect_in_capture(cap, rec, keep_plain=enhanced, enhance=enhanced)
    truth = json.loads((Path(capture_dir) / "truth.json").read_text())
    return det, truth, cap.shape


def make_labelled(index: int, split: str, *, size: int = 512, crowded: bool = True,
                  workdir: str | None = None, enhanced: bool = False,
                  physics: str | dict = "random") -> Labelled:
    """Simulate capture number ``index`` of a split, analyse it and label its crops.

    ``physics``: the cells' physics (:func:`crowded_spec`).
    """
    seed = SEED_BASE[split] + index
    rng = np.random.default_rng(seed)
    cfg = random_config(rng, split, size=(size, size))
    spec = crowded_spec(rng, physics) if crowded else random_spec(rng)
    tmp = Path(tempfile.mkdtemp(prefix="holodiff-train-", dir=workdir))
    try:
        simulate_capture(tmp / "cap", preset=f"{split}-{'crowded' if crowded else 'random'}",
                         seed=seed, config=cfg, spec=spec, n_dies=dies_of(index, enhanced))
        det, truth, shape = analyse_for_training(tmp / "cap", enhanced=enhanced)
        lab = label_detections(det, truth, shape)
        lab.capture = np.full(len(lab.labels), index, np.int32)
        lab.family = np.repeat(family_codes(spec)[None], len(lab.labels), axis=0)
        return lab
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _job(args: tuple) -> Labelled:
    index, split, size, crowded, enhanced, physics = args
    return make_labelled(index, split, size=size, crowded=crowded, enhanced=enhanced,
                         physics=physics)


def build(out: str | Path, *, split: str, captures: int, size: int = 512, crowded: bool = True,
          start: int = 0, workers: int = 1, enhanced: bool = False,
          physics: str | dict = "random", log=print) -> dict:
    """Make a labelled crop set of ``captures`` simulated captures and save it as ``.npz``.

    ``enhanced``: also the per-cell enhanced crops (``crops``; the plain ones are then
    ``plain_crops``, and every third capture has four dies per LED). The set records
    which (``enhanced``).

    Returns
    -------
    dict
        Counts per class and the time taken.
    """
    import time
    from concurrent.futures import ProcessPoolExecutor

    t0 = time.perf_counter()
    jobs = [(start + i, split, size, crowded, enhanced, physics) for i in range(captures)]
    parts: list[Labelled] = []
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            for k, lab in enumerate(ex.map(_job, jobs)):
                parts.append(lab)
                log(f"{split}: capture {k + 1}/{captures}, {sum(len(p.labels) for p in parts)} crops")
    else:
        for k, j in enumerate(jobs):
            parts.append(_job(j))
            log(f"{split}: capture {k + 1}/{captures}, {sum(len(p.labels) for p in parts)} crops")
    names = ["crops", "labels", "volume_fl", "depth_um", "clump", "features", "capture", "family"]
    arrays = {name: np.concatenate([getattr(p, name) for p in parts])
              for name in names + (["plain_crops"] if enhanced else [])}
    arrays["crops"] = arrays["crops"].astype(np.float16)
    if enhanced:
        arrays["plain_crops"] = arrays["plain_crops"].astype(np.float16)
    arrays["enhanced"] = np.array(enhanced)
    arrays["axes"] = np.array(list(AXES))
    np.savez(out, **arrays)
    counts = {c: int((arrays["labels"] == i).sum()) for i, c in enumerate(CLASSES)}
    return {"counts": counts, "seconds": time.perf_counter() - t0, "captures": captures}
