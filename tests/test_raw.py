"""Raw frame handling: dark, flat, Bayer channels, hot pixels, QC of saturated and dark frames."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from holography.capture import SensorInfo
from holography.errors import CaptureError
from holography.raw import hot_pixel_mask, normalise_frame
from holography.sensors import bayer_channel_map

SENSOR = SensorInfo(model="imx477", pixel_pitch_um=1.55, width=256, height=256, bayer="RGGB",
                    bit_depth=12, black_level=256)


def scene(rng, shape=(256, 256)):
    """A smooth hologram-like intensity around 1."""
    return (1.0 + 0.3 * gaussian_filter(rng.normal(size=shape), 3)).astype(
        np.float32)


def mosaic(inten, gains, illum, *, dark=None, rng=None, sensor=SENSOR):
    chan = bayer_channel_map(sensor.bayer, inten.shape)
    sig = inten * np.asarray(gains)[chan] * illum
    if rng is not None:
        sig = rng.poisson(sig).astype(np.float32)
    base = dark.astype(np.float32) if dark is not None else sensor.black_level
    return np.clip(np.rint(sig + base), 0, sensor.max_code).astype(np.uint16)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_flat_divides_out_channel_response_and_illumination(rng):
    truth = scene(rng)
    yy, xx = np.mgrid[:256, :256]
    illum = 1.0 - 0.3 * ((xx - 128) ** 2 + (yy - 100) ** 2) / 128**2
    gains = [300.0, 1800.0, 700.0]  # a green LED: R weak, B medium
    raw = mosaic(truth, gains, illum)
    flat = mosaic(np.ones_like(truth), gains, illum)
    inten, qc = normalise_frame(raw, sensor=SENSOR, flat=flat)
    assert qc.channels_used == ("R", "G", "B")  # R is 1/6 of G: above the 0.12 limit
    rel = inten / np.median(inten) - truth / np.median(truth)
    assert np.abs(rel).max() < 0.02  # 12-bit quantisation of ~200-count red pixels
    assert not qc.saturated and not qc.dark


def test_weak_channel_is_filled_from_neighbours(rng):
    truth = scene(rng)
    gains = [60.0, 2000.0, 900.0]  # R at 3 % of G: too noisy to use
    raw = mosaic(truth, gains, np.ones_like(truth), rng=rng)
    flat = mosaic(np.ones_like(truth), gains, np.ones_like(truth))
    inten, qc = normalise_frame(raw, sensor=SENSOR, flat=flat)
    assert qc.channels_used == ("G", "B")
    chan = bayer_channel_map("RGGB", truth.shape)
    red = chan == 0
    err_filled = np.abs(inten[red] - truth[red] / np.median(truth)).mean()
    # the filled red pixels are as good as interpolation of a smooth scene allows,
    # far better than using the red pixels themselves (shot noise of ~60 electrons)
    direct = (raw.astype(np.float32) - 256) / np.maximum(flat.astype(np.float32) - 256, 1)
    err_direct = np.abs(direct[red] / np.median(direct) - truth[red] / np.median(truth)).mean()
    assert err_filled < 0.02 and err_filled < err_direct / 3


def test_hot_pixels_from_the_dark_frame_are_replaced(rng):
    truth = scene(rng)
    dark = (256 + rng.normal(0, 1.0, truth.shape)).astype(np.uint16)
    hot = np.zeros(truth.shape, bool)
    hot[rng.integers(0, 256, 30), rng.integers(0, 256, 30)] = True
    dark[hot] += 800
    gains = [800.0, 1500.0, 700.0]
    raw = mosaic(truth, gains, 1.0, dark=dark)
    raw[hot] = np.minimum(raw[hot].astype(np.int32) + 900, 4095).astype(np.uint16)  # hotter when exposed
    flat = mosaic(np.ones_like(truth), gains, 1.0, dark=dark)
    mask = hot_pixel_mask(dark)
    assert (mask == hot).all()
    inten, qc = normalise_frame(raw, sensor=SENSOR, dark=dark, flat=flat, hot=mask)
    assert qc.hot_pixels == hot.sum()
    assert np.abs(inten[hot] - truth[hot] / np.median(truth)).max() < 0.05
    # without the mask they would stand out
    inten2, _ = normalise_frame(raw, sensor=SENSOR, dark=dark, flat=flat)
    assert np.abs(inten2[hot] - truth[hot] / np.median(truth)).max() > 0.2


def test_saturated_frame_is_flagged_with_its_fraction(rng):
    truth = scene(rng)
    raw = mosaic(truth * 3.0, [1270.0, 1270.0, 1270.0], 1.0)
    inten, qc = normalise_frame(raw, sensor=SENSOR)
    assert qc.saturated
    assert qc.saturated_fraction == pytest.approx(np.mean(raw == 4095))
    assert 0.0 < qc.saturated_fraction < 1.0


def test_dark_frame_of_a_failed_led_is_flagged(rng):
    raw = (256 + rng.normal(0, 2, (256, 256))).astype(np.uint16)
    inten, qc = normalise_frame(raw, sensor=SENSOR)
    assert qc.dark and qc.dark_fraction > 0.99
    assert np.all(inten == 1.0)


def test_flat_without_light_is_refused(rng):
    truth = scene(rng)
    raw = mosaic(truth, [800.0, 1500.0, 700.0], 1.0)
    flat = np.full(truth.shape, 257, np.uint16)
    with pytest.raises(CaptureError, match="flat frame has no light"):
        normalise_frame(raw, sensor=SENSOR, flat=flat)


def test_without_flat_channels_are_equalised(rng):
    truth = scene(rng)
    raw = mosaic(truth, [500.0, 2000.0, 900.0], 1.0)
    inten, qc = normalise_frame(raw, sensor=SENSOR)
    # Bayer equalisation removes the channel gains: no 2x2 checkerboard remains
    chan = bayer_channel_map("RGGB", truth.shape)
    means = [inten[chan == c].mean() for c in range(3)]
    assert max(means) - min(means) < 0.02
    assert np.corrcoef(inten.ravel(), truth.ravel())[0, 1] > 0.95


@pytest.mark.parametrize("bayer", ["RGGB", "BGGR", "GRBG", "GBRG", None])
def test_every_bayer_order_and_mono(bayer):
    rng = np.random.default_rng(3)
    sensor = SensorInfo(model="x", pixel_pitch_um=1.12, width=128, height=128, bayer=bayer,
                        bit_depth=10, black_level=64)
    truth = scene(rng, (128, 128))
    gains = [120.0, 600.0, 300.0]
    raw = mosaic(truth, gains, 1.0, sensor=sensor)
    flat = mosaic(np.ones_like(truth), gains, 1.0, sensor=sensor)
    inten, qc = normalise_frame(raw, sensor=sensor, flat=flat)
    assert np.abs(inten / np.median(inten) - truth / np.median(truth)).max() < 0.02
    assert qc.channels_used == (("R", "G", "B") if bayer else ("G",))
