"""The golden capture set: fixed captures every model bundle must reproduce.

The set is made by the project's simulator from fixed recipes (sensor, window,
seed, a crowded sample with all five classes in near-equal numbers), so the
software carries it as a recipe rather than as megabytes of frames; the
captures are generated once into ``$HOLODIFF_HOME/golden`` and reused. Each
reference result records the SHA-256 of the frames it was made from: where a
different numerical library makes the regenerated frames differ in a bit, the
comparison still holds within the tolerances and the report says so.

A model reproduces its golden results when, on every golden capture, (a) at
least ``call_agreement_min`` of the reference cells get the same call (class,
or rejected) from the candidate model (cells matched by position within
``match_px``), (b) every 5-part percentage is within ``percent_abs_max``
points, and (c) the number of classified cells is within ``count_rel_max``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from holography import __version__
from holography.capture import read_capture
from holography.errors import HoloDiffError

FORMAT = "holodiff-golden/1"
GOLDEN_SET: tuple[dict[str, Any], ...] = (
    {"name": "g1-imx477", "sensor": "imx477", "size": 448, "seed": 9101},
    {"name": "g2-imx708", "sensor": "imx708", "size": 448, "seed": 9102},
    {"name": "g3-imx219", "sensor": "imx219", "size": 448, "seed": 9103},
)
TOLERANCES = {"call_agreement_min": 0.97, "percent_abs_max": 2.0, "count_rel_max": 0.03,
              "match_px": 2.0}
#: the loosest tolerances the software accepts from a bundle, whatever it says
LIMITS = {"call_agreement_min": 0.9, "percent_abs_max": 5.0, "count_rel_max": 0.1, "match_px": 4.0}


def default_cache(root: Path) -> Path:
    """Where golden captures are kept: ``$HOLODIFF_GOLDEN_CACHE``, else ``root/golden``.

    The captures depend only on their recipes, so several homes (a test session's) may share one.
    """
    env = os.environ.get("HOLODIFF_GOLDEN_CACHE")
    return Path(env) if env else Path(root) / "golden"


class GoldenMismatch(HoloDiffError, ValueError):
    """A model does not reproduce its golden reference results."""


def _recipe_key(recipe: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]


def golden_capture(recipe: dict[str, Any], cache: Path) -> Path:
    """The capture folder of one golden recipe, simulated into ``cache`` on first use."""
    from holography.simulate import SimConfig, simulate_capture
    from inference.dataset import crowded_spec

    dest = cache / f"{recipe['name']}-{_recipe_key(recipe)}"
    if (dest / "capture.json").exists():
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    spec = crowded_spec(np.random.default_rng(recipe["seed"]), "legacy")
    tmp = cache / f".{dest.name}.building"
    shutil.rmtree(tmp, ignore_errors=True)
    simulate_capture(tmp, preset="random", seed=recipe["seed"], spec=spec,
                     config=SimConfig(sensor=recipe["sensor"], size=(recipe["size"], recipe["size"])))
    tmp.rename(dest)
    return dest


def frames_sha256(capture_dir: Path) -> str:
    """One hash over every frame, dark and flat of a capture (in ``capture.json`` order)."""
    cap = read_capture(capture_dir)
    h = hashlib.sha256()
    names = [f.file for f in cap.frames] + ([cap.dark] if cap.dark else []) + list(cap.flats.values())
    for n in names:
        h.update((capture_dir / n).read_bytes())
    return h.hexdigest()


def _summary(res: dict[str, Any]) -> dict[str, Any]:
    return {"cells_detected": res["cells_detected"], "cells_classified": res["cells_classified"],
            "counts": res["counts"], "differential_5part": res["differential_5part"],
            "flags": res["flags"]}


def _calls(res: dict[str, Any]) -> list[list]:
    return [[round(c["x"], 2), round(c["y"], 2), c["class"]] for c in res["cells"]]


def reference_results(model: str | Path, cache: Path, *,
                      progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The golden results of ``model`` (run when a bundle is signed)."""
    from inference.analyze import AnalysisOptions, analyze_capture

    caps = []
    for recipe in GOLDEN_SET:
        if progress:
            progress(f"golden capture {recipe['name']}")
        d = golden_capture(recipe, cache)
        res = analyze_capture(d, options=AnalysisOptions(model=model, cells=True))
        caps.append({"name": recipe["name"], "recipe": recipe, "frames_sha256": frames_sha256(d),
                     "result": _summary(res), "calls": _calls(res)})
    return {"format": FORMAT, "software": __version__, "tolerances": TOLERANCES, "captures": caps}


@dataclass(frozen=True, slots=True, kw_only=True)
class GoldenReport:
    """Outcome of a golden run: per capture, agreement and worst percentage difference."""

    captures: list[dict[str, Any]]
    frames_identical: bool


def check_golden(model: str | Path, golden: dict[str, Any], cache: Path, *,
                 progress: Callable[[str], None] | None = None) -> GoldenReport:
    """Run ``model`` on the golden set and compare with ``golden``.

    Raises
    ------
    GoldenMismatch
        On the first capture outside the tolerances, saying by how much.
    """
    from inference.analyze import AnalysisOptions, analyze_capture

    if golden.get("format") != FORMAT or not golden.get("captures"):
        raise GoldenMismatch("the bundle's golden results are not holodiff-golden/1; refused")
    tol = {k: golden.get("tolerances", {}).get(k, v) for k, v in TOLERANCES.items()}
    tol["call_agreement_min"] = max(tol["call_agreement_min"], LIMITS["call_agreement_min"])
    for k in ("percent_abs_max", "count_rel_max", "match_px"):
        tol[k] = min(tol[k], LIMITS[k])
    out = []
    identical = True
    for ref in golden["captures"]:
        recipe = ref["recipe"]
        if progress:
            progress(f"golden capture {ref['name']}")
        d = golden_capture(recipe, cache)
        same = frames_sha256(d) == ref["frames_sha256"]
        identical &= same
        res = analyze_capture(d, options=AnalysisOptions(model=model, cells=True))
        got = _calls(res)
        xy = np.array([c[:2] for c in got], float).reshape(-1, 2)
        agree = 0
        for x, y, cls in ref["calls"]:
            if len(xy):
                k = int(np.argmin(np.hypot(xy[:, 0] - x, xy[:, 1] - y)))
                if np.hypot(xy[k, 0] - x, xy[k, 1] - y) <= tol["match_px"] and got[k][2] == cls:
                    agree += 1
        agreement = agree / max(len(ref["calls"]), 1)
        dpct = max(abs(res["differential_5part"][c] - v)
                   for c, v in ref["result"]["differential_5part"].items())
        n_ref = ref["result"]["cells_classified"]
        dcount = abs(res["cells_classified"] - n_ref) / max(n_ref, 1)
        row = {"name": ref["name"], "cells": len(ref["calls"]), "agreement": round(agreement, 4),
               "max_percent_diff": round(dpct, 2), "count_rel_diff": round(dcount, 4),
               "frames_identical": same}
        out.append(row)
        if (agreement < tol["call_agreement_min"] or dpct > tol["percent_abs_max"]
                or dcount > tol["count_rel_max"]):
            raise GoldenMismatch(
                f"model outputs differ from its golden results on {ref['name']}: "
                f"{100 * agreement:.1f} % of {len(ref['calls'])} cells called the same (needs "
                f"{100 * tol['call_agreement_min']:.0f} %), largest 5-part difference {dpct:.1f} "
                f"points (limit {tol['percent_abs_max']}); refused")
    return GoldenReport(captures=out, frames_identical=identical)
