"""Out-of-family accuracy: train without one physics family, score on it; report the worst split.

    python tests/benchmarks/bench_out_of_family.py --work /tmp/oof [--train-captures 150]
        [--test-captures 48] [--epochs 20] [--split granules=upper ...] [--json]

Makes (or reuses) two crop pools with :func:`inference.dataset.build`: crowded
training captures under training optics and crowded test captures under test
optics (other seeds), every capture's cell physics drawn over all families of
:data:`holography.cellphysics.AXES`. For each split ``AXIS=FAMILY`` a network
(the shipped architecture, :func:`inference.train.train`, FP32) is trained on
the training crops whose capture had another family on that axis and scored on
the test crops that had that family, through the analysis's own calling and
summary rules on virtual captures of five blood differentials
(:mod:`inference.families`). The intervals' method error is fitted out of
family: on a first set of virtual captures of the held-out family (a method
comparison), then the coverage is measured on a second, fresh set. A model
trained on every family, scored on every test crop, gives the in-family figure
beside them. Each split also reports the per-sample adaptation (the sample-mix
EM) off, and the EM on the network's raw scores instead of the score-calibrated
ones (temperature and class biases fitted on every seventh training capture,
held back). ``--save-all DIR`` keeps the every-family network for ``holodiff
train --from-net``. Needs the ``train`` extra. Run on demand, not in CI (about
an hour and a half on a 2-core machine with the defaults).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from inference.classify import calibrate_scores, fit_score_calibration  # noqa: E402
from inference.dataset import CLASSES, build  # noqa: E402
from inference.evaluate import fit_method_error  # noqa: E402
from inference.families import (  # noqa: E402
    DEFAULT_SPLITS,
    MIXES,
    family_mask,
    share_rows,
    summary,
    virtual_capture,
)


def _load(path: Path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _subset(d: dict, m: np.ndarray) -> dict:
    return {k: (v[m] if isinstance(v, np.ndarray) and v.ndim and len(v) == len(m) else v)
            for k, v in d.items()}


def _score_net(net, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import torch

    from inference.train import INPUT_SIZE, centre

    x = torch.from_numpy(centre(crops, INPUT_SIZE).astype(np.float32))
    probs, vols = [], []
    with torch.no_grad():
        for i in range(0, len(x), 1024):
            p, v = net(x[i:i + 1024])
            probs.append(p.numpy())
            vols.append(v.numpy())
    return np.concatenate(probs), np.concatenate(vols)


def virtual_set(probs, vols, data, priors, seed: int, repeats: int, n_cells: int,
                method=None) -> list[dict]:
    """Virtual captures: each mix of :data:`MIXES` ``repeats`` times, ``n_cells`` white cells."""
    rng = np.random.default_rng(seed)
    out = []
    for name, mix in MIXES.items():
        for _ in range(repeats):
            cap = virtual_capture(probs, vols, data["labels"], data["volume_fl"], mix, n_cells,
                                  rng, classes=CLASSES, train_priors=priors, method=method)
            cap["mix"] = name
            out.append(cap)
    return out


def method_from(caps: list[dict]) -> dict:
    """A method error fitted on virtual captures, as :func:`inference.result.method_error` gives it.

    ``{"5part": {class: RMS points}, "3part": {group: RMS points}}``.
    """
    out = {}
    for part in ("5part", "3part"):
        rows = share_rows(caps, part)
        bias, sd = fit_method_error(np.array([r[0] for r in rows]), np.array([r[1] for r in rows]))
        names = caps[0][f"true_{part}"].keys()
        out[part] = {k: float(np.hypot(b, s)) for k, b, s in zip(names, bias, sd, strict=True)}
    return out


def run_split(train: dict, test: dict, axis: str | None, name: str | None, *, epochs: int,
              repeats: int, n_cells: int, log, norm: str = "batch", save: Path | None = None) -> dict:
    """Train without family ``axis=name`` (None: with every family) and score on it."""
    from inference.train import train as train_net

    if axis is None:
        tr, held = np.ones(len(train["labels"]), bool), np.ones(len(test["labels"]), bool)
    else:
        tr = ~family_mask(train["family"], axis, name)
        held = family_mask(test["family"], axis, name)
    # every seventh training capture is kept back: validation crops of the training families,
    # on which the scores' temperature and biases are fitted (as holodiff train does)
    val = tr & (train["capture"] % 7 == 3)
    dtr, dval, dte = _subset(train, tr & ~val), _subset(train, val), _subset(test, held)
    t0 = time.perf_counter()
    net = train_net(dtr, epochs=epochs, seed=0, norm=norm, log=lambda m: None)
    t_train = time.perf_counter() - t0
    raw, vols = _score_net(net, dte["crops"])
    temp, bias = fit_score_calibration(_score_net(net, dval["crops"])[0], dval["labels"])
    probs = calibrate_scores(raw, temp, bias)
    priors = np.bincount(dtr["labels"], minlength=len(CLASSES)).astype(float)
    if save is not None:
        import torch

        save.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), save / "net.pt")
        (save / "net.json").write_text(json.dumps({
            "norm": norm, "epochs": epochs, "temperature": temp, "bias": bias.tolist(),
            "class_counts": priors.tolist(), "channels": int(dtr["crops"].shape[1]),
            "val_captures": sorted({int(c) for c in dval["capture"]})}))
    method = method_from(virtual_set(probs, vols, dte, priors, 1, repeats, n_cells))
    caps = virtual_set(probs, vols, dte, priors, 2, repeats, n_cells, method=method)
    s = summary(caps)
    s["by_mix"] = {m: float(np.median([c["accuracy_5part"] for c in caps if c["mix"] == m]))
                   for m in MIXES}
    # the per-sample adaptation (EM on the sample's class mix) off: the network's own argmax
    # under its training priors, the same virtual captures otherwise
    keys = ("median_5part", "median_3part", "balanced", "recall", "mdw_error_pct", "coverage_5part")
    off = summary(virtual_set(probs, vols, dte, None, 2, repeats, n_cells, method=method))
    s["adaptation_off"] = {k: off[k] for k in keys}
    # the EM on uncalibrated scores (the network's raw probabilities)
    unc = summary(virtual_set(raw, vols, dte, priors, 2, repeats, n_cells, method=method))
    s["uncalibrated_scores"] = {k: unc[k] for k in keys}
    s["score_calibration"] = {"temperature": round(temp, 3), "bias": np.round(bias, 3).tolist()}
    s["method_error"] = {part: {k: round(v, 2) for k, v in d.items()} for part, d in method.items()}
    s.update(split="all families" if axis is None else f"{axis}={name}",
             train_crops=int(tr.sum()), test_crops=int(held.sum()),
             test_captures=int(len(np.unique(dte["capture"]))), train_seconds=round(t_train),
             norm=norm)
    # crop-level confusion of the raw network (argmax) on the held-out crops, for the record
    raw = probs.argmax(1)
    s["raw_confusion"] = np.array([[int(((dte["labels"] == i) & (raw == j)).sum())
                                    for j in range(len(CLASSES))]
                                   for i in range(len(CLASSES))]).tolist()
    log(f"{s['split']} ({norm} norm): 5-part median {s['median_5part']:.3f} (worst capture "
        f"{s['worst_5part']:.3f}), 3-part {s['median_3part']:.3f}, balanced {s['balanced']:.3f}, "
        f"volume {s['volume_error_pct']:.1f} %, MDW {s['mdw_error_pct']:.1f} %, coverage "
        f"{s['coverage_5part']:.2f}/{s['coverage_3part']:.2f}; recall "
        + ", ".join(f"{k[:4]} {v:.2f}" for k, v in s["recall"].items())
        + f" ({s['train_crops']} training crops, {s['test_crops']} held-out, "
          f"{t_train:.0f} s); adaptation off: 5-part {off['median_5part']:.3f}, balanced "
          f"{off['balanced']:.3f}; raw scores: 5-part {unc['median_5part']:.3f}, balanced "
          f"{unc['balanced']:.3f} (T {temp:.2f})")
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/holodiff-oof", help="folder of the crop pools")
    ap.add_argument("--train-captures", type=int, default=150)
    ap.add_argument("--test-captures", type=int, default=48)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=6, help="virtual captures per mix")
    ap.add_argument("--cells", type=int, default=500, help="white cells per virtual capture")
    ap.add_argument("--split", action="append", help="AXIS=FAMILY (repeatable; default: "
                    + " ".join(f"{a}={f}" for a, f in DEFAULT_SPLITS) + ")")
    ap.add_argument("--no-all", action="store_true", help="skip the every-family model")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--norm", choices=("batch", "group"), default="batch",
                    help="the network's normalisation (inference.train.make_net)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--save-all", help="folder to save the every-family network in (net.pt, "
                                       "net.json)")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    def log(m: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {m}", file=sys.stderr, flush=True)

    pools = {}
    for split, n in (("train", args.train_captures), ("test", args.test_captures)):
        path = work / f"pool_{split}.npz"
        if not path.exists():
            log(f"making the {split} pool: {n} crowded captures")
            build(path, split=split, captures=n, workers=args.workers, physics="random", log=log)
        pools[split] = _load(path)
    splits = ([tuple(s.split("=", 1)) for s in args.split] if args.split else list(DEFAULT_SPLITS))
    results = []
    if not args.no_all:
        results.append(run_split(pools["train"], pools["test"], None, None, epochs=args.epochs,
                                 repeats=args.repeats, n_cells=args.cells, log=log, norm=args.norm,
                                 save=Path(args.save_all) if args.save_all else None))
    for axis, name in splits:
        results.append(run_split(pools["train"], pools["test"], axis, name, epochs=args.epochs,
                                 repeats=args.repeats, n_cells=args.cells, log=log,
                                 norm=args.norm))
    held = [r for r in results if r["split"] != "all families"]
    worst = {k: (min if k not in ("volume_error_pct", "mdw_error_pct") else max)(
        r[k] for r in held) for k in ("median_5part", "median_3part", "balanced",
                                      "volume_error_pct", "mdw_error_pct", "coverage_5part",
                                      "coverage_3part")} if held else {}
    rep = {"splits": results, "worst_held_out": worst,
           "command": "python tests/benchmarks/bench_out_of_family.py "
                      + " ".join(argv if argv is not None else sys.argv[1:])}
    if args.json:
        print(json.dumps(rep, indent=1))
    else:
        print(f"{'split':22s} {'5-part':>7s} {'worst':>6s} {'3-part':>7s} {'bal.':>6s} "
              f"{'vol %':>6s} {'MDW %':>6s} {'cov5':>5s} {'cov3':>5s}")
        for r in results:
            print(f"{r['split']:22s} {r['median_5part']:7.3f} {r['worst_5part']:6.3f} "
                  f"{r['median_3part']:7.3f} {r['balanced']:6.3f} {r['volume_error_pct']:6.1f} "
                  f"{r['mdw_error_pct']:6.1f} {r['coverage_5part']:5.2f} {r['coverage_3part']:5.2f}")
        if worst:
            print("worst held-out family: " + ", ".join(f"{k} {v:.3f}" for k, v in worst.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
