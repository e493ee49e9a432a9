"""Euler angles <-> rotation matrices, and angle wrapping, for the action tokenizer (numpy only).

Why here and not scipy: scipy is not a dependency of the package (the clip builder runs on a robot's PC
without it), and the tokenizer needs only the twelve Tait-Bryan conventions (three distinct axes: the
roll/pitch/yaw of every robot driver we know), batched over frames.

Conventions are named as in ``scipy.spatial.transform.Rotation.from_euler``: three letters from x, y, z;
lower case = extrinsic (rotations about the fixed frame's axes, applied in the order written), upper case
= intrinsic (about the rotating frame's axes). ``"xyz"`` is roll about x, then pitch about y, then yaw
about z, all fixed axes: ``R = Rz(yaw) @ Ry(pitch) @ Rx(roll)`` (ROS' RPY, ``tf2`` ``setRPY``, and the
convention of the Bridge dataset's end-effector state). Intrinsic ``"ZYX"`` with the angles given as
(yaw, pitch, roll) is the same rotation.
"""

from __future__ import annotations

import numpy as np

_AXIS = {"x": 0, "y": 1, "z": 2}
_EVEN = {(0, 1, 2), (1, 2, 0), (2, 0, 1)}

_ORDERS = ("xyz", "xzy", "yxz", "yzx", "zxy", "zyx")
EULER_CONVENTIONS = _ORDERS + tuple(o.upper() for o in _ORDERS)


def check_convention(convention: str) -> None:
    """Raise ValueError naming the accepted conventions for anything else."""
    if convention not in EULER_CONVENTIONS:
        raise ValueError(
            f"Euler convention {convention!r} is not supported: use three distinct axes, lower case for "
            f"extrinsic (fixed axes, e.g. 'xyz' = ROS roll/pitch/yaw), upper case for intrinsic; one of "
            f"{', '.join(EULER_CONVENTIONS)}"
        )


def wrap_angle(x: np.ndarray) -> np.ndarray:
    """Angles wrapped to (-pi, pi] (a delta of 2*pi - 0.03 is a motion of -0.03)."""
    return np.pi - np.mod(np.pi - np.asarray(x, np.float64), 2 * np.pi)


def _axis_rotation(axis: int, angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    out = np.zeros((*angle.shape, 3, 3))
    j, k = (axis + 1) % 3, (axis + 2) % 3
    out[..., axis, axis] = 1.0
    out[..., j, j] = c
    out[..., k, k] = c
    out[..., j, k] = -s
    out[..., k, j] = s
    return out


def euler_to_matrix(angles: np.ndarray, convention: str = "xyz") -> np.ndarray:
    """Rotation matrices ``[..., 3, 3]`` of Euler angles ``[..., 3]`` (in the order of ``convention``)."""
    check_convention(convention)
    angles = np.asarray(angles, np.float64)
    mats = [_axis_rotation(_AXIS[c], angles[..., n]) for n, c in enumerate(convention.lower())]
    if convention.islower():  # extrinsic: the first rotation is applied first, about a fixed axis
        return mats[2] @ mats[1] @ mats[0]
    return mats[0] @ mats[1] @ mats[2]


def matrix_to_euler(mats: np.ndarray, convention: str = "xyz") -> np.ndarray:
    """Euler angles ``[..., 3]`` of rotation matrices ``[..., 3, 3]``; the middle angle in [-pi/2, pi/2].

    The inverse of :func:`euler_to_matrix` away from gimbal lock (middle angle at +-pi/2, where only the
    sum or difference of the outer two is defined). An intrinsic sequence equals the extrinsic one of the
    reversed axes with the angles reversed, so only the extrinsic case is solved.
    """
    check_convention(convention)
    mats = np.asarray(mats, np.float64)
    if convention.isupper():
        return matrix_to_euler(mats, convention.lower()[::-1])[..., ::-1]
    i, j, k = (_AXIS[c] for c in convention)
    # R = R_k(c) R_j(b) R_i(a); the parity sign makes one formula serve all six orders
    sign = 1.0 if (i, j, k) in _EVEN else -1.0
    b = np.arcsin(np.clip(-sign * mats[..., k, i], -1.0, 1.0))
    a = np.arctan2(sign * mats[..., k, j], mats[..., k, k])
    c = np.arctan2(sign * mats[..., j, i], mats[..., i, i])
    return np.stack([a, b, c], axis=-1)
