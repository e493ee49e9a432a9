"""The demo's planning scene (ROS-free): the keep-out box, candidate plans and the simulator's truth."""

from __future__ import annotations

import numpy as np
import pytest

from cosmos_ros.demo_plans import (
    START_POSE,
    Plan,
    candidate_plans,
    keepout_region,
    plan_positions,
    render_plan,
    simulator_truth,
)
from cosmos_ros.predict.checkers import KeepOutRegionChecker, Region
from cosmos_ros.sim.variants import DEMO_CELL, Cell

H, W = 64, 80  # the shipped twin's frames


def test_keepout_box_guards_the_bottle_in_the_demo_camera() -> None:
    region = Region.parse(keepout_region(DEMO_CELL, H, W))
    assert region.name == "bottle"
    frame = render_plan(candidate_plans(1, 1)[0], START_POSE, DEMO_CELL, H, W)[0]
    rs, cs = region.pixel_slice(H, W)
    orange = np.abs(frame[rs, cs].astype(int) - (200, 120, 40)).max(axis=-1) < 40
    assert orange.mean() > 0.15  # the bottle fills a good part of its box
    with pytest.raises(ValueError, match="no bottle"):
        keepout_region(Cell(name="empty"), H, W)


def test_half_the_candidates_enter_the_box_and_the_checker_sees_it_on_rendered_frames() -> None:
    region = keepout_region(DEMO_CELL, H, W)
    checker = KeepOutRegionChecker([region])
    plans = candidate_plans(steps=12, count=8)
    truths = [simulator_truth(p, START_POSE, region, DEMO_CELL, H, W) for p in plans]
    assert sum(t.collision for t in truths) == 4, [(p.name, t) for p, t in zip(plans, truths, strict=True)]
    assert not truths[0].collision and truths[0].first_step == -1  # hold
    for p, t in zip(plans, truths, strict=True):
        frames = render_plan(p, START_POSE, DEMO_CELL, H, W)
        assert frames.shape == (13, H, W, 3)
        seen = checker.check(frames[0], frames[None, 1:])[0]
        assert seen.collision == t.collision, p.name
        if t.collision:
            assert 2 <= t.first_step <= 9, (p.name, t)  # inside the horizon, not at its edges


def test_plan_positions_accumulate_and_stop_at_the_joint_limits() -> None:
    q = plan_positions((1.1, 0.0, 0.5), np.tile(np.float32([0.05, -0.1, 0.0]), (4, 1)))
    assert np.allclose(q[0], [1.15, -0.1, 0.5]) and np.allclose(q[-1], [1.2, -0.4, 0.5])
    back = plan_positions(q[-1], np.float32([[-0.1, 0.0, 0.0]]))
    assert np.isclose(back[0, 0], 1.1)  # no wind-up past the limit
    with pytest.raises(ValueError, match="at most"):
        candidate_plans(count=99)
    assert isinstance(candidate_plans()[0], Plan)
