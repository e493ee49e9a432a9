"""The study's plots (matplotlib PNGs) from the report's summary (`cosmos_ros.study.report.summarize`):
pose error against rank and against episodes, gain against forgetting, val-loss curves. Each returns
whether it drew anything (a page with no such rows shows no empty plot)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from cosmos_ros.study.config import LOW_RANK

COLOURS = {
    "none": "black",
    "lora": "tab:blue",
    "dora": "tab:orange",
    "full": "tab:green",
    "lora-fa": "tab:cyan",
    "dora-fa": "tab:red",
}
POSE_LABEL = "pose error, new cell [rad]"


def method_label(method: str, rank: int) -> str:
    """``lora r16``, ``full``: one label for the tables and the plots."""
    return f"{method} r{rank}" if method in LOW_RANK else method


def row_key(row: dict[str, Any]) -> tuple[str, str, int, int]:
    """A row JSON's configuration: cell, method, rank, episodes (its seeds share it)."""
    r = row["row"]
    return (r["cell"], r["method"], int(r["rank"]), int(r["episodes"]))


@contextmanager
def _panels(path: Path, count: int, size: tuple[float, float] = (4.5, 3.6)) -> Iterator[list[Any]]:
    """``count`` side-by-side axes; the figure is written to ``path`` and closed on leaving."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, count, figsize=(size[0] * count, size[1]), squeeze=False)
    try:
        yield list(axes[0])
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def _label(ax: Any, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)


def _errorbar(ax: Any, xs: list[float], cis: list[dict[str, Any]], **kw: Any) -> None:
    ys = np.array([c["mean"] for c in cis])
    lo = ys - np.array([c["lo"] for c in cis])
    hi = np.array([c["hi"] for c in cis]) - ys
    ax.errorbar(xs, ys, yerr=[lo, hi], capsize=3, marker="o", **kw)


def _band(ax: Any, fig: dict[str, Any] | None, label: str, colour: str) -> None:
    """A configuration's pose error as a horizontal line with its interval as a band."""
    if fig and fig.get("pose"):
        ax.axhline(fig["pose"]["mean"], color=colour, linestyle="--", label=label)
        ax.axhspan(fig["pose"]["lo"], fig["pose"]["hi"], color=colour, alpha=0.1)


def _of_cell(summary: dict[str, Any], cell: str) -> list[dict[str, Any]]:
    return [f for f in summary.values() if f["key"][0] == cell and f.get("pose")]


def _first(figs: list[dict[str, Any]], method: str, episodes: int | None = None) -> dict[str, Any] | None:
    return next((f for f in figs if f["key"][1] == method and episodes in (None, f["key"][3])), None)


def plot_ranks(summary: dict[str, Any], cells: list[str], episodes: int, path: Path) -> bool:
    """New-cell pose error against the rank (LoRA, DoRA), full and none as bands; one panel per cell."""
    drawn = False
    with _panels(path, len(cells)) as axes:
        for ax, cell in zip(axes, cells, strict=True):
            figs = _of_cell(summary, cell)
            for method in LOW_RANK:
                pts = sorted(
                    (f["key"][2], f["pose"])
                    for f in figs
                    if f["key"][1] == method and f["key"][3] == episodes
                )
                if pts:
                    _errorbar(
                        ax, [p[0] for p in pts], [p[1] for p in pts], label=method, color=COLOURS[method]
                    )
                    drawn = True
            _band(ax, _first(figs, "full", episodes), "full", COLOURS["full"])
            _band(ax, _first(figs, "none"), "none", COLOURS["none"])
            ax.set_xscale("log", base=2)
            _label(ax, f"{cell} ({episodes} episodes)", "rank", POSE_LABEL)
    return drawn


def plot_data(summary: dict[str, Any], cells: list[str], path: Path) -> bool:
    """New-cell pose error against the training episodes per method; none as a band; one panel per cell."""
    drawn = False
    with _panels(path, len(cells)) as axes:
        for ax, cell in zip(axes, cells, strict=True):
            figs = _of_cell(summary, cell)
            series: dict[tuple[str, int], list[tuple[int, dict[str, Any]]]] = {}
            for f in figs:
                if f["key"][1] != "none":
                    series.setdefault((f["key"][1], f["key"][2]), []).append((f["key"][3], f["pose"]))
            for (method, rank), pts in series.items():
                if len(pts) < 2:
                    continue
                pts.sort(key=lambda p: p[0])
                label, colour = method_label(method, rank), COLOURS[method]
                _errorbar(ax, [p[0] for p in pts], [p[1] for p in pts], label=label, color=colour)
                drawn = True
            _band(ax, _first(figs, "none"), "none", COLOURS["none"])
            ax.set_xscale("log")
            _label(ax, cell, "training episodes of the cell", POSE_LABEL)
    return drawn


def plot_forgetting(summary: dict[str, Any], path: Path) -> bool:
    """Gain on the new cell against forgetting on the original cells, one point per configuration."""
    drawn = False
    with _panels(path, 1, (5.5, 4.2)) as (ax,):
        for f in summary.values():
            a, b = f.get("pose_change"), f.get("original_pose_change")
            if not a or not b:
                continue
            ax.errorbar(
                [a["mean"]],
                [b["mean"]],
                xerr=[[a["mean"] - a["lo"]], [a["hi"] - a["mean"]]],
                yerr=[[b["mean"] - b["lo"]], [b["hi"] - b["mean"]]],
                marker="o",
                color=COLOURS[f["key"][1]],
                alpha=0.6,
                capsize=2,
            )
            drawn = True
        for method in ("lora", "dora", "full"):
            ax.plot([], [], "o", color=COLOURS[method], label=method)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.axvline(0, color="grey", linewidth=0.8)
        _label(
            ax,
            "gain and forgetting",
            "change of pose error on the new cell [rad] (< 0: better)",
            "change on the original cells [rad] (> 0: forgot)",
        )
    return drawn


def plot_curves(rows: list[dict[str, Any]], cells: list[str], episodes: int, path: Path) -> bool:
    """Val loss (relative to step 0) against training seconds of the rows at ``episodes``, per cell; rank 16
    and full fine-tuning drawn solid, the other ranks faint."""
    drawn = False
    with _panels(path, len(cells)) as axes:
        for ax, cell in zip(axes, cells, strict=True):
            for r in rows:
                t, key = r.get("training"), row_key(r)
                if not t or key[0] != cell or key[3] != episodes or not t["val_curve"]:
                    continue
                pts = t["val_curve"]
                start = pts[0]["loss"] or 1.0
                ax.plot(
                    [p["train_seconds"] for p in pts],
                    [p["loss"] / start for p in pts],
                    color=COLOURS[key[1]],
                    alpha=1.0 if key[1] == "full" or key[2] == 16 else 0.25,
                )
                drawn = True
            for method in ("lora", "dora", "full"):
                ax.plot([], [], color=COLOURS[method], label=method)
            _label(
                ax,
                f"{cell} ({episodes} episodes)",
                "training seconds (validations excluded)",
                "val loss / val loss at step 0",
            )
    return drawn
