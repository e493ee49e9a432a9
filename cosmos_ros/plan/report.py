"""The closed-loop evaluation's report, written after every finished episode.

Why incremental: a 50-task run of the twin on a GPU host may be cut off by the command's time limit; the
report then still holds every finished episode, each planner's figures over its finished tasks and the
issue's targets over the tasks that every planner finished (``tasks_compared``), with ``complete: false``.
report.json is replaced atomically (a reader never sees half a file), report.md beside it, and the GIF of
``gif_task`` as soon as every planner has finished that task.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cosmos_ros.atomic_io import write_json_atomic
from cosmos_ros.plan.tasks import ReachTask

REFERENCES = ("oracle", "straight")


def summarise(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Success rate, collisions, time to goal, planning time per replanning step."""
    n = len(episodes)
    times = [e["time_to_goal"] for e in episodes if e["success"]]
    plan = np.array([s for e in episodes for s in e["plan_seconds"]])

    def rate(key: str) -> float | None:  # None (valid JSON), not NaN, for a planner with no task done yet
        return sum(e[key] for e in episodes) / n if n else None

    return {
        "tasks": n,
        "success_rate": rate("success"),
        "reached_rate": rate("reached"),
        "collision_rate": rate("collision"),
        "collisions": sum(e["collision"] for e in episodes),
        "mean_time_to_goal_s": float(np.mean(times)) if times else None,
        "plan_seconds_mean": float(np.mean(plan)) if plan.size else None,
        "plan_seconds_median": float(np.median(plan)) if plan.size else None,
        "plan_seconds_p95": float(np.percentile(plan, 95)) if plan.size else None,
        "replans": int(sum(e["replans"] for e in episodes)),
    }


def targets(episodes: dict[str, list[dict[str, Any]]], main: str) -> dict[str, Any]:
    """The issue's targets for the main model: success >= 80% of the oracle's, collisions <= half the
    straight planner's; on the tasks every planner has finished (all of them once the run is complete)."""
    if main in REFERENCES or not all(k in episodes for k in (main, *REFERENCES)):
        return {}
    done = set.intersection(*({e["task"] for e in episodes[k]} for k in (main, *REFERENCES)))
    if not done:
        return {}
    m, o, s = (summarise([e for e in episodes[k] if e["task"] in done]) for k in (main, *REFERENCES))
    ratio = m["success_rate"] / o["success_rate"] if o["success_rate"] else None
    return {
        "tasks_compared": len(done),
        "success_vs_oracle": ratio,
        "success_target_met": ratio is not None and ratio >= 0.8,
        "collisions_vs_straight": (m["collisions"] / s["collisions"]) if s["collisions"] else None,
        "collision_target_met": m["collisions"] <= 0.5 * s["collisions"],
    }


def write_gif(path: Path, runs: dict[str, list[np.ndarray]], task: ReachTask, fps: float = 10.0) -> None:
    """Every planner's camera on one task, side by side, with the keep-out box drawn."""
    import imageio.v2 as imageio

    length = max(len(f) for f in runs.values())
    tiles = []
    for t in range(length):
        row = []
        for name, frames in runs.items():
            img = frames[min(t, len(frames) - 1)].copy()
            h, w = img.shape[:2]
            r = task.region
            cv2.rectangle(img, (int(r.x0 * w), int(r.y0 * h)), (int(r.x1 * w), int(r.y1 * h)), (255, 0, 0), 1)
            cv2.putText(
                img, Path(name).name, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA
            )
            row.append(img)
        tiles.append(np.concatenate(row, axis=1))
    imageio.mimsave(path, tiles, duration=1.0 / fps, loop=0)


def markdown(report: dict[str, Any]) -> str:
    done = "" if report["complete"] else " (INCOMPLETE: the run stopped early; figures over finished tasks)"
    lines = [
        f"# Planner closed-loop evaluation ({report['tasks']} tasks, seed {report['seed']}){done}",
        "",
        f"Model `{report['model']}`, device {report['device']}; CEM {report['cem']}, "
        f"{report['num_steps']} sampling steps; time limit {report['time_limit']} s, tolerance "
        f"{report['tolerance']} rad, goal {report['goal']}, region margin {report['region_margin']}.",
        "",
        "| planner | tasks done | success | reached | collision episodes | mean time to goal [s] "
        "| plan s/step mean | median | p95 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in report["summary"].items():
        if not s["tasks"]:
            lines.append(f"| {name} | 0 | - | - | - | - | - | - | - |")
            continue
        ttg = f"{s['mean_time_to_goal_s']:.2f}" if s["mean_time_to_goal_s"] is not None else "-"
        lines.append(
            f"| {name} | {s['tasks']} | {s['success_rate']:.0%} | {s['reached_rate']:.0%} | "
            f"{s['collisions']} ({s['collision_rate']:.0%}) | {ttg} | {s['plan_seconds_mean']:.3f} | "
            f"{s['plan_seconds_median']:.3f} | {s['plan_seconds_p95']:.3f} |"
        )
    if report.get("targets"):
        lines += ["", "Targets: " + json.dumps(report["targets"])]
    return "\n".join(lines) + "\n"


class ReportWriter:
    """Collects episodes as they finish and rewrites report.json / report.md after each one."""

    def __init__(
        self,
        out: Path,
        settings: dict[str, Any],
        tasks: Sequence[ReachTask],
        names: Sequence[str],
        gif_task: int,
    ) -> None:
        self.out = Path(out)
        self.settings = settings
        self.tasks = list(tasks)
        self.names = list(names)  # report order: the main model first
        self.episodes: dict[str, list[dict[str, Any]]] = {n: [] for n in self.names}
        self.gif_task = gif_task
        self.gif_frames: dict[str, list[np.ndarray]] = {}
        self.gif_written = False

    def add(self, name: str, episode: dict[str, Any], frames: list[np.ndarray] | None = None) -> None:
        """One finished episode (and the GIF task's camera frames): the files on disk follow at once."""
        self.episodes[name].append(episode)
        self.episodes[name].sort(key=lambda e: e["task"])
        if frames:
            self.gif_frames[name] = frames
        self.write()
        if not self.gif_written and set(self.gif_frames) == set(self.names):
            write_gif(self.out / f"task{self.gif_task}.gif", self.gif_frames, self.tasks[self.gif_task])
            self.gif_written = True

    def resume(self) -> dict[str, set[int]]:
        """Take over the episodes of an earlier, cut-off run written to the same folder (same settings):
        the tasks each planner has done already, which the caller skips. Raises ValueError naming the
        settings that differ."""
        path = self.out / "report.json"
        if not path.is_file():
            return {n: set() for n in self.names}
        prev = json.loads(path.read_text())
        diff = {k: (prev.get(k), v) for k, v in self.settings.items() if prev.get(k) != v}
        if diff or prev.get("task_list") != [t.describe() for t in self.tasks]:
            what = ", ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in diff.items()) or "the tasks"
            raise ValueError(
                f"{path} was written with other settings ({what}): resume with the same options, or "
                "write to another --out"
            )
        for name in self.names:
            self.episodes[name] = sorted(prev["episodes"].get(name, []), key=lambda e: e["task"])
        self.gif_written = (self.out / f"task{self.gif_task}.gif").is_file()
        return {n: {e["task"] for e in self.episodes[n]} for n in self.names}

    def report(self) -> dict[str, Any]:
        complete = all(len(self.episodes[n]) == len(self.tasks) for n in self.names)
        summary = {k: summarise(v) for k, v in self.episodes.items()}
        return {
            **self.settings,
            "complete": complete,
            "tasks_done": {k: len(v) for k, v in self.episodes.items()},
            "summary": summary,
            "targets": targets(self.episodes, self.settings["model"]),
            "task_list": [t.describe() for t in self.tasks],
            "episodes": self.episodes,
        }

    def write(self) -> dict[str, Any]:
        report = self.report()
        self.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.out / "report.json", report)
        md = self.out / "report.md"
        tmp = md.with_name(f".{md.name}.{os.getpid()}")
        tmp.write_text(markdown(report))
        os.replace(tmp, md)
        return report
