"""What the demo leaves behind, ROS-free: loss plot, preview GIF and report.md from the stages' figures.

The figures come from the project's own tools (the trainer's TensorBoard scalars, ``cosmos-evaluate``'s
results, ``check_collision``'s verdicts); this module only lays them out, so the report says what those tools
measured and nothing of its own.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

#: Targets the shipped twin is meant to reach on the demo cell (issue 15); the report shows them beside the
#: figures so a reader sees how far a run is from them.
TARGET_POSE_CUT = 0.30  # the adapter cuts the base's pose error by at least this fraction
TARGET_AGREEMENT = 0.90  # check_collision verdicts that match the simulator's truth
#: The pose reader reads true 64x80 frames of any cell to < 0.04 rad median when it knows the cell's camera
#: (docs/sim_twin.md); a floor above this says it is reading with the wrong camera.
POSE_FLOOR_OK = 0.06


def loss_plot(run: Path, path: Path, title: str) -> tuple[float, float]:
    """loss.png from the trainer's TensorBoard scalars (what `tensorboard --logdir` shows); returns the mean
    loss of the first and of the last tenth of the steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    train = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    val = [(e.step, e.value) for e in acc.Scalars("val/loss")] if "val/loss" in acc.Tags()["scalars"] else []
    if not train:
        raise ValueError(f"no train/loss scalars in {run / 'tb'}")
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    steps, values = zip(*train, strict=True)
    ax.plot(steps, values, lw=0.8, alpha=0.5, label="train loss")
    k = max(1, len(values) // 15)
    smooth = [float(np.mean(values[max(0, i - k) : i + 1])) for i in range(len(values))]
    ax.plot(steps, smooth, lw=2, label=f"train loss (mean of {k + 1})")
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    tenth = max(1, len(values) // 10)
    return float(np.mean(values[:tenth])), float(np.mean(values[-tenth:]))


def write_preview(
    samples: dict[str, dict[str, Any]],
    models: dict[str, str],
    path: Path,
    scale: int = 3,
) -> int:
    """preview.gif: per held-out clip a row context (held) | each model's prediction | truth, labelled and
    enlarged ``scale`` times (the twin's frames are 64x80). ``samples`` is the evaluation's (clip id ->
    context, truth, pred by model name); ``models`` maps those names to column labels. Returns the number
    of rows written."""
    import cv2
    import imageio.v3 as iio

    rows = []
    labels = ["context", *models.values(), "truth"]
    for sample in samples.values():
        truth = np.asarray(sample["truth"])
        n = len(truth)
        cols = [np.repeat(np.asarray(sample["context"])[-1:], n, axis=0)]
        cols += [np.asarray(sample["pred"].get(m, np.zeros_like(truth))) for m in models]
        cols.append(truth)
        rows.append(np.concatenate([_pad(c) for c in cols], axis=2))
    if not rows:
        return 0
    body = np.concatenate([_pad(r, axis=1) for r in rows], axis=1)
    n, h, w = body.shape[:3]
    body = np.stack([cv2.resize(f, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST) for f in body])
    col_w = body.shape[2] // len(labels)
    header = np.full((18, body.shape[2], 3), 255, np.uint8)
    for k, label in enumerate(labels):
        cv2.putText(header, label[:24], (k * col_w + 4, 13), cv2.FONT_HERSHEY_PLAIN, 1.0, (0, 0, 0), 1)
    frames = np.concatenate([np.repeat(header[None], n, axis=0), body], axis=1)
    iio.imwrite(path, frames, duration=250, loop=0)
    return len(rows)


def _pad(a: np.ndarray, axis: int = 2, px: int = 1) -> np.ndarray:
    """A white line of ``px`` after the frames along ``axis`` (2: between columns, 1: between rows)."""
    shape = list(a.shape)
    shape[axis] = px
    return np.concatenate([a, np.full(shape, 255, np.uint8)], axis=axis)


def _fmt(x: Any, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _per_step(figures: dict[str, Any], name: str, key: str) -> list[float | None]:
    """Per predicted step means of one figure (`psnr_moving`, `psnr` or `pose`) of one model."""
    f = figures.get(name) or {}
    per = (
        (f.get("pose") or {}).get("per_step")
        if key == "pose"
        else ((f.get("fidelity") or {}).get(key) or {}).get("per_step")
    )
    return [p.get("mean") for p in per] if per else []


def _overall(figures: dict[str, Any], name: str, key: str) -> float | None:
    f = figures.get(name) or {}
    d = (f.get("pose") or {}) if key == "pose" else ((f.get("fidelity") or {}).get(key) or {})
    return (d.get("overall") or {}).get("mean")


def evaluation_lines(results: dict[str, Any], base: str, adapted: str, baseline: str) -> list[str]:
    """Markdown: per-step fidelity and pose error of base, adapted and nothing-moves, and the headline
    figures (pose error change, shuffled-action ratio) against their targets."""
    figs = results["figures"]
    names = (base, adapted, baseline)
    psnr = {n: _per_step(figs, n, "psnr_moving") for n in names}
    pose = {n: _per_step(figs, n, "pose") for n in names}
    steps = max(len(v) for v in [*psnr.values(), *pose.values()]) if figs else 0
    clips = results["clips"]
    out = [
        f"{clips['count']} held-out clips of the demo cell ({clips['split']} split: episodes never trained "
        f"on), {clips['height']}x{clips['width']}, {clips['predicted_steps']} predicted steps each. PSNR on "
        "moving pixels [dB] (higher is better) and pose error [rad] read from the frames (lower is better):",
        "",
        "| step | PSNR base | PSNR adapted | PSNR nothing-moves "
        "| pose base | pose adapted | pose nothing-moves |",
        "|---|---|---|---|---|---|---|",
    ]
    for i in range(steps):
        cells = [_fmt(psnr[n][i] if i < len(psnr[n]) else None) for n in names]
        cells += [_fmt(pose[n][i] if i < len(pose[n]) else None, 3) for n in names]
        out.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    overall = [_fmt(_overall(figs, n, "psnr_moving")) for n in names]
    overall += [_fmt(_overall(figs, n, "pose"), 3) for n in names]
    out.append("| **all** | " + " | ".join(overall) + " |")
    out.append("")
    pb, pa = _overall(figs, base, "pose"), _overall(figs, adapted, "pose")
    if pb and pa is not None and math.isfinite(pb) and math.isfinite(pa):
        cut = 1 - pa / pb
        out.append(
            f"- Pose error, base -> adapted: {pb:.3f} -> {pa:.3f} rad ({100 * cut:.0f}% cut; the shipped "
            f"twin's target is >= {100 * TARGET_POSE_CUT:.0f}%: "
            f"{'met' if cut >= TARGET_POSE_CUT else 'not met'})."
        )
    floor = ((results.get("reference") or {}).get("pose_on_true_frames") or {}).get("overall") or {}
    if floor.get("mean") is not None:
        out.append(
            f"- Pose read from the true frames (the pose reader's own floor): {_fmt(floor['mean'], 3)} rad."
        )
        if floor["mean"] > POSE_FLOOR_OK:
            out.append(
                f"  That is above {POSE_FLOOR_OK} rad: the reader does not see this cell's arm well (it "
                "needs the clips to carry the demo cell's camera), so the pose figures above are not to be "
                "trusted."
            )
    for n in (base, adapted):
        shuffled = (figs.get(n) or {}).get("shuffled_actions") or {}
        worse = (shuffled.get("shuffled_x_worse") or {}).get("mean")
        pose_ratio = (shuffled.get("pose_ratio") or {}).get("mean")  # own / shuffled: below 1 follows
        pose_worse = 1.0 / pose_ratio if pose_ratio else None
        out.append(
            f"- Shuffled-action test, {n}: with another clip's actions the error is {_fmt(worse)}x that with "
            f"its own in pixels, {_fmt(pose_worse)}x in pose (above 1 means the predictions follow the "
            "actions)."
        )
    notes = results.get("notes") or []
    out += [f"- Note from the evaluation: {n}" for n in notes]
    return out


def verdict_lines(plans: dict[str, Any]) -> list[str]:
    """Markdown: each candidate's check_collision verdict beside the simulator's truth, and the agreement."""
    rows = plans["candidates"]
    out = [
        f"Start pose {plans['start']} (joint1..3, rad), keep-out box `{plans['region']}` around the bottle. "
        f"{len(rows)} candidates scored in one `check_collision` call ({_fmt(plans['latency_s'])} s in the "
        "predictor). Truth: the plan's joint positions through the arm's forward kinematics, projected with "
        "the demo cell's camera; the checker on frames the simulator renders for the plan is the checker's "
        "own floor.",
        "",
        "| candidate | predicted | first step | score | simulator | first step "
        "| checker on rendered | agree |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['name']} | {'collision' if r['collision'] else 'clear'} | {r['first_collision_step']} | "
            f"{r['score']:.2f} | {'collision' if r['truth'] else 'clear'} | {r['truth_first_step']} | "
            f"{'collision' if r['rendered_collision'] else 'clear'} | {'yes' if r['agree'] else '**no**'} |"
        )
    agree = plans["agreement"]
    out += [
        "",
        f"- Verdict agreement with the simulator: {sum(r['agree'] for r in rows)}/{len(rows)} = "
        f"{100 * agree:.0f}% (the shipped twin's target is >= {100 * TARGET_AGREEMENT:.0f}%: "
        f"{'met' if agree >= TARGET_AGREEMENT else 'not met'}); the checker on rendered frames agrees on "
        f"{sum(r['rendered_collision'] == r['truth'] for r in rows)}/{len(rows)}.",
        f"- Best collision-free plan by the predictor: {plans['best'] or 'none'}.",
    ]
    return out


def plan_study_lines(study: dict[str, Any]) -> list[str]:
    """Markdown: check_collision verdicts of the base and the adapted twin on the same random plans in the
    demo cell against the simulator (`cosmos_ros.evaluate.plan_verdicts`), with the checker's own floor."""
    base, adapted = study["base"], study["adapted"]
    s = adapted["settings"]
    out = [
        f"{adapted['plans']} random plans of {s['steps']} steps from random start poses in the demo cell, "
        f"one keep-out box each, {s['per_scene']} plans per `predict` call, {s['num_steps']} sampling steps "
        f"(the same plans and boxes for both models; truth: {adapted['collisions_in_truth']} plans enter "
        f"their box, {adapted['clear_in_truth']} do not). The command: `{study['command']}`.",
        "",
        "| verdicts of | agreement with the simulator [95% CI] | precision | recall |",
        "|---|---|---|---|",
    ]
    for name, rep, key in (
        ("base", base, "twin_vs_simulator"),
        ("base + adapter", adapted, "twin_vs_simulator"),
        ("the checker on rendered frames (its floor)", adapted, "checker_on_rendered_vs_simulator"),
    ):
        f = rep[key]
        ci = f["agreement_ci"]
        out.append(
            f"| {name} | {_fmt(f['agreement'], 3)} [{_fmt(ci['lo'], 3)}, {_fmt(ci['hi'], 3)}] | "
            f"{_fmt(f.get('precision'), 3)} | {_fmt(f.get('recall'), 3)} |"
        )
    agree = adapted["twin_vs_simulator"]["agreement"]
    out += [
        "",
        f"- Adapted twin: {100 * agree:.0f}% of the verdicts agree with the simulator (the demo cell's "
        f"target is >= {100 * TARGET_AGREEMENT:.0f}%: {'met' if agree >= TARGET_AGREEMENT else 'not met'}).",
    ]
    return out


def write_report(path: Path, facts: dict[str, Any]) -> Path:
    """report.md: stage times, the twin, training, evaluation, verdicts and the files beside it."""
    lines = [
        "# cosmos_ros demo report",
        "",
        f"Base: `{facts['base']}` ({facts['base_path']}; {facts['base_trained']}); adapter: "
        f"{facts['adapter_mode'].upper()} rank {facts['rank']}, {facts['train_steps']} steps on the CPU, on "
        "the `demo` cell (held-out camera pose, light and objects the base never saw).",
        "",
        "| stage | wall time [s] | CPU time [s] | what |",
        "|---|---|---|---|",
    ]
    lines += [f"| {n} | {dt:.1f} | {cpu:.1f} | {w} |" for n, dt, cpu, w in facts["stages"]]
    wall, cpu = (sum(s[k] for s in facts["stages"]) for k in (1, 2))
    lines += [
        f"| **total** | {wall:.1f} | {cpu:.1f} | |",
        "",
        f"CPU time: this process and the tools and nodes it has finished ({facts['threads']} torch "
        "thread(s)); the predictor's runs until the end, so serve and plan do not include it.",
        "",
        "## Fine-tune",
        "",
        f"{facts['clips']['train']} train clips from {facts['clips']['train_episodes']} episodes; loss (mean "
        f"of the first / last tenth of the steps) {facts['loss_first']:.4f} -> {facts['loss_last']:.4f}: "
        "`loss.png`.",
        "",
        "## Base vs base + adapter on held-out episodes (`cosmos-evaluate`)",
        "",
        *facts["evaluation_lines"],
        "",
        "`preview.gif`: context | base | adapted | truth on held-out clips; the evaluation's own report, "
        "curves and grid are in `eval/`.",
        "",
        "## Collision checks through the predictor node vs the simulator",
        "",
        *facts["verdict_lines"],
        "",
    ]
    if facts.get("plan_study_lines"):
        lines += [
            "## check_collision on random plans in the demo cell, base vs adapted (`plan_verdicts`)",
            "",
            *facts["plan_study_lines"],
            "",
        ]
    path.write_text("\n".join(lines))
    return path
