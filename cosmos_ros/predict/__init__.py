"""cosmos_ros.predict: serving the world model (ROS-free).

- `core`: `Predictor` - base model + adapter (+ tokenizer stats from the card) -> batched, seeded,
  autoregressive prediction of future frames for candidate action sequences, through the one sampler
  (`cosmos_ros.model.sampler`) with the speed-ups of `cosmos_ros.model.inference_speedups`.
- `checkers`: collision-checker interface, the default keep-out-region checker, plugin loading
  (entry-point group `cosmos_ros.collision_checkers` or "module:Class").
- `worker`: the single model-worker thread with a bounded queue, BUSY answers, deadlines, stage timings.
- `validation`: request validation with messages that name the field and the fix.
"""
