"""Seeded cell variants of the simulated arm: scene, camera pose and lighting drawn from named sets.

A world model trained on one fixed cell memorises it; one trained on many cells learns "an arm in a cell",
and a small adapter then fits a new cell. The sets:

- ``train``: random cells (0-3 boxes and balls of random colours and places, random wall, table and
  lighting, camera centre, zoom and roll within :data:`TRAIN_CAMERA`): the base model's training data;
- ``heldout``: the same distribution from a disjoint seed range: the base model's held-out evaluation;
- ``demo``: the demo cell, never seen in training: a camera outside the training ranges (more roll, wider
  view, shifted centre), a warm light, an object kind (``bottle``) no training cell has, and the study's
  ``new_arm`` link lengths (0.32 + 0.38 m), so that the base is wrong there in a way an adapter can fix
  (with the standard arm the base was already close on this cell: 0.096-0.142 rad, a 29% cut in one run);
- the adaptation study's target cells (:data:`STUDY_CELLS`, docs/adaptation.md), each one shift away from
  a training-like cell and fixed whatever the seed: ``moved_camera`` (camera pose outside every training
  range), ``new_objects`` (more, larger objects of a new kind, saturated colours, a coloured wall) and
  ``new_arm`` (other link lengths; the parts keep their colours, which are what the pose reader looks for).

Every colour drawn is kept :data:`~cosmos_ros.sim.render.MIN_SCENE_ARM_DISTANCE` away from the arm's and the
lighting within :data:`~cosmos_ros.sim.render.MAX_LIGHT_SHIFT`, so :func:`estimate_joint_positions` reads
the pose in every cell given that cell's camera. ``cell_for(set, seed)`` is a pure function of its arguments.
A cell with another arm says so in its description (``arm``), so that the pose reader and the geometric
truth use that arm's link lengths.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cosmos_ros.sim.arm import ArmConfig
from cosmos_ros.sim.render import (
    Camera,
    Lighting,
    Scene,
    SceneObject,
    far_from_arm,
)

#: Seeds of the held-out set start here (train seeds stay below it).
HELDOUT_SEED_OFFSET = 1_000_000


@dataclass(frozen=True)
class Cell:
    """One cell: what the camera sees (scene, lighting), from where (camera), and which arm (its geometry)."""

    scene: Scene = field(default_factory=Scene)
    camera: Camera = field(default_factory=Camera)
    lighting: Lighting = field(default_factory=Lighting)
    name: str = "default"
    arm: ArmConfig = field(default_factory=ArmConfig)

    def describe(self) -> dict[str, object]:
        """JSON-able summary (written into each generated episode's index). ``arm`` only when it is not
        the standard arm: the descriptions (and so the episodes) of every earlier cell stay as they were."""
        arm = {} if self.arm == ArmConfig() else {"arm": {"link_lengths": list(self.arm.link_lengths)}}
        return {
            "name": self.name,
            "camera": {
                "center": list(self.camera.center),
                "half_height": self.camera.half_height,
                "roll": self.camera.roll,
            },
            "lighting": {"brightness": self.lighting.brightness, "tint": list(self.lighting.tint)},
            "objects": [
                {"kind": o.kind, "x": o.x, "y": o.y, "size": o.size, "rgb": list(o.rgb)}
                for o in self.scene.objects
            ],
            "sky_top": list(self.scene.sky_top),
            "sky_bottom": list(self.scene.sky_bottom),
            "table_rgb": list(self.scene.table_rgb),
            **arm,
        }


def camera_from_description(description: Mapping[str, Any] | None) -> Camera | None:
    """The camera of a cell as :meth:`Cell.describe` wrote it (an episode's ``episode.json``, a clip index's
    episode entry); None when the description has no camera (a real recording, an older sim episode).

    ValueError naming the field when the camera is malformed, so a hand-edited index fails loudly instead of
    silently falling back to the default view (whose poses would then be read wrongly).
    """
    if not description or not isinstance(description.get("camera"), Mapping):
        return None
    cam = description["camera"]
    try:
        cx, cy = (float(v) for v in cam["center"])
        return Camera(
            center=(cx, cy), half_height=float(cam["half_height"]), roll=float(cam.get("roll", 0.0))
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"cell {description.get('name', '?')!r}: camera {dict(cam)!r} is not center [x, y], half_height, "
            f"roll ({exc}); regenerate the episode or fix its episode.json and rebuild the clips"
        ) from None


def arm_from_description(description: Mapping[str, Any] | None) -> ArmConfig | None:
    """The arm of a cell as :meth:`Cell.describe` wrote it; None when the description names none (the
    standard arm). ValueError naming the field when it is malformed: reading poses with the wrong link
    lengths would silently put every elbow in the wrong place."""
    if not description or description.get("arm") is None:
        return None
    arm = description["arm"]
    try:
        l1, l2 = (float(v) for v in arm["link_lengths"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"cell {description.get('name', '?')!r}: arm {arm!r} is not {{link_lengths: [l1, l2]}} ({exc}); "
            "regenerate the episode or fix its episode.json and rebuild the clips"
        ) from None
    if not (l1 > 0 and l2 > 0):
        raise ValueError(f"cell {description.get('name', '?')!r}: arm link lengths {l1}, {l2} must be > 0 m")
    return ArmConfig(link_lengths=(l1, l2))


@dataclass(frozen=True)
class CameraRanges:
    """Uniform ranges of the camera pose: centre x, y [m], half height [m], roll [rad]."""

    center_x: tuple[float, float] = (-0.05, 0.05)
    center_y: tuple[float, float] = (0.26, 0.34)
    half_height: tuple[float, float] = (0.52, 0.60)
    roll: tuple[float, float] = (-0.06, 0.06)


@dataclass(frozen=True)
class CellDistribution:
    """How random cells are drawn (every range uniform; colours rejected when near the arm's)."""

    camera: CameraRanges = field(default_factory=CameraRanges)
    num_objects: tuple[int, int] = (0, 3)  # inclusive
    object_kinds: tuple[str, ...] = ("box", "ball")
    object_size: tuple[float, float] = (0.05, 0.10)  # [m]
    object_x: tuple[float, float] = (0.12, 0.65)  # |x| [m]: either side of the pedestal
    brightness: tuple[float, float] = (0.90, 1.10)
    tint: tuple[float, float] = (0.97, 1.03)  # per channel

    def sample(self, seed: int, name: str = "") -> Cell:
        """The cell of ``seed`` (pure function of the seed)."""
        rng = np.random.default_rng([seed, 0x5EED])
        c = self.camera
        camera = Camera(
            center=(float(rng.uniform(*c.center_x)), float(rng.uniform(*c.center_y))),
            half_height=float(rng.uniform(*c.half_height)),
            roll=float(rng.uniform(*c.roll)),
        )
        lighting = Lighting(
            brightness=float(rng.uniform(*self.brightness)),
            tint=tuple(float(v) for v in rng.uniform(*self.tint, size=3)),  # type: ignore[arg-type]
        )
        sky_top, sky_bottom, wall, table = _background_colours(rng)
        objects = []
        for _ in range(int(rng.integers(self.num_objects[0], self.num_objects[1] + 1))):
            kind = str(rng.choice(self.object_kinds))
            size = float(rng.uniform(*self.object_size))
            x = float(rng.uniform(*self.object_x)) * float(rng.choice([-1.0, 1.0]))
            y = size / 2  # standing on the table (y = 0)
            objects.append(SceneObject(kind, x, y, size, _colour(rng, lambda: rng.uniform(0, 255, 3))))
        scene = Scene(
            objects=tuple(objects),
            sky_top=sky_top,
            sky_bottom=sky_bottom,
            table_rgb=table,
            wall_rgb=wall,
        )
        return Cell(scene, camera, lighting, name or f"cell-{seed}")


class _NoColour(RuntimeError):
    """No colour far enough from the arm's among the draws of one base colour."""


def _background_colours(rng: np.random.Generator) -> tuple[tuple[int, int, int], ...]:
    """Sky top/bottom, wall and table colours, each far enough from the arm's.

    The sky and wall colours derive from one grey level; a level whose derived colours all land near an arm
    colour (the palm and base are greys too) is redrawn as a whole rather than failing the cell.
    """
    for _ in range(1000):
        try:
            return _draw_background(rng)
        except _NoColour:
            continue
    raise RuntimeError("no background colours far enough from the arm's in 1000 draws; widen the ranges")


def _draw_background(rng: np.random.Generator) -> tuple[tuple[int, int, int], ...]:
    grey = rng.uniform(150, 230)
    sky_top = _colour(rng, lambda: grey + rng.uniform(-15, 15, 3))
    sky_bottom = _colour(rng, lambda: np.asarray(sky_top) - rng.uniform(20, 60))
    wall = _colour(rng, lambda: np.asarray(sky_top) + rng.uniform(-25, 25))
    table_grey = rng.uniform(70, 180)
    table = _colour(rng, lambda: table_grey + rng.uniform(-35, 35, 3))
    return sky_top, sky_bottom, wall, table


def _colour(rng: np.random.Generator, draw: object, tries: int = 100) -> tuple[int, int, int]:
    """Draw colours until one is far enough from every arm colour (the pose reader's masks need it)."""
    for _ in range(tries):
        c = np.clip(np.rint(draw()), 0, 255).astype(int)  # type: ignore[operator]
        rgb = (int(c[0]), int(c[1]), int(c[2]))
        if far_from_arm(rgb):
            return rgb
    raise _NoColour(f"no colour far enough from the arm's in {tries} draws")


TRAIN_DISTRIBUTION = CellDistribution()
TRAIN_CAMERA = TRAIN_DISTRIBUTION.camera

#: The demo cell: camera, light, object kind and link lengths outside the training distribution.
DEMO_CELL = Cell(
    scene=Scene(
        objects=(
            SceneObject("bottle", 0.42, 0.07, 0.14, (200, 120, 40)),
            SceneObject("box", -0.38, 0.045, 0.09, (110, 60, 130)),
            SceneObject("bottle", -0.58, 0.06, 0.12, (230, 230, 225)),
        ),
        sky_top=(222, 216, 200),
        sky_bottom=(178, 170, 150),
        table_rgb=(96, 104, 112),
        wall_rgb=(200, 192, 176),
    ),
    camera=Camera(center=(0.08, 0.37), half_height=0.64, roll=0.09),
    lighting=Lighting(brightness=0.93, tint=(1.04, 1.0, 0.95)),
    arm=ArmConfig(link_lengths=(0.32, 0.38)),
    name="demo",
)

#: A training-like scene (grey wall, brown table, a box and a ball of training sizes), so that a study cell
#: built on it differs from the training cells by its one shift only.
_FAMILIAR_SCENE = Scene(
    objects=(
        SceneObject("box", 0.45, 0.04, 0.08, (165, 175, 147)),
        SceneObject("ball", -0.40, 0.035, 0.07, (69, 32, 130)),
    ),
    sky_top=(200, 200, 196),
    sky_bottom=(160, 160, 156),
    table_rgb=(120, 96, 80),
    wall_rgb=(186, 186, 182),
)

#: The adaptation study's target cells (docs/adaptation.md): one shift each from a training-like cell.
STUDY_CELLS: dict[str, Cell] = {
    # camera centre, zoom and roll all outside TRAIN_CAMERA (centre x 0.16 vs +-0.05, y 0.20 vs 0.26-0.34,
    # half height 0.68 vs 0.52-0.60, roll -0.14 vs +-0.06): the arm is smaller, lower and turned
    "moved_camera": Cell(
        scene=_FAMILIAR_SCENE,
        camera=Camera(center=(0.16, 0.20), half_height=0.68, roll=-0.14),
        name="moved_camera",
    ),
    # five objects (training: 0-3) of 0.12-0.16 m (training: 0.05-0.10), bottles among them, saturated
    # colours and a pale blue wall over a dark table (training walls and tables are near-greys)
    "new_objects": Cell(
        scene=Scene(
            objects=(
                SceneObject("bottle", 0.30, 0.08, 0.16, (240, 60, 40)),
                SceneObject("box", -0.34, 0.07, 0.14, (90, 0, 120)),
                SceneObject("ball", 0.56, 0.06, 0.12, (255, 255, 120)),
                SceneObject("bottle", -0.60, 0.075, 0.15, (20, 180, 160)),
                SceneObject("box", 0.14, 0.06, 0.12, (160, 0, 60)),
            ),
            sky_top=(160, 205, 235),
            sky_bottom=(120, 190, 215),
            table_rgb=(80, 40, 30),
            wall_rgb=(140, 200, 225),
        ),
        name="new_objects",
    ),
    # a shorter upper arm and a longer forearm (0.32 + 0.38 m vs 0.40 + 0.30 m, the same reach) in a
    # training-like scene seen by a training-like camera
    "new_arm": Cell(scene=_FAMILIAR_SCENE, arm=ArmConfig(link_lengths=(0.32, 0.38)), name="new_arm"),
}

VARIANT_SETS: tuple[str, ...] = ("train", "heldout", "demo", "default", *STUDY_CELLS)


def cell_for(variant_set: str, seed: int) -> Cell:
    """The cell of ``seed`` in a named set (``train``, ``heldout``, ``demo``, ``default``, or one of the
    study cells, which like ``demo`` are the same cell for every seed)."""
    if seed < 0 or seed >= HELDOUT_SEED_OFFSET:
        raise ValueError(f"cell seed {seed} must be in [0, {HELDOUT_SEED_OFFSET})")
    if variant_set == "train":
        return TRAIN_DISTRIBUTION.sample(seed, f"train-{seed}")
    if variant_set == "heldout":
        return TRAIN_DISTRIBUTION.sample(HELDOUT_SEED_OFFSET + seed, f"heldout-{seed}")
    if variant_set == "demo":
        return DEMO_CELL
    if variant_set == "default":
        return Cell(scene=Scene.seeded(seed), name=f"default-{seed}")
    if variant_set in STUDY_CELLS:
        return STUDY_CELLS[variant_set]
    raise ValueError(f"unknown variant set {variant_set!r}; use one of {', '.join(VARIANT_SETS)}")


def node_cell(cell: str, seed: int, num_objects: int) -> Cell:
    """The cell the sim node renders for its parameters ``cell``, ``seed`` and ``num_objects`` (the
    ``default`` cell places ``num_objects`` seeded objects; the named sets draw by seed)."""
    if cell == "default":
        return Cell(scene=Scene.seeded(seed, num_objects))
    return cell_for(cell, seed)
