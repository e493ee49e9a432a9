"""The study's plots (matplotlib PNGs) from the report's summary (`cosmos_ros.study.report.summarize`):
pose error against rank and against episodes, gain against forgetting, val-loss curves. Each returns
whether it drew anything (a page with no such rows shows no empty plot)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cosmos_ros.study.config import LOW_RANK

COLOURS = {"none": "black", "lora": "tab:blue", "dora": "tab:orange", "full": "tab:green"}


def method_label(method: str, rank: int) -> str:
    """``lora r16``, ``full``: one label for the tables and the plots."""
    return f"{method} r{rank}" if method in LOW_RANK else method


def row_key(row: dict[str, Any]) -> tuple[str, str, int, int]:
    """A row JSON's configuration: cell, method, rank, episodes (its seeds share it)."""
    r = row["row"]
    return (r["cell"], r["method"], int(r["rank"]), int(r["episodes"]))


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _errorbar(ax: Any, xs: list[float], cis: list[dict[str, Any]], **kw: Any) -> None:
    ys = np.array([c["mean"] for c in cis])
    lo = ys - np.array([c["lo"] for c in cis])
    hi = np.array([c["hi"] for c in cis]) - ys
    ax.errorbar(xs, ys, yerr=[lo, hi], capsize=3, marker="o", **kw)


def _base_line(ax: Any, fig: dict[str, Any] | None, label: str, colour: str) -> None:
    if fig and fig.get("pose"):
        ax.axhline(fig["pose"]["mean"], color=colour, linestyle="--", label=label)
        ax.axhspan(fig["pose"]["lo"], fig["pose"]["hi"], color=colour, alpha=0.1)


def plot_ranks(summary: dict[str, Any], cells: list[str], episodes: int, path: Path) -> bool:
    """New-cell pose error against the rank (LoRA, DoRA), full and none as bands; one panel per cell."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(cells), figsize=(4.5 * len(cells), 3.6), squeeze=False)
    drawn = False
    for ax, cell in zip(axes[0], cells, strict=True):
        figs = [f for f in summary.values() if f["key"][0] == cell and f.get("pose")]
        for method in LOW_RANK:
            pts = sorted(
                (f["key"][2], f["pose"]) for f in figs if f["key"][1] == method and f["key"][3] == episodes
            )
            if pts:
                _errorbar(ax, [p[0] for p in pts], [p[1] for p in pts], label=method, color=COLOURS[method])
                drawn = True
        full = next((f for f in figs if f["key"][1] == "full" and f["key"][3] == episodes), None)
        _base_line(ax, full, "full", COLOURS["full"])
        _base_line(ax, next((f for f in figs if f["key"][1] == "none"), None), "none", COLOURS["none"])
        ax.set_xscale("log", base=2)
        ax.set_title(f"{cell} ({episodes} episodes)")
        ax.set_xlabel("rank")
        ax.set_ylabel("pose error, new cell [rad]")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def plot_data(summary: dict[str, Any], cells: list[str], path: Path) -> bool:
    """New-cell pose error against the training episodes per method; none as a band; one panel per cell."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(cells), figsize=(4.5 * len(cells), 3.6), squeeze=False)
    drawn = False
    for ax, cell in zip(axes[0], cells, strict=True):
        figs = [f for f in summary.values() if f["key"][0] == cell and f.get("pose")]
        series: dict[tuple[str, int], list[tuple[int, dict[str, Any]]]] = {}
        for f in figs:
            if f["key"][1] != "none":
                series.setdefault((f["key"][1], f["key"][2]), []).append((f["key"][3], f["pose"]))
        for (method, rank), pts in series.items():
            if len(pts) > 1:
                pts.sort(key=lambda p: p[0])
                _errorbar(
                    ax,
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    label=method_label(method, rank),
                    color=COLOURS[method],
                    alpha=1.0 if rank in (0, 16) else 0.4,
                )
                drawn = True
        _base_line(ax, next((f for f in figs if f["key"][1] == "none"), None), "none", COLOURS["none"])
        ax.set_xscale("log")
        ax.set_title(cell)
        ax.set_xlabel("training episodes of the cell")
        ax.set_ylabel("pose error, new cell [rad]")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def plot_forgetting(summary: dict[str, Any], path: Path) -> bool:
    """Gain on the new cell against forgetting on the original cells, one point per configuration."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    drawn = False
    for f in summary.values():
        a, b = f.get("pose_change"), f.get("original_pose_change")
        if not a or not b:
            continue
        method = f["key"][1]
        ax.errorbar(
            [a["mean"]],
            [b["mean"]],
            xerr=[[a["mean"] - a["lo"]], [a["hi"] - a["mean"]]],
            yerr=[[b["mean"] - b["lo"]], [b["hi"] - b["mean"]]],
            marker="o",
            color=COLOURS[method],
            alpha=0.6,
            capsize=2,
        )
        drawn = True
    for method in ("lora", "dora", "full"):
        ax.plot([], [], "o", color=COLOURS[method], label=method)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("change of pose error on the new cell [rad] (< 0: better)")
    ax.set_ylabel("change on the original cells [rad] (> 0: forgot)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def plot_curves(rows: list[dict[str, Any]], cells: list[str], episodes: int, path: Path) -> bool:
    """Val loss (relative to step 0) against training seconds of the rows at ``episodes``, per cell."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(cells), figsize=(4.5 * len(cells), 3.6), squeeze=False)
    drawn = False
    for ax, cell in zip(axes[0], cells, strict=True):
        for r in rows:
            t, key = r.get("training"), row_key(r)
            if not t or key[0] != cell or key[3] != episodes or not t["val_curve"]:
                continue
            pts = t["val_curve"]
            start = pts[0]["loss"] or 1.0
            alpha = 1.0 if key[1] == "full" or key[2] == 16 else 0.25
            ax.plot(
                [p["train_seconds"] for p in pts],
                [p["loss"] / start for p in pts],
                color=COLOURS[key[1]],
                alpha=alpha,
            )
            drawn = True
        for method in ("lora", "dora", "full"):
            ax.plot([], [], color=COLOURS[method], label=method)
        ax.set_title(f"{cell} ({episodes} episodes)")
        ax.set_xlabel("training seconds (validations excluded)")
        ax.set_ylabel("val loss / val loss at step 0")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn
