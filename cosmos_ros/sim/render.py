"""Renderer of the simulated arm (numpy + OpenCV) and the inverse: joint positions read back from pixels.

Design choice: every part has its own flat, saturated colour (link 1 blue, link 2 green, gripper fingers
magenta, joints yellow) on a muted background, so the arm state is a simple function of the image. A world
model can learn it, and :func:`estimate_joint_positions` recovers it with colour masks, which the tests and
the demo use to score predicted frames against the joint states that produced them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from cosmos_ros.sim.arm import ArmConfig, forward_kinematics

# RGB colours of the parts (kept far apart in hue from each other and from the scene).
LINK1_RGB = (30, 70, 235)
LINK2_RGB = (30, 200, 60)
FINGER_RGB = (230, 30, 210)
JOINT_RGB = (250, 215, 0)
PALM_RGB = (60, 60, 70)
BASE_RGB = (90, 90, 100)

# World window seen by the camera: centre and half height [m]; the width follows the aspect ratio.
VIEW_CENTER = (0.0, 0.30)
VIEW_HALF_HEIGHT = 0.55
LINK_WIDTH = 0.035  # [m]
JOINT_RADIUS = 0.028  # [m]
FINGER_LENGTH = 0.07  # [m]
FINGER_MIN_OFFSET = 0.015  # finger offset from the link axis at opening 0 [m]
FINGER_RANGE = 0.045  # extra offset at opening 1 [m]


@dataclass(frozen=True)
class SceneObject:
    """A static object on the table: ``box`` or ``ball`` at world (x, y) with size [m] and RGB colour."""

    kind: str
    x: float
    y: float
    size: float
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Scene:
    """Background and objects; :meth:`seeded` places them reproducibly."""

    objects: tuple[SceneObject, ...] = field(default_factory=tuple)
    sky_top: tuple[int, int, int] = (205, 210, 215)
    sky_bottom: tuple[int, int, int] = (160, 165, 172)
    table_rgb: tuple[int, int, int] = (140, 110, 80)

    @classmethod
    def seeded(cls, seed: int = 0, num_objects: int = 2) -> Scene:
        """``num_objects`` objects at seeded places on the table (colours away from the arm's)."""
        rng = np.random.default_rng(seed + 7919)
        palette = [(240, 140, 30), (120, 60, 20), (200, 200, 190), (160, 40, 40)]
        objects = []
        for i in range(num_objects):
            kind = "box" if i % 2 == 0 else "ball"
            size = float(rng.uniform(0.05, 0.09))
            x = float(rng.uniform(0.15, 0.6)) * (1 if i % 2 == 0 else -1)
            objects.append(SceneObject(kind, x, size / 2, size, palette[i % len(palette)]))
        return cls(objects=tuple(objects))


_BACKGROUND_CACHE: dict[tuple[int, int, Scene], np.ndarray] = {}


def _view_scale(width: int, height: int) -> float:
    return height / (2 * VIEW_HALF_HEIGHT)


def world_to_pixel(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """World (x, y) [..., 2] to pixel (u, v) float coordinates for an image of the given size."""
    s = _view_scale(width, height)
    u = width / 2 + (points[..., 0] - VIEW_CENTER[0]) * s
    v = height / 2 - (points[..., 1] - VIEW_CENTER[1]) * s
    return np.stack([u, v], axis=-1)


def pixel_to_world(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Inverse of :func:`world_to_pixel`."""
    s = _view_scale(width, height)
    x = (pixels[..., 0] - width / 2) / s + VIEW_CENTER[0]
    y = (height / 2 - pixels[..., 1]) / s + VIEW_CENTER[1]
    return np.stack([x, y], axis=-1)


def _background(width: int, height: int, scene: Scene) -> np.ndarray:
    key = (width, height, scene)
    cached = _BACKGROUND_CACHE.get(key)
    if cached is not None:
        return cached
    top, bottom = np.array(scene.sky_top, np.float32), np.array(scene.sky_bottom, np.float32)
    ramp = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    img = (top * (1 - ramp) + bottom * ramp).astype(np.uint8)[:, None, :].repeat(width, axis=1)
    s = _view_scale(width, height)
    table_v = round(world_to_pixel(np.array([0.0, 0.0]), width, height)[1])
    img[max(table_v, 0) :] = scene.table_rgb
    # A few faint wall tiles give texture (and a parallax-free reference) without arm-like colours.
    step = max(int(0.15 * s), 4)
    for u in range(step // 2, width, step):
        cv2.line(img, (u, 0), (u, max(table_v - 1, 0)), (175, 180, 186), 1)
    for obj in scene.objects:
        centre = world_to_pixel(np.array([obj.x, obj.y]), width, height)
        half = max(obj.size * s / 2, 1.0)
        if obj.kind == "box":
            p0 = (int(centre[0] - half), int(centre[1] - half))
            p1 = (int(centre[0] + half), int(centre[1] + half))
            cv2.rectangle(img, p0, p1, obj.rgb, -1)
            cv2.rectangle(img, p0, p1, (50, 40, 30), 1)
        else:
            cv2.circle(img, (int(centre[0]), int(centre[1])), int(half), obj.rgb, -1, cv2.LINE_AA)
    if len(_BACKGROUND_CACHE) > 16:
        _BACKGROUND_CACHE.clear()
    _BACKGROUND_CACHE[key] = img
    return img


def render_frame(
    positions: Sequence[float],
    width: int = 320,
    height: int = 256,
    *,
    scene: Scene | None = None,
    config: ArmConfig | None = None,
) -> np.ndarray:
    """Render the arm at ``positions`` (joint1, joint2, joint3) as an RGB uint8 image [height, width, 3].

    Pure function of its arguments (the same inputs give the same pixels), used by the sim node, the
    predictor's tests and the demo.
    """
    if width < 16 or height < 16:
        raise ValueError(f"image size {width}x{height} is too small; use at least 16x16")
    q = np.asarray(positions, dtype=np.float64)
    if q.shape != (3,) or not np.all(np.isfinite(q)):
        raise ValueError(f"render_frame needs 3 finite joint positions; got {positions!r}")
    scene = scene if scene is not None else Scene.seeded(0)
    cfg = config or ArmConfig()
    img = _background(width, height, scene).copy()
    s = _view_scale(width, height)
    pts = forward_kinematics(q, cfg)
    base, elbow, wrist = world_to_pixel(pts, width, height)
    lw = max(round(LINK_WIDTH * s), 2)
    jr = max(round(JOINT_RADIUS * s), 2)

    def ip(p: np.ndarray) -> tuple[int, int]:
        return round(float(p[0])), round(float(p[1]))

    # Base pedestal.
    bw = int(0.06 * s)
    cv2.rectangle(img, (ip(base)[0] - bw, ip(base)[1]), (ip(base)[0] + bw, ip(base)[1] + bw), BASE_RGB, -1)
    cv2.line(img, ip(base), ip(elbow), LINK1_RGB, lw, cv2.LINE_8)
    cv2.line(img, ip(elbow), ip(wrist), LINK2_RGB, lw, cv2.LINE_8)
    # Gripper: a palm across the link end and two fingers parallel to link 2, offset by the opening.
    a2 = float(q[0] + q[1])
    along = np.array([math.sin(a2), math.cos(a2)])
    perp = np.array([math.cos(a2), -math.sin(a2)])
    opening = float(np.clip(q[2], 0.0, 1.0))
    off = FINGER_MIN_OFFSET + FINGER_RANGE * opening
    wrist_w = pts[2]
    palm_half = FINGER_MIN_OFFSET + FINGER_RANGE + 0.01
    p0 = world_to_pixel(wrist_w - perp * palm_half, width, height)
    p1 = world_to_pixel(wrist_w + perp * palm_half, width, height)
    cv2.line(img, ip(p0), ip(p1), PALM_RGB, max(lw // 2, 1), cv2.LINE_8)
    fw = max(lw // 2, 1)
    for sign in (-1.0, 1.0):
        f0 = world_to_pixel(wrist_w + sign * perp * off, width, height)
        f1 = world_to_pixel(wrist_w + sign * perp * off + along * FINGER_LENGTH, width, height)
        cv2.line(img, ip(f0), ip(f1), FINGER_RGB, fw, cv2.LINE_8)
    for p in (base, elbow):
        cv2.circle(img, ip(p), jr, JOINT_RGB, -1, cv2.LINE_8)
        cv2.circle(img, ip(p), jr, (40, 40, 40), 1, cv2.LINE_8)
    return img


def _mask(img: np.ndarray, rgb: tuple[int, int, int], tol: int = 40) -> np.ndarray:
    diff = np.abs(img.astype(np.int16) - np.array(rgb, np.int16)).max(axis=-1)
    return diff <= tol


def estimate_joint_positions(image: np.ndarray, config: ArmConfig | None = None) -> np.ndarray | None:
    """Read (joint1, joint2, joint3) back from an RGB frame of :func:`render_frame` (or a prediction of one).

    Link 1's colour centroid gives the shoulder angle (the centroid of a straight link is its midpoint), link
    2's centroid relative to the elbow gives the elbow angle, and the fingers' mean distance from link 2's
    axis gives the opening. Returns None when a part is not visible enough to decide.
    """
    cfg = config or ArmConfig()
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3]; got shape {image.shape}")
    h, w = image.shape[:2]
    base_px = world_to_pixel(np.zeros(2), w, h)
    m1, m2, mf = _mask(image, LINK1_RGB), _mask(image, LINK2_RGB), _mask(image, FINGER_RGB)
    if m1.sum() < 3 or m2.sum() < 3:
        return None
    v1, u1 = np.nonzero(m1)
    c1 = pixel_to_world(np.array([u1.mean(), v1.mean()]), w, h)
    a1 = math.atan2(c1[0], c1[1])
    elbow = np.array([math.sin(a1), math.cos(a1)]) * cfg.link_lengths[0]
    v2, u2 = np.nonzero(m2)
    c2 = pixel_to_world(np.array([u2.mean(), v2.mean()]), w, h)
    d = c2 - elbow
    a2 = math.atan2(d[0], d[1])
    j2 = (a2 - a1 + math.pi) % (2 * math.pi) - math.pi
    opening = float("nan")
    if mf.sum() >= 2:
        vf, uf = np.nonzero(mf)
        fw = pixel_to_world(np.stack([uf, vf], axis=-1).astype(np.float64), w, h)
        wrist = elbow + cfg.link_lengths[1] * np.array([math.sin(a2), math.cos(a2)])
        perp = np.array([math.cos(a2), -math.sin(a2)])
        dist = np.abs((fw - wrist) @ perp)
        opening = float(np.clip((dist.mean() - FINGER_MIN_OFFSET) / FINGER_RANGE, 0.0, 1.0))
    del base_px
    return np.array([a1, j2, opening])
