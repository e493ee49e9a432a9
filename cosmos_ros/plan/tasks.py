"""Seeded reaching tasks for the closed-loop evaluation: a joint target with a keep-out box across the way.

Each task: a start pose, a joint target (joint1, joint2; the gripper holds), and one keep-out box in image
space placed on the arm's straight-line (joint-space) path, so a planner that ignores it collides. A task is
kept only when start and goal are clear of the box and a collision-free path exists (a search on a joint
grid) at most ``max_detour`` frames longer than the straight path: every task is solvable by a
short-horizon MPC, and the oracle's success rate measures the planner, not the tasks.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from cosmos_ros.plan.sim_arm import arm_in_regions, arm_points
from cosmos_ros.predict.checkers import Region
from cosmos_ros.sim.arm import ArmConfig


@dataclass(frozen=True)
class ReachTask:
    """One evaluation task."""

    index: int
    start: tuple[float, float, float]
    target: tuple[float, float, float]
    region: Region

    def describe(self) -> dict[str, object]:
        r = self.region
        return {
            "index": self.index,
            "start": list(self.start),
            "target": list(self.target),
            "region": [r.x0, r.y0, r.x1, r.y1],
        }


def detour_frames(start: np.ndarray, goal: np.ndarray, region: Region, margin: float) -> float:
    """Frames (at 10 Hz, full speed) the shortest way round the box takes beyond the straight way: a search
    on an 8-connected (joint1, joint2) grid of half a frame's motion per cell (the arm's velocity limits),
    every cell clear of the box grown by ``margin``; inf when there is none."""
    cfg = ArmConfig()
    g1 = np.arange(cfg.lower[0], cfg.upper[0] + 1e-9, cfg.max_velocity[0] / 20)
    g2 = np.arange(cfg.lower[1], cfg.upper[1] + 1e-9, cfg.max_velocity[1] / 20)
    j1, j2 = np.meshgrid(g1, g2, indexing="ij")
    q = np.stack([j1, j2, np.full_like(j1, start[2])], axis=-1)
    free = ~arm_in_regions(q, [region], margin=margin)
    s = (int(np.argmin(abs(g1 - start[0]))), int(np.argmin(abs(g2 - start[1]))))
    g = (int(np.argmin(abs(g1 - goal[0]))), int(np.argmin(abs(g2 - goal[1]))))
    if not (free[s] and free[g]):
        return float("inf")
    dist = np.full(free.shape, -1)
    dist[s] = 0
    todo = deque([s])
    while todo:
        a, b = todo.popleft()
        if (a, b) == g:
            return (dist[g] - max(abs(s[0] - g[0]), abs(s[1] - g[1]))) / 2
        for da in (-1, 0, 1):
            for db in (-1, 0, 1):
                n = (a + da, b + db)
                if 0 <= n[0] < free.shape[0] and 0 <= n[1] < free.shape[1] and free[n] and dist[n] < 0:
                    dist[n] = dist[a, b] + 1
                    todo.append(n)
    return float("inf")


def _visible(q: np.ndarray) -> bool:
    pts = arm_points(q)
    return bool(np.all((pts > 0.04) & (pts < 0.96)))


def make_tasks(n: int, seed: int = 0, margin: float = 0.05, max_detour: float = 4.0) -> list[ReachTask]:
    """``n`` seeded, solvable tasks (a pure function of its arguments): the shortest way round the box takes
    at most ``max_detour`` frames more than the straight way, so a 12-frame MPC horizon can see round it."""
    rng = np.random.default_rng(seed)
    tasks: list[ReachTask] = []
    while len(tasks) < n:
        start = np.array([rng.uniform(-0.9, 0.9), rng.uniform(-1.6, 1.6), 0.5])
        goal = np.array([rng.uniform(-0.9, 0.9), rng.uniform(-1.6, 1.6), 0.5])
        if not 0.8 <= np.linalg.norm(goal[:2] - start[:2]) <= 1.6 or not (_visible(start) and _visible(goal)):
            continue
        # the box sits on the straight path: around the wrist at a point of the joint-space line
        frac = rng.uniform(0.35, 0.65)
        mid = start + frac * (goal - start)
        centre = arm_points(mid, per_link=3)[5]  # the wrist
        hw, hh = rng.uniform(0.025, 0.05), rng.uniform(0.025, 0.05)
        x0, y0, x1, y1 = centre[0] - hw, centre[1] - hh, centre[0] + hw, centre[1] + hh
        if x0 < 0.02 or y0 < 0.02 or x1 > 0.98 or y1 > 0.98:
            continue
        region = Region("keep_out", float(x0), float(y0), float(x1), float(y1))
        line = start + np.linspace(0, 1, 40)[:, None] * (goal - start)
        if not arm_in_regions(line, [region]).any():
            continue
        if arm_in_regions(np.stack([start, goal]), [region], margin=margin).any():
            continue
        if detour_frames(start, goal, region, margin) > max_detour:
            continue
        tasks.append(
            ReachTask(len(tasks), tuple(map(float, start)), tuple(map(float, goal)), region)  # type: ignore[arg-type]
        )
    return tasks
