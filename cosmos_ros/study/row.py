"""One row of the study end to end: train (LoRA, DoRA, full, or nothing), evaluate, write one JSON.

Steps:

1. the row's clips (`cosmos_ros.study.data`): its first N training episodes of the cell, the cell's held-out
   episodes (val split), the twin's own held-out cells;
2. training with the project's `Trainer` in this process, on top of the twin (its action MLPs, tokenizer
   statistics and prompt cache, as the demo fine-tunes it), with the method's stated policy; the val loss on
   the held-out episodes at step 0 and ``val_points`` times along the run, timed (`curves`), for the step
   time and the time to 90% of the gain; trainable parameters; peak GPU memory of the training;
3. the evaluation (`cosmos_ros.evaluate.runner.evaluate`, the code of ``cosmos-evaluate``) of the adapted
   twin (for ``none``: the twin itself) on the new cell's held-out clips and on the twin's held-out cells,
   with the same clips and noise for every row; its figures (`sim_twin.twin_figures`) and the per-clip
   values behind them (paired comparisons across rows in the report); its outputs in ``eval_new/`` and
   ``eval_original/`` of the row folder;
4. ``<work>/rows/<id>/row.json`` and ``<results>/<id>.json`` (the same JSON), written atomically: a row that
   stopped halfway leaves no result, and a batch run again runs it again.
"""

from __future__ import annotations

import gc
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cosmos_ros.demo import Twin, load_twin
from cosmos_ros.study.config import FROZEN_ACTIONS, LOW_RANK, Row, StudyConfig, adapter_mode
from cosmos_ros.study.curves import ValCurve, step_seconds, time_to_gain
from cosmos_ros.study.data import RowData, row_data

ROW_FORMAT = "cosmos_ros.adaptation_row/1"


class RowError(RuntimeError):
    """A row could not run; the message names the step and the fix."""


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_bytes() -> int | None:
    """torch.cuda.max_memory_allocated since the last reset (None on a CPU: there is no GPU memory)."""
    import torch

    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated())


def _free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_config(cfg: StudyConfig, row: Row, clips: Path, out: Path) -> Any:
    """The trainer's config of a row: the method's policy on top of the twin."""
    from cosmos_ros.train.config import TrainConfig

    p = cfg.policy(row.method)
    t = cfg.training
    cuda = _cuda()
    adapter: dict[str, Any] = {"mode": adapter_mode(row.method)}
    if row.method in LOW_RANK:
        adapter.update(rank=row.rank, alpha=float(row.rank))  # alpha = rank: the update's scale is 1
    if row.method in FROZEN_ACTIONS:
        adapter["train_action_mlps"] = False  # the control: only the LoRA/DoRA weights learn
    return TrainConfig.from_dict(
        {
            "model": {
                "base": cfg.base,
                "dtype": "float32",  # float32 master weights; bf16 autocast on CUDA (the twin's recipe)
                "compile": bool(t.compile and cuda),
                "gradient_checkpointing": False,
                "memory_policy": "none",
            },
            "adapter": adapter,
            "data": {"clips_dir": str(clips), "latent_cache_dir": str(out / "latents")},
            "optim": {
                "lr": p.lr,
                "max_steps": p.steps,
                "batch_size": p.batch_size,
                "warmup_steps": p.warmup_steps,
                "lr_schedule": p.lr_schedule,
                "weight_decay": p.weight_decay,
                "grad_clip": p.grad_clip,
                "cfg_dropout": 0.0,  # one prompt, served without guidance (as the twin was trained)
            },
            "run": {
                "output_dir": str(out),
                "seed": row.seed,
                "cpu": not cuda,
                "mixed_precision": "bf16" if cuda else "no",
                "log_every": max(1, p.steps // 100),
                "val_every": max(1, p.steps // t.val_points),
                "val_batches": t.val_batches,
                "val_twin_clips": 0,  # the evaluation after training measures the rest
                "checkpoint_every": 0,
                "preview_every": 0,
                "resume": "never",
                "progress": False,
            },
        }
    )


def train_row(cfg: StudyConfig, row: Row, clips: Path, out: Path) -> tuple[Path, dict[str, Any]]:
    """Train the row's adapter (or full fine-tune); returns its folder and the training figures."""
    from cosmos_ros.train.trainer import Trainer

    if out.exists():
        shutil.rmtree(out)
    _reset_peak()
    t0 = time.perf_counter()
    try:
        trainer = Trainer(train_config(cfg, row, clips, out))
    except (ValueError, FileNotFoundError, OSError) as exc:
        raise RowError(f"{row.id}: the trainer refused its input: {exc}") from exc
    setup = time.perf_counter() - t0
    curve = ValCurve()
    curve.attach(trainer)
    trainer.validate()  # step 0: the twin before any update (the start of the gain)
    result = trainer.train()
    if result.adapter_dir is None:
        raise RowError(
            f"{row.id}: training stopped at step {result.step} ({result.interrupted or 'no adapter'})"
        )
    emb = trainer.wm.transformer.action_embedder
    action_params = sum(p.numel() for p in emb.parameters() if p.requires_grad) if emb is not None else 0
    last = [result.losses[k] for k in sorted(result.losses)[-max(1, len(result.losses) // 10) :]]
    figures = {
        "trainable_params": int(trainer.n_trainable),
        "total_params": int(trainer.n_total),
        "action_params": int(action_params),  # action MLPs: trained in full (none in the -fa controls)
        "adapter_params": int(trainer.n_trainable - action_params),  # LoRA/DoRA weights, or every weight
        "train_clips": len(trainer.train_set),
        "val_clips": 0 if trainer.val_set is None else len(trainer.val_set),
        "steps": int(result.step),
        "setup_seconds": setup,  # data checks, latent cache, model build
        "train_seconds": result.seconds,  # the training loop, validations included
        "step_seconds": step_seconds(curve.points),
        "peak_gpu_bytes": _peak_bytes(),
        "final_train_loss": sum(last) / len(last),
        "val_curve": curve.to_dict(),
        "time_to_90": time_to_gain(curve.points, 0.9),
        # what time_to_90 is measured on (cosmos_ros.study.curves says why)
        "time_basis": "val loss, held-out episodes, fixed noise; training seconds, validations excluded",
    }
    del trainer
    _free()
    return result.adapter_dir, figures


def per_clip(figures: dict[str, Any]) -> dict[str, Any]:
    """The per-clip values behind a model's figures in eval.json (clip order): what the report pairs."""
    verdicts = (figures.get("verdicts") or {}).get("vs_geometry") or {}
    return {
        "pose": (figures.get("pose") or {}).get("per_clip"),
        "psnr_moving": figures["fidelity"]["psnr_moving"]["per_clip"],
        "pose_own_shuffled": (figures.get("shuffled_actions") or {}).get("per_clip_pose"),
        "verdict_agree": verdicts.get("per_clip"),
    }


def evaluate_row(
    cfg: StudyConfig, twin: Twin, adapter: Path | None, clips: Path, split: str, max_clips: int, out: Path
) -> dict[str, Any]:
    """The evaluation of the adapted twin (the twin itself when ``adapter`` is None) on one clips folder."""
    from cosmos_ros.evaluate.cli import checker_settings, parse_args
    from cosmos_ros.evaluate.compat import CompatibilityError
    from cosmos_ros.evaluate.report import OutputError, write_outputs
    from cosmos_ros.evaluate.runner import BASE_NAME, EvalError, EvalSettings, evaluate, model_names
    from cosmos_ros.train.sim_twin import twin_figures

    e = cfg.evaluation
    # the checker and its options exactly as `cosmos-evaluate` takes them without flags (as the twin's card)
    flags = ["--clips", str(clips), "-o", str(out)]
    for region in e.keepout_regions:
        flags += ["--keepout-region", region]
    checker, options = checker_settings(parse_args(flags))
    settings = EvalSettings(
        base=str(twin.path),
        adapters=[str(adapter)] if adapter else [],
        clips=str(clips),
        split=split,
        max_clips=max_clips,
        num_steps=e.num_steps,
        seed=e.seed,
        batch_size=e.batch_size,
        grid_clips=e.grid_clips,
        checker=checker,
        checker_options=options,
        progress=False,
    )
    name = model_names([str(adapter)])[0] if adapter else BASE_NAME
    _reset_peak()
    t0 = time.perf_counter()
    try:
        results = evaluate(settings)
    except (EvalError, CompatibilityError, ValueError) as exc:
        raise RowError(f"the evaluation on {clips} refused its input: {exc}") from exc
    seconds = time.perf_counter() - t0
    peak = _peak_bytes()
    try:
        write_outputs(results, out)
    except OutputError as exc:
        raise RowError(str(exc)) from exc
    figs = results["figures"][name]
    return {
        "model": name,
        "clips_dir": str(clips),
        "split": split,
        "clip_ids": results["clips"]["clip_ids"],
        "figures": twin_figures(results, name),
        "per_clip": per_clip(figs),
        "reference_pose_on_true_frames": (results["reference"].get("pose_on_true_frames") or {}).get(
            "overall"
        ),
        "seconds": seconds,
        "peak_gpu_bytes": peak,
        "notes": results.get("notes", []),
    }


def _environment() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "device": "cuda" if cuda else "cpu",
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        # rows the batch ran at once on this GPU: above 1 they shared it, and each other's step times
        "rows_per_gpu": int(os.environ.get("COSMOS_STUDY_ROWS_PER_GPU", "1")),
        "host": platform.node(),
        "python": platform.python_version(),
    }


def run_row(
    cfg: StudyConfig, row: Row, work: Path, results: Path, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run one row (see the module docstring); returns its JSON (also written to ``results/<id>.json``)."""
    from cosmos_ros.atomic_io import write_json_atomic
    from cosmos_ros.demo import TwinMissing
    from cosmos_ros.evaluate.report import json_safe

    t0 = time.perf_counter()
    try:
        twin = load_twin(cfg.base)
    except TwinMissing as exc:
        raise RowError(str(exc)) from exc
    folder = work / "rows" / row.id
    folder.mkdir(parents=True, exist_ok=True)
    log(f"study: {row.id}: preparing data")
    data: RowData = row_data(cfg, twin, work, row.cell, row.episodes)
    prepared = time.perf_counter()
    adapter, training = None, None
    if row.method != "none":
        log(f"study: {row.id}: training ({cfg.policy(row.method)})")
        adapter, training = train_row(cfg, row, data.clips, folder / "train")
    trained = time.perf_counter()
    log(f"study: {row.id}: evaluating on the new cell")
    e = cfg.evaluation
    new = evaluate_row(cfg, twin, adapter, data.clips, "val", e.new_cell_clips, folder / "eval_new")
    log(f"study: {row.id}: evaluating on the original cells")
    original = evaluate_row(
        cfg, twin, adapter, data.original, "all", e.original_clips, folder / "eval_original"
    )
    end = time.perf_counter()
    out = {
        "format": ROW_FORMAT,
        "row": row.describe(),
        "policy": asdict(cfg.policy(row.method)) if row.method != "none" else None,
        "base": {"name": cfg.base, "path": str(twin.path), "trained": twin.trained},
        "environment": _environment(),
        "config": {
            "source": cfg.source,
            "data": asdict(cfg.data),
            "training": asdict(cfg.training),
            "evaluation": asdict(cfg.evaluation),
        },
        "training": training,
        "new_cell": new,
        "original_cell": original,
        "seconds": {
            "prepare": prepared - t0,
            "train": trained - prepared,
            "evaluate": end - trained,
            "total": end - t0,
        },
    }
    clean = json_safe(out)
    write_json_atomic(folder / "row.json", clean, indent=1)
    results.mkdir(parents=True, exist_ok=True)
    write_json_atomic(results / f"{row.id}.json", clean, indent=1)
    f = new["figures"]
    log(
        f"study: {row.id}: done in {clean['seconds']['total']:.0f} s: new-cell pose error "
        f"{f.get('pose_error')} (nothing moves {f.get('pose_error_nothing_moves')}) -> "
        f"{results / (row.id + '.json')}"
    )
    return clean
