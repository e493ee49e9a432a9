"""Cost-to-go round keep-out regions: the time the way to a joint target takes over a joint grid.

Why: the MPC sees 12 frames (1.2 s) ahead and scores them by the distance to the joint target. Where the
way round a box is longer than the horizon, or first leads away from the target, every candidate that goes
round costs more at the horizon's end than waiting in front of the box, and the planner waits there until
its time runs out: all the twin's failures and most of the oracle's on the closed-loop tasks were such
time-outs (docs/planning.md). A navigation function over the planned joints fixes the horizon's blindness:
the shortest time from each joint pose to the target, going round the regions, computed once per goal
from the robot's geometry (the same ``region_distance`` the collision term uses, e.g.
`sim_arm.arm_region_distance`). The cost adds the extra time that way takes beyond the straight way (zero
where nothing is in the way, so a goal without a box in between is scored as before), and the planner gets
one proposal that follows the way round.

The grid's cells are half a frame's motion of each joint (its largest step per frame), so one move to any of
the 3^N - 1 neighbours is half a frame with the joints moving independently, and the distance in cells,
halved, is time in frames. Cells where the robot comes within ``margin`` of a region cost ``blocked_cost``
cells to cross instead of one: every cell gets a finite value (a pose read inside a box still points out),
and a way through a box costs ``blocked_cost - 1`` extra cells per cell of box crossed (the default, 10,
puts a box a few cells thick well above the ways round the tasks' boxes, which are at most 8 cells longer
than straight). Values between cells are interpolated multilinearly.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from cosmos_ros.predict.checkers import Region

RegionDistance = Callable[[np.ndarray, Sequence[Region]], np.ndarray]


class CostToGo:
    """Extra time [frames] from joint poses to a joint target, round the goal's keep-out regions."""

    def __init__(
        self,
        joints: Sequence[str],
        lower: Sequence[float],
        upper: Sequence[float],
        max_step: Sequence[float],
        margin: float = 0.035,
        blocked_cost: float = 10.0,
        max_cells: int = 200_000,
    ) -> None:
        """``joints``: the planned joints (the grid's axes); ``lower``/``upper``: their limits; ``max_step``:
        their largest step per frame (velocity limit / fps); ``margin``: how close to a region (normalised
        image units, as ``region_distance`` measures) a pose may come and still count as clear."""
        self.joints = tuple(joints)
        lo, hi, step = (np.asarray(v, np.float64) for v in (lower, upper, max_step))
        n = len(self.joints)
        if not (lo.shape == hi.shape == step.shape == (n,)) or n == 0:
            raise ValueError(f"cost-to-go: one lower, upper and max_step value per joint of {list(joints)}")
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(hi > lo) and np.all(step > 0)):
            raise ValueError("cost-to-go needs finite joint limits (lower < upper) and positive steps")
        self.cell = step / 2.0
        self.axes = [np.arange(a, b + 1e-9, c) for a, b, c in zip(lo, hi, self.cell, strict=True)]
        shape = tuple(len(a) for a in self.axes)
        if int(np.prod(shape)) > max_cells:
            raise ValueError(f"cost-to-go grid {shape} has more than {max_cells} cells: plan fewer joints")
        self.shape = shape
        self.margin = float(margin)
        if not blocked_cost >= 1.0:
            raise ValueError(f"cost-to-go: blocked_cost {blocked_cost} must be >= 1 (a free cell costs 1)")
        self.blocked_cost = float(blocked_cost)
        self.field: np.ndarray | None = None  # [*shape] time to the target in cells, round the regions
        self.detour_cells: np.ndarray | None = None  # [*shape] field minus the straight time
        self.target: np.ndarray | None = None

    # -------------------------------------------------------------------------------------------- building
    def build(
        self,
        target: Mapping[str, float],
        regions: Sequence[Region],
        region_distance: RegionDistance,
        joint_names: Sequence[str],
        hold: Mapping[str, float] | None = None,
    ) -> None:
        """The field for one goal. ``region_distance`` takes poses [..., len(joint_names)]; joints that are
        not planned take ``hold``'s value, else NaN (for the sim arm: the gripper counted fully open, the
        widest it can be)."""
        missing = [j for j in self.joints if j not in target]
        if missing:
            raise ValueError(f"cost-to-go: the joint target has no value for planned joints {missing}")
        names = list(joint_names)
        grids = np.meshgrid(*self.axes, indexing="ij")
        poses = np.full((*self.shape, len(names)), np.nan)
        for j, name in enumerate(names):
            if hold and name in hold:
                poses[..., j] = hold[name]
        for axis, name in enumerate(self.joints):
            poses[..., names.index(name)] = grids[axis]
        dist = (
            np.asarray(region_distance(poses, regions), np.float64)
            if regions
            else np.full(self.shape, np.inf)
        )
        clear = np.nan_to_num(dist, nan=np.inf) > self.margin
        self.target = np.array([float(target[j]) for j in self.joints])
        goal_idx = self._index(self.target)
        step_cost = np.where(clear, 1.0, self.blocked_cost)
        self.field = _wavefront(step_cost, goal_idx)
        idx = np.stack(np.meshgrid(*(np.arange(s) for s in self.shape), indexing="ij"), axis=-1)
        straight = np.abs(idx - np.asarray(goal_idx)).max(axis=-1)  # Chebyshev: joints move independently
        self.detour_cells = np.maximum(self.field - straight, 0.0)

    def _index(self, q: np.ndarray) -> tuple[int, ...]:
        return tuple(
            int(np.clip(np.rint((v - a[0]) / c), 0, len(a) - 1))
            for v, a, c in zip(q, self.axes, self.cell, strict=True)
        )

    # ------------------------------------------------------------------------------------------ evaluating
    def detour(self, q: np.ndarray) -> np.ndarray:
        """Extra frames [...] the way to the target takes from planned-joint poses q [..., N] beyond the
        straight way; NaN where a pose is NaN."""
        if self.detour_cells is None:
            raise RuntimeError("build the cost-to-go for a goal first")
        return self._interpolate(self.detour_cells, q) / 2.0

    def _interpolate(self, values: np.ndarray, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q, np.float64)
        bad = ~np.isfinite(q).all(axis=-1)
        pos = np.stack(
            [
                np.clip((np.nan_to_num(q[..., i]) - a[0]) / c, 0.0, len(a) - 1.0)
                for i, (a, c) in enumerate(zip(self.axes, self.cell, strict=True))
            ],
            axis=-1,
        )
        base = np.minimum(np.floor(pos).astype(int), np.asarray(self.shape) - 2).clip(0)
        frac = pos - base
        out = np.zeros(q.shape[:-1])
        for corner in itertools.product((0, 1), repeat=len(self.shape)):
            c = np.asarray(corner)
            w = np.prod(np.where(c == 1, frac, 1.0 - frac), axis=-1)
            idx = tuple(np.minimum(base[..., i] + c[i], self.shape[i] - 1) for i in range(len(self.shape)))
            out += w * values[idx]
        return np.where(bad, np.nan, out)

    def guide(self, start: np.ndarray, horizon: int, max_step: np.ndarray) -> np.ndarray:
        """Increments [horizon, N] (units of ``max_step``, in [-1, 1]) that follow the way round: steepest
        descent on the grid from the cell nearest ``start`` (each cell has a neighbour one step nearer the
        target), two cells (one frame at full speed) a frame, then onto the target itself. On the grid, not
        between cells: the way round can be a corridor one cell wide, which interpolated values blur shut."""
        if self.field is None or self.target is None:
            raise RuntimeError("build the cost-to-go for a goal first")
        offsets = [np.array(o) for o in itertools.product((-1, 0, 1), repeat=len(self.joints)) if any(o)]
        cell = self._index(np.asarray(start, np.float64))
        goal = self._index(self.target)
        path = [cell]
        while cell != goal and len(path) < 2 * horizon + 2:
            nxt = []
            for o in offsets:
                n = tuple(int(v) for v in np.asarray(cell) + o)
                if all(0 <= v < s for v, s in zip(n, self.shape, strict=True)):
                    nxt.append((self.field[n], n))
            value, n = min(nxt)
            if value >= self.field[cell]:
                break  # no neighbour nearer (cannot happen on a finished field): stop here
            cell = n
            path.append(cell)
        points = [np.array([a[i] for a, i in zip(self.axes, c, strict=True)]) for c in path]
        q = np.asarray(start, np.float64).copy()
        u = np.zeros((horizon, len(self.joints)))
        for t in range(horizon):
            aim = self.target if 2 * (t + 1) >= len(points) - 1 else points[2 * (t + 1)]
            u[t] = np.clip((aim - q) / max_step, -1.0, 1.0)
            q = q + u[t] * max_step
        return u


def _wavefront(step_cost: np.ndarray, goal: tuple[int, ...]) -> np.ndarray:
    """Least cost [*shape] from every cell to ``goal`` over the 3^N-neighbour grid, each cell of the way
    but the goal costing its ``step_cost``: relaxation sweeps until nothing changes, each a vectorised
    minimum over the neighbours (no SciPy in the dependencies; the grids are a few thousand cells)."""
    field = np.full(step_cost.shape, np.inf)
    field[goal] = 0.0
    n = step_cost.ndim
    offsets = [o for o in itertools.product((-1, 0, 1), repeat=n) if any(o)]
    for _ in range(int(step_cost.size)):
        padded = np.pad(field, 1, constant_values=np.inf)
        best = np.full(field.shape, np.inf)
        for o in offsets:
            sl = tuple(slice(1 + d, 1 + d + s) for d, s in zip(o, field.shape, strict=True))
            best = np.minimum(best, padded[sl])
        new = np.minimum(field, best + step_cost)
        if np.array_equal(new, field):
            break
        field = new
    return field
