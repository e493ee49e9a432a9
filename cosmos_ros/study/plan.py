"""GPU-minutes per row, and the rows cut into batches of at most 25 GPU-minutes: ``python -m
cosmos_ros.study.plan`` prints the plan (docs/adaptation.md carries it).

The estimate rests on two measured figures of the twin's recipe on one H200 (docs/sim_twin.md) and on
assumptions stated beside them (`Recipe`); each is an input, so a first batch's measured rows can replace
them (``--calibrate DIR``: the median measured seconds per method, from the rows' JSON).

Batches are the rows in the config's order (its priority: baseline, main, data, ranks) cut where the next
row would take a batch over its budget. A batch is run by device calls of at most 10 minutes: on one GPU a
batch is split into parts (`parts`), each with the data preparation of a fresh machine and a margin; on a
machine of G GPUs each part takes about 1/G of the wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median

from cosmos_ros.study.config import Row, StudyConfig, adapter_mode


@dataclass(frozen=True)
class Recipe:
    """What a row's time is estimated from. Measured: the first two; assumed: the rest."""

    steps_per_s_at_512: float = 8.0  # the twin's full training, batch 512, bf16, compiled (one H200)
    eval_s_per_clip_10_steps: float = 92.0 / 96.0  # the twin's evaluation: 96 clips in 92 s, 10 steps
    min_step_s: float = 0.03  # assumed floor of one small-batch step (kernel launches, optimizer, no compile)
    row_overhead_s: float = 40.0  # assumed: process start, imports, twin load, latent cache, model build
    prepare_s: float = 60.0  # assumed: episodes and clips on a fresh 16-core machine, once per device call
    call_limit_s: float = 600.0  # a device call's limit
    call_margin_s: float = 60.0  # kept free in each call (estimates are estimates)


def row_seconds(cfg: StudyConfig, row: Row, recipe: Recipe = Recipe()) -> float:
    """Estimated GPU seconds of one row on one H200 (training, its val losses, both evaluations, start-up)."""
    e = cfg.evaluation
    clips = e.new_cell_clips + e.original_clips
    total = recipe.row_overhead_s + clips * recipe.eval_s_per_clip_10_steps * e.num_steps / 10.0
    if row.method != "none":
        p = cfg.policy(row.method)
        step = max(p.batch_size / (512.0 * recipe.steps_per_s_at_512), recipe.min_step_s)
        val = cfg.training.val_points * cfg.training.val_batches * step / 3.0  # forward only
        total += p.steps * step + val
    return total


def measured_seconds(results: Path) -> dict[str, float]:
    """Median measured GPU-seconds of a row per method, from the rows' JSON in ``results`` (calibration)."""
    rows = []
    for path in sorted(results.glob("*.json")):
        try:
            rows.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return measured_from_rows(rows)


def measured_from_rows(rows: list[dict]) -> dict[str, float]:
    """Median GPU-seconds of a row per method: its wall time divided by the rows that shared its GPU
    (``environment.rows_per_gpu``; `cosmos_ros.study.batch --per-gpu`), which is what a row costs of a GPU
    when several run on it at once; rows without the figures are skipped."""
    by_method: dict[str, list[float]] = {}
    for data in rows:
        try:
            method, seconds = data["row"]["method"], float(data["seconds"]["total"])
            sharing = max(int((data.get("environment") or {}).get("rows_per_gpu") or 1), 1)
        except (KeyError, TypeError, ValueError):
            continue
        by_method.setdefault(method, []).append(seconds / sharing)
    return {m: median(v) for m, v in by_method.items()}


@dataclass
class Batch:
    number: int
    rows: list[Row]
    seconds: list[float]

    @property
    def minutes(self) -> float:
        return sum(self.seconds) / 60.0


def estimate(
    cfg: StudyConfig, recipe: Recipe = Recipe(), measured: dict[str, float] | None = None
) -> list[tuple[Row, float]]:
    """(row, estimated seconds) in plan order; a method with measured rows takes their median instead."""
    measured = measured or {}

    def seconds(r: Row) -> float:  # a control (lora-fa) costs what its method does until it has run
        return measured.get(r.method, measured.get(adapter_mode(r.method), row_seconds(cfg, r, recipe)))

    return [(r, seconds(r)) for r in cfg.rows()]


def batches(rows: list[tuple[Row, float]], budget_minutes: float = 25.0) -> list[Batch]:
    """Consecutive rows, cut where the next one would take a batch over ``budget_minutes``."""
    out: list[Batch] = []
    for row, seconds in rows:
        if seconds / 60.0 > budget_minutes:
            raise ValueError(
                f"row {row.id} alone is estimated at {seconds / 60:.1f} GPU-minutes, over the batch budget "
                f"of {budget_minutes}; lower training.steps or the evaluation's clips"
            )
        if not out or out[-1].minutes + seconds / 60.0 > budget_minutes:
            out.append(Batch(len(out) + 1, [], []))
        out[-1].rows.append(row)
        out[-1].seconds.append(seconds)
    return out


def parts(batch: Batch, gpus: int = 1, recipe: Recipe = Recipe()) -> list[list[Row]]:
    """A batch split into device calls: each part's rows, spread over ``gpus`` GPUs, fit into one call
    after the data preparation and the margin. Rows keep their order."""
    room = recipe.call_limit_s - recipe.prepare_s - recipe.call_margin_s
    out: list[list[Row]] = [[]]
    loads = [0.0] * gpus  # seconds per GPU in the current part (each row goes to the least loaded GPU)
    for row, seconds in zip(batch.rows, batch.seconds, strict=True):
        k = loads.index(min(loads))
        if out[-1] and loads[k] + seconds > room:
            out.append([])
            loads = [0.0] * gpus
            k = 0
        out[-1].append(row)
        loads[k] += seconds
    return out


def plan_markdown(
    cfg: StudyConfig, recipe: Recipe = Recipe(), measured: dict[str, float] | None = None
) -> str:
    """The plan as docs/adaptation.md shows it: estimate per method, the batches, the commands."""
    est = estimate(cfg, recipe, measured)
    plan = batches(est)
    per_method: dict[str, float] = {}
    for row, s in est:
        per_method.setdefault(row.method, s)
    total = sum(s for _, s in est) / 60.0
    basis = (
        f"measured medians for {', '.join(sorted(measured))}: a row's wall time over the rows sharing its GPU"
        if measured
        else "estimates"
    )
    r = recipe
    lines = [
        f"{len(est)} rows, about **{total:.0f} GPU-minutes** on one H200 in {len(plan)} batches of at most "
        f"25 GPU-minutes ({basis}).",
        "",
        "Estimate per row (`cosmos_ros.study.plan.Recipe`): training steps at the measured throughput of "
        f"the twin's recipe ({r.steps_per_s_at_512:g} steps/s at batch 512 on one H200) with an assumed "
        f"floor of {r.min_step_s * 1000:.0f} ms per small-batch step, val losses as a third of a step per "
        f"batch, the two evaluations at the measured {r.eval_s_per_clip_10_steps:.2f} s per clip for 10 "
        f"sampling steps (96 clips in 92 s), and an assumed {r.row_overhead_s:.0f} s of start-up per row. "
        f"Each device call also prepares the data (assumed {r.prepare_s:.0f} s) and keeps "
        f"{r.call_margin_s:.0f} s spare. Batch 1's measured rows replace the assumptions: "
        "`python -m cosmos_ros.study.plan --calibrate docs/adaptation/results`.",
        "",
        f"| method | GPU-seconds per row ({'measured' if measured else 'estimate'}) |",
        "|---|---|",
        *(f"| {m} | {s:.0f} |" for m, s in per_method.items()),
        "",
        "| batch | rows | groups | GPU-min | calls on 1 GPU | calls on 4 GPUs | first row | last row |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b in plan:
        groups = ", ".join(dict.fromkeys(r.group for r in b.rows))
        lines.append(
            f"| {b.number} | {len(b.rows)} | {groups} | {b.minutes:.1f} | {len(parts(b, 1, recipe))} | "
            f"{len(parts(b, 4, recipe))} | `{b.rows[0].id}` | `{b.rows[-1].id}` |"
        )
    lines += [
        "",
        "Each part is one device call; parts are planned for the GPUs of the machine (`--gpus`, the same "
        "in every call of a batch). Rows whose JSON is already in `--skip-done` are skipped (a call cut "
        "short is run again as it was), and each row's JSON goes to `$OUT/results`:",
        "",
        "    python -m cosmos_ros.study.batch --batch B --part P --gpus 1 --work runs/adaptation_study \\",
        "        --results $OUT/results --skip-done docs/adaptation/results",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from cosmos_ros.study.run import add_common, load

    ap = argparse.ArgumentParser(prog="python -m cosmos_ros.study.plan", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--calibrate", type=Path, help="results folder: measured medians per method replace estimates"
    )
    ap.add_argument("--json", action="store_true", help="print the batches as JSON instead of markdown")
    add_common(ap)
    args = ap.parse_args(argv)
    try:
        cfg = load(args)
        measured = measured_seconds(args.calibrate) if args.calibrate else None
        if args.json:
            plan = batches(estimate(cfg, measured=measured))
            print(
                json.dumps(
                    {
                        "recipe": asdict(Recipe()),
                        "batches": [
                            {
                                "batch": b.number,
                                "minutes": round(b.minutes, 2),
                                "rows": [r.id for r in b.rows],
                            }
                            for b in plan
                        ],
                    },
                    indent=1,
                )
            )
        else:
            print(plan_markdown(cfg, measured=measured))
    except (ValueError, FileNotFoundError) as exc:
        print(f"plan: error: {exc}", file=sys.stderr)
        return 1
    return 0


def batch_rows(
    cfg: StudyConfig, number: int, part: int | None, gpus: int, measured: dict[str, float] | None = None
) -> list[Row]:
    """The rows of planned batch ``number`` (1-based), or of one of its parts for ``gpus`` GPUs (the plan
    `plan_markdown` prints with the same ``measured`` figures)."""
    plan = batches(estimate(cfg, measured=measured))
    if not 1 <= number <= len(plan):
        raise ValueError(
            f"batch {number}: the plan has batches 1..{len(plan)} (python -m cosmos_ros.study.plan)"
        )
    b = plan[number - 1]
    if part is None:
        return b.rows
    split = parts(b, gpus)
    if not 1 <= part <= len(split):
        raise ValueError(f"batch {number} has parts 1..{len(split)} on {gpus} GPU(s)")
    return split[part - 1]


if __name__ == "__main__":
    raise SystemExit(main())
