"""The evaluation: clips x (models + baselines) -> every figure of the report, as one JSON-able dict.

Steps (`evaluate`):

1. open the clips split and check every adapter against it (`compat`) before anything is loaded, so bad
   input fails in seconds with nothing written;
2. per clip, what does not depend on a model: the true future, the checker's verdict on it, the pose read
   from it (the pose reader's floor), the simulator's geometric truth, the "nothing moves" baseline;
3. per model (loaded one at a time: GPU memory holds one), per clip: one batched `Predictor.predict` call
   for the clip's own actions and another clip's actions (the shuffled-action test), with the same seeded
   noise (common random numbers: differences come from the actions), then fidelity, pose and verdicts;
4. aggregate over clips: per predicted step and overall, mean with a 95% bootstrap interval.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cosmos_ros.evaluate import metrics
from cosmos_ros.evaluate.baselines import BASELINES
from cosmos_ros.evaluate.compat import check_clips_match_adapter
from cosmos_ros.evaluate.pose import joint_columns, pick_estimator, pose_errors, read_poses, required_joints
from cosmos_ros.evaluate.verdicts import SIM_ARM_JOINTS, agreement_figures, sim_arm_in_regions, verdicts

LOG = logging.getLogger(__name__)
BASE_NAME = "base"


class EvalError(RuntimeError):
    """Bad input for the evaluation: the message names the problem and the fix."""


@dataclass
class EvalSettings:
    """What an evaluation run compares and how (every field lands in eval.json)."""

    base: str | None  # base model dir / hub id (None: each adapter card's base)
    adapters: list[str] = field(default_factory=list)  # adapters compared side by side
    clips: str = ""  # clips folder (build_clips output)
    split: str = "val"  # train | val | all
    max_clips: int = 0  # 0 = every clip of the split
    num_steps: int = 10  # denoising steps
    guidance: float = 0.0  # classifier-free guidance (0 = off, NVIDIA's action-conditioned default)
    seed: int = 0  # noise of clip i uses seed + i, for every model (common random numbers)
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 8  # candidates per model call
    revision: str | None = None
    include_base: bool = False  # also evaluate the base model (no action conditioning) as a reference
    allow_no_actions: bool = False  # evaluate adapters without action conditioning anyway
    pose_estimator: str = "auto"  # auto | none | entry-point name | module:Class
    checker: str = "keepout"  # collision checker (name, entry point or module:Class)
    checker_options: dict[str, Any] = field(default_factory=dict)
    motion_threshold: float = metrics.MOTION_THRESHOLD
    grid_clips: int = 3  # clips shown in the GIF grid
    progress: bool = True


@dataclass
class ClipTruth:
    """What one clip gives independently of any model."""

    clip_id: str
    prompt: str
    # frames are held only while the clip is scored (and for the grid's clips): memory stays at a few clips
    context: np.ndarray  # uint8 [C, H, W, 3]
    truth: np.ndarray  # uint8 [N, H, W, 3]
    raw_actions: np.ndarray  # float32 [N, D]: the actions that produced `truth`
    positions: np.ndarray  # float64 [N, J]: joint states behind `truth`
    verdict: Any = None  # the checker on the true frames
    geometry: np.ndarray | None = None  # bool [N]: arm inside a keep-out region (sim arm)
    estimator: Any = None  # the pose estimator for this clip's cell (its camera), None: no pose reading
    index: int = 0  # the clip's index in the split (its frames are read again from there; its noise seed)


@dataclass
class ModelRun:
    """Per-clip raw figures of one model or baseline (aggregated by `summarize`)."""

    name: str
    kind: str  # adapter | base | baseline | truth
    fidelity: dict[str, list[np.ndarray]] = field(default_factory=dict)
    err_true: list[float] = field(default_factory=list)
    err_shuffled: list[float] = field(default_factory=list)
    difference: list[float] = field(default_factory=list)
    pose: list[np.ndarray] = field(default_factory=list)  # [N, J] per clip
    pose_shuffled: list[np.ndarray] = field(default_factory=list)
    verdicts: list[Any] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- inputs
def open_clips(root: str, split: str) -> Any:
    """The split's ClipDataset, or EvalError naming what is missing and how to get it."""
    from cosmos_ros.clips.dataset import SPLITS, ClipDataset

    path = Path(root).expanduser()
    if path.name == "clips.json" and path.is_file():
        path = path.parent  # the folder's index, given for the folder
    if path.exists() and not path.is_dir():
        raise EvalError(f"{path} is a file, not a clips folder; pass the folder build_clips wrote (-o)")
    if not path.is_dir():
        raise EvalError(f"clips folder {path} does not exist; build clips first (build_clips ... -o {path})")
    if not (path / "clips.json").is_file():
        raise EvalError(
            f"{path} has no clips.json: not a clips folder (build it with build_clips ... -o {path})"
        )
    if split not in SPLITS:
        raise EvalError(f"split {split!r}: use one of {', '.join(SPLITS)}")
    try:
        ds = ClipDataset(path, split=split, as_numpy=True)
    except (OSError, ValueError, KeyError) as exc:
        raise EvalError(
            f"{path} cannot be read as a clips folder ({exc}); rebuild it with build_clips"
        ) from exc
    if len(ds) == 0:
        present = sorted({s["split"] for s in ds.meta.get("shards", []) if s.get("clips")})
        if not present:
            raise EvalError(
                f"{path} holds no clips at all (empty build); record longer episodes or lower "
                "num_frames/stride"
            )
        raise EvalError(
            f"{path} has no {split!r} clips (splits present: {', '.join(present)}); rebuild the clips with "
            f"--val-fraction or --val-episodes, or pass --split {present[0]} (clips the model may have "
            "trained on give optimistic figures)"
        )
    return ds


def model_names(adapters: list[str]) -> list[str]:
    """Short unique names: the adapter folder's name, its parent's too when two would collide."""
    names = [Path(a).name or str(a) for a in adapters]
    for i, a in enumerate(adapters):
        if names.count(names[i]) > 1:
            names[i] = "/".join(Path(a).parts[-2:])
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def check_inputs(settings: EvalSettings, ds: Any) -> dict[str, dict[str, Any]]:
    """Every adapter against the clips, before a model is loaded; returns name -> card summary."""
    from cosmos_ros.model.adapters import AdapterError, read_card

    out: dict[str, dict[str, Any]] = {}
    clips_tok = ds.tokenizer.to_dict()
    for name, adapter in zip(model_names(settings.adapters), settings.adapters, strict=True):
        try:
            card = read_card(adapter)
        except AdapterError as exc:
            raise EvalError(str(exc)) from exc
        if card.get("action_conditioning") is None and not settings.allow_no_actions:
            raise EvalError(
                f"adapter {adapter} has no action conditioning (no action MLPs in its card): its predictions "
                "cannot follow the actions, so the shuffled-action test, pose error and verdicts would only "
                "measure a video model; train it on clips with actions, or pass --allow-no-actions"
            )
        warnings = check_clips_match_adapter(card, ds.meta, clips_tok, adapter=f"adapter {adapter}")
        if not (settings.base or card.get("base_model")):
            raise EvalError(f"adapter {adapter}'s card names no base model; pass --base")
        out[name] = {
            "adapter": str(adapter),
            "base": settings.base or card.get("base_model"),
            "training_steps": (card.get("training") or {}).get("steps"),
            "warnings": warnings,
        }
    return out


def check_base_card(base: str, clips_meta: dict[str, Any], clips_tok: dict[str, Any]) -> list[str]:
    """A base model evaluated on its own against the clips, when it has a card (the sim twin): its
    preprocessing spec and tokenizer as an adapter's are (`compat`); returns the warnings."""
    from cosmos_ros.model.base_card import BaseCardError, read_base_card

    try:
        card = read_base_card(base)
    except BaseCardError as exc:
        raise EvalError(str(exc)) from exc
    if card is None:
        return []
    return check_clips_match_adapter(
        card, clips_meta, clips_tok, adapter=f"base model {base}", kind="base model"
    )


# ---------------------------------------------------------------------------------------------- evaluation
def _frames(ds: Any, i: int) -> tuple[np.ndarray, np.ndarray]:
    """(context, true future) frames of clip i (read again from the shard's memory map when needed)."""
    ncf = int(ds.meta.get("num_cond_frames", 1))
    frames = np.asarray(ds[i]["frames"])
    return frames[:ncf], frames[ncf:]


def _release(clip: ClipTruth) -> None:
    clip.context = clip.truth = np.zeros((0, 0, 0, 3), np.uint8)


def episode_cell(ds: Any, episode_id: str) -> dict[str, Any] | None:
    """The simulated cell of an episode as the clip index records it (build_clips copies it from the
    episode's ``episode.json``); None for real recordings and indexes built before cells were carried."""
    entry = (ds.meta.get("episodes") or {}).get(episode_id) or {}
    cell = entry.get("cell")
    return cell if isinstance(cell, dict) else None


def _clip_truth(ds: Any, i: int, checker: Any, regions: Any, estimator: Any) -> ClipTruth:
    from cosmos_ros.sim.variants import arm_from_description, camera_from_description

    item = ds[i]
    ncf = int(ds.meta.get("num_cond_frames", 1))
    frames = np.asarray(item["frames"])
    cell = episode_cell(ds, str(item["episode_id"]))
    truth = ClipTruth(
        index=i,
        clip_id=str(item["clip_id"]),
        prompt=str(item["prompt"]),
        context=frames[:ncf],
        truth=frames[ncf:],
        raw_actions=np.asarray(item["raw_actions"], np.float32)[ncf - 1 :],
        positions=np.asarray(item["positions"], np.float64)[ncf:],
        # a plugin estimator that does not subclass PoseEstimator may lack for_cell: it reads every cell alike
        estimator=getattr(estimator, "for_cell", lambda _cell: estimator)(cell),
    )
    if checker is not None:
        truth.verdict = verdicts(checker, truth.context[-1], truth.truth)
    if regions is not None:
        h, w = frames.shape[1:3]
        camera = camera_from_description(cell)  # the cell's own camera; None: the default view
        arm = arm_from_description(cell)  # the cell's own arm; None: the standard one
        truth.geometry = sim_arm_in_regions(truth.positions[:, :2], regions, h, w, camera, arm)
    return truth


def _score(
    run: ModelRun,
    clip: ClipTruth,
    pred: np.ndarray,
    ctx: dict[str, Any],
    seen: np.ndarray | None = None,
) -> None:
    """Fidelity, pose and verdict of one predicted sequence [N, H, W, 3] of `clip` into `run`.

    `seen`: the context frame as the model decoded it [H, W, 3], the checker's reference for a model's
    predictions (as in the predictor node): the VAE round trip is not a change of the scene. Baselines
    (None) are checked against the camera's context frame itself."""
    fid = metrics.frame_fidelity(pred, clip.truth, clip.context[-1], ctx["motion_threshold"])
    for k in metrics.FIDELITY_KEYS:
        run.fidelity.setdefault(k, []).append(fid[k])
    est = clip.estimator
    if est is not None:
        run.pose.append(pose_errors(est, read_poses(est, pred), clip.positions[:, ctx["pose_cols"]]))
    if ctx["checker"] is not None:
        reference = clip.context[-1] if seen is None else seen
        run.verdicts.append(verdicts(ctx["checker"], reference, pred))


def _load_predictor(settings: EvalSettings, adapter: str | None, base: str | None, ds: Any) -> Any:
    from cosmos_ros.predict.core import Predictor

    try:
        pred = Predictor.load(
            base,
            adapter,
            revision=settings.revision,
            device=settings.device,
            dtype=settings.dtype,
            batch_size=settings.batch_size,
            height=int(ds.meta["height"]),
            width=int(ds.meta["width"]),
            # an adapter predicts in chunks of the clip length it was trained on (its card); longer clips
            # are predicted autoregressively, as the predictor node does
            num_frames=None if adapter else int(ds.meta["num_frames"]),
            action_dim=None if adapter else ds.tokenizer.dim,
        )
    except (OSError, ValueError) as exc:
        raise EvalError(
            f"cannot load {'adapter ' + adapter if adapter else 'base model ' + str(base)}: {exc}"
        ) from exc
    # verdict figures against the scene as predicted frames render it, on every device (the cost is one
    # VAE encode + decode per clip; the node's CPU default trades that for speed)
    pred.checker_reference = "held"
    return pred


def evaluate(settings: EvalSettings, on_progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the evaluation; returns the results dict (`report.write_outputs` turns it into files).

    The per-clip samples for the GIF grid are returned under the key "_samples" (not JSON).
    """
    import torch

    from cosmos_ros.predict.checkers import KeepOutRegionChecker, load_checker

    torch.manual_seed(settings.seed)
    ds = open_clips(settings.clips, settings.split)
    cards = check_inputs(settings, ds)
    if not settings.adapters and not settings.base:
        raise EvalError("nothing to evaluate: pass --base and/or one or more --adapter directories")
    n = len(ds) if settings.max_clips <= 0 else min(settings.max_clips, len(ds))
    notes: list[str] = []
    if _with_base(settings):
        notes.extend(
            f"{BASE_NAME}: {w}" for w in check_base_card(settings.base, ds.meta, ds.tokenizer.to_dict())
        )
    joint_names = list(ds.tokenizer.joint_names)
    try:
        estimator = pick_estimator(settings.pose_estimator, joint_names)
        checker = (
            load_checker(settings.checker, settings.checker_options) if settings.checker != "none" else None
        )
    except ValueError as exc:
        raise EvalError(str(exc)) from exc
    if estimator is None:
        notes.append(
            f"pose error not computed: no pose estimator reads the clips' joints {joint_names} "
            "(register one in the entry-point group cosmos_ros.pose_estimators)"
        )
    regions = None
    if isinstance(checker, KeepOutRegionChecker) and set(SIM_ARM_JOINTS[:2]) <= set(joint_names[:2]):
        regions = checker.regions
    else:
        notes.append(
            "geometric truth not computed: it needs the keepout checker and sim-arm clips whose first joints "
            "are joint1, joint2 (the clips carry the joint states behind every frame, the renderer gives the "
            "camera)"
        )
    ctx = {
        "estimator": estimator,
        "pose_cols": joint_columns(estimator, joint_names) if estimator else [],
        "checker": checker,
        "motion_threshold": settings.motion_threshold,
    }
    bar = _progress(settings.progress, n * (1 + len(settings.adapters) + int(_with_base(settings))))
    clips: list[ClipTruth] = []
    truth_run = ModelRun("true frames", "truth")
    baseline_runs = {name: ModelRun(name, "baseline") for name in BASELINES}
    steps = 0
    for pos, i in enumerate(spread_indices(len(ds), n)):
        try:
            clip = _clip_truth(ds, i, checker, regions, estimator)
        except ValueError as exc:  # a malformed cell description in clips.json
            raise EvalError(str(exc)) from exc
        clips.append(clip)
        if clip.estimator is not None:
            truth_run.pose.append(
                pose_errors(
                    clip.estimator,
                    read_poses(clip.estimator, clip.truth),
                    clip.positions[:, ctx["pose_cols"]],
                )
            )
        for name, fn in BASELINES.items():
            _score(baseline_runs[name], clip, fn(clip.context, len(clip.truth)), ctx)
        steps = len(clip.truth)
        if pos >= settings.grid_clips:
            _release(clip)
        bar.update(1)
    cells = {str(c["name"]) for c in (episode_cell(ds, e) for e in ds.episodes) if c and c.get("name")}
    if cells and (estimator is not None or regions is not None):
        notes.append(
            f"pose and geometric truth read with each episode's own sim cell camera ({len(cells)} cell(s), "
            "from clips.json)"
        )
    partners = metrics.shuffle_partner(n, settings.seed) if n >= 2 else None
    if partners is None:
        notes.append("shuffled-action test not run: it needs at least 2 clips")
    samples: dict[str, dict[str, Any]] = {
        c.clip_id: {"context": c.context, "truth": c.truth, "pred": {}} for c in clips[: settings.grid_clips]
    }
    model_runs: list[ModelRun] = []
    specs: list[tuple[str, str | None, str | None, str]] = []
    if _with_base(settings):
        specs.append((BASE_NAME, None, settings.base, "base"))
    for name, info in cards.items():
        specs.append((name, info["adapter"], info["base"], "adapter"))
    for name, adapter, base, kind in specs:
        if on_progress:
            on_progress(f"loading {name}")
        predictor = _load_predictor(settings, adapter, base, ds)
        run = ModelRun(name, kind, info={"adapter": adapter, "base": base, **(cards.get(name) or {})})
        # a base trained by cosmos_ros (the sim twin) ships trained action MLPs: not a reference then
        if kind == "base" and not predictor.card.get("action_conditioning"):
            run.info["note"] = "no action conditioning: a reference, its shuffled ratio is about 1 by design"
        default_prompts = 0
        for i, clip in enumerate(clips):
            if clip.truth.size == 0:
                clip.context, clip.truth = _frames(ds, clip.index)
            prompt = clip.prompt if clip.prompt in predictor.prompts else ""
            default_prompts += prompt != clip.prompt
            acts = [clip.raw_actions] + ([clips[partners[i]].raw_actions] if partners else [])
            try:
                pred, seen = predictor.predict(
                    clip.context,
                    np.stack(acts),
                    prompt=prompt,
                    num_steps=settings.num_steps,
                    guidance=settings.guidance,
                    seed=settings.seed + clip.index,
                    with_context=True,
                )
            except ValueError as exc:
                raise EvalError(f"{name} cannot predict clip {clip.clip_id}: {exc}") from exc
            _score(run, clip, pred[0], ctx, seen[-1])
            if partners:
                run.err_true.append(metrics.frame_error(pred[0], clip.truth))
                run.err_shuffled.append(metrics.frame_error(pred[1], clip.truth))
                run.difference.append(metrics.prediction_difference(pred[0], pred[1]))
                if clip.estimator is not None:
                    run.pose_shuffled.append(
                        pose_errors(
                            clip.estimator,
                            read_poses(clip.estimator, pred[1]),
                            clip.positions[:, ctx["pose_cols"]],
                        )
                    )
            if clip.clip_id in samples:
                samples[clip.clip_id]["pred"][name] = pred[0]
            else:
                _release(clip)
            bar.update(1)
        if default_prompts:
            run.info["default_prompt_clips"] = default_prompts
            notes.append(
                f"{name}: {default_prompts} clip(s) have a prompt missing from the model's prompt cache; "
                "they "
                f"used its default prompt {predictor.default_prompt!r} (add them with embed_prompts)"
            )
        model_runs.append(run)
        del predictor
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    bar.close()
    ctx["predicted_steps"] = steps
    results = summarize(settings, ds, clips, model_runs, list(baseline_runs.values()), truth_run, ctx, notes)
    results["_samples"] = samples
    return results


def _with_base(settings: EvalSettings) -> bool:
    return bool(settings.base) and (settings.include_base or not settings.adapters)


class _NoBar:
    def update(self, n: int) -> None:
        return None

    def close(self) -> None:
        return None


def _progress(enabled: bool, total: int) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="evaluate", unit="clip", dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------- aggregation
def spread_indices(total: int, n: int) -> list[int]:
    """`n` clip indices spread evenly over `total` (all of them when n >= total). Clips are stored episode
    by episode, so the first n would be one or two episodes: a subset must sample every part of the split."""
    if n >= total:
        return list(range(total))
    return sorted({round(k * (total - 1) / max(n - 1, 1)) for k in range(n)})


def _nanmean_rows(a: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN where a row has no finite value (no warning)."""
    finite = np.isfinite(a)
    count = finite.sum(axis=-1)
    total = np.where(finite, a, 0.0).sum(axis=-1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _pose_summary(
    errors: list[np.ndarray], joint_names: list[str], seed: int, required: np.ndarray | None = None
) -> dict[str, Any] | None:
    """Pose figures; `required` (PoseEstimator.required) picks the joints whose absence makes a frame
    unreadable and that the overall error averages (all joints when None)."""
    if not errors:
        return None
    e = np.stack(errors)  # [clips, N, J]
    req = np.ones(e.shape[-1], bool) if required is None else np.asarray(required, bool)
    unreadable = ~np.isfinite(e[..., req]).all(axis=-1)  # [clips, N]: a required joint not read
    per_frame = np.where(unreadable, np.nan, _nanmean_rows(e[..., req]))  # [clips, N]
    return {
        "unit": "rad (angles) / joint units",
        "overall_joints": [j for j, r in zip(joint_names, req, strict=True) if r],
        "unreadable_per_joint": {j: int((~np.isfinite(e[..., k])).sum()) for k, j in enumerate(joint_names)},
        "overall": metrics.bootstrap_ci(_nanmean_rows(per_frame), seed=seed),
        # the values behind "overall", in clip order: runs on the same clips are compared pair by pair
        # (cosmos_ros.study), which two means and their intervals cannot do
        "per_clip": _nanmean_rows(per_frame).tolist(),
        "per_step": metrics.per_step_ci(per_frame, seed=seed),
        "per_joint": {
            j: metrics.bootstrap_ci(_nanmean_rows(e[..., k]), seed=seed) for k, j in enumerate(joint_names)
        },
        "per_step_joint": {j: metrics.per_step_ci(e[..., k], seed=seed) for k, j in enumerate(joint_names)},
        "frames": int(unreadable.size),
        "unreadable_frames": int(unreadable.sum()),
        "unreadable_per_step": unreadable.sum(axis=0).astype(int).tolist(),
    }


def _fidelity_summary(run: ModelRun, seed: int) -> dict[str, Any]:
    out = {}
    for k, rows in run.fidelity.items():
        a = np.stack(rows)  # [clips, N]
        per_clip = _nanmean_rows(a)
        out[k] = {
            "overall": metrics.bootstrap_ci(per_clip, seed=seed),
            "per_clip": per_clip.tolist(),  # in clip order (see _pose_summary)
            "per_step": metrics.per_step_ci(a, seed=seed),
        }
    return out


def _geometric_verdict(inside: np.ndarray) -> Any:
    """The simulator's truth for one clip as a checker verdict: collision from the first step the arm's
    skeleton lies in a keep-out region."""
    from cosmos_ros.predict.checkers import CheckResult

    steps = [float(x) for x in inside]
    first = int(np.argmax(inside)) if inside.any() else -1
    return CheckResult(first >= 0, first, float(inside.any()), steps)


def summarize(
    settings: EvalSettings,
    ds: Any,
    clips: list[ClipTruth],
    model_runs: list[ModelRun],
    baseline_runs: list[ModelRun],
    truth_run: ModelRun,
    ctx: dict[str, Any],
    notes: list[str],
) -> dict[str, Any]:
    """Per-clip raw figures -> the JSON-able results (means with 95% intervals, counts, settings)."""
    seed = settings.seed
    est = ctx["estimator"]
    pose_joints = list(est.joint_names) if est is not None else []
    required = required_joints(est) if est is not None else None
    true_verdicts = [c.verdict for c in clips] if ctx["checker"] is not None else None
    geometry = (
        [_geometric_verdict(c.geometry) for c in clips] if clips and clips[0].geometry is not None else None
    )

    def one(run: ModelRun) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": run.kind, **({"info": run.info} if run.info else {})}
        if run.fidelity:
            out["fidelity"] = _fidelity_summary(run, seed)
        if run.err_true:
            out["shuffled_actions"] = metrics.shuffled_action_figures(
                run.err_true, run.err_shuffled, run.difference, seed=seed
            )
            if run.pose_shuffled:
                keep = slice(None) if required is None else required  # the joints the overall error uses
                per = [
                    [float(_nanmean_rows(a[..., keep].reshape(1, -1))[0]) for a in (t, s)]
                    for t, s in zip(run.pose, run.pose_shuffled, strict=True)
                ]
                out["shuffled_actions"]["pose_ratio"] = metrics.bootstrap_ci(
                    np.array(per), metrics.ratio_of_means, seed=seed
                )
                out["shuffled_actions"]["per_clip_pose"] = per  # [own, shuffled] per clip, in clip order
        out["pose"] = _pose_summary(run.pose, pose_joints, seed, required)
        if run.verdicts and true_verdicts is not None:
            v: dict[str, Any] = {"vs_true_frames": agreement_figures(run.verdicts, true_verdicts)}
            if geometry is not None:
                v["vs_geometry"] = agreement_figures(run.verdicts, geometry)
                v["vs_geometry"]["per_clip"] = [
                    float(a.collision == b.collision) for a, b in zip(run.verdicts, geometry, strict=True)
                ]
            out["verdicts"] = v
        return out

    figures = {r.name: one(r) for r in [*model_runs, *baseline_runs]}
    reference: dict[str, Any] = {
        "pose_on_true_frames": _pose_summary(truth_run.pose, pose_joints, seed, required)
    }
    if true_verdicts is not None and geometry is not None:
        reference["checker_on_true_frames_vs_geometry"] = agreement_figures(true_verdicts, geometry)
    settings_dict = asdict(settings)
    settings_dict["checker_options"] = json.loads(json.dumps(settings.checker_options, default=str))
    return {
        "format_version": 1,
        "settings": settings_dict,
        "clips": {
            "root": str(ds.root.resolve()),
            "split": settings.split,
            "count": len(clips),
            "available": len(ds),
            "clip_ids": [c.clip_id for c in clips],
            "num_frames": int(ds.meta["num_frames"]),
            "num_context_frames": int(ds.meta.get("num_cond_frames", 1)),
            "predicted_steps": int(ctx["predicted_steps"]),
            "height": int(ds.meta["height"]),
            "width": int(ds.meta["width"]),
            "fps": float(ds.meta["fps"]),
            "joint_names": list(ds.tokenizer.joint_names),
            "action_mode": ds.tokenizer.mode,
            "geometric_collisions": None if geometry is None else int(sum(g.collision for g in geometry)),
            "checker_collisions_on_truth": None
            if true_verdicts is None
            else int(sum(v.collision for v in true_verdicts)),
        },
        "models": [r.name for r in model_runs],
        "baselines": [r.name for r in baseline_runs],
        "pose_estimator": None if est is None else {"name": est.name, "joints": pose_joints},
        "checker": None if ctx["checker"] is None else settings.checker,
        "figures": figures,
        "reference": reference,
        "notes": notes,
    }
