"""Sampling-based MPC over joint-command sequences: the cross-entropy method, warm-started, and a
straight-line reference that ignores obstacles.

A plan is H absolute joint commands (one per camera frame) for the planned joints; the others hold their
current value. CEM samples per-step increments in units of the arm's largest step per frame (so every
candidate respects the velocity limits), with time-correlated noise, rolls the batch through the model
(`PlanModel`), scores it (`PlanCost`), and refits a diagonal Gaussian to the elites. Each iteration also
scores the current mean and some broad samples; the first adds a straight-at-the-goal guess and proposals
through random waypoints, and, where the cost has a cost-to-go for the goal (`cosmos_ros.plan.togo`), one
that follows the way round the keep-out regions. The best candidate ever seen is the plan. After the caller
executes ``n`` steps, ``advance(n)`` shifts the mean by ``n`` (warm start). MPPI is the other refit
(``update="mppi"``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cosmos_ros.plan.cost import Goal, PlanCost
from cosmos_ros.plan.models import PlanModel
from cosmos_ros.plan.sim_arm import wrap


@dataclass
class CemConfig:
    """CEM sizes (config/planner.yaml): defaults fit a CPU twin (2-3 iterations x 16-32 candidates)."""

    horizon: int = 12
    candidates: int = 32
    iterations: int = 3
    elites: int = 6
    init_std: float = 0.6  # in units of the largest step per frame
    min_std: float = 0.05
    smoothing: float = 0.2  # weight of the old mean/std in each refit
    knots: int = 4  # control points of the time-correlated sampling noise
    explore_fraction: float = 0.25  # share of candidates sampled broadly around zero instead of the mean
    explore_std: float = 1.0
    waypoint_fraction: float = 0.25  # share of first-iteration candidates through random waypoints
    seed: int = 0
    # how each iteration refits the sampling Gaussian: "cem" = mean/std of the elites; "mppi" = every
    # candidate weighted by exp(-(cost - best) / (temperature x the costs' spread)) (MPPI's path-integral
    # update: no hard cut, all samples inform the mean)
    update: str = "cem"
    temperature: float = 0.5

    def __post_init__(self) -> None:
        if self.horizon < 1 or self.candidates < 2 or self.iterations < 1:
            raise ValueError("CEM needs horizon >= 1, candidates >= 2 and iterations >= 1")
        if not 1 <= self.elites <= self.candidates:
            raise ValueError(f"elites {self.elites} must be in 1..candidates ({self.candidates})")
        if self.update not in UPDATES:
            raise ValueError(f"update {self.update!r}: use one of {', '.join(UPDATES)}")
        if not self.temperature > 0:
            raise ValueError(f"temperature {self.temperature} must be > 0 (the MPPI update's softness)")


UPDATES = ("cem", "mppi")


def mppi_weights(costs: np.ndarray, temperature: float) -> np.ndarray:
    """Normalised weights exp(-(c - min c) / (temperature x std c)) over the finite costs (0 elsewhere).
    Scaling by the spread keeps the temperature unit-free: the same value works whatever the cost terms'
    sizes. All costs infinite (every candidate rejected): uniform weights, the mean stays where it is."""
    finite = np.isfinite(costs)
    if not finite.any():
        return np.full(len(costs), 1.0 / len(costs))
    c = costs[finite]
    z = (c - c.min()) / max(float(c.std()), 1e-9)
    w = np.zeros(len(costs))
    w[finite] = np.exp(-z / temperature)
    return w / w.sum()


@dataclass
class PlanResult:
    """The best plan of one replanning step."""

    plan: np.ndarray  # [H, J] absolute joint commands (model joint order)
    cost: float
    terms: dict[str, float]
    frames: np.ndarray | None  # [H, h, w, 3] the best plan's predicted frames
    iterations: list[float] = field(default_factory=list)  # best cost after each iteration
    seconds: float = 0.0


class CemPlanner:
    """Cross-entropy MPC over a model; one instance per controlled arm (it keeps the warm start)."""

    name = "cem"

    def __init__(
        self,
        model: PlanModel,
        cost: PlanCost,
        config: CemConfig | None = None,
        plan_joints: Sequence[str] = ("joint1", "joint2"),
        max_step: Sequence[float] = (0.12, 0.16),
        lower: Sequence[float] | None = None,
        upper: Sequence[float] | None = None,
    ) -> None:
        self.model, self.cost = model, cost
        self.cfg = config or CemConfig()
        missing = [j for j in plan_joints if j not in model.joint_names]
        if missing:
            raise ValueError(f"plan_joints {missing} are not joints of the model {list(model.joint_names)}")
        self.idx = [list(model.joint_names).index(j) for j in plan_joints]
        self.plan_joints = tuple(plan_joints)
        self.max_step = np.asarray(max_step, np.float64)
        if self.max_step.shape != (len(self.idx),) or not np.all(self.max_step > 0):
            raise ValueError(f"max_step needs one positive value per planned joint, got {list(max_step)}")
        n = len(model.joint_names)
        self.lower = np.full(n, -np.inf) if lower is None else np.asarray(lower, np.float64)
        self.upper = np.full(n, np.inf) if upper is None else np.asarray(upper, np.float64)
        self.rng = np.random.default_rng(self.cfg.seed)
        self.goal: Goal | None = None
        self.mean = np.zeros((self.cfg.horizon, len(self.idx)))
        self.calls = 0

    def reset(self, goal: Goal) -> None:
        """A new goal: the cost learns it, the warm start is dropped, the samplers and the model's noise
        seeds start again (an episode does not depend on what the planner did before)."""
        self.cost.set_goal(goal)
        self.goal = goal
        self.mean = np.zeros((self.cfg.horizon, len(self.idx)))
        self.rng = np.random.default_rng(self.cfg.seed)
        self.calls = 0

    def advance(self, steps: int) -> None:
        """The first ``steps`` commands were executed: shift the mean plan (warm start), hold at the end."""
        s = min(int(steps), self.cfg.horizon)
        self.mean = np.concatenate([self.mean[s:], np.zeros((s, len(self.idx)))])

    def to_plans(self, u: np.ndarray, start: np.ndarray) -> np.ndarray:
        """Increments u [B, H, P] (units of max_step) -> absolute commands [B, H, J] from ``start``."""
        b, h = u.shape[:2]
        plans = np.broadcast_to(start, (b, h, len(start))).copy()
        plans[..., self.idx] = start[self.idx] + np.cumsum(u * self.max_step, axis=1)
        return np.clip(plans, self.lower, self.upper)

    def smooth_noise(self, n: int) -> np.ndarray:
        """Standard-normal noise [n, H, P] correlated in time (knots, linearly interpolated): candidates
        make coherent moves (a detour around a box) instead of jitter that averages out over the horizon."""
        h, p = self.cfg.horizon, len(self.idx)
        k = max(2, min(self.cfg.knots, h))
        knots = self.rng.standard_normal((n, k, p))
        pos = np.linspace(0, k - 1, h)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, k - 1)
        frac = (pos - lo)[None, :, None]
        return knots[:, lo] * (1 - frac) + knots[:, hi] * frac

    def straight_guess(self, start: np.ndarray, via: np.ndarray | None = None) -> np.ndarray:
        """Increments that head straight for the joint target at full speed (zero without one); with
        ``via`` (planned-joint positions), first for that waypoint during the first half of the horizon."""
        u = np.zeros((self.cfg.horizon, len(self.idx)))
        if self.goal is None or not self.goal.joint_target:
            return u
        q = start[self.idx].copy()
        goal = np.array([self.goal.joint_target.get(j, np.nan) for j in self.plan_joints])
        angular = getattr(self.model, "angular", ()) or (True,) * len(self.model.joint_names)
        ang = [bool(angular[i]) for i in self.idx]
        for t in range(self.cfg.horizon):
            aim = via if (via is not None and t < self.cfg.horizon // 2) else goal
            d = np.nan_to_num(wrap(aim - q, ang))  # joints without a target hold
            u[t] = np.clip(d / self.max_step, -1.0, 1.0)
            q += u[t] * self.max_step
        return u

    def waypoint_guesses(self, start: np.ndarray, n: int) -> np.ndarray:
        """``n`` proposals through random waypoints within reach (half the horizon at full speed), then
        straight at the target: ways round an obstacle that local noise around the mean rarely finds."""
        reach = self.max_step * (self.cfg.horizon // 2)
        q = start[self.idx]
        return np.stack(
            [self.straight_guess(start, q + self.rng.uniform(-1, 1, len(self.idx)) * reach) for _ in range(n)]
        )

    def plan(
        self,
        frame: np.ndarray,
        positions: np.ndarray,
        on_iteration: Callable[[int, float, PlanResult], None] | None = None,
    ) -> PlanResult:
        """One replanning step from the camera frame and the current joint positions."""
        if self.goal is None:
            raise RuntimeError("reset(goal) before planning")
        t0 = time.perf_counter()
        cfg = self.cfg
        start = np.asarray(positions, np.float64)
        context = self.model.begin(frame, start)  # the world model encodes the frame here, once
        mean, std = self.mean.copy(), np.full_like(self.mean, cfg.init_std)
        best: PlanResult | None = None
        history: list[float] = []
        self.calls += 1
        for it in range(cfg.iterations):
            eps = self.smooth_noise(cfg.candidates)
            u = np.clip(mean + std * eps, -1.0, 1.0)
            # a share of broad samples around "hold still", not the mean: a way round an obstacle that the
            # mean has not found yet (the warm start alone would wait in front of a box)
            n_wide = round(cfg.explore_fraction * cfg.candidates)
            if n_wide:
                u[-n_wide:] = np.clip(cfg.explore_std * eps[-n_wide:], -1.0, 1.0)
            u[0] = mean  # the warm start itself is always scored
            if it == 0:
                u[1] = self.straight_guess(start)
                first = 2
                togo = self.cost.way_round
                usable = togo is not None and set(togo.joints) == set(self.plan_joints)
                if usable and cfg.candidates > 2 and np.isfinite(start[self.idx]).all():
                    assert togo is not None
                    order = [self.plan_joints.index(j) for j in togo.joints]
                    guided = togo.guide(start[self.idx][order], cfg.horizon, self.max_step[order])
                    u[2][:, order] = guided  # the way round the regions (`cosmos_ros.plan.togo`)
                    first = 3
                n_way = min(round(cfg.waypoint_fraction * cfg.candidates), cfg.candidates - first)
                if n_way > 0 and self.goal.joint_target:
                    u[first : first + n_way] = self.waypoint_guesses(start, n_way)
            plans = self.to_plans(u, start)
            # common random numbers across iterations too: the same noise for every candidate of the step
            rollout = self.model.rollout(plans, seed=self.calls)
            costs, terms = self.cost(context, rollout, plans, start)
            costs = np.where(np.isfinite(costs), costs, np.inf)
            i = int(np.argmin(costs))
            if best is None or costs[i] < best.cost:
                best = PlanResult(
                    plan=plans[i],
                    cost=float(costs[i]),
                    terms={k: float(v[i]) for k, v in terms.items()},
                    frames=rollout.frames[i],
                )
                best_u = u[i]
            history.append(best.cost)
            if cfg.update == "mppi":
                w = mppi_weights(costs, cfg.temperature)
                fit_mean = np.tensordot(w, u, axes=1)
                fit_std = np.sqrt(np.tensordot(w, (u - fit_mean) ** 2, axes=1))
            else:
                elite = u[np.argsort(costs)[: cfg.elites]]
                fit_mean, fit_std = elite.mean(axis=0), elite.std(axis=0)
            a = cfg.smoothing
            mean = a * mean + (1 - a) * fit_mean
            std = np.maximum(a * std + (1 - a) * fit_std, cfg.min_std)
            if on_iteration is not None:
                on_iteration(it, best.cost, best)
        assert best is not None
        self.mean = best_u.copy()
        best.iterations = history
        best.seconds = time.perf_counter() - t0
        return best


class StraightPlanner:
    """Lower-bound reference: straight at the joint target at full speed, blind to keep-out regions."""

    name = "straight"

    def __init__(self, planner: CemPlanner) -> None:
        self.inner = planner

    def reset(self, goal: Goal) -> None:
        self.inner.goal = goal

    def advance(self, steps: int) -> None:
        return None

    def plan(self, frame: np.ndarray, positions: np.ndarray, on_iteration: object = None) -> PlanResult:
        t0 = time.perf_counter()
        start = np.asarray(positions, np.float64)
        u = self.inner.straight_guess(start)
        plan = self.inner.to_plans(u[None], start)[0]
        return PlanResult(plan=plan, cost=0.0, terms={}, frames=None, seconds=time.perf_counter() - t0)
