"""Evaluation outputs, all in one folder, written all-or-nothing.

- ``eval.json``: every figure, with the models, clips and settings that produced it (NaN -> null);
- ``report.md``: the tables a person reads (summary per model and baseline, per-step fidelity and pose);
- ``curves.png``: per-step PSNR/SSIM (all pixels and moving pixels) and pose error, 95% bands;
- ``grid.gif``: context | truth | each model, one row per clip, for a few clips;
- TensorBoard scalars (``eval/<model>/<figure>`` by predicted step) when given a run folder.

Why a staging folder: the files are written next to the target under a temporary name and renamed into
place only when every one of them is complete, so a failure (disk full, a plotting error, Ctrl-C) leaves the
previous output or nothing, never a half-written report that looks finished.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from cosmos_ros.atomic_io import fsync_path

OUTPUT_FILES = ("eval.json", "report.md", "curves.png", "grid.gif")


class OutputError(RuntimeError):
    """The output folder cannot be used; the message says why and what to do."""


def check_output_dir(out: str | Path) -> Path:
    """Refuse a target that exists and is not an earlier evaluation output (it would be replaced)."""
    path = Path(out)
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not (path / "eval.json").is_file())):
        raise OutputError(
            f"output {path} exists and is not an evaluation output (no eval.json); choose another --out or "
            "remove it"
        )
    return path


def json_safe(obj: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars/arrays -> Python."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    return obj


def _fmt(ci: dict[str, Any] | None, digits: int = 2) -> str:
    if not ci or ci.get("mean") is None or not math.isfinite(float(ci["mean"])):
        return "n/a"
    m, lo, hi = float(ci["mean"]), ci.get("lo"), ci.get("hi")
    if lo is None or hi is None or not math.isfinite(float(lo)) or ci.get("n", 0) < 2:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} [{float(lo):.{digits}f}, {float(hi):.{digits}f}]"


def _num(x: Any, digits: int = 2) -> str:
    return "n/a" if x is None or not math.isfinite(float(x)) else f"{float(x):.{digits}f}"


def render_markdown(results: dict[str, Any]) -> str:
    """report.md: summary table, shuffled-action test, verdicts, per-step tables, notes."""
    c, s, figs = results["clips"], results["settings"], results["figures"]
    names = [*results["models"], *results["baselines"]]
    lines = [
        "# Twin evaluation",
        "",
        f"{c['count']} {c['split']} clips of `{c['root']}` ({c['predicted_steps']} predicted steps, "
        f"{c['width']}x{c['height']} at {c['fps']:g} fps, action mode {c['action_mode']}); "
        f"{s['num_steps']} denoising steps, guidance {s['guidance']:g}, seed {s['seed']}. "
        "Values: mean over clips [95% bootstrap interval].",
        "",
        "Decide on pose error and verdict agreement; pixel scores flatter a static prediction, so compare "
        "PSNR/SSIM on the moving pixels against `nothing_moves`.",
        "",
        "## Summary",
        "",
        "| model | PSNR dB | PSNR moving | SSIM | SSIM moving | pose error | unreadable |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in names:
        f = figs[n]
        fid = f.get("fidelity", {})
        pose = f.get("pose")
        cells = [_fmt(fid.get(k, {}).get("overall"), d) for k, d in (("psnr", 2), ("psnr_moving", 2))]
        cells += [_fmt(fid.get(k, {}).get("overall"), 3) for k in ("ssim", "ssim_moving")]
        cells.append(_fmt(pose["overall"], 3) if pose else "n/a")
        cells.append(f"{pose['unreadable_frames']}/{pose['frames']}" if pose else "n/a")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    ref = (results.get("reference") or {}).get("pose_on_true_frames")
    if ref:
        lines += [
            "",
            f"Pose read from the true frames (the reader's floor): {_fmt(ref['overall'], 3)}, "
            f"{ref['unreadable_frames']}/{ref['frames']} unreadable.",
        ]
    lines += _per_joint_lines(figs, names, ref)
    lines += [
        "",
        "## Action faithfulness (shuffled-action test)",
        "",
        "Each clip's context with another clip's actions. ratio = error(true actions) / error(shuffled), "
        "both against the true future: about 1 when the model ignores its actions. difference = mean "
        "absolute pixel difference of the two predictions (0..255).",
        "",
        "| model | ratio | shuffled x worse | pose ratio | difference |",
        "|---|---|---|---|---|",
    ]
    for n in results["models"]:
        sh = figs[n].get("shuffled_actions")
        if sh:
            lines.append(
                f"| {n} | {_fmt(sh['ratio'], 3)} | {_fmt(sh['shuffled_x_worse'], 2)} | "
                f"{_fmt(sh.get('pose_ratio'), 3)} | {_fmt(sh['prediction_difference'], 2)} |"
            )
        else:
            lines.append(f"| {n} | n/a | n/a | n/a | n/a |")
    lines += [
        "",
        f"## Collision verdicts ({results.get('checker') or 'no checker'})",
        "",
        "Against the checker on the true frames"
        + (
            ", and against the simulator's geometric truth (arm inside a keep-out region)"
            if c.get("geometric_collisions") is not None
            else ""
        )
        + f". Collisions in the truth: checker {c.get('checker_collisions_on_truth')}, geometry "
        f"{c.get('geometric_collisions') if c.get('geometric_collisions') is not None else 'n/a'}.",
        "",
        "| model | agreement | precision | recall | first-step error | geometry agreement "
        "| geometry precision | geometry recall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in names:
        v = figs[n].get("verdicts")
        if not v:
            continue
        t, g = v["vs_true_frames"], v.get("vs_geometry") or {}
        lines.append(
            f"| {n} | {_num(t['agreement'])} | {_num(t['precision'])} | {_num(t['recall'])} | "
            f"{_num(t['first_step_error'])} | {_num(g.get('agreement'))} | {_num(g.get('precision'))} | "
            f"{_num(g.get('recall'))} |"
        )
    cg = (results.get("reference") or {}).get("checker_on_true_frames_vs_geometry")
    if cg:
        lines.append(
            f"| checker on true frames | | | | | {_num(cg['agreement'])} | {_num(cg['precision'])} | "
            f"{_num(cg['recall'])} |"
        )
    steps = c["predicted_steps"]
    for key, title, digits in (
        ("psnr_moving", "PSNR on moving pixels [dB] per step", 2),
        ("pose", "pose error per step", 3),
    ):
        lines += ["", f"## {title}", "", "| model | " + " | ".join(str(i + 1) for i in range(steps)) + " |"]
        lines.append("|---|" + "---|" * steps)
        for n in names:
            f = figs[n]
            per = (
                (f.get("pose") or {}).get("per_step")
                if key == "pose"
                else f.get("fidelity", {}).get(key, {}).get("per_step")
            )
            if per:
                lines.append(f"| {n} | " + " | ".join(_num(x.get("mean"), digits) for x in per) + " |")
    notes = list(results.get("notes") or [])
    for n in results["models"]:
        notes += [f"{n}: {w}" for w in (figs[n].get("info") or {}).get("warnings") or []]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {x}" for x in notes]
    lines += ["", "## Settings", "", "```json", json.dumps(json_safe(s), indent=1), "```", ""]
    return "\n".join(lines)


def plot_curves(results: dict[str, Any], path: Path) -> None:
    """curves.png: per-step fidelity (all / moving pixels) and pose error, one line per model/baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = results["figures"]
    names = [*results["models"], *results["baselines"]]
    panels = [
        ("psnr", "PSNR [dB]"),
        ("psnr_moving", "PSNR moving pixels [dB]"),
        ("ssim", "SSIM"),
        ("ssim_moving", "SSIM moving pixels"),
        ("pose", "pose error"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for n in names:
            f = figs[n]
            per = (
                (f.get("pose") or {}).get("per_step")
                if key == "pose"
                else f.get("fidelity", {}).get(key, {}).get("per_step")
            )
            if not per:
                continue
            x = np.arange(1, len(per) + 1)
            mean = np.array([np.nan if p["mean"] is None else p["mean"] for p in per], float)
            lo = np.array([np.nan if p.get("lo") is None else p["lo"] for p in per], float)
            hi = np.array([np.nan if p.get("hi") is None else p["hi"] for p in per], float)
            style = "--" if f.get("kind") == "baseline" else "-"
            (line,) = ax.plot(x, mean, style, marker="o", ms=3, label=n)
            ax.fill_between(x, lo, hi, alpha=0.15, color=line.get_color())
        floor = (results.get("reference") or {}).get("pose_on_true_frames")
        if key == "pose" and floor:
            per = floor["per_step"]
            mean = np.array([np.nan if p["mean"] is None else p["mean"] for p in per], float)
            ax.plot(np.arange(1, len(per) + 1), mean, ":", color="gray", label="read from true frames")
            ax.legend(fontsize=7)
        ax.set_title(title)
        ax.set_xlabel("predicted step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def grid_frames(samples: dict[str, dict[str, Any]], models: list[str]) -> np.ndarray | None:
    """[T, rows*H + header, cols*W, 3]: per clip a row of context (held) | truth | each model's prediction."""
    import cv2

    rows = []
    for sample in samples.values():
        ctx, truth = sample["context"], sample["truth"]
        n, h, w = truth.shape[:3]
        cols = [np.repeat(ctx[-1:], n, axis=0), truth]
        for m in models:
            pred = sample["pred"].get(m)
            cols.append(pred if pred is not None else np.zeros_like(truth))
        sep = np.full((n, h, 2, 3), 255, np.uint8)
        parts = []
        for col in cols:
            parts += [col, sep]
        rows.append(np.concatenate(parts[:-1], axis=2))
        rows.append(np.full((n, 2, rows[-1].shape[2], 3), 255, np.uint8))
    if not rows:
        return None
    body = np.concatenate(rows[:-1], axis=1)
    n, _, width = body.shape[:3]
    w = next(iter(samples.values()))["truth"].shape[2]
    header = np.full((14, width, 3), 255, np.uint8)
    for k, label in enumerate(["context", "truth", *models]):
        cv2.putText(
            header, label[: max(3, w // 6)], (k * (w + 2) + 2, 11), cv2.FONT_HERSHEY_PLAIN, 0.8, (0, 0, 0), 1
        )
    return np.concatenate([np.repeat(header[None], n, axis=0), body], axis=1)


def write_tensorboard(results: dict[str, Any], run_dir: str | Path) -> None:
    """Scalars eval/<model>/<figure> with the predicted step as the x axis, and overall values at step 0."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir))
    try:
        for name, f in results["figures"].items():
            for key, d in (f.get("fidelity") or {}).items():
                for i, p in enumerate(d["per_step"]):
                    if p["mean"] is not None and math.isfinite(p["mean"]):
                        writer.add_scalar(f"eval/{name}/{key}", p["mean"], i + 1)
            pose = f.get("pose")
            if pose:
                for i, p in enumerate(pose["per_step"]):
                    if p["mean"] is not None and math.isfinite(p["mean"]):
                        writer.add_scalar(f"eval/{name}/pose_error", p["mean"], i + 1)
            sh = f.get("shuffled_actions")
            if sh and sh["ratio"]["mean"] is not None and math.isfinite(sh["ratio"]["mean"]):
                writer.add_scalar(f"eval/{name}/shuffled_ratio", sh["ratio"]["mean"], 0)
    finally:
        writer.flush()
        writer.close()


def write_outputs(results: dict[str, Any], out: str | Path, tensorboard: str | Path | None = None) -> Path:
    """Write every output into `out` at once (staging folder + rename); returns `out`."""
    out = check_output_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    samples = results.pop("_samples", {})
    stage = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        clean = json_safe(results)
        (stage / "eval.json").write_text(json.dumps(clean, indent=1, allow_nan=False))
        (stage / "report.md").write_text(render_markdown(clean))
        plot_curves(clean, stage / "curves.png")
        frames = grid_frames(samples, results["models"])
        if frames is not None:
            import imageio.v3 as iio

            iio.imwrite(stage / "grid.gif", frames, duration=200, loop=0)
        for p in stage.iterdir():
            fsync_path(p)
        if out.exists():
            out.rename(old)
        stage.rename(out)
        fsync_path(out.parent)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if old.exists() and not out.exists():
            old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if tensorboard:
        write_tensorboard(clean, tensorboard)
    return out


def _per_joint_lines(figs: dict[str, Any], names: list[str], ref: dict[str, Any] | None) -> list[str]:
    """Pose error per joint, with each joint's unreadable frames: the overall column averages only the
    joints every readable frame must have (the estimator's `optional` ones are shown here alone)."""
    poses = {n: figs[n].get("pose") for n in names if figs[n].get("pose")}
    if ref:
        poses["true frames"] = ref
    if not poses:
        return []
    joints = list(next(iter(poses.values()))["per_joint"])
    first = next(iter(poses.values()))
    overall = first.get("overall_joints", joints)
    out = [
        "",
        f"Pose error per joint (overall = mean of {', '.join(overall)}; unreadable frames per joint):",
        "",
        "| model | " + " | ".join(joints) + " |",
        "|---|" + "---|" * len(joints),
    ]
    for n, p in poses.items():
        bad = p.get("unreadable_per_joint", {})
        cells = [f"{_fmt(p['per_joint'][j], 3)} ({bad.get(j, 0)}/{p['frames']})" for j in joints]
        out.append(f"| {n} | " + " | ".join(cells) + " |")
    return out
