"""The shared image module (cosmos_ros.images) and the preprocessing spec (cosmos_ros.preprocessing):
every encoding of the table decodes to the same RGB, errors are typed and name the field and the fix, the
fit policies keep their geometry, and specs round-trip and list every difference."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest
from helpers_clips import yuv601

from cosmos_ros import images as im
from cosmos_ros.preprocessing import PreprocessSpec, SpecMismatchError, check_compatible

RGB = np.random.default_rng(1).integers(0, 256, (6, 10, 3), dtype=np.uint8)


def _raw(data: np.ndarray, encoding: str, big_endian: bool = False, pad: int = 0) -> Any:
    h, w = data.shape[:2]
    rows = data.reshape(h, -1).view(np.uint8) if data.dtype == np.uint8 else None
    if rows is None:
        dt = data.dtype.newbyteorder(">" if big_endian else "<")
        rows = np.ascontiguousarray(data.astype(dt)).reshape(h, -1).view(np.uint8)
    rows = np.concatenate([rows, np.zeros((h, pad), np.uint8)], axis=1)
    return SimpleNamespace(
        height=h,
        width=w,
        encoding=encoding,
        step=rows.shape[1],
        is_bigendian=int(big_endian),
        data=rows.tobytes(),
    )


@pytest.mark.parametrize(
    "encoding,payload",
    [
        ("rgb8", lambda: RGB),
        ("bgr8", lambda: RGB[:, :, ::-1]),
        ("rgba8", lambda: np.dstack([RGB, np.full(RGB.shape[:2], 7, np.uint8)])),
        ("bgra8", lambda: np.dstack([RGB[:, :, ::-1], np.full(RGB.shape[:2], 7, np.uint8)])),
        ("rgb16", lambda: RGB.astype(np.uint16) << 8 | 0x55),
        ("bgr16", lambda: RGB[:, :, ::-1].astype(np.uint16) << 8),
    ],
)
def test_raw_encodings_decode_to_the_same_rgb(encoding: str, payload: Any) -> None:
    for big_endian in (False, True) if encoding.endswith("16") else (False,):
        msg = _raw(np.ascontiguousarray(payload()), encoding, big_endian, pad=4)
        assert np.array_equal(im.decode_image(msg, "sensor_msgs/msg/Image"), RGB), (encoding, big_endian)


def test_mono_and_compressed_decode() -> None:
    gray = RGB[:, :, 0]
    for enc, data in (("mono8", gray), ("mono16", gray.astype(np.uint16) << 8)):
        out = im.decode_image(_raw(np.ascontiguousarray(data), enc), "Image")
        assert out.shape == (6, 10, 3) and all(np.array_equal(out[:, :, c], gray) for c in range(3))
    ok, png = cv2.imencode(".png", cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR))
    assert ok
    msg = SimpleNamespace(format="rgb8; png compressed bgr8", data=png.tobytes())
    assert np.array_equal(im.decode_image(msg, "sensor_msgs/msg/CompressedImage"), RGB)
    assert np.array_equal(im.decode_image(msg), RGB)  # told by its fields


def test_errors_are_typed_and_name_the_field() -> None:
    cases = [
        (_raw(RGB, "nv21"), "Image", im.UnsupportedEncodingError, "encoding"),
        (replace_ns(_raw(RGB, "rgb8"), step=20), "Image", im.MalformedImageError, "step"),
        (replace_ns(_raw(RGB, "rgb8"), data=b"\0" * 10), "Image", im.MalformedImageError, "data"),
        (replace_ns(_raw(RGB, "rgb8"), height=0), "Image", im.MalformedImageError, ""),
        (
            SimpleNamespace(format="16UC1; compressedDepth", data=b"x"),
            "CompressedImage",
            im.UnsupportedEncodingError,
            "format",
        ),
        (
            SimpleNamespace(format="jpeg", data=b"not a jpeg"),
            "CompressedImage",
            im.MalformedImageError,
            "data",
        ),
    ]
    for msg, msgtype, kind, attribute in cases:
        with pytest.raises(kind) as err:
            im.decode_image(msg, msgtype)
        assert err.value.attribute == attribute and err.value.fix in str(err.value), str(err.value)
    with pytest.raises(im.FitError, match="unknown fit policy 'zoom'"):
        im.fit_image(RGB, 4, 4, "zoom")


# Pixel pairs share their chroma in 4:2:2, so the test picture does too; video range keeps [16, 235].
PAIRS = np.repeat(np.random.default_rng(2).integers(16, 236, (6, 5, 3)), 2, axis=1).astype(np.uint8)


@pytest.mark.parametrize("encoding", ["yuv422", "uyvy", "yuv422_yuy2", "yuyv"])
def test_packed_yuv422_of_usb_cameras_decodes_to_rgb(encoding: str) -> None:
    """USB cameras (usb_cam, v4l2_camera) publish packed 4:2:2: ROS' yuv422/uyvy is U Y V Y, yuv422_yuy2/
    yuyv is Y U Y V. Both used to be refused as unknown encodings, failing every bag of such a camera."""
    y, u, v = yuv601(PAIRS)
    packed = np.zeros((*PAIRS.shape[:2], 2), np.uint8)
    luma, chroma = (1, 0) if encoding in ("yuv422", "uyvy") else (0, 1)
    packed[..., luma] = y
    packed[:, 0::2, chroma] = u[:, 0::2]
    packed[:, 1::2, chroma] = v[:, 0::2]
    out = im.decode_image(_raw(packed, encoding, pad=4), "sensor_msgs/msg/Image")
    assert out.shape == PAIRS.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - PAIRS).max() <= 3  # rounding of the 8-bit YUV

    odd = _raw(packed[:, :9], encoding)
    with pytest.raises(im.MalformedImageError) as err:
        im.decode_image(odd, "sensor_msgs/msg/Image")
    assert err.value.attribute == "width" and "even width" in str(err.value)


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_mosaics_decode_to_the_colours_of_their_pattern(pattern: str) -> None:
    """Machine-vision drivers publish the raw sensor mosaic (bayer_rggb8...). A flat colour mosaicked with
    the named pattern must come back as that colour, in 8 and 16 bits."""
    colour = np.array([200, 90, 30], np.uint8)
    flat = np.broadcast_to(colour, (16, 20, 3))
    mosaic = np.zeros((16, 20), np.uint8)
    for k, (dy, dx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        mosaic[dy::2, dx::2] = flat[dy::2, dx::2, "rgb".index(pattern[k])]
    for bits, data in ((8, mosaic), (16, mosaic.astype(np.uint16) << 8)):
        out = im.decode_image(_raw(data, f"bayer_{pattern}{bits}"), "sensor_msgs/msg/Image")
        inner = out[4:-4, 4:-4].reshape(-1, 3)  # demosaicing guesses at the borders
        assert np.abs(inner.astype(int) - colour).max() <= 2, (bits, inner.mean(0))


def test_depth_image_is_refused_naming_the_wrong_topic() -> None:
    depth = np.full((6, 10), 1500, np.uint16)
    for encoding in ("16UC1", "32FC1"):
        data = depth if encoding == "16UC1" else depth.astype(np.float32) / 1000
        msg = SimpleNamespace(
            height=6,
            width=10,
            encoding=encoding,
            step=data.itemsize * 10,
            is_bigendian=0,
            data=data.tobytes(),
        )
        with pytest.raises(im.UnsupportedEncodingError) as err:
            im.decode_image(msg, "sensor_msgs/msg/Image")
        assert err.value.attribute == "encoding"
        assert "depth image" in err.value.problem and "colour camera's topic" in err.value.fix


def replace_ns(ns: SimpleNamespace, **kw: Any) -> SimpleNamespace:
    return SimpleNamespace(**{**vars(ns), **kw})


def test_fit_policies() -> None:
    wide = np.zeros((480, 640, 3), np.uint8)
    wide[:, :20] = 255  # a white band at the left edge: crop cuts it, pad and stretch keep it
    crop, pad, stretch = (im.fit_image(wide, 80, 64, p) for p in ("crop", "pad", "stretch"))
    assert crop.shape == pad.shape == stretch.shape == (64, 80, 3)
    assert crop.max() == 0  # 640x480 -> the centre 600x480 (5:4) -> 80x64: the band is cut
    assert stretch[:, 0].min() == 255 and pad[10, 0].min() == 255
    assert pad[0].max() == 0 and pad[-1].max() == 0  # pad: black bars top and bottom
    assert np.array_equal(im.fit_image(RGB, 10, 6), RGB)


SPEC = PreprocessSpec(
    fit="crop",
    height=64,
    width=80,
    fps=10.0,
    camera_topics=("/camera/image_raw",),
    action_mode="delta",
    tokenizer={"mode": "delta", "joint_names": ["a", "b"], "stats": {"mean": [0.0, 1.0], "std": [1.0, 1.0]}},
)


def test_spec_round_trip_and_differences() -> None:
    assert PreprocessSpec.from_dict(SPEC.to_dict()) == SPEC
    with pytest.raises(ValueError, match="unknown keys"):
        PreprocessSpec.from_dict({**SPEC.to_dict(), "colour": "red"})
    with pytest.raises(ValueError, match="fit 'zoom'"):
        PreprocessSpec(fit="zoom")
    # the same camera through image_transport's compressed transport, or named relative, is compatible
    check_compatible(SPEC, replace(SPEC, camera_topics=("camera/image_raw/compressed",)))
    check_compatible(replace(SPEC, camera_topics=()), replace(SPEC, camera_topics=("/any",)))  # unknown
    other = replace(
        SPEC,
        fit="stretch",
        width=96,
        camera_topics=("/wrist/image",),
        tokenizer={**SPEC.tokenizer, "stats": {"mean": [0.0, 2.0], "std": [1.0, 1.0]}},
    )
    with pytest.raises(SpecMismatchError) as err:
        check_compatible(SPEC, other, what="clips x", fix="rebuild them")
    assert len(err.value.differences) == 4, err.value.differences
    text = str(err.value)
    assert text.startswith("clips x does not match") and text.endswith("rebuild them")
    assert "fit policy: trained 'crop', here 'stretch'" in text and "statistics (mean) differ" in text
    # cards and clips.json written before the spec: a default with the card's geometry and tokenizer
    old = PreprocessSpec.from_card({"geometry": {"height": 64, "width": 80}, "tokenizer": SPEC.tokenizer})
    assert (old.fit, old.height, old.width, old.camera_topics) == ("crop", 64, 80, ())
