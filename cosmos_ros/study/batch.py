"""Study rows, one process per row, on every GPU of the machine: ``python -m cosmos_ros.study.batch``.

    python -m cosmos_ros.study.batch --batch 1 --part 2 --gpus 1 --work runs/adaptation_study \\
        --results $OUT/results --skip-done docs/adaptation/results
    python -m cosmos_ros.study.batch --rows new_arm-none,new_arm-lora16-e30-s0 --work runs/study

Rows come from the plan (``--batch``/``--part``, `cosmos_ros.study.plan`), a list (``--rows``) or all of them
(``--all``). A row whose JSON is already in ``--results`` or a ``--skip-done`` folder is skipped, so a call
cut short by the device's time limit is simply run again. The episodes and clips are prepared once, here,
before any row starts; then each row runs as ``python -m cosmos_ros.study.run --row ID`` in its own process
(a clean CUDA context: its peak memory and step time are its own), ``--per-gpu`` of them per GPU (default 1:
more share a GPU and inflate each other's step times, which the rows' JSON then records), its output in
``<results>/logs/<id>.log``. ``--budget-minutes`` starts no row whose expected end lies past the budget,
counted from this command's start (the data preparation included: a device call's limit is wall time). The
expected duration of a row is the longest of the rows of its method already finished in this call (they ran
sharing the GPU as this one will), else the plan's estimate scaled up for the rows sharing its GPU.
Exit status: 0 when every row ran (or was skipped), 1 when one failed or was left out, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import cosmos_ros
from cosmos_ros.study.config import Row, StudyConfig
from cosmos_ros.study.plan import batch_rows, measured_seconds, row_seconds

#: The environment variable telling a row how many rows shared its GPU (recorded in its JSON).
SHARING_ENV = "COSMOS_STUDY_ROWS_PER_GPU"


def select_rows(cfg: StudyConfig, args: argparse.Namespace) -> list[Row]:
    if args.all:
        return cfg.rows()
    if args.rows:
        return [cfg.row(r.strip()) for r in args.rows.split(",") if r.strip()]
    measured = measured_seconds(args.calibrate) if args.calibrate else None
    return batch_rows(cfg, args.batch, args.part, max(args.gpus, 1), measured)


def done_ids(folders: list[Path]) -> set[str]:
    """Row ids with a result JSON in any of the folders."""
    return {p.stem for f in folders if f.is_dir() for p in f.glob("*.json")}


def row_command(args: argparse.Namespace, row: Row, results: Path) -> list[str]:
    cmd = [sys.executable, "-m", "cosmos_ros.study.run", "--row", row.id, "--config", str(args.config)]
    cmd += ["--work", str(args.work), "--results", str(results)]
    return cmd + (["--smoke"] if args.smoke else []) + list(args.overrides)


def expected_seconds(cfg: StudyConfig, row: Row, per_gpu: int, seen: dict[str, list[float]]) -> float:
    """How long ``row`` will take here, on the safe side: the longest of its method's rows finished in this
    call (they shared the GPUs as this one will; the first to finish are the fast ones), else the plan's
    estimate times 1 + 0.3 per other row on its GPU (at 5 per GPU the measured rows took 1.5-2x the
    estimate of a row alone)."""
    if seen.get(row.method):
        return max(seen[row.method])
    return row_seconds(cfg, row) * (1.0 + 0.3 * (per_gpu - 1))


def run_rows(
    args: argparse.Namespace, cfg: StudyConfig, rows: list[Row], results: Path, t_start: float
) -> dict[str, str]:
    """Run the rows over the slots (GPU x per_gpu); returns row id -> ok | failed (rc) | left out.

    ``t_start`` is when the command started (``time.monotonic``): the budget counts from there."""
    slots = [(gpu, k) for k in range(args.per_gpu) for gpu in range(max(args.gpus, 1))]  # GPUs in turn
    free = list(slots)
    running: dict[tuple[int, int], tuple[Row, subprocess.Popen, IO[str], float]] = {}
    seen: dict[str, list[float]] = {}
    outcome: dict[str, str] = {}
    pending = list(rows)
    logs = results / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **{SHARING_ENV: str(args.per_gpu)})
    src = str(Path(cosmos_ros.__file__).resolve().parent.parent)  # the package, imported as here
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = t_start
    while pending or running:
        while pending and free:
            row = pending.pop(0)
            elapsed = time.monotonic() - t0
            expected = expected_seconds(cfg, row, args.per_gpu, seen)
            if args.budget_minutes and elapsed + expected > 60 * args.budget_minutes:
                outcome[row.id] = "left out (budget)"
                continue
            slot = free.pop(0)
            slot_env = dict(env)
            if args.gpus > 0:
                slot_env["CUDA_VISIBLE_DEVICES"] = str(slot[0])
            log = (logs / f"{row.id}.log").open("w")
            proc = subprocess.Popen(
                row_command(args, row, results), env=slot_env, stdout=log, stderr=subprocess.STDOUT
            )
            running[slot] = (row, proc, log, time.monotonic())
            print(f"batch: {row.id} started on GPU {slot[0]} (log {logs / (row.id + '.log')})", flush=True)
        for slot, (row, proc, log, started) in list(running.items()):
            rc = proc.poll()
            if rc is None:
                continue
            log.close()
            del running[slot]
            free.append(slot)
            outcome[row.id] = "ok" if rc == 0 else f"failed ({rc})"
            if rc == 0:
                seen.setdefault(row.method, []).append(time.monotonic() - started)
            print(f"batch: {row.id} {outcome[row.id]} after {time.monotonic() - t0:.0f} s", flush=True)
        if running:
            time.sleep(0.5)  # polling child processes
    return outcome


def main(argv: list[str] | None = None) -> int:
    from cosmos_ros.study.run import add_common, load

    t_start = time.monotonic()

    ap = argparse.ArgumentParser(prog="python -m cosmos_ros.study.batch", description=__doc__.split("\n")[0])
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--batch", type=int, help="a planned batch (python -m cosmos_ros.study.plan)")
    what.add_argument("--rows", help="comma-separated row ids")
    what.add_argument("--all", action="store_true", help="every row of the config")
    ap.add_argument("--part", type=int, help="with --batch: one part (one device call) of it")
    ap.add_argument("--calibrate", type=Path, help="with --batch: plan with the measured rows of this folder")
    ap.add_argument(
        "--gpus",
        type=int,
        default=-1,
        help="GPUs to use (default: all CUDA devices; 0: CPU, one row at a time)",
    )
    ap.add_argument("--per-gpu", type=int, default=1, help="rows at once on each GPU (default 1)")
    ap.add_argument("--budget-minutes", type=float, default=0.0, help="start no row estimated to end later")
    ap.add_argument("--skip-done", type=Path, action="append", default=[], help="folders of finished rows")
    add_common(ap)
    args = ap.parse_args(argv)
    if args.part is not None and args.batch is None:
        ap.error("--part needs --batch")
    if args.gpus < 0:
        import torch

        args.gpus = torch.cuda.device_count()
    if args.per_gpu < 1:
        ap.error("--per-gpu must be >= 1")
    results = args.results or args.work / "results"
    try:
        cfg = load(args)
        rows = select_rows(cfg, args)
        done = done_ids([results, *args.skip_done])
        todo = [r for r in rows if r.id not in done]
        print(
            f"batch: {len(rows)} rows, {len(rows) - len(todo)} done already, {len(todo)} to run", flush=True
        )
        if todo:
            from cosmos_ros.demo import load_twin
            from cosmos_ros.study.data import prepare

            counts = [r.episodes or cfg.data.train_episodes for r in todo]
            prepare(cfg, load_twin(cfg.base), args.work, sorted({r.cell for r in todo}), counts)
        outcome = run_rows(args, cfg, todo, results, t_start)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as exc:
        print(f"batch: error: {exc}", file=sys.stderr)
        return 1
    bad = {k: v for k, v in outcome.items() if v != "ok"}
    print(f"batch: {len(outcome) - len(bad)} ok, {len(bad)} not: {bad or ''} -> {results}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
