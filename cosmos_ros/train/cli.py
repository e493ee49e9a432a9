"""`ros2 run cosmos_ros train --config config/train.yaml [section.key=value ...]` (also `cosmos-train`).

Runs the accelerate trainer; start it with `accelerate launch [--config_file config/accelerate_ddp.yaml]
-m cosmos_ros.train.cli --config ...` for several GPUs (docs/training.md). Overrides are YAML values, e.g.
`optim.lr=1e-4 adapter.mode=dora run.output_dir=runs/x`.
"""

from __future__ import annotations

import argparse
import signal
import sys

from cosmos_ros.train.config import load_config, prepare_base_model


def main(argv: list[str] | None = None) -> int:
    """Train; exit 0 on success, 1 on a clear error (message on stderr), 3 when the loss diverged, 130 / 143
    when SIGINT / SIGTERM stopped it (the shell's 128 + signal number; a checkpoint of the last step is saved
    and the same command resumes from it)."""
    ap = argparse.ArgumentParser(prog="train", description="Fine-tune Cosmos Predict 2.5 on robot clips")
    ap.add_argument("--config", default=None, help="training YAML (see config/train.yaml)")
    ap.add_argument("overrides", nargs="*", help="section.key=value overrides")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    ap.add_argument(
        "--max-memory",
        default=None,
        metavar="GiB|auto",
        help="GPU memory budget: the trainer picks the fastest memory policy that fits and logs it "
        "(same as model.max_memory; docs/training.md has the table)",
    )
    args = ap.parse_intermixed_args(argv)  # overrides before or after the options
    overrides = list(args.overrides)
    if args.max_memory is not None:
        overrides.append(f"model.max_memory={args.max_memory}")
    try:
        cfg = load_config(args.config, overrides)
    except (OSError, ValueError) as e:
        print(f"train: error: {e}", file=sys.stderr)
        return 1
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    from cosmos_ros.train.trainer import Trainer, TrainingDiverged

    try:
        prepare_base_model(cfg)  # `tiny`, or a hub id that cannot be fetched: decided before any loading
        trainer = Trainer(cfg)
        result = trainer.train()
    except TrainingDiverged as e:
        print(f"train: diverged: {e}", file=sys.stderr)
        return 3
    except (OSError, ValueError, KeyError) as e:
        print(f"train: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before the training loop (loading, latent cache) or a second Ctrl-C in it
        print("train: interrupted; checkpoints saved before now are kept", file=sys.stderr, flush=True)
        return 128 + signal.SIGINT
    if result.interrupted:  # the trainer saved a checkpoint and said so
        return 128 + signal.Signals[result.interrupted]
    if trainer.is_main:
        last = result.losses.get(result.step)
        print(f"train: done at step {result.step} (loss {last}), adapter -> {result.adapter_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
