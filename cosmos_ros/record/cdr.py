"""Cheap readers for the few fields the recorder checks, straight from CDR bytes (ROS-free).

The recorder subscribes with ``raw=True`` and never deserializes a camera frame: to validate a 1 MB image it
only needs the header, size and encoding at its start, which these functions read in microseconds. The
layout is plain XCDR1 (what rmw_fastrtps / cyclonedds put on the wire and rosbag2 stores): a 4-byte
encapsulation header, then fields aligned to their size relative to the end of that header.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass


class CdrError(ValueError):
    """The bytes are not a well-formed CDR message of the expected type."""


class _Cursor:
    __slots__ = ("buf", "end", "pos")

    def __init__(self, buf: bytes | memoryview) -> None:
        if len(buf) < 4:
            raise CdrError(f"CDR message too short ({len(buf)} bytes)")
        kind = bytes(buf[0:2])
        if kind == b"\x00\x01":
            self.end = "<"
        elif kind == b"\x00\x00":
            self.end = ">"
        else:
            raise CdrError(f"unsupported CDR encapsulation {kind.hex()} (expected plain CDR, 0001 or 0000)")
        self.buf = buf
        self.pos = 4

    def align(self, n: int) -> None:
        rem = (self.pos - 4) % n
        if rem:
            self.pos += n - rem

    def u32(self) -> int:
        self.align(4)
        if self.pos + 4 > len(self.buf):
            raise CdrError("CDR message truncated")
        (val,) = struct.unpack_from(self.end + "I", self.buf, self.pos)
        self.pos += 4
        return int(val)

    def i32(self) -> int:
        self.align(4)
        if self.pos + 4 > len(self.buf):
            raise CdrError("CDR message truncated")
        (val,) = struct.unpack_from(self.end + "i", self.buf, self.pos)
        self.pos += 4
        return int(val)

    def u8(self) -> int:
        if self.pos + 1 > len(self.buf):
            raise CdrError("CDR message truncated")
        val = self.buf[self.pos]
        self.pos += 1
        return int(val)

    def string(self) -> str:
        n = self.u32()
        if n == 0:
            return ""
        if self.pos + n > len(self.buf):
            raise CdrError(f"CDR string of {n} bytes runs past the end of the message")
        raw = bytes(self.buf[self.pos : self.pos + n - 1])  # drop the terminating NUL
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_bytes(self) -> int:
        n = self.u32()
        if self.pos + n > len(self.buf):
            raise CdrError(f"CDR byte sequence of {n} bytes runs past the end of the message")
        self.pos += n
        return n

    def f64_seq(self) -> list[float]:
        n = self.u32()
        if n == 0:
            return []
        self.align(8)
        if self.pos + 8 * n > len(self.buf):
            raise CdrError(f"CDR float64 sequence of {n} values runs past the end of the message")
        vals = struct.unpack_from(f"{self.end}{n}d", self.buf, self.pos)
        self.pos += 8 * n
        return list(vals)


@dataclass(frozen=True)
class Header:
    """std_msgs/Header: stamp in nanoseconds and frame id."""

    stamp_ns: int
    frame_id: str


@dataclass(frozen=True)
class ImageInfo:
    """The checked fields of sensor_msgs/Image (the pixel data is not copied)."""

    header: Header
    height: int
    width: int
    encoding: str
    step: int
    data_len: int


@dataclass(frozen=True)
class CompressedImageInfo:
    """The checked fields of sensor_msgs/CompressedImage."""

    header: Header
    format: str
    data_len: int


@dataclass(frozen=True)
class JointStateInfo:
    """sensor_msgs/JointState (small, so it is read whole)."""

    header: Header
    name: list[str]
    position: list[float]
    velocity: list[float]
    effort: list[float]


def _header(cur: _Cursor) -> Header:
    sec = cur.i32()
    nsec = cur.u32()
    frame = cur.string()
    return Header(sec * 1_000_000_000 + nsec, frame)


def read_header(data: bytes | memoryview) -> Header:
    """The std_msgs/Header at the start of any stamped message."""
    return _header(_Cursor(data))


def read_image(data: bytes | memoryview) -> ImageInfo:
    """Header, size, encoding and data length of a CDR sensor_msgs/Image."""
    cur = _Cursor(data)
    hdr = _header(cur)
    height, width = cur.u32(), cur.u32()
    encoding = cur.string()
    cur.u8()  # is_bigendian
    step = cur.u32()
    n = cur.skip_bytes()
    return ImageInfo(hdr, height, width, encoding, step, n)


def read_compressed_image(data: bytes | memoryview) -> CompressedImageInfo:
    """Header, format and data length of a CDR sensor_msgs/CompressedImage."""
    cur = _Cursor(data)
    hdr = _header(cur)
    fmt = cur.string()
    n = cur.skip_bytes()
    return CompressedImageInfo(hdr, fmt, n)


def read_joint_state(data: bytes | memoryview) -> JointStateInfo:
    """All fields of a CDR sensor_msgs/JointState."""
    cur = _Cursor(data)
    hdr = _header(cur)
    names = [cur.string() for _ in range(cur.u32())]
    pos = cur.f64_seq()
    vel = cur.f64_seq()
    eff = cur.f64_seq()
    return JointStateInfo(hdr, names, pos, vel, eff)


class JointStateChecker:
    """Checks a stream of CDR JointState messages at 500 Hz+ for the cost of a few struct reads each.

    A robot publishes the same joint names in every message, so the names block is parsed once and later
    messages are compared to it byte for byte; only when it differs (another order, missing joints) is the
    message parsed in full. Returns the header stamp and a problem description (None when fine).
    """

    def __init__(self, expected: list[str] | tuple[str, ...]) -> None:
        self.expected = list(expected)
        self._block: bytes | None = None  # names block (count + strings) of the last good message

    def _full(self, data: bytes | memoryview) -> tuple[int, str | None]:
        info = read_joint_state(data)
        stamp = info.header.stamp_ns
        if len(info.position) != len(info.name):
            return stamp, f"{len(info.name)} names but {len(info.position)} positions"
        if info.velocity and len(info.velocity) != len(info.name):
            return stamp, f"{len(info.name)} names but {len(info.velocity)} velocities"
        missing = [j for j in self.expected if j not in info.name]
        if missing:
            return stamp, f"missing joints {missing} (joint_names parameter lists {self.expected})"
        if bytes(data[0:2]) == b"\x00\x01":
            start = _names_start(data)
            cur = _Cursor(data)
            cur.pos = start
            for _ in range(cur.u32()):
                cur.string()
            self._block = bytes(data[start : cur.pos])
        return stamp, None

    def check(self, data: bytes | memoryview) -> tuple[int, str | None]:
        """(header stamp [ns], problem or None) for one CDR sensor_msgs/JointState."""
        block = self._block
        if block is None or len(data) < 16 or bytes(data[0:2]) != b"\x00\x01":
            return self._full(data)
        sec, nsec = struct.unpack_from("<iI", data, 4)
        start = _names_start(data)
        end = start + len(block)
        if data[start:end] != block:
            return self._full(data)
        n_names = struct.unpack_from("<I", data, start)[0]
        pos = end + (-(end - 4)) % 4
        if pos + 4 > len(data):
            return self._full(data)
        n_pos = struct.unpack_from("<I", data, pos)[0]
        if n_pos != n_names:
            return self._full(data)
        pos += 4
        if n_pos:
            pos += (-(pos - 4)) % 8
            pos += 8 * n_pos
        if pos + 4 > len(data):
            return self._full(data)
        n_vel = struct.unpack_from("<I", data, pos)[0]
        if n_vel and n_vel != n_names:
            return self._full(data)
        return sec * 1_000_000_000 + nsec, None


def _names_start(data: bytes | memoryview) -> int:
    """Offset of JointState.name (after the header) in a little-endian CDR message."""
    (flen,) = struct.unpack_from("<I", data, 12)
    pos = 16 + flen
    return pos + (-(pos - 4)) % 4
