"""Can the collision verdicts on predicted frames be trusted? Agreement with the verdicts on the truth.

For every clip the configured checker (the predictor's: `cosmos_ros.predict.checkers.load_checker`) runs on
the predicted frames and on the recorded future frames, each against its own context: the recorded frames
against the camera's context frame, the predictions against that frame as the model decoded it (what the
predictor node does: a VAE round trip is no change of the scene). Reported:
agreement (same collision / no-collision verdict), precision and recall of "collision" (the true frames'
verdict is the reference), and the error of the first colliding step where both say collision.

For the simulated arm the clips also carry the joint states behind each frame, so there is a reference
that no pixel checker can give: whether the arm geometrically lies inside a keep-out region
(`sim_arm_in_regions`, forward kinematics projected with the camera of the clip's own cell, from the clip
index). Both the checker on the predictions and the checker on the true frames are scored against it
(the latter is the checker's own floor).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cosmos_ros.predict.checkers import CheckResult

SIM_ARM_JOINTS = ("joint1", "joint2", "joint3")


def verdicts(checker: Any, context: np.ndarray, frames: np.ndarray) -> CheckResult:
    """The checker's verdict on one predicted/true sequence frames [N, H, W, 3] after `context` [H, W, 3]."""
    return checker.check(np.asarray(context), np.asarray(frames)[None])[0]


def agreement_figures(pred: Sequence[CheckResult], ref: Sequence[CheckResult | bool]) -> dict[str, Any]:
    """Agreement, precision/recall of "collision" and first-step error of `pred` against `ref`.

    `ref` items are CheckResults (a checker on the true frames) or plain bools (geometric truth, where the
    first step is given separately by `first_steps`). Precision is NaN when `pred` never says collision,
    recall NaN when `ref` never does: the report shows "n/a" rather than a flattering 0 or 1.
    """
    p = np.array([r.collision for r in pred], bool)
    r = np.array([x if isinstance(x, (bool, np.bool_)) else x.collision for x in ref], bool)
    if p.shape != r.shape:
        raise ValueError(f"{len(p)} predicted verdicts but {len(r)} reference verdicts")
    tp = int((p & r).sum())
    first_err = [
        abs(a.first_collision_step - b.first_collision_step)
        for a, b in zip(pred, ref, strict=True)
        if isinstance(b, CheckResult) and a.collision and b.collision
    ]
    return {
        "n": int(p.size),
        "agreement": float((p == r).mean()) if p.size else float("nan"),
        "precision": tp / int(p.sum()) if p.sum() else float("nan"),
        "recall": tp / int(r.sum()) if r.sum() else float("nan"),
        "collisions_predicted": int(p.sum()),
        "collisions_reference": int(r.sum()),
        "first_step_error": float(np.mean(first_err)) if first_err else float("nan"),
        "first_step_pairs": len(first_err),
    }


def sim_arm_in_regions(
    positions: np.ndarray,
    regions: Sequence[Any],
    height: int,
    width: int,
    camera: Any = None,
    arm: Any = None,
) -> np.ndarray:
    """bool [N]: whether the simulated arm at joint positions [N, >=2] (joint1, joint2 first) has a point of
    its links inside any keep-out region (normalised image boxes, `checkers.Region`) of an image of that size.

    Points are sampled along both links (every ~half pixel), projected with the camera of the clip's cell
    (`cosmos_ros.sim.render.Camera`; None: the default view): a cell with a moved camera sees the arm
    elsewhere in the image, so the default camera would put it in the wrong boxes. The link width and the
    gripper are left out, so this is the arm's skeleton entering the box. ``arm`` is the cell's
    `cosmos_ros.sim.arm.ArmConfig` (None: the standard link lengths).
    """
    from cosmos_ros.sim.arm import forward_kinematics
    from cosmos_ros.sim.render import world_to_pixel

    out = np.zeros(len(positions), bool)
    samples = np.linspace(0.0, 1.0, max(height, width))[:, None]
    for i, q in enumerate(np.asarray(positions, np.float64)):
        base, elbow, wrist = forward_kinematics(q, arm)
        pts = np.concatenate([base + samples * (elbow - base), elbow + samples * (wrist - elbow)])
        uv = world_to_pixel(pts, width, height, camera)
        for region in regions:
            rs, cs = region.pixel_slice(height, width)
            inside = (
                (uv[:, 0] >= cs.start) & (uv[:, 0] < cs.stop) & (uv[:, 1] >= rs.start) & (uv[:, 1] < rs.stop)
            )
            if inside.any():
                out[i] = True
                break
    return out
