"""Renderer of the simulated arm (numpy + OpenCV) and the inverse: joint positions read back from pixels.

Design choice: every part has its own flat, saturated colour (link 1 blue, link 2 green, gripper fingers
magenta, joints yellow) on a muted background, so the arm state is a simple function of the image. A world
model can learn it, and :func:`estimate_joint_positions` recovers it with colour masks, which the tests and
the demo use to score predicted frames against the joint states that produced them.

A cell is a :class:`Scene` (background, table, objects), a :class:`Camera` (view centre, zoom, roll) and a
:class:`Lighting` (brightness, tint); every default reproduces the original fixed cell pixel for pixel.
The pose reader takes the camera (a cell's pose estimator knows its camera) and needs nothing else:
lighting is bounded (:data:`MAX_LIGHT_SHIFT`) and scene colours are kept away from the arm's
(:func:`far_from_arm`), which is what keeps the colour masks valid in every cell
(``cosmos_ros.sim.variants`` draws cells that respect both).
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

ARM_RGBS = (LINK1_RGB, LINK2_RGB, FINGER_RGB, JOINT_RGB)
MASK_TOLERANCE = 40  # max per-channel distance of a pixel from a part's colour to count as that part
#: Largest per-channel shift lighting may cause on an arm colour: below MASK_TOLERANCE with a margin.
MAX_LIGHT_SHIFT = 32
#: Smallest per-channel (max-norm) distance of any scene colour from every arm colour.
MIN_SCENE_ARM_DISTANCE = 100

# World window seen by the default camera: centre and half height [m]; the width follows the aspect ratio.
VIEW_CENTER = (0.0, 0.30)
VIEW_HALF_HEIGHT = 0.55
WALL_TILE_RGB = (175, 180, 186)
LINK_WIDTH = 0.035  # [m]
JOINT_RADIUS = 0.028  # [m]
FINGER_LENGTH = 0.07  # [m]
FINGER_MIN_OFFSET = 0.015  # finger offset from the link axis at opening 0 [m]
FINGER_RANGE = 0.045  # extra offset at opening 1 [m]


OBJECT_KINDS = ("box", "ball", "bottle")


def far_from_arm(rgb: Sequence[int], margin: int = MIN_SCENE_ARM_DISTANCE) -> bool:
    """Whether a scene colour reads as "not the arm": at least ``margin`` (max-norm) from every arm part."""
    c = np.asarray(rgb, np.int16)
    return all(int(np.abs(c - np.asarray(a, np.int16)).max()) >= margin for a in ARM_RGBS)


@dataclass(frozen=True)
class Camera:
    """Where the side-on camera looks: world centre [m], half height of the view [m] and roll [rad].

    A smaller ``half_height`` zooms in; ``roll`` turns the image counter-clockwise about its centre. The
    default is the original fixed view.
    """

    center: tuple[float, float] = VIEW_CENTER
    half_height: float = VIEW_HALF_HEIGHT
    roll: float = 0.0

    def __post_init__(self) -> None:
        if not (self.half_height > 0 and math.isfinite(self.half_height)):
            raise ValueError(f"camera half_height={self.half_height} must be a positive number of metres")
        if not (abs(self.roll) < math.pi / 4):
            raise ValueError(f"camera roll={self.roll} rad is out of range; use |roll| < pi/4")

    def scale(self, width: int, height: int) -> float:
        """Pixels per metre for an image of the given size."""
        return height / (2 * self.half_height)

    def world_to_pixel(self, points: np.ndarray, width: int, height: int) -> np.ndarray:
        """World (x, y) [..., 2] to pixel (u, v) float coordinates."""
        s = self.scale(width, height)
        dx = points[..., 0] - self.center[0]
        dy = points[..., 1] - self.center[1]
        if self.roll:
            c, n = math.cos(self.roll), math.sin(self.roll)
            dx, dy = c * dx - n * dy, n * dx + c * dy
        return np.stack([width / 2 + dx * s, height / 2 - dy * s], axis=-1)

    def pixel_to_world(self, pixels: np.ndarray, width: int, height: int) -> np.ndarray:
        """Inverse of :meth:`world_to_pixel`."""
        s = self.scale(width, height)
        dx = (pixels[..., 0] - width / 2) / s
        dy = (height / 2 - pixels[..., 1]) / s
        if self.roll:
            c, n = math.cos(self.roll), math.sin(self.roll)
            dx, dy = c * dx + n * dy, -n * dx + c * dy
        return np.stack([dx + self.center[0], dy + self.center[1]], axis=-1)


@dataclass(frozen=True)
class Lighting:
    """Global brightness and per-channel tint (multiplicative) of everything the camera sees.

    Bounded so that no arm colour moves more than :data:`MAX_LIGHT_SHIFT` per channel (the pose reader's
    masks stay valid); the default (1, (1, 1, 1)) leaves pixels untouched.
    """

    brightness: float = 1.0
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        shift = max(abs(self.apply(c)[i] - c[i]) for c in ARM_RGBS for i in range(3))
        if shift > MAX_LIGHT_SHIFT:
            raise ValueError(
                f"lighting brightness={self.brightness}, tint={self.tint} shifts an arm colour by {shift} "
                f"(> {MAX_LIGHT_SHIFT}): the arm would not be readable; keep brightness x tint within "
                "about 0.87..1.13"
            )

    @property
    def identity(self) -> bool:
        return self.brightness == 1.0 and tuple(self.tint) == (1.0, 1.0, 1.0)

    def gains(self) -> np.ndarray:
        return self.brightness * np.asarray(self.tint, np.float32)

    def apply(self, rgb: Sequence[int]) -> tuple[int, int, int]:
        """One colour as lit."""
        if self.identity:
            return (int(rgb[0]), int(rgb[1]), int(rgb[2]))
        lit = np.clip(np.rint(np.asarray(rgb, np.float32) * self.gains()), 0, 255).astype(int)
        return (int(lit[0]), int(lit[1]), int(lit[2]))

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        """A whole uint8 image as lit (a copy; the image itself when the lighting is the identity)."""
        if self.identity:
            return img
        return np.clip(np.rint(img.astype(np.float32) * self.gains()), 0, 255).astype(np.uint8)


DEFAULT_CAMERA = Camera()
DEFAULT_LIGHTING = Lighting()


@dataclass(frozen=True)
class SceneObject:
    """A static object on the table at world (x, y) (its centre) with size [m] and RGB colour.

    Kinds: ``box`` (square), ``ball`` (disc), ``bottle`` (a block half as wide as high: the demo cell's
    kind, never in the training cells).
    """

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
    wall_rgb: tuple[int, int, int] = WALL_TILE_RGB

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


_BACKGROUND_CACHE: dict[tuple[int, int, Scene, Camera, Lighting], np.ndarray] = {}


def world_to_pixel(points: np.ndarray, width: int, height: int, camera: Camera | None = None) -> np.ndarray:
    """World (x, y) [..., 2] to pixel (u, v) float coordinates for an image of the given size."""
    return (camera or DEFAULT_CAMERA).world_to_pixel(points, width, height)


def pixel_to_world(pixels: np.ndarray, width: int, height: int, camera: Camera | None = None) -> np.ndarray:
    """Inverse of :func:`world_to_pixel`."""
    return (camera or DEFAULT_CAMERA).pixel_to_world(pixels, width, height)


def _background(width: int, height: int, scene: Scene, camera: Camera, lighting: Lighting) -> np.ndarray:
    key = (width, height, scene, camera, lighting)
    cached = _BACKGROUND_CACHE.get(key)
    if cached is not None:
        return cached
    s = camera.scale(width, height)
    if camera.roll == 0.0:
        # The original, roll-free drawing (kept exactly: the default cell's pixels must not change).
        top, bottom = np.array(scene.sky_top, np.float32), np.array(scene.sky_bottom, np.float32)
        ramp = np.linspace(0, 1, height, dtype=np.float32)[:, None]
        img = (top * (1 - ramp) + bottom * ramp).astype(np.uint8)[:, None, :].repeat(width, axis=1)
        table_v = round(camera.world_to_pixel(np.array([0.0, 0.0]), width, height)[1])
        img[max(table_v, 0) :] = scene.table_rgb
        # A few faint wall tiles give texture (and a parallax-free reference) without arm-like colours.
        step = max(int(0.15 * s), 4)
        for u in range(step // 2, width, step):
            cv2.line(img, (u, 0), (u, max(table_v - 1, 0)), scene.wall_rgb, 1)
    else:
        img = _rolled_room(width, height, scene, camera)
    for obj in scene.objects:
        centre = camera.world_to_pixel(np.array([obj.x, obj.y]), width, height)
        half = max(obj.size * s / 2, 1.0)
        if obj.kind == "ball":
            cv2.circle(img, (int(centre[0]), int(centre[1])), int(half), obj.rgb, -1, cv2.LINE_AA)
            continue
        hw, hh = (obj.size / 2, obj.size / 2) if obj.kind == "box" else (obj.size / 4, obj.size / 2)
        corners = np.array([[-hw, -hh], [hw, -hh], [hw, hh], [-hw, hh]]) + np.array([obj.x, obj.y])
        poly = np.round(camera.world_to_pixel(corners, width, height)).astype(np.int32)
        if obj.kind == "box" and camera.roll == 0.0:
            p0 = (int(centre[0] - half), int(centre[1] - half))
            p1 = (int(centre[0] + half), int(centre[1] + half))
            cv2.rectangle(img, p0, p1, obj.rgb, -1)
            cv2.rectangle(img, p0, p1, (50, 40, 30), 1)
        else:
            cv2.fillConvexPoly(img, poly, obj.rgb, cv2.LINE_8)
            cv2.polylines(img, [poly], True, (50, 40, 30), 1, cv2.LINE_8)
    img = lighting.apply_image(img)
    if len(_BACKGROUND_CACHE) > 64:
        _BACKGROUND_CACHE.clear()
    _BACKGROUND_CACHE[key] = img
    return img


def _rolled_room(width: int, height: int, scene: Scene, camera: Camera) -> np.ndarray:
    """Wall (vertical gradient in world height), table below world y = 0 and wall tiles, for a rolled view."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    world = camera.pixel_to_world(np.stack([u, v], axis=-1), width, height)
    top_y = camera.center[1] + camera.half_height
    ramp = np.clip((top_y - world[..., 1]) / (2 * camera.half_height), 0.0, 1.0)[..., None]
    top, bottom = np.array(scene.sky_top, np.float64), np.array(scene.sky_bottom, np.float64)
    img = (top * (1 - ramp) + bottom * ramp).astype(np.uint8)
    img[world[..., 1] < 0] = scene.table_rgb
    step = 0.15
    for x in np.arange(
        camera.center[0] - 3 * camera.half_height, camera.center[0] + 3 * camera.half_height, step
    ):
        x = round(x / step) * step + step / 2
        p = np.round(
            camera.world_to_pixel(np.array([[x, 0.005], [x, top_y + camera.half_height]]), width, height)
        )
        cv2.line(img, (int(p[0, 0]), int(p[0, 1])), (int(p[1, 0]), int(p[1, 1])), scene.wall_rgb, 1)
    return img


def render_frame(
    positions: Sequence[float],
    width: int = 320,
    height: int = 256,
    *,
    scene: Scene | None = None,
    config: ArmConfig | None = None,
    camera: Camera | None = None,
    lighting: Lighting | None = None,
) -> np.ndarray:
    """Render the arm at ``positions`` (joint1, joint2, joint3) as an RGB uint8 image [height, width, 3].

    Pure function of its arguments (the same inputs give the same pixels), used by the sim node, the
    predictor's tests, the demo and the data generator (``cosmos_ros.sim.dataset``). ``camera`` and
    ``lighting`` default to the original fixed cell.
    """
    if width < 16 or height < 16:
        raise ValueError(f"image size {width}x{height} is too small; use at least 16x16")
    q = np.asarray(positions, dtype=np.float64)
    if q.shape != (3,) or not np.all(np.isfinite(q)):
        raise ValueError(f"render_frame needs 3 finite joint positions; got {positions!r}")
    scene = scene if scene is not None else Scene.seeded(0)
    cfg = config or ArmConfig()
    cam = camera or DEFAULT_CAMERA
    light = lighting or DEFAULT_LIGHTING
    img = _background(width, height, scene, cam, light).copy()
    s = cam.scale(width, height)
    pts = forward_kinematics(q, cfg)
    base, elbow, wrist = cam.world_to_pixel(pts, width, height)
    lit = light.apply
    lw = max(round(LINK_WIDTH * s), 2)
    jr = max(round(JOINT_RADIUS * s), 2)

    def ip(p: np.ndarray) -> tuple[int, int]:
        return round(float(p[0])), round(float(p[1]))

    # Base pedestal.
    bw = int(0.06 * s)
    if cam.roll == 0.0:
        cv2.rectangle(
            img, (ip(base)[0] - bw, ip(base)[1]), (ip(base)[0] + bw, ip(base)[1] + bw), lit(BASE_RGB), -1
        )
    else:
        ped = np.array([[-1, 0], [1, 0], [1, -1], [-1, -1]]) * (bw / s)
        poly = np.round(cam.world_to_pixel(ped + pts[0], width, height)).astype(np.int32)
        cv2.fillConvexPoly(img, poly, lit(BASE_RGB), cv2.LINE_8)
    cv2.line(img, ip(base), ip(elbow), lit(LINK1_RGB), lw, cv2.LINE_8)
    cv2.line(img, ip(elbow), ip(wrist), lit(LINK2_RGB), lw, cv2.LINE_8)
    # Gripper: a palm across the link end and two fingers parallel to link 2, offset by the opening.
    a2 = float(q[0] + q[1])
    along = np.array([math.sin(a2), math.cos(a2)])
    perp = np.array([math.cos(a2), -math.sin(a2)])
    opening = float(np.clip(q[2], 0.0, 1.0))
    off = FINGER_MIN_OFFSET + FINGER_RANGE * opening
    wrist_w = pts[2]
    palm_half = FINGER_MIN_OFFSET + FINGER_RANGE + 0.01
    p0 = cam.world_to_pixel(wrist_w - perp * palm_half, width, height)
    p1 = cam.world_to_pixel(wrist_w + perp * palm_half, width, height)
    cv2.line(img, ip(p0), ip(p1), lit(PALM_RGB), max(lw // 2, 1), cv2.LINE_8)
    fw = max(lw // 2, 1)
    for sign in (-1.0, 1.0):
        f0 = cam.world_to_pixel(wrist_w + sign * perp * off, width, height)
        f1 = cam.world_to_pixel(wrist_w + sign * perp * off + along * FINGER_LENGTH, width, height)
        cv2.line(img, ip(f0), ip(f1), lit(FINGER_RGB), fw, cv2.LINE_8)
    for p in (base, elbow):
        cv2.circle(img, ip(p), jr, lit(JOINT_RGB), -1, cv2.LINE_8)
        cv2.circle(img, ip(p), jr, lit((40, 40, 40)), 1, cv2.LINE_8)
    return img


def _mask(img: np.ndarray, rgb: tuple[int, int, int], tol: int = MASK_TOLERANCE) -> np.ndarray:
    diff = np.abs(img.astype(np.int16) - np.array(rgb, np.int16)).max(axis=-1)
    return diff <= tol


def estimate_joint_positions(
    image: np.ndarray, config: ArmConfig | None = None, camera: Camera | None = None
) -> np.ndarray | None:
    """Read (joint1, joint2, joint3) back from an RGB frame of :func:`render_frame` (or a prediction of one).

    Link 1's colour centroid gives the shoulder angle (the centroid of a straight link is its midpoint), link
    2's centroid relative to the elbow gives the elbow angle, and the fingers' mean distance from link 2's
    axis gives the opening. ``camera`` is the cell's camera (default: the original view): pixels are mapped
    back to the world through it. Returns None when a part is not visible enough to decide.
    """
    cfg = config or ArmConfig()
    cam = camera or DEFAULT_CAMERA
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3]; got shape {image.shape}")
    h, w = image.shape[:2]
    m1, m2, mf = _mask(image, LINK1_RGB), _mask(image, LINK2_RGB), _mask(image, FINGER_RGB)
    if m1.sum() < 3 or m2.sum() < 3:
        return None
    v1, u1 = np.nonzero(m1)
    v2, u2 = np.nonzero(m2)
    vf, uf = np.nonzero(mf)
    return pose_from_parts((u1.mean(), v1.mean()), (u2.mean(), v2.mean()), uf, vf, w, h, cfg, cam)


def pose_from_parts(
    link1: tuple[float, float],
    link2: tuple[float, float],
    finger_u: np.ndarray,
    finger_v: np.ndarray,
    width: int,
    height: int,
    config: ArmConfig,
    camera: Camera,
) -> np.ndarray:
    """(joint1, joint2, joint3) from the links' pixel centroids (u, v) and the finger pixels' columns, rows.

    The geometry half of :func:`estimate_joint_positions`, shared with the batch reader
    (``cosmos_ros.sim.batch_read``) so both give the same floats; the opening is NaN with < 2 finger pixels.
    """
    w, h, cfg, cam = width, height, config, camera
    c1 = cam.pixel_to_world(np.array([link1[0], link1[1]]), w, h)
    a1 = math.atan2(c1[0], c1[1])
    elbow = np.array([math.sin(a1), math.cos(a1)]) * cfg.link_lengths[0]
    c2 = cam.pixel_to_world(np.array([link2[0], link2[1]]), w, h)
    d = c2 - elbow
    a2 = math.atan2(d[0], d[1])
    j2 = (a2 - a1 + math.pi) % (2 * math.pi) - math.pi
    opening = float("nan")
    if len(finger_u) >= 2:
        fw = cam.pixel_to_world(np.stack([finger_u, finger_v], axis=-1).astype(np.float64), w, h)
        wrist = elbow + cfg.link_lengths[1] * np.array([math.sin(a2), math.cos(a2)])
        perp = np.array([math.cos(a2), -math.sin(a2)])
        dist = np.abs((fw - wrist) @ perp)
        opening = float(np.clip((dist.mean() - FINGER_MIN_OFFSET) / FINGER_RANGE, 0.0, 1.0))
    return np.array([a1, j2, opening])
