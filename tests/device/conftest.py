"""Fixtures of the device tests: small twin analyzers."""

from __future__ import annotations

import json

import pytest

from device.instrument import simulated_instrument
from device.profiles import load_profile, parse_profile


def _profile_dict(name: str = "demo-imx477", **changes) -> dict:
    """A shipped profile as a dict, with top-level sections updated from ``changes``."""
    d = json.loads(load_profile(name).path.read_text())
    for section, values in changes.items():
        if isinstance(values, dict):
            d[section].update(values)
        else:
            d[section] = values
    return d


@pytest.fixture
def profile_dict():
    """``profile_dict(name="demo-imx477", section={...})``: a profile dict with changes."""
    return _profile_dict


@pytest.fixture
def small_profile():
    """The demo profile read out in a 256x256 window (fast twin frames)."""
    return parse_profile(_profile_dict(sensor={"width": 256, "height": 256}))


@pytest.fixture
def twin(small_profile):
    """A simulated analyzer with a healthy sample in its chamber."""
    instr = simulated_instrument(small_profile)
    instr.chamber.insert("healthy", seed=5)
    yield instr
    instr.close()
