"""Can a planner trust check_collision on the twin? Its verdicts on random plans against the simulator.

The clip evaluation (`cosmos_ros.evaluate.runner`) scores verdicts on recorded clips, where a keep-out region
is rarely entered, so one outcome dominates. A planner asks about candidate plans, half of which may cross a
region. This study makes that question directly, on the simulated arm, with the truth no pixel checker has:

- scenes: a cell of a variant set (default ``heldout``: scenes, light and cameras the twin never trained on),
  a random start pose, the frame the simulator renders there (the context);
- per scene, ``per_scene`` random smooth plans (joint deltas per frame within the arm's velocity limits) and,
  per plan, a keep-out box of ``box`` x the image placed either where the plan's wrist will be at a random
  step (meant to be entered) or where the mirrored plan's wrist would be (meant to be missed), never on the
  arm at the start (a region the arm already occupies cannot be "entered");
- truth: whether the arm's links enter the box at any step (`demo_plans.arm_in_region`: forward kinematics
  through the cell's camera), and the checker on the frames the simulator renders for the plan (the
  checker's own floor);
- the twin: one `Predictor.predict` call per scene (all its plans in one batch, as check_collision does),
  each plan given as the joint positions it passes and turned into the model's own actions (deltas or
  targets, whichever its tokenizer has) by the predictor, as check_collision turns a joint-target request;
  the keep-out checker on the predicted frames against the context as the model decodes it.

Reported: agreement with the simulator (bootstrap CI), precision/recall of "collision", how many plans of
each outcome (both must be well represented), and the checker floor. CLI:
``python -m cosmos_ros.evaluate.plan_verdicts --model sim_twin --plans 200 --out runs/plan_verdicts``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cosmos_ros.demo_plans import arm_in_region, plan_positions
from cosmos_ros.evaluate.metrics import bootstrap_ci
from cosmos_ros.evaluate.verdicts import agreement_figures
from cosmos_ros.predict.checkers import KeepOutRegionChecker
from cosmos_ros.sim.arm import JOINT_NAMES, ArmConfig, forward_kinematics
from cosmos_ros.sim.variants import VARIANT_SETS, Cell, cell_for


@dataclass
class VerdictStudy:
    """What one study run draws and how it checks (defaults: issue 15's 200 plans, the node's checker)."""

    model: str = "sim_twin"
    plans: int = 200
    per_scene: int = 8  # plans scored in one predict call (a check_collision request of 8 candidates)
    steps: int = 12  # frames per plan (one clip's 12 actions)
    variant_set: str = "heldout"
    box: float = 0.22  # box side as a fraction of the image height / width
    num_steps: int = 5  # sampling steps (what the demo serves with)
    pixel_threshold: float = 40.0  # the predictor's keep-out checker defaults (config/predictor.yaml)
    area_threshold: float = 0.05
    seed: int = 0
    device: str = "cpu"
    adapter: str | None = None  # a LoRA/DoRA adapter folder on the model (the demo's adapted twin)
    # the checker's reference: held (the evaluation's) or decoded (the predictor node's CPU default)
    reference: str = "held"

    def __post_init__(self) -> None:
        if self.plans < 1 or self.per_scene < 1 or self.steps < 1:
            raise ValueError("plans, per_scene and steps must be >= 1")
        if not 0.02 <= self.box <= 0.9:
            raise ValueError(f"box {self.box}: use a fraction of the image in [0.02, 0.9]")
        if self.variant_set not in VARIANT_SETS:
            raise ValueError(f"variant set {self.variant_set!r}: use one of {', '.join(VARIANT_SETS)}")
        if self.reference not in ("held", "decoded"):
            raise ValueError(f"reference {self.reference!r}: use held or decoded")


def random_plans(rng: np.random.Generator, n: int, steps: int, fps: float, arm: ArmConfig) -> np.ndarray:
    """Smooth joint deltas [n, steps, 3]: per joint a velocity blended linearly from one random value to
    another over the plan, each within 90% of the arm's velocity limit (what the arm can follow frame by
    frame); the gripper moves too, so the plans span the actions the twin was trained on."""
    vmax = 0.9 * np.asarray(arm.max_velocity) / fps
    v0 = rng.uniform(-1, 1, (n, 1, 3)) * vmax
    v1 = rng.uniform(-1, 1, (n, 1, 3)) * vmax
    t = np.linspace(0.0, 1.0, steps)[None, :, None]
    return (v0 + (v1 - v0) * t).astype(np.float32)


def _box(center: np.ndarray, frac: float, width: int, height: int, name: str) -> str:
    """'name:x0,y0,x1,y1' (normalised) of a box of ``frac`` x the image around pixel ``center`` (u, v)."""
    cu, cv = float(center[0]) / width, float(center[1]) / height
    x0, y0 = min(max(cu - frac / 2, 0.0), 1.0 - frac), min(max(cv - frac / 2, 0.0), 1.0 - frac)
    return f"{name}:{x0:.4f},{y0:.4f},{x0 + frac:.4f},{y0 + frac:.4f}"


def place_region(
    rng: np.random.Generator,
    start: np.ndarray,
    deltas: np.ndarray,
    cell: Cell,
    frac: float,
    height: int,
    width: int,
    arm: ArmConfig,
) -> tuple[str, bool] | None:
    """A keep-out box for one plan and whether it was meant to be entered; None if every try covered the
    arm at the start. Half the boxes sit on the plan's wrist at a random step, half on the mirrored plan's."""
    meant = bool(rng.random() < 0.5)
    path = plan_positions(start, deltas if meant else -deltas, arm)
    for _ in range(20):
        k = int(rng.integers(min(2, len(path) - 1), len(path)))
        wrist = forward_kinematics(path[k], arm)[2]
        jitter = rng.normal(0.0, 0.015, 2)  # metres: not always centred on the wrist
        uv = cell.camera.world_to_pixel((wrist + jitter)[None], width, height)[0]
        spec = _box(uv, frac, width, height, "box")
        if not arm_in_region(start[None], spec, cell.camera, height, width, arm)[0]:
            return spec, meant
    return None


def render(cell: Cell, q: np.ndarray, height: int, width: int) -> np.ndarray:
    """The cell rendered at joint positions ``q`` (uint8 [H, W, 3]), as the sim node renders it (its arm
    too: a cell may change the link lengths)."""
    from cosmos_ros.sim.render import render_frame

    look = {"scene": cell.scene, "config": cell.arm, "camera": cell.camera, "lighting": cell.lighting}
    return render_frame(q, width, height, **look)


def run_study(study: VerdictStudy, log: Any = print) -> dict[str, Any]:
    """Draw the scenes and plans, score them with the twin and the simulator; returns the report."""
    import torch

    from cosmos_ros.predict.core import Predictor

    pred = Predictor.load(study.model, study.adapter, device=study.device)
    # held: as the evaluation command (runner._load_predictor); decoded: the predictor node's CPU default
    pred.checker_reference = study.reference
    if pred.tokenizer is None or pred.tokenizer.mode not in ("delta", "absolute"):
        raise ValueError(
            f"model {study.model!r}: the study sends joint-position plans of the sim arm; it needs a model "
            "whose card has a 'delta' or 'absolute' action tokenizer over the sim arm's joints (the sim twin "
            "or an adapter on it)"
        )
    h, w = pred.height, pred.width
    rng = np.random.default_rng(study.seed)
    rows: list[dict[str, Any]] = []
    t0 = time.time()
    predict_s = 0.0
    scene = 0
    while len(rows) < study.plans:
        cell = (
            cell_for(study.variant_set, scene % 1000) if study.variant_set != "demo" else cell_for("demo", 0)
        )
        arm = cell.arm  # the cell's arm: its link lengths place boxes, decide the truth and render
        start = arm.clip(rng.uniform(arm.lower, arm.upper) * np.array([0.8, 0.8, 1.0]))
        n = min(study.per_scene, study.plans - len(rows))
        deltas = random_plans(rng, n, study.steps, pred.fps, arm)
        regions = [place_region(rng, start, d, cell, study.box, h, w, arm) for d in deltas]
        keep = [i for i, r in enumerate(regions) if r is not None]
        scene += 1
        if not keep:
            continue
        context = render(cell, start, h, w)
        # the joint positions the arm will pass (clamped at its limits, as the simulator does), turned into
        # the model's own actions by the predictor, as check_collision turns a joint-target request
        targets = np.stack([plan_positions(start, deltas[i], arm) for i in keep])
        actions = pred.absolute_to_actions(targets, list(JOINT_NAMES), start)
        t1 = time.time()
        with torch.no_grad():
            frames, seen = pred.predict(
                context, actions, num_steps=study.num_steps, seed=study.seed + scene, with_context=True
            )
        predict_s += time.time() - t1
        for j, i in enumerate(keep):
            spec, meant = regions[i]  # type: ignore[misc]
            checker = KeepOutRegionChecker([spec], study.pixel_threshold, study.area_threshold)
            positions = targets[j]
            inside = arm_in_region(positions, spec, cell.camera, h, w, arm)
            rendered = np.stack([render(cell, q, h, w) for q in positions])
            on_twin = checker.check(seen[-1], frames[j : j + 1])[0]
            on_rendered = checker.check(context, rendered[None])[0]
            rows.append(
                {
                    "scene": scene - 1,
                    "cell": cell.name,
                    "start": [round(float(x), 4) for x in start],
                    "region": spec,
                    "meant_to_enter": meant,
                    "truth": bool(inside.any()),
                    "truth_first_step": int(np.argmax(inside)) if inside.any() else -1,
                    "twin": bool(on_twin.collision),
                    "twin_first_step": int(on_twin.first_collision_step),
                    "twin_score": round(float(on_twin.score), 4),
                    "rendered": bool(on_rendered.collision),
                }
            )
        log(f"plan_verdicts: {len(rows)}/{study.plans} plans ({time.time() - t0:.0f} s)")
    return summarise(study, rows, predict_s, time.time() - t0)


def summarise(
    study: VerdictStudy, rows: list[dict[str, Any]], predict_s: float, wall_s: float
) -> dict[str, Any]:
    """The report: agreement of the twin's and the rendered frames' verdicts with the simulator."""
    truth = [r["truth"] for r in rows]

    def figures(key: str) -> dict[str, Any]:
        from cosmos_ros.predict.checkers import CheckResult

        pred = [CheckResult(r[key], -1, 0.0, []) for r in rows]
        out = agreement_figures(pred, truth)
        agree = np.array([float(r[key] == r["truth"]) for r in rows])
        out["agreement_ci"] = bootstrap_ci(agree, seed=study.seed)
        return out

    return {
        "format": "cosmos_ros.plan_verdicts/1",
        "settings": asdict(study),
        "plans": len(rows),
        "collisions_in_truth": int(sum(truth)),
        "clear_in_truth": int(len(rows) - sum(truth)),
        "twin_vs_simulator": figures("twin"),
        "checker_on_rendered_vs_simulator": figures("rendered"),
        "predict_seconds": round(predict_s, 1),
        "wall_seconds": round(wall_s, 1),
        "rows": rows,
    }


def markdown(report: dict[str, Any]) -> str:
    """A short human summary of a report."""
    s = report["settings"]
    lines = [
        "# check_collision on the twin vs the simulator",
        "",
        f"{report['plans']} random plans of {s['steps']} steps from random start poses in "
        f"`{s['variant_set']}` cells, one keep-out box each ({s['box']:.2f} x the image); model "
        f"`{s['model']}`{' + adapter `' + s['adapter'] + '`' if s.get('adapter') else ''}, "
        f"{s['num_steps']} sampling steps, checker reference `{s.get('reference', 'held')}`. "
        f"Truth: {report['collisions_in_truth']} plans enter their box, {report['clear_in_truth']} do not.",
        "",
        "| verdicts on | agreement [95% CI] | precision | recall | collisions said |",
        "|---|---|---|---|---|",
    ]
    for name, key in (
        ("twin's predicted frames", "twin_vs_simulator"),
        ("rendered truth frames", "checker_on_rendered_vs_simulator"),
    ):
        f = report[key]
        ci = f["agreement_ci"]
        lines.append(
            f"| {name} | {f['agreement']:.3f} [{ci['lo']:.3f}, {ci['hi']:.3f}] | {f['precision']:.3f} | "
            f"{f['recall']:.3f} | {f['collisions_predicted']} |"
        )
    lines += ["", f"Predictor time {report['predict_seconds']} s, wall {report['wall_seconds']} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    d = VerdictStudy()
    ap = argparse.ArgumentParser(
        prog="python -m cosmos_ros.evaluate.plan_verdicts", description=__doc__.split("\n")[0]
    )
    ap.add_argument(
        "--model", default=d.model, help="a twin (short name or folder) with a 'delta' action tokenizer"
    )
    ap.add_argument("--adapter", default=None, help="an adapter folder on --model (base + adapter)")
    ap.add_argument(
        "--reference",
        default=d.reference,
        choices=("held", "decoded"),
        help="the checker's reference: held (the evaluation's) or decoded (the node's CPU default)",
    )
    ap.add_argument("--plans", type=int, default=d.plans)
    ap.add_argument("--per-scene", type=int, default=d.per_scene)
    ap.add_argument("--variant-set", default=d.variant_set, choices=VARIANT_SETS)
    ap.add_argument("--box", type=float, default=d.box)
    ap.add_argument("--num-steps", type=int, default=d.num_steps)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--device", default=d.device)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--out", default="runs/plan_verdicts")
    a = ap.parse_args(argv)
    try:
        study = VerdictStudy(
            model=a.model,
            adapter=a.adapter,
            reference=a.reference,
            plans=a.plans,
            per_scene=a.per_scene,
            variant_set=a.variant_set,
            box=a.box,
            num_steps=a.num_steps,
            seed=a.seed,
            device=a.device,
        )
        if a.threads:
            import torch

            torch.set_num_threads(a.threads)
        report = run_study(study)
    except (OSError, ValueError) as exc:
        print(f"plan_verdicts: error: {exc}", file=sys.stderr)
        return 1
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan_verdicts.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(markdown(report))
    print(markdown(report), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
