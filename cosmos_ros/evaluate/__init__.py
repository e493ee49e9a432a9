"""cosmos_ros.evaluate: how good is the twin? Predictions measured against what really happened (ROS-free).

One job per module:

- `metrics`: per-frame fidelity (PSNR/SSIM from torchmetrics, also on the pixels that move in the true
  future), action faithfulness (shuffled-action test), 95% confidence intervals;
- `baselines`: trivial predictions every model must beat ("nothing moves");
- `pose`: pluggable pose estimators (entry-point group ``cosmos_ros.pose_estimators``) and pose error;
- `verdicts`: collision-checker agreement on predicted vs true frames, and the sim arm's geometric truth;
- `compat`: does a clips folder match an adapter (action mode, joints, fps, geometry)?;
- `runner`: the evaluation itself (clips x models x baselines -> figures);
- `report`: eval.json, report.md, curves.png, GIF grid, TensorBoard, written into one folder atomically;
- `cli`: ``cosmos-evaluate`` / ``ros2 run cosmos_ros evaluate``;
- `health`: live twin health (predicted frames vs the camera frames that arrive at their stamps);
- `training`: the trainer's validation figures, with the same code.

Why pose error and verdict agreement come first: pixel scores predict planning success poorly (VP²); a
static prediction scores well on pixels because most pixels do not move (see docs/EVALUATION.md).
"""
