"""Shared helpers of the predictor tests: a tiny model + adapter trained once per session, message builders,
and a planner-like client that runs as its own process (`python test/helpers_predict.py client ...`).

The adapter comes from the real trainer (`cosmos_ros.train.trainer.Trainer`) on a few sim-arm clips for a
few steps, with an action tokenizer (delta mode over the sim arm's joints) in its card, so the predictor is
exercised on exactly what `train` writes: peft LoRA weights, action MLPs, card with tokenizer and geometry.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
JOINTS = ("joint1", "joint2", "joint3")
HEIGHT, WIDTH = 64, 80  # the tiny model's size (cosmos_ros.model.tiny.TINY_FRAME_SIZE)


@dataclass(frozen=True)
class PredictAssets:
    """What the session fixture builds: base model dir, adapter dir, and the tokenizer dict in its card."""

    model_dir: Path
    adapter_dir: Path
    tokenizer: dict[str, Any]


def tokenizer_dict() -> dict[str, Any]:
    """Delta-mode tokenizer over the sim arm's joints; std 0.1 matches helpers_train's action scale (x10)."""
    from cosmos_ros.tokens import ActionTokenizer

    tok = ActionTokenizer(
        list(JOINTS),
        mode="delta",
        fps=10.0,
        stats={"mean": [0.0] * 3, "std": [0.1] * 3, "min": [-0.1] * 3, "max": [0.1] * 3, "count": 100},
    )
    return tok.to_dict()


def build_assets(root: Path, steps: int = 3) -> PredictAssets:
    """Tiny base model + a LoRA adapter trained for `steps` steps by the real trainer (CPU, seconds)."""
    import torch
    from helpers_train import SimArmClips, tiny_model_dir, train_config

    from cosmos_ros.train.trainer import Trainer

    torch.set_num_threads(2)
    model_dir = tiny_model_dir(root)
    adapter_dir = root / "run" / "adapter"
    tok = tokenizer_dict()
    from cosmos_ros.model.adapters import is_adapter_dir

    if not is_adapter_dir(adapter_dir):
        cfg = train_config(
            model_dir,
            root / "run",
            root / "latents",
            optim={"max_steps": steps, "batch_size": 2, "warmup_steps": 1},
        )
        trainer = Trainer(cfg, train_dataset=SimArmClips([0, 1, 2, 3]), tokenizer_dict=tok)
        trainer.train()
        trainer.save_final()
    assert is_adapter_dir(adapter_dir), "the trainer wrote no adapter"
    return PredictAssets(model_dir, adapter_dir, tok)


@pytest.fixture(scope="session")
def predict_assets(tmp_path_factory: pytest.TempPathFactory) -> PredictAssets:
    """Session fixture (import it into a test module): built once under the session's base temp dir, so
    every module importing it reuses the same model and adapter on disk."""
    return build_assets(tmp_path_factory.getbasetemp() / "predict_assets")


def randomize_action_mlps(adapter_dir: Path, seed: int = 0, scale: float = 0.3) -> None:
    """Give the adapter's action MLPs non-zero output layers (a few training steps leave them near zero), so
    tests can check that different actions give different predictions. Written with safetensors, like the
    trainer does."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = adapter_dir / "action_conditioning.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
    gen = torch.Generator().manual_seed(seed)
    for k, v in tensors.items():
        if "fc2" in k:
            tensors[k] = torch.randn(v.shape, generator=gen) * scale
    save_file(tensors, str(path), metadata=meta)


def predictor_params(path: Path, assets: PredictAssets, **overrides: Any) -> Path:
    """A predictor params YAML: the repo's config/predictor.yaml with the test model and CPU settings."""
    import yaml

    params = yaml.safe_load((HERE.parent / "config" / "predictor.yaml").read_text())["predictor"][
        "ros__parameters"
    ]
    params.update(
        base_model=str(assets.model_dir),
        adapter=str(assets.adapter_dir),
        device="cpu",
        num_steps=2,
        queue_size=2,
        max_candidates=4,
        batch_size=4,
        max_horizon=24,
        timeout=120.0,
        keepout_regions=["table_edge:0.0,0.85,1.0,1.0", "left_wall:0.0,0.0,0.1,0.85"],
    )
    params.update(overrides)
    path.write_text(yaml.safe_dump({"predictor": {"ros__parameters": params}}))
    return path


# ------------------------------------------------------------------------------------ message builders
def action_msg(values: np.ndarray, kind: int = 0, names: tuple[str, ...] = JOINTS) -> Any:
    """cosmos_ros/msg/ActionSequence from a [N, D] array (row-major values)."""
    from cosmos_ros.msg import ActionSequence

    values = np.asarray(values, np.float32)
    msg = ActionSequence()
    msg.kind = kind
    msg.names = list(names)
    msg.num_steps, msg.dim = int(values.shape[0]), int(values.shape[1])
    msg.values = values.reshape(-1).tolist()
    return msg


def image_msg(frame: np.ndarray, encoding: str = "rgb8") -> Any:
    from sensor_msgs.msg import Image

    msg = Image()
    msg.height, msg.width = int(frame.shape[0]), int(frame.shape[1])
    msg.encoding = encoding
    msg.step = int(frame.shape[1] * (1 if frame.ndim == 2 else frame.shape[2]))
    msg.data = np.ascontiguousarray(frame, np.uint8).tobytes()
    return msg


def plan(n: int = 12, velocity: tuple[float, float, float] = (0.05, 0.0, 0.0)) -> np.ndarray:
    """A constant-velocity delta plan [n, 3] in raw joint units (rad per frame)."""
    return np.tile(np.asarray(velocity, np.float32), (n, 1))


# ------------------------------------------------------------------------------------ planner client
def run_client(timeout: float) -> dict[str, Any]:
    """A planner: subscribe to predicted frames, call check_collision and predict_future, publish a plan.

    Runs in its own process (what a real planner is) and prints one JSON summary line.
    """
    import rclpy
    from cosmos_ros.msg import PredictedFrames, StageLatency
    from cosmos_ros.srv import CheckCollision, PredictFuture
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node

    rclpy.init()
    node = Node("planner_client")
    got_frames: list[Any] = []
    latencies: list[Any] = []
    node.create_subscription(PredictedFrames, "/predictor/predicted_frames", got_frames.append, 2)
    node.create_subscription(StageLatency, "/predictor/latency", latencies.append, 10)
    pub = node.create_publisher(
        __import__("cosmos_ros.msg", fromlist=["ActionSequence"]).ActionSequence,
        "/predictor/planned_actions",
        10,
    )
    check = node.create_client(CheckCollision, "/predictor/check_collision")
    predict = node.create_client(PredictFuture, "/predictor/predict_future")
    ex = MultiThreadedExecutor()
    ex.add_node(node)
    out: dict[str, Any] = {}

    def call(client: Any, req: Any) -> Any:
        fut = client.call_async(req)
        ex.spin_until_future_complete(fut, timeout_sec=timeout)
        if not fut.done():
            raise TimeoutError(f"{client.srv_name}: no answer within {timeout} s")
        return fut.result()

    try:
        deadline = time.monotonic() + timeout
        for client in (check, predict):
            while not client.wait_for_service(timeout_sec=0.5):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"service {client.srv_name} never appeared")
        # wait until the node has a camera frame and the model is ready (NOT_READY = 4 until then)
        req = CheckCollision.Request()
        req.candidates = [
            action_msg(plan(12, (0.0, 0.0, 0.0))),
            action_msg(plan(12, (0.08, 0.0, 0.0))),
            action_msg(plan(12, (-0.08, 0.05, 0.0))),
        ]
        req.return_frames = True
        req.request_id = "client-check"
        while True:
            resp = call(check, req)
            if resp.code != 4 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        out["check"] = {
            "success": resp.success,
            "code": resp.code,
            "message": resp.message,
            "request_id": resp.latency.request_id,
            "best": resp.best_candidate,
            "results": [
                {
                    "index": r.candidate_index,
                    "collision": r.collision,
                    "first": r.first_collision_step,
                    "score": r.score,
                    "n_step_scores": len(r.step_scores),
                    "reasons": list(r.reasons),
                    "frames": [(f.height, f.width, f.encoding, len(f.data)) for f in r.frames],
                }
                for r in resp.results
            ],
            "latency": {
                k: getattr(resp.latency, k)
                for k in ("queue_wait", "encode", "denoise", "decode", "checker", "total", "batch_size")
            },
        }
        preq = PredictFuture.Request()
        preq.actions = action_msg(plan(16, (0.05, -0.02, 0.0)))  # longer than one clip: two chunks
        preq.actions.step_duration = 0.1
        presp = call(predict, preq)
        pred = presp.prediction
        stamps = [s.sec + s.nanosec * 1e-9 for s in pred.stamps]
        out["predict"] = {
            "success": presp.success,
            "code": presp.code,
            "message": presp.message,
            "n_frames": len(pred.frames),
            "n_stamps": len(stamps),
            "stamp_steps": np.diff(
                [pred.header.stamp.sec + pred.header.stamp.nanosec * 1e-9, *stamps]
            ).tolist(),
            "frame_shape": [(f.height, f.width, f.encoding) for f in pred.frames[:1]],
            "adapter": pred.adapter,
            "camera_topic": pred.camera_topic,
            "action_steps": pred.actions.num_steps,
        }
        # topic path: publish a plan, expect a PredictedFrames message
        msg = action_msg(plan(12, (0.02, 0.02, 0.0)))
        t_end = time.monotonic() + timeout
        while not got_frames and time.monotonic() < t_end:
            if pub.get_subscription_count() > 0:
                pub.publish(msg)
            ex.spin_once(timeout_sec=3.0)
            t_wait = time.monotonic() + 30.0
            while not got_frames and time.monotonic() < t_wait:
                ex.spin_once(timeout_sec=0.2)
        out["topic"] = {
            "received": len(got_frames),
            "n_frames": len(got_frames[0].frames) if got_frames else 0,
            "request_id": got_frames[0].request_id if got_frames else "",
        }
        t_end = time.monotonic() + 2.0
        while time.monotonic() < t_end:
            ex.spin_once(timeout_sec=0.1)
        out["latency_msgs"] = sorted({m.service for m in latencies})
    finally:
        ex.shutdown()
        node.destroy_node()
        rclpy.shutdown()
    return out


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "client":
        result = run_client(float(sys.argv[2]) if len(sys.argv) > 2 else 120.0)
        print("RESULT " + json.dumps(result), flush=True)
