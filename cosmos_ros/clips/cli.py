"""``build_clips`` (``ros2 run cosmos_ros build_clips`` / ``cosmos-build-clips``): bags -> training clips.

Config: defaults < ``--config FILE.yaml`` (keys as in ``config/clips.yaml``) < explicit flags <
``--set key=value`` (YAML-parsed). Exit status: 0 when every bag went through, 1 when any bag or input
failed (the others are still built; see the per-bag report printed at the end and ``stats.json``) or the
build could not be finished (no train clips, a full disk: an earlier build in the output is kept), 2 for
a configuration error or an output folder that cannot be written.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from cosmos_ros.clips.config import ClipsConfig, load_config
from cosmos_ros.rotations import EULER_CONVENTIONS
from cosmos_ros.tokens import MODES

_FLAGS: list[tuple[str, str, dict[str, Any]]] = [
    ("--output", "output", {"metavar": "DIR", "help": "clips directory to create"}),
    (
        "--camera",
        "camera_topics",
        {
            "action": "append",
            "metavar": "TOPIC",
            "help": "camera topic (Image or CompressedImage). Repeat for multi-view clips: then every bag "
            "needs every camera (a bag lacking one fails); bags that record a camera on another topic "
            "map it with --per-bag",
        },
    ),
    ("--joint-topic", "joint_topic", {"metavar": "TOPIC", "help": "sensor_msgs/JointState topic"}),
    (
        "--joint-names",
        "joint_names",
        {
            "metavar": "A,B,..",
            "help": "joints (and order) of the actions; for a JointState with empty names, the names of its "
            "positions in order",
        },
    ),
    ("--gripper-joints", "gripper_joints", {"metavar": "A,..", "help": "joints treated as a state"}),
    ("--fps", "fps", {"type": float, "help": "target frame rate"}),
    ("--width", "width", {"type": int, "help": "output width (multiple of 16)"}),
    ("--height", "height", {"type": int, "help": "output height (multiple of 16)"}),
    ("--resize", "resize", {"choices": ["crop", "pad", "stretch"], "help": "resize policy"}),
    ("--num-frames", "num_frames", {"type": int, "help": "frames per clip, 4k+1"}),
    ("--cond-frames", "num_cond_frames", {"type": int, "help": "conditioning frames per clip"}),
    ("--stride", "stride", {"type": int, "help": "frames between clip starts"}),
    ("--time-source", "time_source", {"choices": ["header", "log"], "help": "message stamps or bag time"}),
    (
        "--joint-sync",
        "joint_sync",
        {"choices": ["latest", "interpolate"], "help": "joint state as of a frame"},
    ),
    ("--max-age", "max_age", {"type": float, "help": "max age (s) of the joint state used for a frame"}),
    (
        "--action-mode",
        "action_mode",
        {"choices": list(MODES), "help": "action kind (ee_delta: end-effector motion in its own frame)"},
    ),
    (
        "--angle-joints",
        "angle_joints",
        {"metavar": "A,..", "help": "joints whose deltas wrap to (-pi, pi] (default: any delta beyond pi)"},
    ),
    ("--pose-joints", "pose_joints", {"metavar": "X,Y,Z,R,P,Y", "help": "ee_delta: the six pose joints"}),
    ("--euler", "euler", {"choices": list(EULER_CONVENTIONS), "help": "ee_delta: Euler convention (xyz)"}),
    (
        "--nonfinite",
        "nonfinite",
        {"choices": ["drop", "fail"], "help": "NaN/inf joint positions: drop those frames or fail the bag"},
    ),
    ("--bins", "num_bins", {"type": int, "help": "quantization bins per dimension (0: off)"}),
    ("--val-fraction", "val_fraction", {"type": float, "help": "share of episodes in val"}),
    ("--val-episodes", "val_episodes", {"metavar": "ID,..", "help": "explicit val episodes"}),
    (
        "--prompt",
        "prompt",
        {"help": "task prompt for bags without their own (--per-bag, prompt.txt, episode.json)"},
    ),
    (
        "--per-bag",
        "per_bag",
        {
            "metavar": "FILE",
            "help": "YAML mapping bag -> prompt, or bag -> {prompt: .., topics: {configured: this bag's}}",
        },
    ),
    ("--shard-mb", "shard_mb", {"type": float, "help": "shard size (MiB); bounds memory"}),
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    p = argparse.ArgumentParser(
        prog="build_clips",
        description="Turn rosbag2 recordings (sqlite3/MCAP, any recorder) into synchronized training clips "
        "with action tokens. Inputs: bag folders, episode folders (episode.json + segments) "
        "or folders of those.",
    )
    p.add_argument("inputs", nargs="*", help="bag folders, episode folders, or parents of those")
    p.add_argument("-c", "--config", help="YAML config (see config/clips.yaml)")
    for flag, dest, kw in _FLAGS:
        p.add_argument(flag, dest=dest, default=None, **kw)
    p.add_argument("-o", dest="output", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--overwrite", action="store_true", default=None, help="replace an earlier build in --output"
    )
    p.add_argument(
        "--no-progress", dest="progress", action="store_false", default=None, help="no progress bar"
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any config key (YAML value)"
    )
    return p


def make_config(argv: list[str] | None) -> ClipsConfig:
    """Parse the command line into a validated config (ValueError on a bad value)."""
    args = build_parser().parse_args(argv)
    cfg = load_config(args.config)
    over: dict[str, Any] = {}
    for _, dest, _ in _FLAGS:
        value = getattr(args, dest)
        if value is not None:
            over[dest] = value
    for dest in ("output", "overwrite", "progress"):
        if getattr(args, dest) is not None:
            over[dest] = getattr(args, dest)
    if args.inputs:
        over["inputs"] = list(args.inputs)
    cfg.update(over, "command line")
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: use KEY=VALUE")
        cfg.update({key.strip(): yaml.safe_load(value)}, "--set")
    cfg.validate()
    if not cfg.inputs:
        raise ValueError(
            "no inputs: give bag or episode folders on the command line or as `inputs` in the config"
        )
    return cfg


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.1f}"


def print_summary(result: Any, out: Any = None) -> None:
    """Human summary: per-bag report, sync statistics, totals."""
    out = out or sys.stdout
    w = out.write
    w("\nPer-bag report\n")
    for r in result.reports:
        status = "ok    " if r.ok else "FAILED"
        w(
            f"  {status} {r.episode_id:<28} {r.split:<5} clips {r.clips:>5}  frames {r.frames:>6}  "
            f"{r.source}\n"
        )
        if r.error:
            w(f"         {r.error}\n")
        for warn in r.warnings:
            w(f"         warning: {warn}\n")
    for err in result.input_errors:
        w(f"  FAILED input: {err}\n")
    for warn in result.warnings:
        w(f"  warning: {warn}\n")
    if result.sync:
        w("\nSync statistics (|offset| ms: p50 / p95 / max; misses)\n")
        for s in result.sync:
            w(
                f"  {s['kind']:<11} {s['topic']:<28} matched {s['matched']:>7}  "
                f"{_fmt(s['offset_ms_p50'])} / {_fmt(s['offset_ms_p95'])} / {_fmt(s['offset_ms_max'])}  "
                f"misses {s['misses']}  out-of-order {s['out_of_order_dropped']}  gaps {s['gaps']}\n"
            )
    mb = result.bytes_read / 2**20
    rate = mb / result.seconds if result.seconds else 0.0
    w(
        f"\nclips: train {result.clips.get('train', 0)}, val {result.clips.get('val', 0)}; "
        f"{len(result.reports) - len(result.failed)}/{len(result.reports) + len(result.input_errors)} "
        f"inputs ok; "
        f"{result.messages} messages, "
        f"{mb:.1f} MiB in {result.seconds:.1f} s ({rate:.1f} MiB/s) -> {result.output}\n"
    )
    if result.fatal:
        w(f"ERROR: {result.fatal}\n")
    if result.kept_previous:
        w(f"The earlier build in {result.output} is unchanged.\n")
    out.flush()


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0 when all bags were built, 1 when any failed, 2 for a configuration error."""
    try:
        cfg = make_config(argv)
    except ValueError as err:
        print(f"build_clips: error: {err}", file=sys.stderr)
        return 2
    from cosmos_ros.clips.builder import ClipBuilder

    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=0, unit="msg", unit_scale=True, desc="build_clips", dynamic_ncols=True)

    def on_total(n: int) -> None:
        if bar is not None:
            bar.total = n
            bar.refresh()

    def on_episode(rep: Any) -> None:
        if bar is not None:
            bar.set_postfix_str(f"{rep.episode_id}: {'ok' if rep.ok else 'FAILED'}")
            if not rep.ok:
                bar.write(f"build_clips: {rep.error}")

    try:
        builder = ClipBuilder(cfg, progress=bar.update if bar is not None else None)
        result = builder.run(on_episode=on_episode, on_total=on_total)
    except (ValueError, OSError) as err:  # configuration, or an output folder that cannot be written
        if bar is not None:
            bar.close()
        print(f"build_clips: error: {err}", file=sys.stderr)
        return 2
    if bar is not None:
        bar.close()
    print_summary(result)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
