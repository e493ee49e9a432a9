"""Keep-out regions of a simulated cell: its known obstacles and the table, as the predictor's keep-out boxes.

Why: the sim flow (``ros2 launch cosmos_ros predict.launch.py use_sim:=true``) should have a meaningful
collision check out of the box. The simulator knows where its obstacles are (world boxes) and where its
camera looks, so the regions are not guessed: each object's box (grown by a margin, from the table up to
its top plus the margin) and the table below its surface (from ``table_depth`` under it down to the image
bottom) are projected with the cell's camera into normalised image boxes (``checkers.Region``'s
``'name:x0,y0,x1,y1'``). ``config/predictor_sim.yaml`` holds them for the sim node's default cell; a test
keeps the file equal to :func:`cell_keepout_regions` of the cell ``config/sim_arm.yaml`` renders.

Normalised coordinates do not depend on the image size (the camera's scale follows the image height and
the aspect ratio is the sim node's), so one list serves every resolution of that cell.
"""

from __future__ import annotations

import numpy as np

from cosmos_ros.sim.render import Camera, SceneObject
from cosmos_ros.sim.variants import Cell

#: Image size the regions are computed at (any size of the sim node's aspect ratio gives the same boxes).
_REF_WIDTH, _REF_HEIGHT = 320, 256


def _footprint(obj: SceneObject, margin: float) -> np.ndarray:
    """World corners [4, 2] of an object's box, from the table up to its top, grown by ``margin``."""
    half_w = (obj.size / 4 if obj.kind == "bottle" else obj.size / 2) + margin
    top = obj.y + obj.size / 2 + margin
    return np.array(
        [[obj.x - half_w, 0.0], [obj.x + half_w, 0.0], [obj.x - half_w, top], [obj.x + half_w, top]]
    )


def _box(camera: Camera, corners: np.ndarray) -> tuple[float, float, float, float]:
    """The normalised image bounding box of world points, clipped to the image."""
    uv = camera.world_to_pixel(corners, _REF_WIDTH, _REF_HEIGHT) / np.array([_REF_WIDTH, _REF_HEIGHT])
    lo, hi = np.clip(uv.min(axis=0), 0.0, 1.0), np.clip(uv.max(axis=0), 0.0, 1.0)
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


def cell_keepout_regions(cell: Cell, margin: float = 0.02, table_depth: float = 0.03) -> list[str]:
    """Keep-out regions ``'name:x0,y0,x1,y1'`` of a cell: ``table`` (the arm reaching ``table_depth`` m
    below the table surface or further) and one per object (``<kind>_<i>``, its box grown by ``margin`` m).

    The table band starts below the surface so the arm's pedestal, which stands on it, is never inside.
    """
    cam = cell.camera
    view = cam.half_height * _REF_WIDTH / _REF_HEIGHT * 2  # wider than the view: the band spans the image
    table = np.array(
        [
            [cam.center[0] - view, -table_depth],
            [cam.center[0] + view, -table_depth],
            [cam.center[0] - view, cam.center[1] - 3 * cam.half_height],
            [cam.center[0] + view, cam.center[1] - 3 * cam.half_height],
        ]
    )
    boxes = [("table", _box(cam, table))]
    boxes += [(f"{o.kind}_{i}", _box(cam, _footprint(o, margin))) for i, o in enumerate(cell.scene.objects)]
    return [
        f"{name}:{','.join(f'{v:.3f}' for v in box)}"
        for name, box in boxes
        if box[2] > box[0] and box[3] > box[1]
    ]
