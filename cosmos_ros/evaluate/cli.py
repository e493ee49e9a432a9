"""`cosmos-evaluate` / `ros2 run cosmos_ros evaluate`: how good is the twin, measured on held-out clips.

    cosmos-evaluate --base nvidia/Cosmos-Predict2.5-2B --adapter runs/a/adapter --adapter runs/b/adapter \
        --clips clips/ --out eval/ab --max-clips 50 --num-steps 10 --tensorboard runs/a/tb

Bad input (missing clips or split, clips built with another action mode or frame size than an adapter, an
adapter without action conditioning, an output folder that is not an earlier evaluation) ends with one
line naming the problem and the fix, exit status 2, and nothing written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

# The predictor's default checker settings (config/predictor.yaml), so the evaluation judges verdicts the
# way a default deployment makes them.
DEFAULT_KEEPOUT = ["table_edge:0.0,0.85,1.0,1.0"]
EXIT_BAD_INPUT = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="cosmos-evaluate",
        description="Evaluate world models (a base and adapters, side by side) on held-out clips: fidelity "
        "on all and on moving pixels vs 'nothing moves', shuffled-action test, pose error, verdict "
        "agreement.",
    )
    p.add_argument(
        "--base", default=None, help="base model dir or hub id (default: each adapter card's base)"
    )
    p.add_argument("--adapter", action="append", default=[], help="adapter dir from `train` (repeatable)")
    p.add_argument("--include-base", action="store_true", help="also evaluate the base model as a reference")
    p.add_argument("--clips", required=True, help="clips folder (build_clips output)")
    p.add_argument("--split", default="val", help="train | val | all (default: val)")
    p.add_argument(
        "-o", "--out", required=True, help="output folder (eval.json, report.md, curves.png, grid.gif)"
    )
    p.add_argument(
        "--max-clips",
        type=int,
        default=0,
        help="evaluate at most this many clips, spread over the split (0 = all)",
    )
    p.add_argument("--num-steps", type=int, default=10, help="denoising steps")
    p.add_argument("--guidance", type=float, default=0.0, help="classifier-free guidance (0 = off)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (clip i uses seed + i for every model)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per model call")
    p.add_argument("--revision", default=None, help="hub revision of the base model")
    p.add_argument("--allow-no-actions", action="store_true", help="evaluate adapters without action MLPs")
    p.add_argument("--pose-estimator", default="auto", help="auto | none | entry-point name | module:Class")
    p.add_argument(
        "--checker", default="keepout", help="collision checker: name, entry point, module:Class, none"
    )
    p.add_argument("--keepout-region", action="append", default=None, help="'name:x0,y0,x1,y1' (repeatable)")
    p.add_argument(
        "--pixel-threshold", type=float, default=40.0, help="keepout checker: changed-pixel threshold"
    )
    p.add_argument(
        "--area-threshold", type=float, default=0.05, help="keepout checker: changed-area fraction"
    )
    p.add_argument(
        "--predictor-params",
        default=None,
        help="predictor params YAML: take the checker and its options from it (as the node would)",
    )
    p.add_argument(
        "--motion-threshold", type=float, default=None, help="colour change that makes a pixel moving"
    )
    p.add_argument("--grid-clips", type=int, default=3, help="clips in grid.gif")
    p.add_argument("--tensorboard", default=None, help="also write TensorBoard scalars into this run folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    for name in ("max_clips", "grid_clips"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    for name in ("num_steps", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.guidance < 0:
        p.error("--guidance must be >= 0")
    return args


def checker_settings(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """(checker spec, options): from --predictor-params like the predictor node, else from the flags."""
    import yaml

    if args.predictor_params:
        path = Path(args.predictor_params)
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"--predictor-params {path}: cannot read it ({exc})") from exc
        params = next(
            (v["ros__parameters"] for v in doc.values() if isinstance(v, dict) and "ros__parameters" in v),
            None,
        )
        if params is None:
            raise ValueError(f"--predictor-params {path}: no '<node>: ros__parameters:' section")
        spec = str(params.get("collision_checker", "keepout"))
        if spec == "keepout":
            return spec, {
                "regions": list(params.get("keepout_regions", DEFAULT_KEEPOUT)),
                "pixel_threshold": float(params.get("pixel_threshold", 40.0)),
                "area_threshold": float(params.get("area_threshold", 0.05)),
            }
        opts_file = params.get("checker_params_file") or ""
        return spec, (yaml.safe_load(Path(opts_file).read_text()) or {}) if opts_file else {}
    if args.checker == "keepout":
        return "keepout", {
            "regions": args.keepout_region if args.keepout_region is not None else DEFAULT_KEEPOUT,
            "pixel_threshold": args.pixel_threshold,
            "area_threshold": args.area_threshold,
        }
    return args.checker, {}


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation and write the report; 0 on success, 2 on bad input (nothing written)."""
    from cosmos_ros.evaluate.compat import CompatibilityError
    from cosmos_ros.evaluate.metrics import MOTION_THRESHOLD
    from cosmos_ros.evaluate.report import OutputError, check_output_dir, write_outputs
    from cosmos_ros.evaluate.runner import EvalError, EvalSettings, evaluate

    args = parse_args(argv)
    try:
        check_output_dir(args.out)
        checker, options = checker_settings(args)
        settings = EvalSettings(
            base=args.base,
            adapters=list(args.adapter),
            clips=args.clips,
            split=args.split,
            max_clips=args.max_clips,
            num_steps=args.num_steps,
            guidance=args.guidance,
            seed=args.seed,
            device=args.device,
            dtype=args.dtype,
            batch_size=args.batch_size,
            revision=args.revision,
            include_base=args.include_base,
            allow_no_actions=args.allow_no_actions,
            pose_estimator=args.pose_estimator,
            checker=checker,
            checker_options=options,
            motion_threshold=MOTION_THRESHOLD if args.motion_threshold is None else args.motion_threshold,
            grid_clips=args.grid_clips,
            progress=not args.no_progress,
        )
        results = evaluate(settings, on_progress=None if args.no_progress else _say)
        out = write_outputs(results, args.out, tensorboard=args.tensorboard)
    except (EvalError, CompatibilityError, OutputError, ValueError) as exc:
        print(f"cosmos-evaluate: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    print(_summary(results, out), flush=True)
    return 0


def _say(msg: str) -> None:
    print(f"cosmos-evaluate: {msg}", file=sys.stderr, flush=True)


def _summary(results: dict[str, Any], out: Path) -> str:
    """A few lines for the terminal: per model, PSNR on moving pixels, pose error, shuffled ratio."""
    lines = [f"evaluated {results['clips']['count']} {results['clips']['split']} clips -> {out}/report.md"]
    for name in [*results["models"], *results["baselines"]]:
        f = results["figures"][name]
        pm = ((f.get("fidelity") or {}).get("psnr_moving") or {}).get("overall") or {}
        pose = ((f.get("pose") or {}).get("overall") or {}).get("mean")
        ratio = ((f.get("shuffled_actions") or {}).get("ratio") or {}).get("mean")
        parts = [f"PSNR moving {pm.get('mean'):.2f} dB" if pm.get("mean") is not None else "PSNR moving n/a"]
        if pose is not None:
            parts.append(f"pose error {pose:.3f}")
        if ratio is not None:
            parts.append(f"shuffled ratio {ratio:.3f}")
        lines.append(f"  {name}: " + ", ".join(parts))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
