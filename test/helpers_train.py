"""Shared helpers of the model/trainer tests: tiny model on disk, small fixed sets of sim-arm clips.

Clips are rendered by the simulated arm's renderer (cosmos_ros.sim.render) from joint trajectories with a
constant velocity per clip, and the actions are the normalised joint deltas between frames, so the motion
in the video is a function of the actions (what the action conditioning must learn). Items follow the
ClipDataset contract (docs/ARCHITECTURE.md): frames uint8 [T, H, W, 3], actions float32 [T-1, D], ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cosmos_ros.sim.arm import ArmConfig
from cosmos_ros.sim.render import Scene, render_frame

HEIGHT, WIDTH = 64, 80
NUM_FRAMES = 13
PROMPT = "move the arm"
ACTION_SCALE = 10.0  # joint delta per frame [rad] x this = normalised action


def sim_arm_clip(
    seed: int,
    velocity: np.ndarray | None = None,
    num_frames: int = NUM_FRAMES,
    height: int = HEIGHT,
    width: int = WIDTH,
) -> dict[str, Any]:
    """One clip: start pose and (unless given) per-frame joint velocity drawn from `seed`."""
    rng = np.random.default_rng(seed)
    cfg = ArmConfig()
    q0 = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.2, 1.2), rng.uniform(0.2, 0.8)])
    if velocity is None:
        velocity = np.array([rng.choice([-1, 1]) * rng.uniform(0.06, 0.1), rng.uniform(-0.08, 0.08), 0.0])
    qs = np.stack([cfg.clip(q0 + i * velocity) for i in range(num_frames)])
    scene = Scene.seeded(0)
    frames = np.stack([render_frame(q, width=width, height=height, scene=scene) for q in qs])
    actions = (np.diff(qs, axis=0) * ACTION_SCALE).astype(np.float32)
    return {
        "frames": torch.from_numpy(frames),
        "actions": torch.from_numpy(actions),
        "timestamps": torch.arange(num_frames, dtype=torch.float64) / 10.0,
        "episode_id": f"ep{seed}",
        "prompt": PROMPT,
        "clip_id": f"sim-{seed:04d}",
    }


class SimArmClips(torch.utils.data.Dataset):
    """A small fixed set of sim-arm clips with the ClipDataset item dict (rendered once, in memory)."""

    def __init__(self, seeds: list[int], **kw: Any) -> None:
        self.items = [sim_arm_clip(s, **kw) for s in seeds]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]

    def clip_ids(self) -> list[str]:
        return [x["clip_id"] for x in self.items]


def tiny_model_dir(root: Path) -> Path:
    """Tiny random Cosmos 2.5 model (+ tiny text encoder and prompt cache) saved under root/tiny_model."""
    from cosmos_ros.model.tiny import make_tiny_world_model

    path = root / "tiny_model"
    if not (path / "transformer" / "config.json").is_file():
        make_tiny_world_model(path, seed=0, prompts=[PROMPT])
    return path


def train_config(model_dir: Path, out: Path, latent_dir: Path, **sections: dict[str, Any]) -> Any:
    """A CPU training config on the tiny model; `sections` override keys, e.g. optim={'max_steps': 5}."""
    from cosmos_ros.train.config import TrainConfig

    data: dict[str, Any] = {
        "model": {"base": str(model_dir), "dtype": "float32", "gradient_checkpointing": False},
        "adapter": {"mode": "lora", "rank": 8, "alpha": 8},
        "data": {
            "latent_cache_dir": str(latent_dir),
            "prompt_cache": str(model_dir / "prompt_cache.safetensors"),
        },
        "optim": {
            "lr": 1e-3,
            "warmup_steps": 5,
            "max_steps": 10,
            "batch_size": 4,
            "cfg_dropout": 0.0,
            "lr_schedule": "constant",
        },
        "run": {
            "output_dir": str(out),
            "mixed_precision": "no",
            "cpu": True,
            "log_every": 5,
            "checkpoint_every": 0,
            "val_every": 0,
            "val_twin_clips": 0,  # the twin figures are tested once, in test_train_clips
            "preview_every": 0,
            "progress": False,
            "seed": 0,
        },
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return TrainConfig.from_dict(data)


def shared_dir(tmp_path_factory: Any) -> Path:
    """One directory per pytest session shared by every model/trainer test module (disk-cached fixtures)."""
    path = Path(tmp_path_factory.getbasetemp()) / "cosmos_train_shared"
    path.mkdir(parents=True, exist_ok=True)
    return path


def train_and_val_clips() -> tuple[SimArmClips, SimArmClips]:
    """The fixed sim-arm set: 16 training clips, 2 validation clips."""
    return SimArmClips(list(range(16))), SimArmClips([100, 101])


# The machine's 2 cores are shared: one intra-op thread avoids OpenMP oversubscription stalls (10x here).
torch.set_num_threads(1)
