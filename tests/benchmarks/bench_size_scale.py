"""How a sample's overall cell size moves the classifier, and what rescaling its crops buys (on demand).

    python tests/benchmarks/bench_size_scale.py --val /tmp/val --test /tmp/held-out [--test DIR ...]

The network sees each cell alone, at a fixed sample-plane scale, and was
trained on samples whose cells are all 0.93-1.07 times the average size
(:func:`holography.sample.random_spec`, ``size_scale``): it cannot tell a
large neutrophil of a sample of large cells from a monocyte. A sample holds its
own size standard, though: its lymphocytes, which the network finds reliably
and whose volume it measures well. This reads each capture's scale from the
median volume of its cells called lymphocytes, against a reference set on
validation captures of nominal size (``--val``: training conditions, e.g.
``holodiff evaluate --out /tmp/val --captures 12 --split train``), rescales
every crop about its centre by the inverse of that scale (and the phase and
log-amplitude with it, as the optical path scales with thickness), classifies
again, and reports per capture the true and estimated scale and the per-cell
5-part accuracy before and after. Captures are folders that ``holodiff
evaluate`` has analysed (their cached detections are used).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from evaluated import analysed  # beside this file

from holography.sample import WBC_CLASSES
from inference.classify import ONNX_MODEL, Classifier
from inference.result import call_cells, is_white

MIN_LYMPHOCYTES = 20


def rescale(crops: np.ndarray, scale: float) -> np.ndarray:
    """Crops of cells ``1 / scale`` times their size: sampled about the centre, optical path scaled too."""
    n = crops.shape[-1]
    c = (n - 1) / 2
    inv = np.array([[scale, 0, c - c * scale], [0, scale, c - c * scale]], np.float32)
    out = np.empty_like(crops)
    for i in range(crops.shape[0]):
        for ch in range(crops.shape[1]):
            out[i, ch] = cv2.warpAffine(crops[i, ch], inv, (n, n),
                                        flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                                        borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    for k in range(crops.shape[1] // 2):
        u = (1 + out[:, 2 * k]) + 1j * out[:, 2 * k + 1]
        u = np.exp((np.log(np.maximum(np.abs(u), 1e-3)) + 1j * np.angle(u)) / scale)
        out[:, 2 * k], out[:, 2 * k + 1] = u.real - 1, u.imag
    return out


def _capture(path: Path, clf: Classifier) -> dict:
    a = analysed(path, clf)
    lymph = [c.volume_fl for c in a.calls if c.cls == "lymphocyte"]
    return {"name": path.name, "true_scale": float(a.truth["sample"].get("size_scale", 1.0)),
            "lymph_median_fl": float(np.median(lymph)) if len(lymph) >= MIN_LYMPHOCYTES else None,
            "n_lymph": len(lymph), "analysed": a}


def _accuracy(calls: list, kinds: list) -> tuple[int, int]:
    pairs = [(c.cls, k) for c, k in zip(calls, kinds, strict=True) if k in WBC_CLASSES and is_white(c)]
    return sum(1 for c, k in pairs if c == k), len(pairs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--val", required=True, help="validation captures (training conditions)")
    ap.add_argument("--test", action="append", required=True, help="held-out captures (repeatable)")
    ap.add_argument("--model", default=str(ONNX_MODEL))
    args = ap.parse_args()
    clf = Classifier(args.model)
    val = [_capture(p, clf) for p in sorted(Path(args.val).iterdir()) if (p / "truth.json").exists()]
    nominal = [v["lymph_median_fl"] for v in val if v["true_scale"] == 1.0 and v["lymph_median_fl"]]
    if not nominal:
        raise SystemExit(f"no validation capture of nominal cell size with {MIN_LYMPHOCYTES} "
                         "lymphocytes called")
    ref = float(np.median(nominal))
    print(f"reference lymphocyte volume {ref:.1f} fL (median of {len(nominal)} nominal-size "
          "validation captures)")
    for label, folders in (("validation", [args.val]), *(("held-out", [t]) for t in args.test)):
        caps = val if label == "validation" else [
            _capture(p, clf) for p in sorted(Path(folders[0]).iterdir()) if (p / "truth.json").exists()]
        before = after = total = 0
        print(f"{label} {folders[0]}:")
        for c in caps:
            s = (c["lymph_median_fl"] / ref) ** (1 / 3) if c["lymph_median_fl"] else 1.0
            an = c["analysed"]
            probs, _ = clf.classify_candidates(an.candidates, rescale(an.crops, s))
            again = call_cells(an.candidates, probs, an.volumes, clf.classes,
                               chamber_eq_um=an.chamber_eq_um, train_priors=clf.train_priors)
            (a, n), (b, _) = _accuracy(an.calls, an.kind), _accuracy(again, an.kind)
            before, after, total = before + a, after + b, total + n
            print(f"  {c['name']:<40} scale {c['true_scale']:.3f}  estimated {s:.3f} "
                  f"({c['n_lymph']} lymphocytes)  5-part {a / max(n, 1):.3f} -> {b / max(n, 1):.3f}")
        print(f"  all {total} white cells: 5-part {before / max(total, 1):.4f} -> "
              f"{after / max(total, 1):.4f}")


if __name__ == "__main__":
    main()
