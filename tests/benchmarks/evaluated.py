"""What the benchmarks on ``holodiff evaluate``'s captures share: the command line, the capture
loop, and each capture classified and called as the analysis does, matched to the truth."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from holography.sample import N_MEDIUM
from inference.classify import ONNX_MODEL, Classifier
from inference.dataset import match
from inference.evaluate import _detections
from inference.result import call_cells


def each_capture(doc: str, per_capture: Callable[[Path, Classifier], Any | None]
                 ) -> tuple[argparse.Namespace, list[Any]]:
    """Parse ``DIR... [--model M] [--json]`` and run ``per_capture`` on every capture under them.

    ``DIR`` holds captures that ``holodiff evaluate`` has analysed (their
    cached detections are used); captures for which ``per_capture`` returns
    None are left out.
    """
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("dirs", nargs="+", help="folders of captures analysed by holodiff evaluate")
    ap.add_argument("--model", default=str(ONNX_MODEL))
    ap.add_argument("--json", action="store_true", help="the rows as JSON on stdout")
    args = ap.parse_args()
    clf = Classifier(args.model)
    rows = [r for d in args.dirs for p in sorted(Path(d).iterdir())
            if (p / "truth.json").exists() and (r := per_capture(p, clf)) is not None]
    return args, rows


@dataclass(frozen=True, slots=True)
class Analysed:
    """One capture as the analysis sees it, with the truth of every candidate."""

    truth: dict
    shape: tuple[int, int]
    candidates: list
    crops: np.ndarray
    probs: np.ndarray  # the network's own probabilities (before the sample's mix)
    volumes: np.ndarray
    calls: list
    kind: list  # per candidate: the matched truth object's kind, or None
    chamber_eq_um: float


def analysed(path: Path, clf: Classifier) -> Analysed:
    """A capture's cached detections classified and called as the analysis does, matched to the truth.

    The chamber's air-equivalent height is kept as ``chamber_eq_um`` for a second call.
    """
    det, truth, shape = _detections(path, False)
    chamber = json.loads((path / "capture.json").read_text())["chamber"]
    crops = det.plain_crops if det.plain_crops is not None else det.crops
    probs, vols = clf.classify_candidates(det.candidates, crops)
    eq = chamber["height_um"] / N_MEDIUM
    calls = call_cells(det.candidates, probs, vols, clf.classes, chamber_eq_um=eq,
                       train_priors=clf.train_priors)
    idx, _ = match(np.array([[c.x, c.y] for c in det.candidates]).reshape(-1, 2), truth,
                   det.pixel_um, shape)
    kind = [truth["objects"][j]["kind"] if j >= 0 else None for j in idx]
    return Analysed(truth, shape, det.candidates, crops, np.asarray(probs), vols, calls, kind,
                    eq)
