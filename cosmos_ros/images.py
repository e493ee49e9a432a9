"""Camera messages -> the model's RGB frames: the one image module of the clip builder AND the predictor.

Why one module: a model sees only what its clips held. If the clip builder and the predictor decoded or
resized frames each in their own way, a 640x480 camera would be centre-cropped for training and stretched
for serving, silently. Both sides call :func:`decode_image` then :func:`fit_image` (the predictor through its
preprocessing spec, ``cosmos_ros.preprocessing``), so a frame recorded in a bag and the same frame received
live become the same array.

Decoding is table-driven (:data:`RAW_ENCODINGS`): each ``sensor_msgs/Image`` encoding names its element
type, its channel count and the OpenCV conversion to RGB; row padding (``step``) and big-endian 16-bit data
are honoured; 16-bit images keep their high byte (``>> 8``). The table holds the colour encodings, mono,
packed YUV 4:2:2 of USB cameras and the Bayer mosaics of machine-vision cameras; a depth image (16UC1,
32FC1) is refused as such, since a wrong topic is the likely cause. ``sensor_msgs/CompressedImage`` in
jpeg or png (image_transport's ``"<enc>; jpeg compressed bgr8"`` formats included) is decoded with OpenCV;
``compressedDepth`` and other formats are refused with the reason. An encoding outside the table is handed
to cv_bridge where it imports (a ROS install); cv_bridge is not installable everywhere this runs, and the
table covers what cameras publish, so the common encodings give the same pixels with or without it.

Fit policies (:data:`FIT_POLICIES`, the clip builder's ``resize`` option):
- ``crop`` (default): scale to cover the target keeping the aspect ratio, then centre-crop (no distortion,
  loses the borders);
- ``pad``: scale to fit inside and pad with black (no distortion, keeps the whole view);
- ``stretch``: scale each axis independently (keeps everything, distorts).

Errors are typed (:class:`UnsupportedEncodingError`, :class:`MalformedImageError`, :class:`FitError`, all
:class:`ImageError`, a ``ValueError``); each names the problem and the fix, and ``attribute`` says which
message field is at fault, so a service can answer ``context_frames[0].encoding: ...``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

FIT_POLICIES = ("crop", "pad", "stretch")
DEFAULT_FIT = "crop"


@dataclass(frozen=True)
class RawLayout:
    """How one raw encoding lays out a pixel: element type, channels, OpenCV code to RGB (None: is RGB)."""

    dtype: type
    channels: int
    to_rgb: int | None


RAW_ENCODINGS: dict[str, RawLayout] = {
    "rgb8": RawLayout(np.uint8, 3, None),
    "bgr8": RawLayout(np.uint8, 3, cv2.COLOR_BGR2RGB),
    "rgba8": RawLayout(np.uint8, 4, cv2.COLOR_RGBA2RGB),
    "bgra8": RawLayout(np.uint8, 4, cv2.COLOR_BGRA2RGB),
    "mono8": RawLayout(np.uint8, 1, cv2.COLOR_GRAY2RGB),
    "mono16": RawLayout(np.uint16, 1, cv2.COLOR_GRAY2RGB),
    "rgb16": RawLayout(np.uint16, 3, None),
    "bgr16": RawLayout(np.uint16, 3, cv2.COLOR_BGR2RGB),
    # packed 4:2:2 (USB cameras: usb_cam, v4l2_camera), BT.601 video range as V4L2 delivers it; ROS'
    # "yuv422" is UYVY and "yuv422_yuy2" is YUYV (sensor_msgs/image_encodings.hpp)
    "yuv422": RawLayout(np.uint8, 2, cv2.COLOR_YUV2RGB_UYVY),
    "uyvy": RawLayout(np.uint8, 2, cv2.COLOR_YUV2RGB_UYVY),
    "yuv422_yuy2": RawLayout(np.uint8, 2, cv2.COLOR_YUV2RGB_YUY2),
    "yuyv": RawLayout(np.uint8, 2, cv2.COLOR_YUV2RGB_YUY2),
    # raw sensor mosaics (machine-vision drivers: Spinnaker, pylon); OpenCV names a pattern by its second
    # row's first two pixels, hence RGGB -> BayerBG
    **{
        f"bayer_{pattern}{bits}": RawLayout(np.uint8 if bits == 8 else np.uint16, 1, code)
        for pattern, code in (
            ("rggb", cv2.COLOR_BayerBG2RGB),
            ("bggr", cv2.COLOR_BayerRG2RGB),
            ("gbrg", cv2.COLOR_BayerGR2RGB),
            ("grbg", cv2.COLOR_BayerGB2RGB),
        )
        for bits in (8, 16)
    },
}
# One-channel distance images: a depth camera's topic, never a picture the video model can use.
DEPTH_ENCODINGS = ("16uc1", "32fc1")
COMPRESSED_FORMATS = ("jpeg", "png")


class ImageError(ValueError):
    """An image that cannot become a model frame. ``problem`` and ``fix`` are the two halves of the
    message; ``attribute`` is the message field at fault ("" = the image as a whole)."""

    def __init__(self, problem: str, fix: str, attribute: str = "") -> None:
        self.problem, self.fix, self.attribute = problem, fix, attribute
        super().__init__(f"{problem}; {fix}")


class UnsupportedEncodingError(ImageError):
    """An encoding (raw) or format (compressed) this module does not decode."""


class MalformedImageError(ImageError):
    """The message contradicts itself (size vs step vs data) or its payload does not decode."""


class FitError(ImageError):
    """A frame that cannot be fitted to the model size (empty, or an unknown policy)."""


def is_compressed(msgtype: str) -> bool:
    """Whether a message type name (``sensor_msgs/msg/CompressedImage``, a class name...) is compressed."""
    return str(msgtype).rstrip("/").endswith("CompressedImage")


def decode_image(msg: Any, msgtype: str = "") -> np.ndarray:
    """A deserialized Image or CompressedImage (rclpy or rosbags message) -> ``[H, W, 3]`` uint8 RGB.

    ``msgtype`` is the type name (the bag connection's); empty: told by the message's fields."""
    if is_compressed(msgtype) or (not msgtype and hasattr(msg, "format") and not hasattr(msg, "encoding")):
        return decode_compressed(str(msg.format), msg.data)
    return decode_raw(
        str(msg.encoding),
        int(msg.height),
        int(msg.width),
        int(msg.step),
        msg.data,
        bool(getattr(msg, "is_bigendian", 0)),
        msg,
    )


def decode_raw(
    encoding: str,
    height: int,
    width: int,
    step: int,
    data: Any,
    big_endian: bool = False,
    msg: Any = None,
) -> np.ndarray:
    """The fields of a ``sensor_msgs/Image`` -> ``[H, W, 3]`` uint8 RGB (a copy; ``data`` is not kept)."""
    layout = RAW_ENCODINGS.get(encoding.lower())
    if layout is None and encoding.lower() in DEPTH_ENCODINGS:
        raise UnsupportedEncodingError(
            f"image encoding {encoding!r} is a depth image (distances, not colours)",
            "use the colour camera's topic (its encoding is rgb8, bgr8, yuv422... or a CompressedImage), not "
            "the depth camera's",
            "encoding",
        )
    if layout is None:
        via_bridge = _cv_bridge_decode(msg) if msg is not None else None
        if via_bridge is not None:
            return via_bridge
        raise UnsupportedEncodingError(
            f"unknown image encoding {encoding!r}",
            f"publish one of {', '.join(RAW_ENCODINGS)} (or sensor_msgs/CompressedImage jpeg/png)",
            "encoding",
        )
    if height <= 0 or width <= 0:
        raise MalformedImageError(f"empty image {width}x{height}", "send a non-empty image")
    itemsize = np.dtype(layout.dtype).itemsize
    row = width * layout.channels * itemsize
    if step < row:
        raise MalformedImageError(
            f"step {step} < width*channels*bytes {row} for {encoding}", f"set step to {row}", "step"
        )
    if layout.channels == 2 and width % 2:
        raise MalformedImageError(
            f"{encoding} is {width} pixels wide: packed 4:2:2 pixels come in pairs",
            "send an even width",
            "width",
        )
    buf = _as_bytes(data)
    if buf.size < step * height:
        raise MalformedImageError(
            f"{buf.size} bytes but step*height = {step * height} ({encoding} {width}x{height})",
            "send step*height bytes",
            "data",
        )
    img = buf[: step * height].reshape(height, step)[:, :row]
    if itemsize > 1:
        dt = np.dtype(layout.dtype).newbyteorder(">" if big_endian else "<")
        img = (np.ascontiguousarray(img).view(dt) >> 8).astype(np.uint8)
    img = img.reshape(height, width, layout.channels)
    if layout.to_rgb is None:
        return np.array(img, np.uint8, copy=True)
    return cv2.cvtColor(np.ascontiguousarray(img), layout.to_rgb)


def decode_compressed(fmt: str, data: Any) -> np.ndarray:
    """A ``sensor_msgs/CompressedImage`` (format, data) -> ``[H, W, 3]`` uint8 RGB."""
    f = fmt.lower()
    if "compresseddepth" in f or (f and not any(k in f for k in ("jpeg", "jpg", "png"))):
        raise UnsupportedEncodingError(
            f"unknown CompressedImage format {fmt!r}",
            "publish jpeg or png (image_transport's compressed transport)",
            "format",
        )
    buf = _as_bytes(data)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if img is None:
        raise MalformedImageError(
            f"CompressedImage ({fmt or 'no format'}) of {buf.size} bytes does not decode",
            "send a complete jpeg or png image",
            "data",
        )
    # image_transport (and OpenCV) encode colour images as BGR; imdecode hands BGR back.
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _as_bytes(data: Any) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    if isinstance(data, (bytes, bytearray, memoryview)) or hasattr(data, "buffer_info"):
        return np.frombuffer(memoryview(data).cast("B"), np.uint8)  # array.array (rclpy) too: no copy
    return np.asarray(data, dtype=np.uint8).reshape(-1)


@functools.cache
def _cv_bridge() -> Any:
    try:
        from cv_bridge import CvBridge  # type: ignore[import-not-found]

        return CvBridge()
    except Exception:  # not installed (pip-only installs), or PyPI's stale ROS 1 port failing to import
        return None


def _cv_bridge_decode(msg: Any) -> np.ndarray | None:
    """Encodings outside the table (yuv422, 8UC3 ...) through cv_bridge, where it imports."""
    bridge = _cv_bridge()
    if bridge is None:
        return None
    try:
        return np.ascontiguousarray(bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
    except Exception:
        return None


def _scale(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize to exactly ``width x height``, fast: integer INTER_AREA reduction, then INTER_LINEAR.

    Why two steps: OpenCV's INTER_AREA is about 10x slower for non-integer factors (3 ms for 640x480 ->
    320x256 here) and the builder must keep up with reading the bag. Averaging by the integer part of the
    factor first keeps the anti-aliasing of INTER_AREA; the remaining factor is below 2, where bilinear
    sampling does not alias noticeably.
    """
    h, w = img.shape[:2]
    k = int(min(w / width, h / height))
    if k >= 2:
        img = cv2.resize(
            img[: h - h % k, : w - w % k], ((w - w % k) // k, (h - h % k) // k), interpolation=cv2.INTER_AREA
        )
    if img.shape[:2] == (height, width):
        return np.ascontiguousarray(img)
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)


def check_fit(src_hw: tuple[int, int], height: int, width: int, policy: str) -> None:
    """FitError when a ``src_hw`` frame cannot become ``height x width`` under ``policy`` (no pixels)."""
    if policy not in FIT_POLICIES:
        raise FitError(f"unknown fit policy {policy!r}", f"use one of {', '.join(FIT_POLICIES)}")
    h, w = src_hw
    if h <= 0 or w <= 0 or height <= 0 or width <= 0:
        raise FitError(f"cannot fit a {w}x{h} frame to {width}x{height}", "send a non-empty image")


def fit_image(img: np.ndarray, width: int, height: int, policy: str = DEFAULT_FIT) -> np.ndarray:
    """Resize ``img`` to ``height x width`` RGB with the given policy (see the module docstring)."""
    h, w = img.shape[:2]
    check_fit((h, w), height, width, policy)
    if (h, w) == (height, width):
        return np.ascontiguousarray(img)
    if policy == "stretch":
        return _scale(img, width, height)
    if policy == "crop":
        # crop the source to the target aspect ratio (centred), then scale: same result as scale + crop,
        # with fewer pixels to resample
        if w * height > h * width:
            cw = max(1, round(h * width / height))
            x0 = (w - cw) // 2
            return _scale(img[:, x0 : x0 + cw], width, height)
        ch = max(1, round(w * height / width))
        y0 = (h - ch) // 2
        return _scale(img[y0 : y0 + ch], width, height)
    scale = min(width / w, height / h)
    nw, nh = min(width, max(1, round(w * scale))), min(height, max(1, round(h * scale)))
    scaled = _scale(img, nw, nh)
    out = np.zeros((height, width, 3), np.uint8)
    x0, y0 = (width - nw) // 2, (height - nh) // 2
    out[y0 : y0 + nh, x0 : x0 + nw] = scaled
    return out
