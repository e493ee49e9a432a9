"""The results folder -> docs/adaptation.md: design, plan, tables and plots with intervals, a conclusions
template: ``python -m cosmos_ros.study.report --results docs/adaptation/results``.

Every figure in the page comes from the rows' JSON (`cosmos_ros.study.row`); the page writes no number of
its own. Rows of one configuration (cell, method, rank, episodes) are its seeds; their per-clip values give
the intervals (`cosmos_ros.study.stats`: over seeds and clips, differences from the base twin paired clip by
clip). The conclusions are written by a person from the tables, in ``docs/adaptation/conclusions.md`` (kept
across rebuilds and put in the page as it is); without that file the page gets a template with placeholders:
the builder cannot know which differences matter. The raw JSON stays beside the page: the row files in
``docs/adaptation/results/`` (copied there when the results folder is elsewhere) and the tables' figures in
``docs/adaptation/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from cosmos_ros.study.config import StudyConfig
from cosmos_ros.study.plan import estimate, measured_from_rows, plan_markdown
from cosmos_ros.study.plots import method_label, plot_curves, plot_data, plot_forgetting, plot_ranks, row_key
from cosmos_ros.study.row import ROW_FORMAT
from cosmos_ros.study.stats import paired_difference, ratio_statistic, seed_clip_ci

METHOD_ORDER = {"none": 0, "lora": 1, "dora": 2, "full": 3, "lora-fa": 4, "dora-fa": 5}


def load_rows(folder: Path) -> list[dict[str, Any]]:
    """Every row JSON in ``folder`` (files of another format are named and skipped)."""
    rows = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            print(f"report: skipping {path}: {exc}", file=sys.stderr)
            continue
        if data.get("format") != ROW_FORMAT:
            print(f"report: skipping {path}: not a study row ({ROW_FORMAT})", file=sys.stderr)
            continue
        rows.append(data)
    return rows


def group_rows(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, str, int, int], list[dict[str, Any]]]:
    """Rows by configuration, each group's rows by seed."""
    groups: dict[tuple[str, str, int, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row_key(row), []).append(row)
    for g in groups.values():
        g.sort(key=lambda r: r["row"]["seed"])
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][0], METHOD_ORDER[kv[0][1]], kv[0][2], kv[0][3])))


def per_clip(rows: list[dict[str, Any]], section: str, name: str) -> np.ndarray | None:
    """The rows' per-clip values of one figure: [seeds, clips] (pairs: [seeds, clips, 2]); None when a row
    lacks it. ValueError when the rows were evaluated on different clips (they cannot be paired)."""
    ids = {tuple(r[section]["clip_ids"]) for r in rows}
    if len(ids) > 1:
        raise ValueError(
            f"rows {[r['row']['id'] for r in rows]} were evaluated on different {section} clips: rerun them "
            "with the same data and evaluation settings"
        )
    values = [r[section]["per_clip"].get(name) for r in rows]
    if any(v is None for v in values):
        return None
    return np.array(values, dtype=np.float64)


def group_figures(rows: list[dict[str, Any]], base: list[dict[str, Any]] | None) -> dict[str, Any]:
    """One configuration's figures with intervals (``base``: the cell's ``none`` rows, for the changes)."""
    out: dict[str, Any] = {"seeds": [r["row"]["seed"] for r in rows], "rows": [r["row"]["id"] for r in rows]}
    for section, prefix in (("new_cell", ""), ("original_cell", "original_")):
        pose = per_clip(rows, section, "pose")
        if pose is not None:
            out[prefix + "pose"] = seed_clip_ci(pose)
            ref = per_clip(base, section, "pose") if base else None
            if ref is not None and base is not rows:
                if tuple(base[0][section]["clip_ids"]) != tuple(rows[0][section]["clip_ids"]):
                    raise ValueError(
                        f"{rows[0]['row']['id']} and the base twin saw different {section} clips"
                    )
                out[prefix + "pose_change"] = seed_clip_ci(paired_difference(pose, ref))
        psnr = per_clip(rows, section, "psnr_moving")
        if psnr is not None:
            out[prefix + "psnr_moving"] = seed_clip_ci(psnr)
    pairs = per_clip(rows, "new_cell", "pose_own_shuffled")
    if pairs is not None and pairs.ndim == 3:
        out["shuffled_pose_x_worse"] = seed_clip_ci(pairs[..., ::-1], ratio_statistic)
    agree = per_clip(rows, "new_cell", "verdict_agree")
    if agree is not None:
        out["verdict_agreement"] = seed_clip_ci(agree)
    figs = [r["new_cell"]["figures"] for r in rows]
    frames = sum(f.get("frames") or 0 for f in figs)
    out["unreadable_share"] = sum(f.get("unreadable_frames") or 0 for f in figs) / frames if frames else None
    out["collisions_in_truth"] = figs[0].get("verdict_collisions_in_truth")
    out["verdict_clips"] = figs[0].get("verdict_clips")
    trained = [r["training"] for r in rows if r.get("training")]
    if trained:
        steady = [t["step_seconds"]["steady"] for t in trained if t["step_seconds"]["steady"] is not None]
        peaks = [t["peak_gpu_bytes"] for t in trained if t.get("peak_gpu_bytes") is not None]
        t90 = [t["time_to_90"]["seconds"] for t in trained]
        out.update(
            trainable_params=trained[0]["trainable_params"],
            action_params=trained[0]["action_params"],
            step_ms=1000 * float(np.median(steady)) if steady else None,
            peak_gpu_gib=max(peaks) / 2**30 if peaks else None,
            time_to_90_s=t90,
            shared_gpu=any(r["environment"].get("rows_per_gpu", 1) > 1 for r in rows),
        )
    return out


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Every configuration's figures (the tables' content; written as summary.json)."""
    groups = group_rows(rows)
    out = {}
    for key, g in groups.items():
        base = groups.get((key[0], "none", 0, 0))
        out["|".join(map(str, key))] = {"key": list(key), **group_figures(g, base)}
    return out


#: Claim 2's paired contrasts, A - B at the full episode count: (label, A, B) with A and B as (method, rank).
CONTRASTS: tuple[tuple[str, tuple[str, int], tuple[str, int]], ...] = (
    ("dora r16 - lora r16", ("dora", 16), ("lora", 16)),
    ("full - lora r16", ("full", 0), ("lora", 16)),
    ("full - dora r16", ("full", 0), ("dora", 16)),
    ("lora r64 - lora r4", ("lora", 64), ("lora", 4)),
    ("dora r64 - dora r4", ("dora", 64), ("dora", 4)),
    ("dora r64 - lora r64", ("dora", 64), ("lora", 64)),
    ("lora-fa r16 - lora r16 (action MLPs frozen - trained)", ("lora-fa", 16), ("lora", 16)),
    ("dora-fa r16 - dora r16 (action MLPs frozen - trained)", ("dora-fa", 16), ("dora", 16)),
)

#: The seed floor: how far two seeds of one configuration land apart (seed 1 - seed 0), per method.
SEED_FLOOR: tuple[tuple[str, int], ...] = (("lora", 16), ("dora", 16), ("full", 0))


def _pose_difference(a: list[dict[str, Any]], b: list[dict[str, Any]], section: str) -> dict[str, Any] | None:
    """A's pose error minus B's, clip by clip, row against row (``a[i] - b[i]``: the caller aligns them),
    with the interval over those pairs and the clips; None when a row lacks the figure."""
    if tuple(a[0][section]["clip_ids"]) != tuple(b[0][section]["clip_ids"]):
        raise ValueError(f"{a[0]['row']['id']} and {b[0]['row']['id']} saw different {section} clips")
    va, vb = per_clip(a, section, "pose"), per_clip(b, section, "pose")
    if va is None or vb is None:
        return None
    return seed_clip_ci(va - vb)


def _entry(label: str, seeds: str, a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any] | None:
    new = _pose_difference(a, b, "new_cell")
    if new is None:
        return None
    old = _pose_difference(a, b, "original_cell")
    return {"contrast": label, "seeds": seeds, "new_cell": new, "original_cell": old}


def contrasts(rows: list[dict[str, Any]], cells: list[str], episodes: int) -> dict[str, list[dict[str, Any]]]:
    """Per cell, claim 2's paired contrasts (`CONTRASTS`) and the seed floor (`SEED_FLOOR`): the difference
    of new-cell pose error and of forgetting (pose error on the original cells), A - B, paired by clip and
    seed. Pairing removes the clip-to-clip spread that overlapping per-method intervals still carry, so a
    small but consistent difference shows; the seed floor says how large a difference one retraining alone
    makes (a contrast of one seed cannot tell its method from its seed: compare it with the floor)."""
    groups = group_rows(rows)
    out: dict[str, list[dict[str, Any]]] = {}
    for cell in cells:
        entries = []
        for label, (ma, ra), (mb, rb) in CONTRASTS:
            a = {r["row"]["seed"]: r for r in groups.get((cell, ma, ra, episodes), [])}
            b = {r["row"]["seed"]: r for r in groups.get((cell, mb, rb, episodes), [])}
            seeds = sorted(a.keys() & b.keys())  # seed by seed: the seeds both ran
            if seeds:
                text = ", ".join(map(str, seeds))
                entries.append(_entry(label, text, [a[v] for v in seeds], [b[v] for v in seeds]))
        for method, rank in SEED_FLOOR:
            g = {r["row"]["seed"]: r for r in groups.get((cell, method, rank, episodes), [])}
            if 0 in g and 1 in g:
                label = f"{method_label(method, rank)}: seed 1 - seed 0 (the seed floor)"
                entries.append(_entry(label, "1 vs 0", [g[1]], [g[0]]))
        if any(entries):
            out[cell] = [e for e in entries if e]
    return out


def contrast_table(entries: list[dict[str, Any]]) -> list[str]:
    """One cell's contrasts as a table (differences in rad; negative: A predicts better / forgets less)."""
    lines = [
        "| A - B | seeds | new-cell pose error, A - B | forgetting, A - B |",
        "|---|---|---|---|",
    ]
    for e in entries:
        lines.append(
            f"| {e['contrast']} | {e['seeds']} | {_ci(e['new_cell'], signed=True)} | "
            f"{_ci(e.get('original_cell'), signed=True)} |"
        )
    return lines


# ---------------------------------------------------------------------------------------------- formatting
def _ci(ci: dict[str, Any] | None, digits: int = 3, signed: bool = False) -> str:
    if not ci or ci.get("mean") is None or not np.isfinite(ci["mean"]):
        return "n/a"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    if ci["lo"] == ci["hi"] == ci["mean"]:
        return f.format(ci["mean"])
    return f"{f.format(ci['mean'])} [{f.format(ci['lo'])}, {f.format(ci['hi'])}]"


def _num(value: Any, fmt: str = "{:.0f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def _t90(values: list[Any]) -> str:
    finite = [v for v in values if v is not None]
    if not finite:
        return "no gain"
    missing = len(values) - len(finite)
    text = " / ".join(f"{v:.0f}" for v in values if v is not None)
    return text + (f" ({missing} without gain)" if missing else "")


def method_table(summary: dict[str, Any], cell: str, episodes: int) -> list[str]:
    """Claims 1 and 2 for one cell: every method and rank at ``episodes`` training episodes."""
    lines = [
        "| method | seeds | pose error [rad] | change vs none | PSNR moving [dB] "
        "| shuffled actions: pose x worse | verdict agreement "
        "| forgetting: change of pose error on the original cells | unreadable |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for fig in summary.values():
        c, method, rank, eps = fig["key"]
        if c != cell or (method != "none" and eps != episodes):
            continue
        lines.append(
            f"| {method_label(method, rank)} | {len(fig['seeds'])} | {_ci(fig.get('pose'))} | "
            f"{_ci(fig.get('pose_change'), signed=True) if method != 'none' else '-'} | "
            f"{_ci(fig.get('psnr_moving'), 2)} | {_ci(fig.get('shuffled_pose_x_worse'), 2)} | "
            f"{_ci(fig.get('verdict_agreement'), 2)} | "
            f"{_ci(fig.get('original_pose_change'), signed=True) if method != 'none' else '-'} | "
            f"{_num(fig.get('unreadable_share'), '{:.1%}')} |"
        )
    base = next((f for f in summary.values() if f["key"][0] == cell and f["key"][1] == "none"), None)
    if base and base.get("verdict_clips"):
        lines += [
            "",
            f"Verdicts: the arm enters the keep-out box in {base['collisions_in_truth']} of "
            f"{base['verdict_clips']} held-out clips (the simulator's geometry).",
        ]
    return lines


def data_table(summary: dict[str, Any], cell: str, counts: list[int]) -> list[str]:
    """Claim 3 for one cell: change of pose error vs none by training episodes (methods run with several
    counts)."""
    by_method: dict[str, dict[int, dict[str, Any]]] = {}
    for fig in summary.values():
        c, method, rank, eps = fig["key"]
        if c == cell and method != "none":
            by_method.setdefault(method_label(method, rank), {})[eps] = fig
    several = {label: figs for label, figs in by_method.items() if len(figs) > 1}
    if not several:
        return []
    lines = [
        "| method | " + " | ".join(f"{n} episode{'s' if n > 1 else ''}" for n in counts) + " |",
        "|---|" + "---|" * len(counts),
    ]
    for label, figs in several.items():
        cells = [_ci(figs[n].get("pose_change"), signed=True) if n in figs else "not run" for n in counts]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def cost_table(summary: dict[str, Any]) -> list[str]:
    """What each method and rank costs, over every cell and episode count it ran with."""
    by: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for fig in summary.values():
        _, method, rank, _ = fig["key"]
        if method != "none":
            by.setdefault((method, rank), []).append(fig)
    lines = [
        "| method | trainable parameters | of which action MLPs | step [ms] | peak GPU memory [GiB] "
        "| time to 90% of the val-loss gain [s], per row |",
        "|---|---|---|---|---|---|",
    ]
    for (method, rank), figs in sorted(by.items(), key=lambda kv: (METHOD_ORDER[kv[0][0]], kv[0][1])):
        steps = [f["step_ms"] for f in figs if f.get("step_ms") is not None]
        peaks = [f["peak_gpu_gib"] for f in figs if f.get("peak_gpu_gib") is not None]
        t90 = [v for f in figs for v in f.get("time_to_90_s", [])]
        shared = " (some rows shared a GPU)" if any(f.get("shared_gpu") for f in figs) else ""
        lines.append(
            f"| {method_label(method, rank)} | {figs[0].get('trainable_params')} | "
            f"{figs[0].get('action_params')} | "
            f"{_num(float(np.median(steps)) if steps else None, '{:.1f}')}{shared} | "
            f"{_num(max(peaks) if peaks else None, '{:.2f}')} | {_t90(t90)} |"
        )
    return lines


# ---------------------------------------------------------------------------------------------- the page
def design_lines(cfg: StudyConfig) -> list[str]:
    from cosmos_ros.sim.variants import STUDY_CELLS

    shifts = {
        "moved_camera": "camera centre, zoom and roll outside every training range; training-like scene",
        "new_objects": "five larger objects (bottles among them), saturated colours, a pale blue wall over "
        "a dark table; training camera and arm",
        "new_arm": "link lengths 0.32 + 0.38 m instead of 0.40 + 0.30 m (same reach, same part colours, "
        "which the pose reader needs); training-like scene and camera",
    }
    rows = cfg.rows()
    groups: dict[str, int] = {}
    for r in rows:
        groups[r.group] = groups.get(r.group, 0) + 1
    d, e = cfg.data, cfg.evaluation
    lines = [
        f"Base: the pretrained sim twin `{cfg.base}`. Target cells (`cosmos_ros.sim.variants.STUDY_CELLS`), "
        "each one shift away from the twin's training cells and never seen by it:",
        "",
        "| cell | what changed |",
        "|---|---|",
        *(f"| `{c}` | {shifts.get(c, STUDY_CELLS[c].name)} |" for c in cfg.cells),
        "",
        f"Per cell {d.train_episodes} training episodes and {d.heldout_episodes} held-out episodes (other "
        f"trajectories in the same cell), {d.episode_seconds:g} s each, at the twin's frame size; a row with "
        f"N episodes trains on the first N. Forgetting is measured on {d.original_episodes} of the twin's "
        "own held-out cells.",
        "",
        "One policy per method (`training` + `methods` in the config): the same steps and batch for every "
        "rank and every number of episodes, cosine schedule after warm-up, alpha = rank for LoRA/DoRA, "
        "action MLPs trained in full by every method but the controls (`lora-fa`, `dora-fa`: frozen):",
        "",
        "| method | learning rate | steps | batch | warm-up | weight decay |",
        "|---|---|---|---|---|---|",
        *(
            f"| {m} | {p.lr:g} | {p.steps} | {p.batch_size} | {p.warmup_steps} | {p.weight_decay:g} |"
            for m, p in ((m, cfg.policy(m)) for m in ("lora", "dora", "full"))
        ),
        "| none | - | 0 | - | - | - |",
        "",
        f"Rows: {len(rows)} ({', '.join(f'{g} {n}' for g, n in groups.items())}); ids and order: "
        "`python -m cosmos_ros.study.run --list`.",
        "",
        "Per row (`<results>/<id>.json`): the evaluation (`cosmos-evaluate`'s code) of the adapted twin on "
        f"{e.new_cell_clips} clips of the cell's held-out episodes and on {e.original_clips} clips of the "
        f"twin's held-out cells, {e.num_steps} sampling steps, the same noise for every row: PSNR on moving "
        "pixels, pose error (joints 1-2), the shuffled-action ratio on the pose, verdict agreement of the "
        f"keep-out checker (regions {e.keepout_regions or 'cosmos-evaluate default'}) with the simulator; "
        "trainable parameters; step time (median between val-loss "
        "points after the first interval); peak GPU memory of the training "
        "(`torch.cuda.max_memory_allocated`); and the training seconds to 90% of the final val-loss gain.",
        "",
        "Time to 90%: from the val loss on the held-out episodes at step 0 and "
        f"{cfg.training.val_points} times along the run (fixed noise per clip, so its points are "
        "comparable; seconds of training with the validations taken out). Why not intermediate "
        "evaluations: each would add a minute of sampling to every row; the val loss costs seconds. What it "
        "is not: the pose error of the tables; it says when the model stopped changing much on the new "
        "cell's clips.",
        "",
        "Intervals: 95% percentile bootstrap over seeds and clips (`cosmos_ros.study.stats`): seeds and "
        "clips are resampled together, the clips paired (the same for every row of a cell); changes from "
        "`none` are formed clip by clip before resampling. With two seeds the seed level is coarse.",
    ]
    return lines


def conclusions_template() -> list[str]:
    claims = [
        (
            "Claim 1: fine-tuning on the new cell makes a better twin of it than no adaptation",
            "the 'change vs none' column of each cell at 30 episodes (and its interval)",
        ),
        (
            "Claim 2: LoRA, DoRA and full fine-tuning differ (and the rank matters) for what they cost",
            "the method tables' rows against each other (overlapping intervals: no difference shown), the "
            "rank plot and the cost table",
        ),
        (
            "Claim 3: a few episodes of the new cell are enough",
            "the data-efficiency tables and plot: the smallest N whose interval overlaps 30 episodes'",
        ),
    ]
    lines = [
        "To be written from the tables above once the rows have run; every figure quoted with its interval. "
        "Placeholders: `<...>`.",
        "",
    ]
    for title, where in claims:
        lines += [
            f"### {title}",
            "",
            f"- Read from: {where}.",
            "- What the data supports: `<...>` (per cell: `<cell>: <change> [<lo>, <hi>]`).",
            "- What it does not support: `<...>`.",
            "- Forgetting (change on the original cells) that comes with it: `<...>`.",
            "",
        ]
    return lines


def remaining_lines(cfg: StudyConfig, rows: list[dict[str, Any]], measured: dict[str, float]) -> list[str]:
    """What is left to run, at the measured GPU-seconds per method (none when nothing has run yet)."""
    if not measured:
        return []
    done = {r["row"]["id"] for r in rows if isinstance(r.get("row"), dict)}
    left = [(row, s) for row, s in estimate(cfg, measured=measured) if row.id not in done]
    if not left:
        return ["Every planned row has run.", ""]
    minutes = sum(s for _, s in left) / 60.0
    groups = sorted({row.group for row, _ in left})
    return [
        f"Rows run: {len(cfg.rows()) - len(left)} of {len(cfg.rows())}. Left: {len(left)} rows (groups "
        f"{', '.join(groups)}), about {minutes:.0f} GPU-minutes at the measured rates; "
        "`bash benchmarks/run_study_gpu.sh` runs them in plan order, skipping the rows already here.",
        "",
    ]


def write_page(cfg: StudyConfig, rows: list[dict[str, Any]], doc: Path, assets: Path) -> dict[str, Any]:
    """docs/adaptation.md and its assets (plots, summary.json); returns the summary."""
    from cosmos_ros.evaluate.report import json_safe

    assets.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    (assets / "summary.json").write_text(json.dumps(json_safe(summary), indent=1, allow_nan=False))
    planned = len(cfg.rows())
    measured = measured_from_rows(rows)  # GPU-seconds per method of the rows run: the plan and what is left
    cells = [c for c in cfg.cells if any(f["key"][0] == c for f in summary.values())]
    full_n = cfg.data.train_episodes
    counts = sorted({f["key"][3] for f in summary.values() if f["key"][1] != "none"})
    rel = assets.relative_to(doc.parent) if assets.is_relative_to(doc.parent) else assets
    lines = [
        "# Does fine-tuning make a better twin? LoRA vs DoRA vs full fine-tuning, measured",
        "",
        f"Issue 18. Generated by `python -m cosmos_ros.study.report` from {len(rows)} of {planned} rows "
        f"(config `{cfg.source}`); raw JSON beside this page: `{rel}/results/` (one file per row) and "
        f"`{rel}/summary.json` (the tables' figures).",
        "",
        "## Questions",
        "",
        "1. Does fine-tuning the twin on a cell it never saw make a better twin of that cell than no "
        "adaptation?",
        "2. How do LoRA, DoRA (ranks 4-64) and full fine-tuning compare, for what they cost?",
        "3. How many episodes of the new cell does it take?",
        "",
        "And what each costs on the cells the twin was trained on (forgetting).",
        "",
        "## Design",
        "",
        *design_lines(cfg),
        "",
        "## Plan: GPU-minutes and batches",
        "",
        plan_markdown(cfg, measured=measured or None),
        "",
        *remaining_lines(cfg, rows, measured),
        "## Results",
        "",
    ]
    if not rows:
        lines += ["No row has run yet: the tables and plots appear here when the batches have run.", ""]
    else:
        for cell in cells:
            lines += [f"### `{cell}`: methods at {full_n} episodes (claims 1 and 2)", ""]
            lines += [*method_table(summary, cell, full_n), ""]
            table = data_table(summary, cell, counts)
            if table:
                lines += [f"`{cell}`: change of pose error vs none by training episodes (claim 3)", ""]
                lines += [*table, ""]
        paired = contrasts(rows, cells, full_n)
        (assets / "contrasts.json").write_text(json.dumps(json_safe(paired), indent=1, allow_nan=False))
        if paired:
            lines += [
                f"### Claim 2, paired: differences between methods at {full_n} episodes",
                "",
                "A - B clip by clip and seed by seed (the seeds both ran; 95% bootstrap over those seeds "
                "and the clips), for the new cell's pose error and for forgetting (the change of pose error "
                "on the original cells). Negative: A predicts the new cell better, or forgets less. Pairing "
                "takes out the clip-to-clip spread that the tables' per-method intervals carry. A contrast "
                "of one seed cannot tell its method from its seed: the seed-floor rows (seed 1 - seed 0 of "
                "one configuration) show how far a retraining alone moves the figures.",
                "",
            ]
            for cell, entries in paired.items():
                lines += [f"`{cell}`", "", *contrast_table(entries), ""]
        lines += ["### Cost per method (every cell)", "", *cost_table(summary), ""]
        plots = {
            "ranks.png": plot_ranks(summary, cells, full_n, assets / "ranks.png"),
            "data.png": plot_data(summary, cells, assets / "data.png"),
            "forgetting.png": plot_forgetting(summary, assets / "forgetting.png"),
            "val_curves.png": plot_curves(rows, cells, full_n, assets / "val_curves.png"),
        }
        captions = {
            "ranks.png": "New-cell pose error against the rank; full and none as bands (95% intervals).",
            "data.png": "New-cell pose error against the training episodes of the cell.",
            "forgetting.png": "Gain on the new cell against forgetting on the original cells.",
            "val_curves.png": "Val loss on the held-out episodes along training (relative to step 0).",
        }
        for name, drawn in plots.items():
            if drawn:
                lines += [f"![{captions[name]}]({rel}/{name})", "", captions[name], ""]
            else:
                (assets / name).unlink(missing_ok=True)
    written = assets / "conclusions.md"
    if written.is_file():
        lines += ["## Conclusions", "", written.read_text().strip(), ""]
    else:
        lines += ["## Conclusions", "", *conclusions_template()]
    lines += [
        "## Running the batches",
        "",
        "On the lent GPUs: `bash benchmarks/run_study_gpu.sh` runs the rows not yet in "
        "`docs/adaptation/results/` in plan order, several per GPU (`PER_GPU`, default 5), in one device "
        "call, and returns their JSON as `rows.tgz`. Diffusers and rosbags with their dependencies are not "
        "installed there: carry their wheels (docs/sim_twin.md). Nothing needs ROS or a "
        "colcon build: the commands run from the repository root. Use `--work runs/adaptation_study` "
        "(ignored by git, kept between calls while the machine stays warm, so later calls skip the data "
        "preparation). After each call, copy its `results/*.json` into `docs/adaptation/results/` and "
        "commit them: the next call skips those rows (`--skip-done`), and this page is rebuilt from them. "
        "After batch 1, compare the measured row times with the estimates (`python -m "
        "cosmos_ros.study.plan --calibrate docs/adaptation/results`) and run the later batches with the "
        "same `--calibrate` on `plan` and `batch`.",
        "",
        "## Reproduce",
        "",
        "    python -m cosmos_ros.study.run --row <id> --work runs/study      # one row (CPU or GPU)",
        "    python -m cosmos_ros.study.batch --batch <B> --part <P> --gpus 1 \\",
        "        --work runs/adaptation_study --results DIR --skip-done docs/adaptation/results",
        "    python -m cosmos_ros.study.report --results docs/adaptation/results",
        "",
        f"Data and evaluation settings: `{json.dumps({'data': asdict(cfg.data)})}`, "
        f"`{json.dumps({'evaluation': asdict(cfg.evaluation)})}`",
        "",
    ]
    doc.write_text("\n".join(lines))
    return summary


def main(argv: list[str] | None = None) -> int:
    from cosmos_ros.study.run import add_common, load

    ap = argparse.ArgumentParser(prog="python -m cosmos_ros.study.report", description=__doc__.split("\n")[0])
    ap.add_argument("--doc", type=Path, default=Path("docs/adaptation.md"), help="the page (%(default)s)")
    add_common(ap)
    args = ap.parse_args(argv)
    results = args.results or Path("docs/adaptation/results")
    assets = args.doc.parent / args.doc.stem
    try:
        cfg = load(args)
        rows = load_rows(results) if results.is_dir() else []
        raw = assets / "results"
        if rows and results.resolve() != raw.resolve():
            raw.mkdir(parents=True, exist_ok=True)
            for path in results.glob("*.json"):
                shutil.copy2(path, raw / path.name)
        write_page(cfg, rows, args.doc, assets)
    except (ValueError, OSError) as exc:
        print(f"report: error: {exc}", file=sys.stderr)
        return 1
    print(f"report: {len(rows)} rows -> {args.doc}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
