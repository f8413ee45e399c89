"""Capture folder reading, writing and validation: one test per kind of fault."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from holography.capture import read_capture, write_capture
from holography.errors import CaptureError, HoloDiffError


@pytest.fixture
def cap(small_capture, tmp_path):
    """A private, editable copy of a small simulated capture."""
    dest = tmp_path / "cap"
    shutil.copytree(small_capture, dest)
    return dest


def edit(cap, fn):
    meta = json.loads((cap / "capture.json").read_text())
    fn(meta)
    (cap / "capture.json").write_text(json.dumps(meta))


def refused(cap, *words):
    with pytest.raises(CaptureError) as ei:
        c = read_capture(cap)
        for f in c.frames:
            c.load_frame(f)
        c.load_dark()
    msg = str(ei.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg
    return msg


def test_round_trip(cap):
    c = read_capture(cap)
    assert c.shape == (512, 512)
    assert c.leds == ("green",)
    frame = c.load_frame(0)
    assert frame.dtype == np.uint16 and frame.shape == (512, 512)
    assert frame.max() <= c.sensor.max_code
    assert c.load_flat("green").shape == (512, 512)
    assert c.to_json() == json.loads((cap / "capture.json").read_text())


def test_write_is_atomic_and_refuses_existing(cap, tmp_path):
    c = read_capture(cap)
    arrays = {f.file: c.load_frame(f) for f in c.frames}
    arrays["dark.npy"] = c.load_dark()
    arrays["flat_green.npy"] = c.load_flat("green")
    out = write_capture(tmp_path / "copy", c.to_json(), arrays)
    assert np.array_equal(out.load_frame(0), arrays[c.frames[0].file])
    assert not list(tmp_path.glob(".copy.*"))  # no temporary folder left
    with pytest.raises(CaptureError, match="already exists"):
        write_capture(tmp_path / "copy", c.to_json(), arrays)
    bad = dict(arrays)
    bad.pop("dark.npy")
    with pytest.raises(CaptureError, match="no array was given"):
        write_capture(tmp_path / "copy2", c.to_json(), bad)
    assert not (tmp_path / "copy2").exists()


def test_errors_share_the_root_class():
    assert issubclass(CaptureError, HoloDiffError) and issubclass(CaptureError, ValueError)


def test_missing_folder(tmp_path):
    refused(tmp_path / "nope", "no such capture folder")


def test_missing_capture_json(cap):
    (cap / "capture.json").unlink()
    refused(cap, "capture.json is missing")


def test_invalid_json(cap):
    (cap / "capture.json").write_text("{not json")
    refused(cap, "not valid JSON", "line 1")


def test_wrong_format_version(cap):
    edit(cap, lambda m: m.update(format="holodiff-capture/9"))
    refused(cap, "'format'", "holodiff-capture/1")


def test_missing_field(cap):
    edit(cap, lambda m: m["geometry"].pop("sample_distance_um"))
    refused(cap, "geometry.sample_distance_um", "missing")


def test_unknown_field_is_a_typo(cap):
    edit(cap, lambda m: m["sensor"].update(pixel_pitch=1.55))
    refused(cap, "sensor.pixel_pitch", "typo")


def test_wrong_type(cap):
    edit(cap, lambda m: m["sensor"].update(width="512"))
    refused(cap, "sensor.width", "integer")


def test_out_of_range(cap):
    edit(cap, lambda m: m["frames"][0].update(wavelength_nm=5300))
    refused(cap, "frames[0].wavelength_nm", "5300")


def test_bad_bayer(cap):
    edit(cap, lambda m: m["sensor"].update(bayer="RGBG"))
    refused(cap, "sensor.bayer", "RGGB")


def test_bad_bit_depth(cap):
    edit(cap, lambda m: m["sensor"].update(bit_depth=13))
    refused(cap, "sensor.bit_depth", "13")


def test_bad_timestamp(cap):
    edit(cap, lambda m: m.update(created="yesterday"))
    refused(cap, "'created'", "ISO 8601")


def test_sample_beyond_source(cap):
    edit(cap, lambda m: m["geometry"].update(source_distance_mm=1.0, sample_distance_um=2000.0))
    refused(cap, "geometry.sample_distance_um", "smaller than the source")


def test_path_traversal_in_file_name(cap):
    edit(cap, lambda m: m["frames"][0].update(file="../../etc/passwd.npy"))
    refused(cap, "frames[0].file", "plain .npy")


def test_flat_for_unknown_led(cap):
    edit(cap, lambda m: m["flats"].update(violet="flat_green.npy"))
    refused(cap, "flats.violet", "no frame")


def test_missing_frame_file(cap):
    name = json.loads((cap / "capture.json").read_text())["frames"][0]["file"]
    (cap / name).unlink()
    refused(cap, name, "missing")


def test_truncated_frame(cap):
    name = json.loads((cap / "capture.json").read_text())["frames"][0]["file"]
    data = (cap / name).read_bytes()
    (cap / name).write_bytes(data[: len(data) // 2])
    refused(cap, name, "truncated")


def test_garbage_frame(cap):
    name = json.loads((cap / "capture.json").read_text())["frames"][0]["file"]
    (cap / name).write_bytes(b"\x00garbage" * 100)
    refused(cap, name, "not a readable .npy")


def test_wrong_dtype(cap):
    name = json.loads((cap / "capture.json").read_text())["frames"][0]["file"]
    np.save(cap / name, np.zeros((512, 512), np.float32))
    refused(cap, name, "float32", "uint16")


def test_wrong_shape(cap):
    name = json.loads((cap / "capture.json").read_text())["frames"][0]["file"]
    np.save(cap / name, np.zeros((256, 512), np.uint16))
    refused(cap, name, "(256, 512)", "sensor.height")


def test_value_above_bit_depth(cap):
    name = json.loads((cap / "capture.json").read_text())["frames"][0]["file"]
    a = np.full((512, 512), 300, np.uint16)
    a[5, 5] = 5000
    np.save(cap / name, a)
    refused(cap, name, "5000", "bit_depth")


def test_dark_that_does_not_match(cap):
    np.save(cap / "dark.npy", np.zeros((512, 510), np.uint16))
    refused(cap, "dark.npy", "dark frame")
