"""How much a white cell's coarse optical properties can tell its class (run on demand).

    python tests/benchmarks/bench_information.py [--cells 4000] [--mix 58,30,7,4,1]

At the detail a lensless hologram keeps (periods of ~5-6 um with 18-30 nm
LEDs: README, Known limitations) a cell's nuclear lobes and granules are not
resolved; what is left is its size, its optical volume (the integral of the
refractive-index contrast over the cell, which the phase gives) and its
absorption. This asks the simulator's own cells (:func:`holography.sample.make_sample`)
how well a perfect measurement of those three would classify them: the Bayes
rule with Gaussian class conditionals fitted on one draw of cells and scored
on another (quadratic discriminant; Duda, Hart & Stork, Pattern Classification,
2nd ed., 2001, section 2.6), with the classes' prior the differential given.
It is an upper bound (as far as the Gaussian fits hold) for a classifier that
sees nothing finer than these, and a yardstick for the network: a network above
the size-and-optical-volume row reads more than those from its crops.

Two rows per feature set: every sample with the simulator's nominal cell size
and refractive index, and with them varied from sample to sample as
:func:`holography.sample.random_spec` does (a classifier that does not know the
sample's scale).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace

import numpy as np

from holography.sample import KIND_ID, WBC_CLASSES, SampleSpec, make_sample


def cell_features(cls: str, n: int, rng: np.random.Generator, *, vary_scale: bool) -> np.ndarray:
    """(n, 3) features of ``n`` simulated white cells of ``cls``.

    The optical volume adds each part's index contrast times its volume (cell
    body, nucleus lobes, granules; overlaps of lobes ignored); absorption the
    same with the absorption index, per um^3 of cell.
    """
    rows: list[tuple[float, float, float]] = []
    while len(rows) < n:
        spec = SampleSpec(wbc_per_uL=20000.0, differential={cls: 1.0}, platelets_per_uL=0.0,
                          ghosts_per_uL=0.0, debris_per_uL=0.0, lipid_per_uL=0.0,
                          dust_per_mm2=0.0, clump_fraction=0.0)
        if vary_scale:
            spec = replace(spec, size_scale=float(rng.uniform(0.93, 1.07)),
                           index_scale=float(rng.uniform(0.85, 1.15)))
        s = make_sample(spec, field_um=(0.0, 0.0, 400.0, 400.0), chamber_height_um=100.0,
                        dilution=20.0, rng=rng)
        for o in s.objects[s.objects["kind"] == KIND_ID[cls]]:
            vol = 4 / 3 * math.pi * o["a_um"] ** 3
            lobes = s.parts[o["lobe0"]:o["lobe0"] + o["nlobe"]]
            grans = s.parts[o["gran0"]:o["gran0"] + o["ngran"]]
            v_nuc = float(np.sum(4 / 3 * math.pi * lobes["r"] ** 3))
            v_gran = 4 / 3 * math.pi * grans["r"] ** 3
            opt = o["dn"] * vol + o["dn_nuc"] * v_nuc + float(np.sum(grans["dn"] * v_gran))
            absorb = o["kappa"] * vol + o["kappa_nuc"] * v_nuc + float(np.sum(grans["kappa"] * v_gran))
            rows.append((2 * o["a_um"], math.log(opt), 1e4 * absorb / vol))
    return np.array(rows[:n])


def bayes_accuracy(train: dict[str, np.ndarray], test: dict[str, np.ndarray], cols: list[int],
                   prior: dict[str, float]) -> tuple[float, dict[str, float]]:
    """Accuracy of the Gaussian Bayes rule on ``cols`` under ``prior``; recall per class."""
    params = {}
    for c, x in train.items():
        x = x[:, cols]
        cov = np.atleast_2d(np.cov(x.T))
        params[c] = (x.mean(0), np.linalg.inv(cov), math.log(np.linalg.det(cov)))

    def log_post(x: np.ndarray, c: str) -> np.ndarray:
        mean, inv, logdet = params[c]
        d = x - mean
        return (-0.5 * np.einsum("ij,jk,ik->i", d, inv, d) - 0.5 * logdet
                + math.log(max(prior[c], 1e-12)))

    recall = {}
    for k, c in enumerate(WBC_CLASSES):
        x = test[c][:, cols]
        scores = np.stack([log_post(x, j) for j in WBC_CLASSES], axis=1)
        recall[c] = float(np.mean(scores.argmax(1) == k))
    return sum(prior[c] * recall[c] for c in WBC_CLASSES), recall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=4000, help="cells per class and draw")
    ap.add_argument("--mix", default="58,30,7,4,1",
                    help="differential (N,L,M,E,B, per cent) used as the prior and to weight "
                         "the accuracy (default: a healthy adult)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    w = np.array([float(v) for v in args.mix.split(",")])
    if len(w) != len(WBC_CLASSES) or np.any(w < 0) or w.sum() <= 0:
        raise SystemExit("--mix needs five non-negative numbers (N,L,M,E,B)")
    prior = dict(zip(WBC_CLASSES, w / w.sum(), strict=True))
    rng = np.random.default_rng(args.seed)
    sets = (("diameter", [0]), ("diameter + optical volume", [0, 1]),
            ("diameter + optical volume + absorption", [0, 1, 2]))
    out = []
    for vary in (False, True):
        draws = [{c: cell_features(c, args.cells, rng, vary_scale=vary) for c in WBC_CLASSES}
                 for _ in range(2)]
        for name, cols in sets:
            acc, recall = bayes_accuracy(draws[0], draws[1], cols, prior)
            out.append({"features": name, "sample_scale_varied": vary,
                        "accuracy_5part": round(acc, 4),
                        "recall": {c: round(r, 3) for c, r in recall.items()}})
    if args.json:
        print(json.dumps({"mix_pct": dict(zip(WBC_CLASSES, w.tolist(), strict=True)),
                          "rows": out}, indent=1))
    else:
        print(f"prior (differential): {args.mix} (N,L,M,E,B %)")
        for r in out:
            rec = " ".join(f"{c[:4]} {v:.2f}" for c, v in r["recall"].items())
            print(f"{r['features']:<40} {'varied' if r['sample_scale_varied'] else 'nominal':<8}"
                  f" 5-part {r['accuracy_5part']:.4f}   recall {rec}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
