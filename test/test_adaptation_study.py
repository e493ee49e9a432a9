"""The adaptation study (cosmos_ros.study, docs/adaptation.md): rows from the config, the plan's batches, the
intervals and the time to 90% of the gain on small exact inputs, then the row command, the batch command and
the report builder end to end on the CPU at smoke sizes (the shipped twin, a couple of clips, 3 steps)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from cosmos_ros.study.config import SMOKE, StudyConfig, load_study_config
from cosmos_ros.study.curves import ValPoint, step_seconds, time_to_gain
from cosmos_ros.study.plan import Recipe, batches, estimate, parts, row_seconds
from cosmos_ros.study.stats import paired_difference, ratio_statistic, seed_clip_ci

CONFIG = REPO / "config" / "adaptation_study.yaml"


def test_the_config_lists_every_row_of_the_issue_once_with_one_policy_per_method() -> None:
    cfg = load_study_config(CONFIG)
    rows = cfg.rows()
    ids = [r.id for r in rows]
    assert len(ids) == len(set(ids)) == 135
    assert ids[:3] == ["moved_camera-none", "new_objects-none", "new_arm-none"]
    for cell in cfg.cells:
        for method in ("lora", "dora"):
            for rank in (4, 8, 16, 32, 64):
                assert {f"{cell}-{method}{rank}-e30-s{s}" for s in (0, 1)} <= set(ids)
        for n in (1, 3, 10, 30):
            for name in ("lora16", "dora16", "full"):
                assert f"{cell}-{name}-e{n}-s1" in ids
    assert cfg.row("new_arm-dora16-e3-s1").episodes == 3
    assert cfg.policy("lora") == cfg.policy("dora") and cfg.policy("full").lr < cfg.policy("lora").lr
    with pytest.raises(ValueError, match="--list"):
        cfg.row("new_arm-lora5-e30-s0")
    with pytest.raises(ValueError, match="episodes"):
        StudyConfig.from_dict({**_raw(), "grids": [{"methods": ["lora"], "ranks": [4], "episodes": [31]}]})
    with pytest.raises(ValueError, match="use some of"):
        StudyConfig.from_dict({**_raw(), "cells": ["kitchen"]})
    with pytest.raises(ValueError, match="lr"):
        StudyConfig.from_dict({**_raw(), "methods": {"lora": {"lr": 1e-3}, "dora": {"lr": 1e-3}}})


def _raw() -> dict:
    import yaml

    return yaml.safe_load(CONFIG.read_text())


def test_the_plan_puts_every_row_in_one_batch_of_at_most_25_gpu_minutes() -> None:
    cfg = load_study_config(CONFIG)
    recipe = Recipe()
    est = estimate(cfg, recipe)
    plan = batches(est, 25.0)
    planned = [r.id for b in plan for r in b.rows]
    assert planned == [r.id for r in cfg.rows()]
    assert all(b.minutes <= 25.0 for b in plan)
    # a training row: its steps at the floor step time, plus both evaluations and the start-up
    row = cfg.row("new_arm-lora16-e30-s0")
    e = cfg.evaluation
    evaluation = (e.new_cell_clips + e.original_clips) * recipe.eval_s_per_clip_10_steps
    training = 1000 * 0.03 + 20 * 4 * 0.03 / 3
    assert row_seconds(cfg, row, recipe) == pytest.approx(recipe.row_overhead_s + evaluation + training)
    assert row_seconds(cfg, cfg.row("new_arm-none"), recipe) == pytest.approx(
        recipe.row_overhead_s + evaluation
    )
    room = recipe.call_limit_s - recipe.prepare_s - recipe.call_margin_s
    for b in plan:
        for gpus in (1, 4):
            split = parts(b, gpus, recipe)
            assert [r.id for p in split for r in p] == [r.id for r in b.rows]
            if gpus == 1:
                assert all(sum(row_seconds(cfg, r, recipe) for r in p) <= room for p in split)


def test_the_frozen_action_controls_train_only_the_adapter_with_their_methods_policy(tmp_path: Path) -> None:
    """``lora-fa``/``dora-fa`` rows: LoRA/DoRA with lora's/dora's policy and the twin's action MLPs left as
    trained (``adapter.train_action_mlps=false``), so a forgetting shared with full fine-tuning can be told
    apart from what the MLPs learn; full fine-tuning cannot freeze them, and a base without trained MLPs
    refuses the setting in the trainer (its zero MLPs would stay zero)."""
    import torch
    from diffusers import CosmosTransformer3DModel

    from cosmos_ros.model.action_cond import ActionConditionedTransformer, ActionEmbedder
    from cosmos_ros.model.adapters import AdapterConfig, apply_adapters
    from cosmos_ros.model.tiny import TINY_TRANSFORMER_CONFIG
    from cosmos_ros.model.world_model import ModelSource, WorldModel
    from cosmos_ros.study.config import adapter_mode
    from cosmos_ros.study.row import train_config

    cfg = load_study_config(CONFIG)
    row = cfg.row("new_arm-dora-fa16-e30-s1")
    assert (row.group, adapter_mode(row.method), row.rank) == ("controls", "dora", 16)
    assert cfg.policy("dora-fa") == cfg.policy("dora") and cfg.policy("lora-fa") == cfg.policy("lora")
    adapter = train_config(cfg, row, tmp_path / "clips", tmp_path / "out").adapter
    assert (adapter.mode, adapter.rank, adapter.train_action_mlps) == ("dora", 16, False)
    assert train_config(cfg, cfg.row("new_arm-dora16-e30-s1"), tmp_path, tmp_path).adapter.train_action_mlps

    for train_mlps in (True, False):
        tr = CosmosTransformer3DModel(**TINY_TRANSFORMER_CONFIG)
        hidden = tr.config.num_attention_heads * tr.config.attention_head_dim
        wm = WorldModel(
            ActionConditionedTransformer(tr, ActionEmbedder(3, hidden)),
            None,
            {},
            torch.zeros(16),
            torch.ones(16),
            ModelSource("t", None, {}),
        )
        adapter_cfg = AdapterConfig(mode="lora", rank=4, alpha=4.0, train_action_mlps=train_mlps)
        params = apply_adapters(wm, adapter_cfg)
        emb = {id(p) for p in wm.transformer.action_embedder.parameters()}
        assert bool(emb & {id(p) for p in params}) is train_mlps
        assert any("lora_" in n for n, p in wm.transformer.named_parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="lora/dora"):
        AdapterConfig(mode="full", train_action_mlps=False)


def test_the_batch_expects_a_row_to_last_as_its_method_did_in_this_call() -> None:
    """The budget check of ``study.batch``: before any row of a method has finished, the plan's estimate
    scaled up for the rows sharing a GPU; then the longest of that method's finished rows."""
    from cosmos_ros.study.batch import expected_seconds

    cfg = load_study_config(CONFIG)
    row = cfg.row("new_arm-lora16-e30-s0")
    assert expected_seconds(cfg, row, 4, {}) == pytest.approx(1.9 * row_seconds(cfg, row))
    assert expected_seconds(cfg, row, 4, {"dora": [500.0]}) == pytest.approx(1.9 * row_seconds(cfg, row))
    assert expected_seconds(cfg, row, 4, {"lora": [200.0, 260.0, 240.0]}) == 260.0
    # what a finished row cost of its GPU, for the plan: its wall time over the rows that shared the GPU
    from cosmos_ros.study.plan import measured_from_rows

    def done(method: str, total: float, sharing: int | None) -> dict:
        env = {} if sharing is None else {"rows_per_gpu": sharing}
        return {"row": {"method": method}, "seconds": {"total": total}, "environment": env}

    rows = [done("lora", 250.0, 5), done("lora", 200.0, 5), done("lora", 40.0, None), done("full", 90.0, 3)]
    assert measured_from_rows([*rows, {"row": {"method": "dora"}}]) == {"lora": 40.0, "full": 30.0}


def test_intervals_over_seeds_and_clips_are_paired_with_the_base() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.1, 0.5, (1, 40))  # clips differ a lot from each other...
    adapted = base - 0.05 + rng.normal(0, 0.005, (2, 40))  # ...the adapter helps every clip a little
    unpaired = seed_clip_ci(adapted)
    change = seed_clip_ci(paired_difference(adapted, base))
    assert change["seeds"] == 2 and change["clips"] == 40
    assert change["hi"] < 0 and change["mean"] == pytest.approx(-0.05, abs=0.003)
    assert change["hi"] - change["lo"] < (unpaired["hi"] - unpaired["lo"]) / 5  # pairing removes clip spread
    # two seeds that disagree widen the interval (the seed level is resampled)
    split = np.stack([adapted[0], adapted[1] + 0.2])
    assert seed_clip_ci(split)["hi"] - seed_clip_ci(split)["lo"] > unpaired["hi"] - unpaired["lo"]
    # a ratio of means over the pairs where both values are read; unreadable (NaN) clips are left out
    pairs = np.stack([np.full((1, 4), 1.0), np.array([[2.0, 2.0, np.nan, 2.0]])], axis=-1)
    assert ratio_statistic(pairs[None])[0] == pytest.approx(0.5)
    assert seed_clip_ci(np.array([[np.nan, 0.2, 0.4]]))["mean"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="not the same clips"):
        paired_difference(adapted, base[:, :39])


def _row(method: str, rank: int, seed: int, new: np.ndarray, old: np.ndarray) -> dict:
    rid = f"new_arm-{method}{rank or ''}-e30-s{seed}"
    row = {"id": rid, "cell": "new_arm", "method": method, "rank": rank, "episodes": 30, "seed": seed}
    return {"row": row, "new_cell": _section(new), "original_cell": _section(old)}


def _section(pose: np.ndarray) -> dict:
    return {"clip_ids": [f"c{i}" for i in range(len(pose))], "per_clip": {"pose": list(pose)}}


def test_method_contrasts_are_paired_by_clip_and_seed_with_a_seed_floor() -> None:
    from cosmos_ros.study.report import contrasts

    rng = np.random.default_rng(1)
    new, old = rng.uniform(0.02, 0.3, 30), rng.uniform(0.02, 0.3, 30)  # clips differ a lot from each other
    rows = [
        _row("lora", 16, 0, new, old),
        _row("lora", 16, 1, new + 0.002, old),  # a retrain moves every clip a little
        _row("dora", 16, 0, new + 0.01, old - 0.02),  # one seed only: paired with lora's seed 0
    ]
    entries = {e["contrast"]: e for e in contrasts(rows, ["new_arm"], 30)["new_arm"]}
    dora = entries["dora r16 - lora r16"]
    assert dora["seeds"] == "0"
    assert dora["new_cell"]["mean"] == pytest.approx(0.01) and dora["new_cell"]["lo"] > 0.0099
    assert dora["original_cell"]["mean"] == pytest.approx(-0.02) and dora["original_cell"]["hi"] < 0
    floor = entries["lora r16: seed 1 - seed 0 (the seed floor)"]
    assert floor["seeds"] == "1 vs 0" and floor["new_cell"]["mean"] == pytest.approx(0.002)
    assert not any("full" in name for name in entries)  # a contrast with a method not run is left out
    other = _row("dora", 16, 0, new, old)
    other["new_cell"]["clip_ids"][0] = "elsewhere"
    with pytest.raises(ValueError, match="different new_cell clips"):
        contrasts([rows[0], other], ["new_arm"], 30)


def test_time_to_90_percent_of_the_gain_and_the_step_time() -> None:
    pts = [ValPoint(0, 0.0, 1.0), ValPoint(10, 5.0, 0.5), ValPoint(20, 7.0, 0.15), ValPoint(30, 9.0, 0.1)]
    t = time_to_gain(pts, 0.9)
    assert t["gain"] == pytest.approx(0.9) and (t["steps"], t["seconds"]) == (20, 7.0)  # 0.15 <= 1 - 0.81
    assert step_seconds(pts) == {"steady": pytest.approx(0.2), "first_interval": pytest.approx(0.5)}
    worse = time_to_gain([ValPoint(0, 0.0, 1.0), ValPoint(10, 1.0, 1.2)])
    assert worse["seconds"] is None and "did not fall" in worse["note"]


@pytest.mark.slow
def test_smoke_rows_run_end_to_end_and_the_report_shows_them(tmp_path: Path) -> None:
    from cosmos_ros.study import batch, report, run

    work, results, doc = tmp_path / "work", tmp_path / "results", tmp_path / "docs" / "adaptation.md"
    common = ["--smoke", "--config", str(CONFIG), "--work", str(work), "--results", str(results)]
    cfg = load_study_config(CONFIG, smoke=True)
    assert [r.id for r in cfg.rows()] == ["new_arm-none", "new_arm-lora4-e2-s0", "new_arm-full-e1-s0"]
    assert cfg.cells == SMOKE["cells"]

    # The batch command: data prepared once, the row in its own process, its JSON in the results folder.
    assert batch.main(["--rows", "new_arm-none", "--gpus", "0", *common]) == 0
    # The one-row command, here in this process.
    assert run.main(["--row", "new_arm-lora4-e2-s0", *common]) == 0
    base = json.loads((results / "new_arm-none.json").read_text())
    lora = json.loads((results / "new_arm-lora4-e2-s0.json").read_text())
    assert (work / "rows" / "new_arm-lora4-e2-s0" / "eval_new" / "eval.json").is_file()

    assert base["training"] is None and base["new_cell"]["model"] == "base"
    t = lora["training"]
    assert t["steps"] == 3 and t["train_clips"] == 6 and t["val_clips"] == 3  # 2 + 1 episodes of 3 clips
    assert t["trainable_params"] == t["adapter_params"] + t["action_params"] < t["total_params"]
    assert t["adapter_params"] > 0 and t["peak_gpu_bytes"] is None  # a CPU has no GPU memory to report
    assert [p["step"] for p in t["val_curve"]] == [0, 1, 2, 3] and t["step_seconds"]["steady"] > 0
    assert set(t["time_to_90"]) >= {"steps", "seconds", "gain", "note"}
    for row in (base, lora):
        for section in ("new_cell", "original_cell"):
            ev = row[section]
            assert len(ev["clip_ids"]) == 2 and len(ev["per_clip"]["pose"]) == 2
            assert len(ev["per_clip"]["pose_own_shuffled"]) == 2 and len(ev["per_clip"]["verdict_agree"]) == 2
            figs = ev["figures"]
            assert {
                "psnr_moving_db",
                "pose_error",
                "shuffled_pose_ratio",
                "verdict_agreement_vs_simulator",
            } <= set(figs)
        # the new arm's true frames are read with its own link lengths: the reader's floor stays small
        assert row["new_cell"]["reference_pose_on_true_frames"]["mean"] < 0.05
    assert base["new_cell"]["clip_ids"] == lora["new_cell"]["clip_ids"]  # paired clips across rows

    # Run again: the finished row is skipped, its result untouched.
    before = (results / "new_arm-none.json").stat().st_mtime_ns
    assert batch.main(["--rows", "new_arm-none", "--gpus", "0", *common]) == 0
    assert (results / "new_arm-none.json").stat().st_mtime_ns == before

    # The report: tables with intervals, the raw JSON beside the page.
    assert (
        report.main(["--smoke", "--config", str(CONFIG), "--results", str(results), "--doc", str(doc)]) == 0
    )
    page = doc.read_text()
    assert "| method | seeds | pose error [rad] | change vs none |" in page
    assert "| none | 1 |" in page and "| lora r4 | 1 |" in page
    assert f"| lora r4 | {t['trainable_params']} |" in page  # the cost table
    assert "## Conclusions" in page and "<...>" in page
    assets = doc.parent / "adaptation"
    assert sorted(p.name for p in (assets / "results").glob("*.json")) == [
        "new_arm-lora4-e2-s0.json",
        "new_arm-none.json",
    ]
    summary = json.loads((assets / "summary.json").read_text())
    change = summary["new_arm|lora|4|2"]["pose_change"]
    assert change["lo"] <= change["mean"] <= change["hi"] and change["clips"] == 2
    assert (assets / "forgetting.png").is_file()

    # Conclusions written by a person (docs/adaptation/conclusions.md) replace the template, across rebuilds.
    (assets / "conclusions.md").write_text("### Claim 1\n\nSupported: lora r4 beats none.\n")
    assert (
        report.main(["--smoke", "--config", str(CONFIG), "--results", str(results), "--doc", str(doc)]) == 0
    )
    page = doc.read_text()
    assert "## Conclusions\n\n### Claim 1\n\nSupported: lora r4 beats none." in page and "<...>" not in page
