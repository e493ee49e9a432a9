"""The adaptation study's configuration (config/adaptation_study.yaml): its rows and one policy per method.

A row is one training run (for ``none``: the base twin as it is) on one target cell, scored on that cell's
held-out episodes and on the twin's own held-out cells. The YAML lists rows as grids (``grids``), expanded
here in order (the order is the plan's priority); a row's id spells its fields
(``new_arm-dora16-e3-s1``, ``moved_camera-full-e30-s0``, ``new_objects-none``), so that one command runs
one row and its id says what it is. Every method trains with one stated policy (``training`` merged with
``methods.<method>``): the same steps and batch whatever the rank or the number of episodes, so rows differ
in the method, the rank or the data and in nothing else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cosmos_ros.sim.variants import STUDY_CELLS
from cosmos_ros.yaml_config import load_yaml_config

METHODS = ("none", "lora", "dora", "full", "lora-fa", "dora-fa")
LOW_RANK = ("lora", "dora", "lora-fa", "dora-fa")
#: Controls: LoRA/DoRA with the twin's action MLPs kept as trained ("frozen actions"). Every other training
#: method trains those MLPs in full, so a difference between LoRA/DoRA and full fine-tuning (forgetting
#: above all) could sit in them; these rows tell. Their policy is that of the method they vary.
FROZEN_ACTIONS = {"lora-fa": "lora", "dora-fa": "dora"}


def adapter_mode(method: str) -> str:
    """The trainer's ``adapter.mode`` of a study method (``lora-fa`` trains as ``lora``)."""
    return FROZEN_ACTIONS.get(method, method)


DEFAULT_CONFIG = "config/adaptation_study.yaml"

#: Every count and size cut down so that rows run on a CPU in about a minute (the plumbing check).
SMOKE: dict[str, Any] = {
    "cells": ["new_arm"],
    "data": {
        "train_episodes": 2,
        "heldout_episodes": 1,
        "original_episodes": 1,
        "episode_seconds": 2.6,
        "workers": 1,
    },
    "training": {"steps": 3, "batch_size": 2, "warmup_steps": 1, "val_points": 3, "val_batches": 1},
    "evaluation": {
        "new_cell_clips": 2,
        "original_clips": 2,
        "num_steps": 2,
        "batch_size": 2,
        "grid_clips": 0,
    },
    "grids": [
        {"group": "baseline", "methods": ["none"]},
        {"group": "main", "methods": ["lora"], "ranks": [4], "episodes": [2], "seeds": [0]},
        {"group": "data", "methods": ["full"], "episodes": [1], "seeds": [0]},
    ],
}


@dataclass(frozen=True)
class Row:
    """One run of the study."""

    cell: str  # a target cell (cosmos_ros.sim.variants.STUDY_CELLS)
    method: str  # none | lora | dora | full | lora-fa | dora-fa (FROZEN_ACTIONS)
    rank: int = 0  # LoRA/DoRA rank (0: full, none)
    episodes: int = 0  # training episodes of the cell: its first N (0: none)
    seed: int = 0  # training seed (data order, noise, adapter init)
    group: str = ""  # the question the row was listed for (the first grid that lists it)

    @property
    def id(self) -> str:
        if self.method == "none":
            return f"{self.cell}-none"
        name = f"{self.method}{self.rank}" if self.method in LOW_RANK else self.method
        return f"{self.cell}-{name}-e{self.episodes}-s{self.seed}"

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, **asdict(self)}


@dataclass(frozen=True)
class MethodPolicy:
    """How a method trains: the same for every row of that method (docs/adaptation.md states them)."""

    lr: float
    steps: int
    batch_size: int
    warmup_steps: int
    lr_schedule: str = "cosine"
    weight_decay: float = 0.001
    grad_clip: float = 1.0


@dataclass
class DataSection:
    """Episodes of every target cell and of the twin's own held-out cells (all at the twin's frame size)."""

    train_episodes: int = 30  # per target cell; a row with N episodes trains on the first N
    heldout_episodes: int = 8  # per target cell: other trajectories in the same cell, never trained on
    heldout_first_index: int = 1000  # their episode indices start here (trajectory seeds apart from training)
    original_episodes: int = 16  # the twin's held-out cells ("heldout" set, indices 0..N-1)
    episode_seconds: float = 16.0  # as the twin's data: 160 frames at 10 Hz
    stride: int = 6  # frames between clip starts, as the twin's clips
    seed: int = 0  # trajectory seeds
    workers: int = 0  # generator processes; 0 = every core


@dataclass
class TrainingSection:
    """What every method shares (``methods.<m>`` may override the policy keys)."""

    steps: int = 1000
    batch_size: int = 64
    warmup_steps: int = 50
    lr_schedule: str = "cosine"
    weight_decay: float = 0.001
    grad_clip: float = 1.0
    val_points: int = 20  # val-loss measurements along a run (time to 90% of the gain), besides step 0
    val_batches: int = 4  # batches per val-loss measurement
    compile: bool = False  # torch.compile the blocks (CUDA); off: a few hundred steps do not repay it


@dataclass
class EvaluationSection:
    """The evaluation (cosmos-evaluate's code) after each row."""

    new_cell_clips: int = 32  # spread over the target cell's held-out episodes
    original_clips: int = 32  # spread over the twin's held-out cells (forgetting)
    num_steps: int = 10  # sampling steps, as the twin's own evaluation
    seed: int = 0  # the same noise for every row (common random numbers: rows differ by their models)
    batch_size: int = 8
    grid_clips: int = 2
    # keep-out boxes of the checker whose verdicts are scored ('name:x0,y0,x1,y1', normalised image
    # coordinates); [] = cosmos-evaluate's default (table_edge, which the arm almost never enters)
    keepout_regions: list[str] = field(default_factory=list)


@dataclass
class StudyConfig:
    base: str = "sim_twin"
    cells: list[str] = field(default_factory=lambda: list(STUDY_CELLS))
    data: DataSection = field(default_factory=DataSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
    grids: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""  # the YAML file it came from, for the report

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "") -> StudyConfig:
        """Build and validate; unknown keys are an error naming the valid ones."""
        sections = {"data": DataSection, "training": TrainingSection, "evaluation": EvaluationSection}
        top = {f.name for f in fields(cls)} - {"source"}
        unknown = set(data) - top
        if unknown:
            raise ValueError(f"unknown study config keys {sorted(unknown)}; valid: {', '.join(sorted(top))}")
        kwargs: dict[str, Any] = {k: v for k, v in data.items() if k not in sections}
        for name, sec in sections.items():
            values = data.get(name) or {}
            valid = {f.name for f in fields(sec)}
            bad = set(values) - valid
            if bad:
                raise ValueError(f"unknown keys {name}.{sorted(bad)}; valid: {', '.join(sorted(valid))}")
            kwargs[name] = sec(**values)
        cfg = cls(**kwargs, source=source)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        bad_cells = [c for c in self.cells if c not in STUDY_CELLS]
        if bad_cells or not self.cells:
            raise ValueError(f"cells {bad_cells or '[]'}: use some of {', '.join(STUDY_CELLS)}")
        policy_keys = {f.name for f in fields(MethodPolicy)}
        for method, over in self.methods.items():
            if method not in METHODS[1:]:
                raise ValueError(
                    f"methods.{method}: use {', '.join(METHODS[1:])} (none trains nothing; lora-fa and "
                    "dora-fa take lora's and dora's policy unless they state their own)"
                )
            bad = set(over or {}) - policy_keys
            if bad:
                raise ValueError(
                    f"methods.{method}: unknown keys {sorted(bad)}; valid: {sorted(policy_keys)}"
                )
        d, t = self.data, self.training
        if d.train_episodes < 1 or d.heldout_episodes < 1 or d.original_episodes < 1:
            raise ValueError("data: train_episodes, heldout_episodes and original_episodes must be >= 1")
        if d.heldout_first_index < d.train_episodes:
            raise ValueError("data.heldout_first_index must be >= train_episodes (held-out indices apart)")
        if t.val_points < 1 or t.val_batches < 1:
            raise ValueError("training.val_points and training.val_batches must be >= 1")
        for m in METHODS[1:]:
            p = self.policy(m)
            if p.steps < 1 or p.batch_size < 1 or p.lr <= 0 or not 0 <= p.warmup_steps < p.steps:
                raise ValueError(
                    f"method {m}: steps and batch_size must be >= 1, lr > 0 and 0 <= warmup_steps < steps; "
                    f"got {p}"
                )
        self.rows()  # the grids expand (errors name the grid)

    def policy(self, method: str) -> MethodPolicy:
        """The stated step/LR policy of a training method (``training`` merged with ``methods.<method>``)."""
        t = self.training
        base = {k: getattr(t, k) for k in ("steps", "batch_size", "warmup_steps", "lr_schedule")}
        base.update(weight_decay=t.weight_decay, grad_clip=t.grad_clip)
        over = dict(self.methods.get(method) or self.methods.get(adapter_mode(method)) or {})
        if "lr" not in over:
            raise ValueError(
                f"methods.{method}.lr is not set: every training method states its learning rate"
            )
        return MethodPolicy(**{**base, **over})

    def rows(self) -> list[Row]:
        """Every row, in the grids' order (first listing wins); duplicates across grids count once."""
        out: dict[str, Row] = {}
        for i, grid in enumerate(self.grids):
            for row in _expand(grid, self.cells, self.data.train_episodes, f"grids[{i}]"):
                out.setdefault(row.id, row)
        return list(out.values())

    def row(self, row_id: str) -> Row:
        """The row of an id, or ValueError saying how to list them."""
        for r in self.rows():
            if r.id == row_id:
                return r
        raise ValueError(
            f"no row {row_id!r} in {self.source or 'the study config'}; list them with "
            "`python -m cosmos_ros.study.run --list`"
        )


_GRID_KEYS = {"group", "methods", "cells", "ranks", "episodes", "seeds"}


def _expand(grid: dict[str, Any], cells: list[str], max_episodes: int, where: str) -> list[Row]:
    bad = set(grid) - _GRID_KEYS
    if bad:
        raise ValueError(f"{where}: unknown keys {sorted(bad)}; valid: {sorted(_GRID_KEYS)}")
    methods = list(grid.get("methods") or [])
    if not methods or set(methods) - set(METHODS):
        raise ValueError(f"{where}: methods {methods} must be some of {', '.join(METHODS)}")
    grid_cells = cells if grid.get("cells") in (None, "all") else list(grid["cells"])
    if set(grid_cells) - set(cells):
        raise ValueError(f"{where}: cells {grid_cells} must be among the study's cells {cells}")
    group = str(grid.get("group", ""))
    rows = []
    for cell in grid_cells:
        for method in methods:
            if method == "none":
                rows.append(Row(cell, "none", group=group))
                continue
            ranks = list(grid.get("ranks") or []) if method in LOW_RANK else [0]
            if not ranks:
                raise ValueError(f"{where}: {method} needs ranks")
            episodes = list(grid.get("episodes") or [])
            seeds = list(grid.get("seeds") or [0])
            if not episodes or any(not 1 <= int(e) <= max_episodes for e in episodes):
                raise ValueError(
                    f"{where}: episodes {episodes} must be in 1..data.train_episodes={max_episodes}"
                )
            for rank in ranks:
                if int(rank) < (1 if method in LOW_RANK else 0):
                    raise ValueError(f"{where}: rank {rank} must be >= 1")
                for n in episodes:
                    for seed in seeds:
                        rows.append(Row(cell, method, int(rank), int(n), int(seed), group))
    return rows


def load_study_config(
    path: str | Path = DEFAULT_CONFIG, smoke: bool = False, overrides: list[str] | None = None
) -> StudyConfig:
    """config/adaptation_study.yaml with the smoke cut (its lists, the grids among them, replace the file's)
    and ``a.b=value`` overrides applied."""
    data = load_yaml_config(
        path,
        cut=SMOKE if smoke else None,
        overrides=overrides,
        what=f"adaptation study config (see {DEFAULT_CONFIG})",
        example="training.steps=500",
    )
    return StudyConfig.from_dict(data, source=str(path))
