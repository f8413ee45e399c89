"""Shared fixtures: small simulated captures made once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from holography.simulate import DEFAULT_LEDS, SimConfig, simulate_capture

GREEN = (DEFAULT_LEDS[1],)


@pytest.fixture(scope="session", autouse=True)
def golden_cache_shared(tmp_path_factory):
    """One cache of the golden captures for the whole session (they depend only on recipes)."""
    import os

    d = tmp_path_factory.mktemp("golden-shared")
    old = os.environ.get("HOLODIFF_GOLDEN_CACHE")
    os.environ["HOLODIFF_GOLDEN_CACHE"] = str(d)
    yield d
    if old is None:
        os.environ.pop("HOLODIFF_GOLDEN_CACHE", None)
    else:
        os.environ["HOLODIFF_GOLDEN_CACHE"] = old


@pytest.fixture(scope="session")
def capdir(tmp_path_factory):
    """Factory of cached simulated captures: capdir(name, **simulate kwargs)."""
    made: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("captures")

    def make(name: str, *, preset: str = "healthy", seed: int = 0, n_dies: int = 1,
             **cfg) -> Path:
        if name not in made:
            cfg.setdefault("size", (512, 512))
            cfg.setdefault("leds", GREEN)
            simulate_capture(root / name, preset=preset, seed=seed, config=SimConfig(**cfg),
                             n_dies=n_dies)
            made[name] = root / name
        return made[name]

    return make


@pytest.fixture
def small_capture(capdir):
    """A 512x512 one-LED healthy capture (session-cached)."""
    return capdir("small")
