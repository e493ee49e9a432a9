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
        (_raw(RGB, "yuv422"), "Image", im.UnsupportedEncodingError, "encoding"),
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
