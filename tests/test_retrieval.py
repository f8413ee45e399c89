"""Support-constrained phase retrieval: twin image removed, phase of known objects recovered."""

from __future__ import annotations

import numpy as np
import pytest

from holography.capture import read_capture
from holography.propagation import propagate
from holography.reconstruct import reference_amplitudes, sensor_distance
from holography.retrieval import retrieve, retrieve_leds, support_mask, twin_image_energy
from holography.simulate import DEFAULT_LEDS

PITCH, WL, D = 1.0, 530.0, 600.0


@pytest.fixture(scope="module")
def phase_disks():
    """Weak phase disks (known OPD) and their noise-free in-line hologram."""
    n = 256
    yy, xx = np.mgrid[:n, :n]
    opd = np.zeros((n, n))
    for cy, cx, r, o in ((60, 70, 5, 0.04), (150, 180, 6, 0.06), (200, 60, 4, 0.03)):
        opd += o * ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)
    t = np.exp(1j * 2 * np.pi / (WL * 1e-3) * opd)
    holo = np.abs(propagate(t, pitch_um=PITCH, wavelength_nm=WL, distance_um=D)) ** 2
    return opd, np.sqrt(holo)


def test_retrieval_recovers_the_phase_and_removes_the_twin(phase_disks):
    opd, amp = phase_disks
    plain = propagate(amp, pitch_um=PITCH, wavelength_nm=WL, distance_um=-D)
    support = support_mask([plain])
    truth_support = opd > 0
    assert support[truth_support].mean() > 0.95  # the support holds the objects
    assert support.mean() < 0.1
    res = retrieve(amp, support, pitch_um=PITCH, wavelength_nm=WL, distance_um=D, iterations=100)
    assert res.mismatch[-1] < 0.2 * res.mismatch[0]
    opd_of = lambda u: np.angle(u / np.mean(u[~support])) * WL * 1e-3 / (2 * np.pi)  # noqa: E731
    err_plain = np.abs(opd_of(plain) - opd)[truth_support].mean()
    err_ret = np.abs(opd_of(res.field) - opd)[truth_support].mean()
    assert err_ret < 0.005  # um: 5 nm on 30-60 nm objects (27 nm without retrieval)
    assert err_ret < 0.5 * err_plain
    assert twin_image_energy(res.field, support) < 0.2 * twin_image_energy(plain, support)


def test_iterations_are_bounded_and_shapes_checked(phase_disks):
    _, amp = phase_disks
    res = retrieve(amp, np.zeros(amp.shape, bool), pitch_um=PITCH, wavelength_nm=WL,
                   distance_um=D, iterations=3, tolerance=0.0)
    assert res.iterations == 3 and len(res.mismatch) == 3
    with pytest.raises(ValueError):
        retrieve(amp, np.zeros((10, 10), bool), pitch_um=PITCH, wavelength_nm=WL, distance_um=D)


def test_shared_support_lowers_the_twin_image_on_a_simulated_capture(capdir):
    cap = read_capture(capdir("retrieval", leds=DEFAULT_LEDS, seed=41))
    z = sensor_distance(cap.geometry.sample_distance_um + 3.0, 40000.0)
    amps = reference_amplitudes(cap)
    support, plain, results = retrieve_leds(amps, pitch_um=cap.sensor.pixel_pitch_um,
                                            distance_um=z, iterations=20)
    assert 0.005 < support.mean() < 0.2
    for led, res in results.items():
        before = twin_image_energy(plain[led], support)
        after = twin_image_energy(res.field, support)
        assert after < 0.4 * before, (led, before, after)
