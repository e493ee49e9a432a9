"""One row of the adaptation study: ``python -m cosmos_ros.study.run --row ID``.

    python -m cosmos_ros.study.run --list [--group main]       # the row ids, in plan order
    python -m cosmos_ros.study.run --row new_arm-dora16-e3-s1 --work runs/study --results runs/study/results
    python -m cosmos_ros.study.run --prepare --work runs/study # every row's episodes and clips, no training

Runs from the repository root without ROS or a colcon build (the package is imported from the source tree).
Any config key can be overridden after the options (``training.steps=500``); ``--smoke`` cuts every count
to a CPU plumbing check. Exit status: 0 done, 1 a clear error (its message names the fix), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cosmos_ros.study.config import DEFAULT_CONFIG, StudyConfig, load_study_config


def add_common(ap: argparse.ArgumentParser) -> None:
    """Options every study command shares (run, batch, plan)."""
    ap.add_argument("--config", default=DEFAULT_CONFIG, help="study config (default %(default)s)")
    ap.add_argument("--smoke", action="store_true", help="tiny counts: the CPU plumbing check")
    ap.add_argument(
        "--work", type=Path, default=Path("runs/adaptation_study"), help="data, clips, row folders"
    )
    ap.add_argument(
        "--results", type=Path, default=None, help="where each row's JSON goes (default <work>/results)"
    )
    ap.add_argument("overrides", nargs="*", help="config overrides key.sub=value, e.g. training.steps=500")


def load(args: argparse.Namespace) -> StudyConfig:
    return load_study_config(args.config, args.smoke, args.overrides)


def set_threads() -> None:
    """On a CPU, torch threads for the cores other jobs leave idle (the demo's rule); a GPU needs none."""
    import torch

    if not torch.cuda.is_available():
        from cosmos_ros.demo import auto_threads

        torch.set_num_threads(auto_threads())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cosmos_ros.study.run", description=__doc__.split("\n")[0])
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--row", help="the row to run (its id; see --list)")
    what.add_argument("--list", action="store_true", help="print the row ids")
    what.add_argument("--prepare", action="store_true", help="make every row's episodes and clips only")
    ap.add_argument("--group", help="with --list: only the rows of this group (baseline, main, data, ranks)")
    add_common(ap)
    args = ap.parse_args(argv)
    from cosmos_ros.study.row import RowError, run_row

    try:
        cfg = load(args)
        if args.list:
            for row in cfg.rows():
                if args.group in (None, row.group):
                    print(f"{row.id}\t{row.group}")
            return 0
        if args.prepare:
            from cosmos_ros.demo import load_twin
            from cosmos_ros.study.data import prepare

            rows = cfg.rows()
            counts = sorted({r.episodes or cfg.data.train_episodes for r in rows})
            prepare(cfg, load_twin(cfg.base), args.work, cfg.cells, counts)
            print(f"study: data for {len(cfg.cells)} cell(s) x {counts} episodes under {args.work}")
            return 0
        row = cfg.row(args.row)
        set_threads()
        run_row(cfg, row, args.work, args.results or args.work / "results")
    except (ValueError, FileNotFoundError, RowError, RuntimeError, OSError) as exc:
        print(f"study: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
