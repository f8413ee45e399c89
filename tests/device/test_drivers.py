"""Drivers and their twins: one behavioural suite per device kind, run on both.

The real LED board and chamber run on gpiozero's mock pin factory; the real
camera runs on a byte-level fake of picamera2 (unpacked 16-bit raw rows with a
row stride, metadata on libcamera's 16-bit black-level scale).
"""

from __future__ import annotations

import numpy as np
import pytest

from device.camera import SimulatedCamera, VirtualClock
from device.chamber import GpioChamber
from device.errors import CameraError, LedError, ProfileError
from device.leds import GpioLedBoard, SimulatedLedBoard
from device.picam import Picamera2Camera, raw_format
from device.profiles import load_profile, parse_profile
from holography.simulate import VirtualBench


# -- profiles -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["hd1-imx477", "hd1-imx477-4die", "hd1-imx708", "hd1-imx219",
                                  "demo-imx477"])
def test_shipped_profiles_validate(name):
    p = load_profile(name)
    assert p.name == name
    assert set(p.leds.colours) == {"blue", "green", "red"}
    assert all(d.duty <= p.leds.max_duty for d in p.leds.dies)


@pytest.mark.parametrize("change, words", [
    ({"sensor": {"widht": 10}}, "unknown key 'widht'"),
    ({"sensor": {"model": "imx999"}}, "imx999"),
    ({"sensor": {"width": 1023}}, "even"),
    ({"geometry": {"pinhole_um": -5}}, "pinhole_um"),
    ({"chamber": {"sample_gpio": 17}}, "also an LED die's pin"),
    ({"format": "holodiff-hardware/9"}, "format"),
])
def test_bad_profiles_are_refused_with_the_field(change, words, profile_dict):
    with pytest.raises(ProfileError, match=words):
        parse_profile(profile_dict(**change))


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ProfileError, match="hd1-imx477"):
        load_profile("nonesuch")


# -- LED board: the same behaviour from the twin and the gpiozero driver -------------------------
class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _boards(spec, clock):
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    factory = MockFactory(pin_class=MockPWMPin)
    return {"twin": (SimulatedLedBoard(spec, clock=clock), None),
            "gpio": (GpioLedBoard(spec, clock=clock, pin_factory=factory), factory)}


@pytest.mark.parametrize("kind", ["twin", "gpio"])
def test_led_board_one_die_at_a_time_within_limits(kind, small_profile):
    spec = small_profile.leds
    clock = FakeClock()
    board, factory = _boards(spec, clock)[kind]
    die = spec.dies[0]
    board.on(die.name)
    if factory is not None:  # the pin really carries the duty
        assert factory.pin(die.gpio).state == pytest.approx(die.duty)
    with pytest.raises(LedError, match="still on"):
        board.on(spec.dies[1].name)
    board.off()
    if factory is not None:
        assert factory.pin(die.gpio).state == 0
    with pytest.raises(LedError, match="less than"):  # recovery time of the driver
        board.on(spec.dies[1].name)
    clock.t += 1.0
    with pytest.raises(LedError, match="outside"):
        board.on(die.name, duty=spec.max_duty + 0.05)
    with pytest.raises(LedError, match="no LED die"):
        board.on("ultraviolet-0")
    board.on(die.name)
    clock.t += spec.max_on_ms / 1e3 + 0.1
    with pytest.raises(LedError, match="cut by the board"):
        board.lit()
    assert board.lit() is None
    if factory is not None:
        assert factory.pin(die.gpio).state == 0
    board.close()


def test_twin_records_every_switch_and_refusal(small_profile):
    clock = FakeClock()
    board = SimulatedLedBoard(small_profile.leds, clock=clock)
    with board.lighting("green-0"):
        with pytest.raises(LedError):
            board.on("red-0")
    assert [(e.die, e.event) for e in board.events] == [
        ("green-0", "on"), ("red-0", "refused"), ("green-0", "off")]


# -- camera: the twin and picamera2 (byte-level fake) --------------------------------------------
class FakeRequest:
    def __init__(self, cam):
        self.cam = cam

    def make_array(self, name):
        assert name == "raw"
        h, w = self.cam.size[1], self.cam.size[0]
        frame = np.full((h, w), 256 + self.cam.controls["ExposureTime"] // 10, np.uint16)
        frame[0, :4] = [256, 1000, 2000, 4095]
        stride = np.zeros((h, w + 32), np.uint16)  # rows are padded to the ISP stride
        stride[:, :w] = frame
        return stride.view(np.uint8)

    def get_metadata(self):
        return {"ExposureTime": self.cam.controls["ExposureTime"],
                "AnalogueGain": self.cam.controls["AnalogueGain"],
                "SensorBlackLevels": [4096, 4096, 4096, 4096]}

    def release(self):
        self.cam.released += 1


class FakePicamera2:
    """What our driver uses of picamera2's Picamera2, at the level of bytes."""

    def __init__(self, num):
        self.controls = {}
        self.released = 0
        self.started = False

    def create_still_configuration(self, raw, buffer_count):
        self.fmt, self.size = raw["format"], raw["size"]
        return {"raw": raw}

    def configure(self, config):
        self.config = config

    def set_controls(self, c):
        self.controls.update(c)

    def start(self):
        self.started = True

    def stop(self):
        self.started = False

    def close(self):
        pass

    def capture_metadata(self):
        return {"ExposureTime": self.controls["ExposureTime"],
                "AnalogueGain": self.controls["AnalogueGain"]}

    def capture_request(self):
        return FakeRequest(self)


def _cameras(small_profile):
    bench = VirtualBench(_twin_cfg(small_profile), seed=1)
    clock = VirtualClock()
    leds = SimulatedLedBoard(small_profile.leds, clock=clock)
    fake = {}

    def factory(num):
        fake["cam"] = FakePicamera2(num)
        return fake["cam"]

    return {"twin": SimulatedCamera(small_profile.sensor, bench, leds, clock=clock),
            "picamera2": Picamera2Camera(small_profile.sensor, factory=factory)}, fake


def _twin_cfg(profile):
    from device.instrument import twin_config

    return twin_config(profile)


@pytest.mark.parametrize("kind", ["twin", "picamera2"])
def test_camera_frames_are_raw_uint16_of_the_mode(kind, small_profile):
    cams, fake = _cameras(small_profile)
    cam = cams[kind]
    assert cam.set_exposure(1e9) == small_profile.sensor.exposure_us_max  # clamped
    assert cam.set_exposure(1234.4) == 1234
    with pytest.raises(CameraError, match="positive"):
        cam.set_exposure(float("nan"))
    with pytest.raises(CameraError, match="gain"):
        cam.set_exposure(1000, analogue_gain=40)
    f = cam.capture()
    assert f.data.dtype == np.uint16 and f.data.shape == (256, 256)
    assert f.exposure_us == 1234 and f.black_level == 256  # the refused settings changed nothing
    assert f.data.max() <= 4095
    cam.close()
    if kind == "picamera2":
        c = fake["cam"]
        assert c.fmt == raw_format("BGGR", 12) == "SBGGR12"
        assert c.controls["AeEnable"] is False and c.controls["AwbEnable"] is False
        assert c.released == 1 and not c.started
        assert f.data[0, :4].tolist() == [256, 1000, 2000, 4095]  # stride removed, values kept


def test_camera_refuses_a_frame_of_the_wrong_mode(small_profile):
    cams, fake = _cameras(small_profile)
    cam = cams["picamera2"]
    fake["cam"].size = (128, 256)  # the sensor delivers a smaller mode than configured
    with pytest.raises(CameraError, match="smaller than the mode"):
        cam.capture()


def test_twin_camera_sees_the_lit_die_and_the_sample(small_profile):
    bench = VirtualBench(_twin_cfg(small_profile), seed=1)
    clock = VirtualClock()
    leds = SimulatedLedBoard(small_profile.leds, clock=clock, dead=["red-0"])
    cam = SimulatedCamera(small_profile.sensor, bench, leds, clock=clock)
    cam.set_exposure(1500)
    dark = cam.capture().data.astype(float)
    with leds.lighting("green-0"):
        empty = cam.capture().data.astype(float)
    clock.sleep(1)
    with leds.lighting("green-0"):
        empty2 = cam.capture().data.astype(float)
    clock.sleep(1)
    with leds.lighting("red-0"):
        dead = cam.capture().data.astype(float)
    bench.load_sample("healthy", seed=2)
    clock.sleep(1)
    with leds.lighting("green-0"):
        sample = cam.capture().data.astype(float)
    assert dark.mean() == pytest.approx(256, abs=3)
    assert dead.mean() == pytest.approx(dark.mean(), abs=3)
    assert empty.mean() > 1000
    # the sample's holograms add structure that the empty chamber does not have
    assert np.std(sample - empty) > 1.5 * np.std(empty2 - empty)  # more than frame-to-frame noise
    assert clock.t_s > 0.3  # exposures and read-outs took instrument time


# -- chamber ---------------------------------------------------------------------------------
def test_gpio_chamber_reads_switches_and_temperature(tmp_path, small_profile):
    from dataclasses import replace

    from gpiozero.pins.mock import MockFactory

    temp = tmp_path / "w1_slave"
    temp.write_text("72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n")
    spec = replace(small_profile.chamber, temperature_path=str(temp))
    factory = MockFactory()
    ch = GpioChamber(spec, pin_factory=factory)
    factory.pin(spec.sample_gpio).drive_high()
    assert not ch.sample_present()
    factory.pin(spec.sample_gpio).drive_low()  # switch closed to ground
    assert ch.sample_present()
    factory.pin(spec.door_gpio).drive_low()
    assert ch.door_closed()
    assert ch.temperature_c() == pytest.approx(23.125)
    temp.write_text("72 01 : crc=00 NO\nt=0\n")
    with pytest.raises(Exception, match="CRC"):
        ch.temperature_c()
    ch.close()
