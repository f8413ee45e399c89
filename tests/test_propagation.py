"""Angular-spectrum propagation against closed forms and the point-source geometry."""

from __future__ import annotations

import numpy as np
import pytest

from holography.errors import OpticsError
from holography.propagation import (
    TRANSFER_CACHE,
    PointSourceGeometry,
    Propagator,
    band_limit,
    propagate,
    transfer_function,
)


def grid(n, pitch):
    x = (np.arange(n) - n // 2) * pitch
    return np.meshgrid(x, x, indexing="xy")


def test_gaussian_beam_matches_closed_form():
    # paraxial Gaussian beam: U(r, z) = w0^2/a^2 exp(-r^2/a^2), a^2 = w0^2 (1 + i z / zR)
    n, pitch, lam_um, w0, z = 512, 0.5, 0.5, 10.0, 800.0
    X, Y = grid(n, pitch)
    r2 = X**2 + Y**2
    u0 = np.exp(-r2 / w0**2)
    uz = propagate(u0, pitch_um=pitch, wavelength_nm=lam_um * 1e3, distance_um=z)
    zr = np.pi * w0**2 / lam_um
    a2 = w0**2 * (1 + 1j * z / zr)
    exact = (w0**2 / a2) * np.exp(-r2 / a2)
    assert np.max(np.abs(uz - exact)) < 2e-3
    # and the beam really spread: waist w(z) = w0 sqrt(1 + (z/zR)^2)
    w_meas = np.sqrt(2 * np.sum(r2 * np.abs(uz) ** 2) / np.sum(np.abs(uz) ** 2))
    assert w_meas == pytest.approx(w0 * np.sqrt(1 + (z / zr) ** 2), rel=2e-3)


def test_circular_aperture_on_axis_rayleigh_sommerfeld():
    # on-axis field behind a circular aperture (exact RS): 1 - z/R exp(i k (R - z)), R = sqrt(z^2+a^2)
    n, pitch, lam_um, a = 1024, 0.25, 0.5, 20.0
    X, Y = grid(n, pitch)
    sub = 4
    off = (np.arange(sub) + 0.5) / sub - 0.5
    aperture = np.zeros((n, n))
    for dy in off:
        for dx in off:
            aperture += ((X + dx * pitch) ** 2 + (Y + dy * pitch) ** 2 <= a * a)
    aperture /= sub * sub
    k = 2 * np.pi / lam_um
    for z in (150.0, 267.0, 400.0):
        uz = propagate(aperture, pitch_um=pitch, wavelength_nm=lam_um * 1e3, distance_um=z)
        R = np.hypot(z, a)
        exact = 1 - z / R * np.exp(1j * k * (R - z))
        got = uz[n // 2, n // 2]
        assert abs(got - exact) < 0.06, (z, got, exact)


def _bandlimited_field(n, rng, frac=0.2):
    spec = rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))
    f = np.fft.fftfreq(n)
    F = np.hypot(*np.meshgrid(f, f))
    spec[F > frac] = 0
    return np.fft.ifft2(spec).astype(np.complex64)


def test_energy_is_conserved_and_back_propagation_inverts():
    rng = np.random.default_rng(0)
    u0 = _bandlimited_field(256, rng)
    kw = dict(pitch_um=1.0, wavelength_nm=530.0)
    uz = propagate(u0, distance_um=300.0, **kw)
    e0, ez = np.sum(np.abs(u0) ** 2), np.sum(np.abs(uz) ** 2)
    assert ez == pytest.approx(e0, rel=1e-4)
    assert np.max(np.abs(uz - u0)) > 0.1 * np.max(np.abs(u0))  # it did propagate
    back = propagate(uz, distance_um=-300.0, **kw)
    assert np.max(np.abs(back - u0)) < 1e-4 * np.max(np.abs(u0)) * 100


def test_band_limit_of_matsushima_shimobaba():
    # u_lim = 1 / (lambda sqrt((2 df z)^2 + 1)), df = 1 / (N dx)
    assert band_limit(1000, 1.0, 0.5, 0.0) == pytest.approx(2.0)
    assert band_limit(1000, 1.0, 0.5, 1000.0) == pytest.approx(1 / (0.5 * np.sqrt(5)))
    h = transfer_function((64, 64), pitch_um=0.2, wavelength_nm=500, distance_um=5000.0)
    lim = band_limit(64, 0.2, 0.5, 5000.0)
    f = np.fft.fftfreq(64, 0.2)
    outside = np.abs(f) > lim
    assert np.all(h[:, outside] == 0) and np.all(h[outside, :] == 0)
    assert np.all(np.abs(h[np.ix_(~outside, ~outside)]) == pytest.approx(1.0, abs=1e-6))


def test_transfer_functions_are_cached_and_read_only():
    kw = dict(pitch_um=1.1, wavelength_nm=470.0, distance_um=1234.5)
    h1 = transfer_function((96, 128), **kw)
    hits = TRANSFER_CACHE.hits
    h2 = transfer_function((96, 128), **kw)
    assert h1 is h2 and TRANSFER_CACHE.hits == hits + 1
    assert not h1.flags.writeable
    assert transfer_function((96, 128), **{**kw, "distance_um": 1234.0}) is not h1


def test_propagator_reuses_its_spectrum():
    rng = np.random.default_rng(1)
    u0 = _bandlimited_field(128, rng, frac=0.1)
    prop = Propagator(u0, pitch_um=1.0, wavelength_nm=530.0)
    direct = propagate(u0, pitch_um=1.0, wavelength_nm=530.0, distance_um=200.0)
    assert np.allclose(prop.at(200.0), direct, atol=1e-5)
    low = prop.at_lowpass(200.0, 2)
    assert low.shape == (64, 64)
    # the low-pass field is the central half band, propagated, sampled on every 2nd pixel
    spec = np.fft.fft2(u0)
    f = np.fft.fftfreq(128)
    keep = (f >= -0.25) & (f < 0.25)
    spec[~keep, :] = 0
    spec[:, ~keep] = 0
    band = propagate(np.fft.ifft2(spec), pitch_um=1.0, wavelength_nm=530.0, distance_um=200.0)
    assert np.allclose(low, band[::2, ::2], atol=1e-4 * np.abs(band).max())


@pytest.mark.parametrize("bad", [dict(pitch_um=0.0), dict(wavelength_nm=0.53),
                                 dict(distance_um=float("nan")), dict(medium_index=0.5)])
def test_bad_optics_are_refused(bad):
    kw = dict(pitch_um=1.0, wavelength_nm=530.0, distance_um=100.0, medium_index=1.0)
    kw.update(bad)
    with pytest.raises(OpticsError):
        transfer_function((32, 32), **kw)


def test_fresnel_scaling_matches_a_spherical_wave_hologram():
    """A point-source hologram equals a magnified plane-wave hologram (Fresnel scaling)."""
    n, pitch, lam_nm = 2048, 0.5, 530.0
    lam = lam_nm * 1e-3
    z1, z2 = 2000.0, 500.0
    geo = PointSourceGeometry(source_distance_um=z1, sample_distance_um=z2, sensor_pitch_um=pitch)
    M = geo.magnification
    assert M == pytest.approx(1.25)
    X, Y = grid(n, pitch)
    ox, oy, r = 20.0, -10.0, 6.0

    def blob(cx, cy, rad):  # a smooth absorber: no rasterisation differences between grids
        return np.exp(-((X - cx) ** 2 + (Y - cy) ** 2) / rad**2)

    # direct: spherical wave from the source, times the object, propagated z2
    R = np.sqrt(X**2 + Y**2 + z1**2)
    sph = np.exp(1j * 2 * np.pi / lam * (R - z1)) * z1 / R
    t = 1 - 0.5 * blob(ox, oy, r)
    ref = np.abs(propagate(sph, pitch_um=pitch, wavelength_nm=lam_nm, distance_um=z2)) ** 2
    holo = np.abs(propagate(sph * t, pitch_um=pitch, wavelength_nm=lam_nm,
                            distance_um=z2)) ** 2 / ref
    c = slice(n // 2 - 240, n // 2 + 240)

    def mismatch(scale_z, scale_r):
        ts = 1 - 0.5 * blob(M * ox, M * oy, M * r * scale_r)
        scaled = np.abs(propagate(ts, pitch_um=pitch, wavelength_nm=lam_nm,
                                  distance_um=M * z2 * scale_z)) ** 2
        a, b = holo[c, c] - 1, scaled[c, c] - 1
        return np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b**2))

    # scaled: the object magnified by M, plane wave, distance M z2 (sensor coordinates)
    assert mismatch(1.0, 1.0) < 0.005
    # and the comparison is sensitive: 2 % off in distance or size is clearly worse
    assert mismatch(1.02, 1.0) > 0.015 and mismatch(1.0, 1.02) > 0.015
    # reconstructing with the scaled geometry gives the true size and place in the sample plane
    rec = propagate(np.sqrt(holo), pitch_um=pitch, wavelength_nm=lam_nm, distance_um=-M * z2)
    xs = X[0] / M  # sensor coordinates -> sample plane
    w = slice(n // 2 - 80, n // 2 + 80)
    dip = 1 - np.abs(rec[w, w])
    dip = np.where(dip > dip.max() / 2, dip, 0.0)  # the core of the dip, not the twin image
    gx, gy = xs[w], xs[w]
    tot = dip.sum()
    xc = (dip.sum(axis=0) * gx).sum() / tot
    yc = (dip.sum(axis=1) * gy).sum() / tot
    assert xc == pytest.approx(ox, abs=0.3) and yc == pytest.approx(oy, abs=0.3)
    # 1 - |t| = 0.5 exp(-r^2/rad^2) exceeds half its peak where r^2 < rad^2 ln 2
    half_area = (dip > 0).sum() * (pitch / M) ** 2  # (in-line: the dip is ~halved)
    assert np.sqrt(half_area / (np.pi * np.log(2))) == pytest.approx(r, rel=0.1)
    assert geo.effective_distance_um == pytest.approx(z2 / M)


def test_point_source_geometry_inverts():
    z1 = 40000.0
    for z2 in (300.0, 1000.0, 1800.0):
        geo = PointSourceGeometry(source_distance_um=z1, sample_distance_um=z2,
                                  sensor_pitch_um=1.55)
        back = PointSourceGeometry.sample_distance_from_effective(geo.effective_distance_um, z1)
        assert back == pytest.approx(z2)
    with pytest.raises(OpticsError):
        PointSourceGeometry(source_distance_um=-1.0, sample_distance_um=1.0, sensor_pitch_um=1.0)


@pytest.mark.parametrize("shape", [(64, 64), (63, 65), (100, 37)])
def test_transfer_function_equals_its_definition(shape):
    # the kernel computes one quadrant and mirrors it; odd and even sizes must both be right
    pitch, lam, z = 0.7, 0.53, 321.0
    h = transfer_function(shape, pitch_um=pitch, wavelength_nm=lam * 1e3, distance_um=z)
    fy = np.fft.fftfreq(shape[0], pitch)[:, None]
    fx = np.fft.fftfreq(shape[1], pitch)[None, :]
    arg = 1 / lam**2 - fx**2 - fy**2
    inside = ((arg > 0) & (np.abs(fx) <= band_limit(shape[1], pitch, lam, z))
              & (np.abs(fy) <= band_limit(shape[0], pitch, lam, z)))
    ref = np.where(inside, np.exp(2j * np.pi * z * (np.sqrt(np.maximum(arg, 0)) - 1 / lam)), 0)
    assert np.abs(h - ref).max() < 1e-6
