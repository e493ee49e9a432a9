"""The sim twin: a small Cosmos world model of the simulated cell, trained from scratch in one command.

Stages (each a function; `run` chains them and times each; config/sim_twin.yaml sizes them):

1. `generate`: ROS-free sim episodes (`cosmos_ros.sim.dataset`): the ``train`` cells and the held-out
   ``heldout`` cells (same distribution, other seeds), MCAP + episode.json like the recorder writes;
2. `build_clips`: the project's clip builder on both (the held-out clips are for evaluation);
3. `train_vae`: a small `AutoencoderKLWan` on the training frames (`cosmos_ros.train.vae`);
4. `write_base`: a random-init `CosmosTransformer3DModel` of the configured size + that VAE + the UniPC
   scheduler config + a tiny text encoder and the prompt-embedding cache, in the diffusers layout: the
   "base" the project's trainer starts from (no 7B text encoder anywhere);
5. `encode_latents`: the trainer's latent cache (the trainer's own functions and fingerprint, so the trainer
   finds it fresh and skips encoding), in large batches on the GPU instead of the trainer's 4 clips a call;
6. `train_transformer`: the project's trainer (`cosmos_ros.train.trainer.Trainer`) in ``full`` mode from
   that random init;
7. `export`: the shipped folder ``<out>/sim_twin``: trained transformer (bf16, shards under 16 MB),
   VAE, scheduler, text encoder, prompt cache, the trained action MLPs
   (``action_conditioning.safetensors``) and ``cosmos_ros_card.json`` (action tokenizer, clip geometry,
   data, recipe and figures) + a README model card and the loss curves. `WorldModel.from_pretrained`,
   `Predictor.load` and the trainer read it directly, and by short name once installed
   (``base_model:=sim_twin``, `cosmos_ros.model.registry`).

CLI: ``python -m cosmos_ros.train.sim_twin --config config/sim_twin.yaml --out runs/sim_twin [--smoke]``;
``--smoke`` runs every stage on CPU with tiny counts and sizes (about a minute) to check the plumbing.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cosmos_ros.sim.dataset import DEFAULT_PROMPT, GenerateConfig
from cosmos_ros.yaml_config import deep_update, load_yaml_config

STAGES = ("generate", "clips", "vae", "base", "latents", "transformer", "export", "evaluate")

#: Every stage's counts and sizes cut down so the whole pipeline runs on CPU in about a minute.
SMOKE: dict[str, Any] = {
    "size": [32, 48],
    "data": {"train_episodes": 3, "heldout_episodes": 1, "episode_seconds": 2.6, "workers": 1},
    "clips": {"val_fraction": 0.34, "stride": 6},
    "vae": {
        "base_dim": 4,
        "decoder_base_dim": 4,
        "steps": 2,
        "batch_size": 2,
        "val_clips": 2,
        "stats_clips": 2,
        "cpu": True,
    },
    "transformer": {"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 16, "adaln_lora_dim": 8},
    "train": {
        "model": {"dtype": "float32", "compile": False, "memory_policy": "none", "action_hidden_dim": 16},
        "optim": {"max_steps": 3, "batch_size": 2, "warmup_steps": 1},
        "run": {"cpu": True, "mixed_precision": "no", "val_every": 3, "checkpoint_every": 0, "log_every": 1},
    },
    "export": {"dtype": "float32"},
    "evaluate": {"max_clips": 2, "num_steps": 2, "grid_clips": 1, "verdict_plans": 4},
}


def load_config(path: str | Path, smoke: bool = False, overrides: list[str] | None = None) -> dict[str, Any]:
    """The sim-twin YAML (config/sim_twin.yaml) with the smoke cut and `a.b.c=value` overrides applied."""
    return load_yaml_config(
        path,
        cut=SMOKE if smoke else None,
        overrides=overrides,
        what="sim-twin config (see config/sim_twin.yaml)",
        example="vae.steps=100",
    )


def _size(cfg: dict[str, Any]) -> tuple[int, int]:
    h, w = (int(v) for v in cfg["size"])
    if h % 16 or w % 16:
        raise ValueError(f"size {h}x{w}: height and width must be multiples of 16 (8x VAE, 2x2 patch)")
    return h, w


# ---------------------------------------------------------------------------------------------- stages
def generate(cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    """Stage 1: train and held-out sim episodes under <out>/data/{train,heldout}."""
    from cosmos_ros.sim.dataset import generate as gen

    d = cfg["data"]
    h, w = _size(cfg)
    report = {}
    for vset, count in (("train", d["train_episodes"]), ("heldout", d["heldout_episodes"])):
        if not count:
            continue
        g = GenerateConfig(
            output=str(out / "data"),
            variant_set=vset,
            num_episodes=int(count),
            episode_seconds=float(d.get("episode_seconds", 30.0)),
            width=w,
            height=h,
            seed=int(d.get("seed", 0)),
            prompt=str(d.get("prompt", DEFAULT_PROMPT)),
            workers=int(d.get("workers", 0)),
            overwrite=True,
        )
        results = gen(g, progress=bool(cfg.get("progress", True)))
        report[vset] = {"episodes": len(results), "frames": sum(r.frames for r in results)}
    return report


def build_clips(cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    """Stage 2: the project's build_clips on the train episodes (+ held-out ones, all in one split)."""
    from cosmos_ros.clips.cli import main as clips_main

    h, w = _size(cfg)
    c = cfg.get("clips", {})
    report = {}
    for vset, dest, val in (
        ("train", out / "clips", c.get("val_fraction", 0.02)),
        ("heldout", out / "clips_heldout", 0.0),
    ):
        src = out / "data" / vset
        if not src.is_dir():
            continue
        args = [str(src), "-o", str(dest), "--width", str(w), "--height", str(h), "--overwrite"]
        for key, value in {**c, "val_fraction": val, "progress": False}.items():
            args += ["--set", f"{key}={json.dumps(value) if isinstance(value, list) else value}"]
        if clips_main(args) != 0:
            raise RuntimeError(f"build_clips failed on {src} (see its message above)")
        report[vset] = json.loads((dest / "clips.json").read_text())["counts"]
    return report


#: The VAE architecture keys a reused VAE must match (config/sim_twin.yaml ``vae:`` = the diffusers config's).
_VAE_ARCH = ("base_dim", "decoder_base_dim", "z_dim", "dim_mult", "num_res_blocks")


def reuse_vae(cfg: dict[str, Any], out: Path, source: str | Path) -> dict[str, Any]:
    """Stage 3 without training: copy the VAE of an earlier twin (``vae.reuse: <twin folder or name>``).

    Why: the VAE and the transformer are trained one after the other, so a recipe run that only changes
    the transformer (its size, its time budget) need not spend the VAE's minutes again; the shipped card
    then says where the VAE came from. The source's architecture must match the ``vae:`` section (else the
    config would describe a VAE that is not the one shipped); its figures and loss curve are carried over.
    """
    from diffusers import AutoencoderKLWan

    from cosmos_ros.model.base_card import BASE_CARD_NAME
    from cosmos_ros.model.registry import resolve_base

    src = Path(resolve_base(str(source)))
    if not (src / "vae" / "config.json").is_file():
        raise FileNotFoundError(
            f"vae.reuse={source}: {src}/vae/config.json not found; give a twin folder made by this pipeline "
            "(<out>/sim_twin, or the shipped short name sim_twin), or drop vae.reuse to train a VAE"
        )
    have = AutoencoderKLWan.load_config(src, subfolder="vae")
    want = cfg.get("vae", {})
    diff = [
        f"{key}: config {want[key]} vs {have.get(key)}"
        for key in _VAE_ARCH
        if key in want
        and have.get(key) is not None
        and list(map(int, _as_list(want[key]))) != list(map(int, _as_list(have.get(key))))
    ]
    if diff:
        raise ValueError(
            f"vae.reuse={source}: its VAE is not the configured one ({'; '.join(diff)}); set the vae: "
            "section to its sizes or drop vae.reuse to train a new VAE"
        )
    dest = out / "vae"
    if (dest / "vae").exists():
        shutil.rmtree(dest / "vae")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src / "vae", dest / "vae")
    card_path = src / BASE_CARD_NAME
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    report = dict(card.get("vae") or {})
    stage_report = src / "vae_report.json"  # a VAE stage's own folder (<out>/vae) rather than a twin's
    if not report and stage_report.is_file():
        report = json.loads(stage_report.read_text())
    losses_path = src / "vae_losses.json"
    if losses_path.is_file():
        report["losses"] = json.loads(losses_path.read_text())
    report.setdefault("losses", {})
    report["reused_from"] = str(source)
    (dest / "vae_report.json").write_text(json.dumps(report, indent=1))
    return {
        "reused_from": str(source),
        "steps": report.get("steps"),
        "params": report.get("params"),
        "psnr_db": report.get("val_psnr_db"),
        "psnr_arm_db": report.get("val_psnr_arm_db"),
    }


def _as_list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, list | tuple) else [v]


def train_vae(cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    """Stage 3: the VAE on the training clips -> <out>/vae/vae (or a copy of an earlier one: `reuse_vae`)."""
    from cosmos_ros.train.vae import VaeTrainer, config_from

    vae_section = dict(cfg.get("vae", {}))
    source = vae_section.pop("reuse", None)
    if source:
        return reuse_vae(cfg, out, source)
    vcfg = config_from(
        {
            **vae_section,
            "clips_dir": str(out / "clips"),
            "output_dir": str(out / "vae"),
            "progress": bool(cfg.get("progress", True)),
        }
    )
    res = VaeTrainer(vcfg).train()
    return {"steps": res.steps, "params": res.params, "psnr_db": res.psnr, "psnr_arm_db": res.psnr_arm}


def transformer_config(cfg: dict[str, Any], text_channels: int) -> dict[str, Any]:
    """`CosmosTransformer3DModel` kwargs of the configured size (16 latent channels + condition mask)."""
    t = cfg.get("transformer", {})
    z = int(cfg.get("vae", {}).get("z_dim", 16))
    text_dim = int(t.get("text_embed_dim", 64))
    from cosmos_ros.model.tiny import small_transformer_config

    return small_transformer_config(
        num_attention_heads=int(t.get("num_attention_heads", 4)),
        attention_head_dim=int(t.get("attention_head_dim", 64)),
        num_layers=int(t.get("num_layers", 6)),
        mlp_ratio=float(t.get("mlp_ratio", 4.0)),
        text_embed_dim=text_dim,
        adaln_lora_dim=int(t.get("adaln_lora_dim", 64)),
        crossattn_proj_in_channels=text_channels,
        latent_channels=z,
        patch_size=_patch_size(t.get("patch_size", (1, 2, 2))),
    )


def _patch_size(value: Any) -> tuple[int, int, int]:
    """``transformer.patch_size``: (1, 2, 2) as Cosmos; (1, 1, 1) gives one token per latent pixel (8x8
    image pixels at the twin's 8x VAE): 4x the tokens, a finer arm (docs/sim_twin.md, architecture probe).
    The time patch stays 1: the action conditioning adds one vector per latent frame."""
    try:
        p = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        p = ()
    if len(p) != 3 or p[0] != 1 or p[1] not in (1, 2) or p[2] not in (1, 2):
        raise ValueError(
            f"transformer.patch_size={value!r}: give [1, 2, 2] (Cosmos) or [1, 1, 1] (one token per latent "
            "pixel), e.g. 'transformer.patch_size=[1,1,1]'"
        )
    return p  # type: ignore[return-value]


def write_base(cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    """Stage 4: the random-init base in the diffusers layout under <out>/base."""
    import torch
    from diffusers import CosmosTransformer3DModel, UniPCMultistepScheduler

    from cosmos_ros.model import text_cache
    from cosmos_ros.model.tiny import make_tiny_text_encoder
    from cosmos_ros.model.world_model import SCHEDULER_CONFIG

    base = out / "base"
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True)
    shutil.copytree(out / "vae" / "vae", base / "vae")
    UniPCMultistepScheduler(**SCHEDULER_CONFIG).save_pretrained(base / "scheduler")
    seed = int(cfg.get("seed", 0))
    make_tiny_text_encoder(base, seed=seed)
    prompt = str(cfg.get("data", {}).get("prompt", DEFAULT_PROMPT))
    text_cache.build_prompt_cache(base, [prompt], base / "prompt_cache.safetensors", device="cpu")
    channels = text_cache.PromptCache.load(base / "prompt_cache.safetensors").embed_dim
    torch.manual_seed(seed)
    net = CosmosTransformer3DModel(**transformer_config(cfg, channels))
    net.save_pretrained(base / "transformer", safe_serialization=True)
    (base / "model_index.json").write_text(json.dumps(_model_index(), indent=1))
    return {"transformer_params": sum(p.numel() for p in net.parameters())}


def _model_index() -> dict[str, Any]:
    return {
        "_class_name": "Cosmos2_5_PredictBasePipeline",
        "transformer": ["diffusers", "CosmosTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"],
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
    }


def train_config(cfg: dict[str, Any], out: Path) -> Any:
    """The project's TrainConfig for full training of the base (config section ``train:``)."""
    from cosmos_ros.train.config import TrainConfig

    fixed = {
        "model": {"base": str(out / "base")},
        "adapter": {"mode": "full"},
        "data": {
            "clips_dir": str(out / "clips"),
            "prompt_cache": str(out / "base" / "prompt_cache.safetensors"),
            "latent_cache_dir": str(out / "train" / "latents"),
        },
        "run": {"output_dir": str(out / "train"), "progress": bool(cfg.get("progress", True))},
    }
    return TrainConfig.from_dict(deep_update(cfg.get("train", {}), fixed))


def encode_latents(cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    """Stage 5: build the trainer's latent caches (train, val) exactly as `Trainer` would, faster."""
    import torch
    from diffusers import AutoencoderKLWan

    from cosmos_ros.clips.dataset import ClipDataset
    from cosmos_ros.model.world_model import WorldModel
    from cosmos_ros.train.latent_cache import (
        build_latents,
        cache_identity,
        clip_ids_of,
        data_identity,
        fingerprint,
        stale_reason,
    )

    tcfg = train_config(cfg, out)
    base = str(tcfg.model.base)
    vae_cfg = {
        k: v for k, v in AutoencoderKLWan.load_config(base, subfolder="vae").items() if not k.startswith("_")
    }
    tok = json.loads((out / "clips" / "tokenizer.json").read_text())
    device = "cuda" if torch.cuda.is_available() and not tcfg.run.cpu else "cpu"
    wm = WorldModel.from_pretrained(base, load_vae=True, device=device)
    counts = {}
    for split in (tcfg.data.train_split, tcfg.data.val_split):
        ds = ClipDataset(out / "clips", split)
        if len(ds) == 0:
            continue
        name = "train" if split == tcfg.data.train_split else "val"
        ids = clip_ids_of(ds)
        data = data_identity(ds, tok)
        fp = fingerprint(base, vae_cfg, ids, data)
        identity = cache_identity(base, vae_cfg, ids, data)
        path = Path(str(tcfg.data.latent_cache_dir)) / f"{name}.safetensors"
        if stale_reason(path, fp, identity) is not None:
            batch = int(cfg.get("latents", {}).get("batch_size", 64))
            build_latents(
                wm,
                ds,
                path,
                fp,
                batch_size=batch,
                progress=bool(cfg.get("progress", True)),
                identity=identity,
            )
        counts[name] = len(ds)
    return counts


def train_transformer(cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    """Stage 5: full training from random init with the project's trainer -> <out>/train/adapter."""
    from cosmos_ros.train.trainer import Trainer

    trainer = Trainer(train_config(cfg, out))
    result = trainer.train()
    curves = _merge_curves(
        out / "train" / "loss_curves.json",
        {
            "train_loss": {str(k): v for k, v in result.losses.items()},
            "val_loss": {str(k): v for k, v in result.val_losses.items()},
        },
    )
    (out / "train" / "loss_curves.json").write_text(json.dumps(curves))
    last = [result.losses[k] for k in sorted(result.losses)[-50:]]
    return {
        "steps": result.step,
        "final_train_loss": sum(last) / max(len(last), 1),
        "val_loss": result.val_losses.get(max(result.val_losses)) if result.val_losses else None,
        "trainable_params": trainer.n_trainable,
        "train_seconds": round(result.seconds, 1),
        # a signal stopped it (a checkpoint was saved): running the stage again continues it
        "interrupted": result.interrupted,
    }


def _merge_curves(path: Path, new: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The loss curves of a run resumed from a checkpoint: the earlier runs' points up to where this one
    started, then this one's. Why: the trainer keeps only its own session's losses, and a stage stopped by
    a signal (or the device's time limit) and run again must still ship the whole curve."""
    if not path.is_file():
        return new
    old = json.loads(path.read_text())
    starts = [int(k) for part in new.values() for k in part]
    first = min(starts) if starts else None
    merged = {}
    for key in ("train_loss", "val_loss"):
        kept = {k: v for k, v in (old.get(key) or {}).items() if first is None or int(k) < first}
        merged[key] = {**kept, **new.get(key, {})}
    return merged


def plot_loss_curves(twin: Path, path: Path) -> Path:
    """loss.png of a twin folder: the transformer's train/val flow-matching loss and the VAE's loss, from the
    folder's own `loss_curves.json` and `vae_losses.json` (so the plot is the shipped curves, not a log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = json.loads((twin / "loss_curves.json").read_text())
    vae = json.loads((twin / "vae_losses.json").read_text()) if (twin / "vae_losses.json").is_file() else {}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    for name, style in (("train_loss", "-"), ("val_loss", "o-")):
        pts = sorted((int(k), v) for k, v in curves.get(name, {}).items())
        if pts:
            axes[0].plot(*zip(*pts, strict=True), style, lw=0.8, ms=3, label=name.replace("_", " "))
    axes[0].set(title="transformer (full training)", xlabel="step", ylabel="flow-matching loss", yscale="log")
    pts = sorted((int(k), v) for k, v in vae.items())
    if pts:
        axes[1].plot(*zip(*pts, strict=True), lw=0.8, label="train loss")
    axes[1].set(title="VAE", xlabel="step", ylabel="reconstruction + KL loss", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def export(cfg: dict[str, Any], out: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Stage 6: the shipped folder <out>/sim_twin (see the module docstring); checks the size limits."""
    import torch
    from diffusers import AutoencoderKLWan, CosmosTransformer3DModel
    from safetensors.torch import load_file

    from cosmos_ros.model.adapters import read_card
    from cosmos_ros.model.base_card import BASE_CARD_NAME, BASE_FORMAT
    from cosmos_ros.model.world_model import ACTION_CONDITIONING_FILE

    e = cfg.get("export", {})
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[
        e.get("dtype", "bfloat16")
    ]
    shard = str(e.get("max_shard_size", "15MB"))
    base, adapter, final = out / "base", out / "train" / "adapter", out / "sim_twin"
    # written beside and renamed into place at the end: a failure halfway never leaves a folder that the
    # registry would take for a model (it looks for transformer/config.json)
    dest = out / ".sim_twin.partial"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    net = CosmosTransformer3DModel.from_pretrained(base, subfolder="transformer", torch_dtype=torch.float32)
    state = load_file(str(adapter / "transformer.safetensors"))
    net.load_state_dict(state, strict=True)
    net.to(dtype).save_pretrained(dest / "transformer", safe_serialization=True, max_shard_size=shard)
    vae = AutoencoderKLWan.from_pretrained(base, subfolder="vae", torch_dtype=torch.float32)
    vae.to(dtype).save_pretrained(dest / "vae", safe_serialization=True, max_shard_size=shard)
    for name in ("scheduler", "text_encoder", "tokenizer"):
        shutil.copytree(base / name, dest / name)
    shutil.copy2(base / "prompt_cache.safetensors", dest / "prompt_cache.safetensors")
    shutil.copy2(adapter / "action_conditioning.safetensors", dest / ACTION_CONDITIONING_FILE)
    (dest / "model_index.json").write_text(
        json.dumps({**_model_index(), "cosmos_ros_sim_twin": True}, indent=1)
    )
    adapter_card = read_card(adapter)  # the trainer's card of the full fine-tune (model card section)
    for name in ("loss_curves.json",):
        shutil.copy2(out / "train" / name, dest / name)
    vae_report = json.loads((out / "vae" / "vae_report.json").read_text())
    (dest / "vae_losses.json").write_text(json.dumps(vae_report.get("losses", {})))
    plot_loss_curves(dest, dest / "loss.png")
    card = {
        "format": BASE_FORMAT,  # read by cosmos_ros.model.base_card (never taken for an adapter card)
        "name": "sim_twin",
        "tokenizer": adapter_card.get("tokenizer"),
        "geometry": adapter_card.get("geometry"),
        "preprocessing": adapter_card.get("preprocessing"),
        "action_conditioning": adapter_card.get("action_conditioning"),
        "transformer_config": adapter_card.get("transformer_config"),
        "dataset": adapter_card.get("dataset"),
        "training": adapter_card.get("training"),
        "vae": {k: v for k, v in vae_report.items() if k != "losses"},
        "pipeline": report,
        "recipe": {k: v for k, v in cfg.items() if k != "progress"},
    }
    (dest / BASE_CARD_NAME).write_text(json.dumps(card, indent=1, default=str))
    sizes = {str(p.relative_to(dest)): p.stat().st_size for p in dest.rglob("*") if p.is_file()}
    total = sum(sizes.values())
    biggest = max(sizes.items(), key=lambda kv: kv[1])
    (dest / "README.md").write_text(_model_card(card, total))
    limits = e.get("limits", {"total_mb": 40, "file_mb": 16})
    over = []
    if total > limits["total_mb"] * 1e6:
        over.append(f"total {total / 1e6:.1f} MB > {limits['total_mb']} MB")
    if biggest[1] > limits["file_mb"] * 1e6:
        over.append(f"{biggest[0]} is {biggest[1] / 1e6:.1f} MB > {limits['file_mb']} MB")
    if final.exists():
        shutil.rmtree(final)
    dest.rename(final)
    return {
        "path": str(final),
        "total_mb": round(total / 1e6, 2),
        "largest_file": biggest[0],
        "over_limits": over,
    }


def evaluate_twin(cfg: dict[str, Any], out: Path, twin: Path | None = None) -> dict[str, Any]:
    """Stage 8: the evaluation command's figures for the shipped folder on the held-out cells' clips
    (`cosmos_ros.evaluate`, against "nothing moves"), written into its card and model card and beside it
    as ``<twin>/eval/`` (report.md, eval.json, curves.png). Runs on the GPU when there is one, else the CPU
    (the twin is sized for it); ``evaluate.max_clips`` bounds the time."""
    from cosmos_ros.evaluate.report import write_outputs
    from cosmos_ros.evaluate.runner import EvalSettings, evaluate
    from cosmos_ros.model.base_card import BASE_CARD_NAME

    twin = twin or out / "sim_twin"
    clips = out / "clips_heldout"
    if not (clips / "clips.json").is_file():
        raise FileNotFoundError(f"{clips}/clips.json not found: run the generate and clips stages first")
    from cosmos_ros.evaluate.cli import checker_settings, parse_args

    e = cfg.get("evaluate", {})
    # the checker and its options exactly as `cosmos-evaluate` without flags takes them (its default region
    # unless evaluate.keepout_regions names others), so the card's figures are the command's
    flags = ["--clips", str(clips), "-o", str(twin / "eval")]
    for region in e.get("keepout_regions") or []:
        flags += ["--keepout-region", str(region)]
    checker, options = checker_settings(parse_args(flags))
    settings = EvalSettings(
        base=str(twin),
        clips=str(clips),
        split="all",
        max_clips=int(e.get("max_clips", 96)),
        num_steps=int(e.get("num_steps", 10)),
        seed=int(e.get("seed", 0)),
        grid_clips=int(e.get("grid_clips", 3)),
        progress=bool(cfg.get("progress", True)),
        checker=checker,
        checker_options=options,
    )
    results = evaluate(settings)
    write_outputs(results, twin / "eval")
    summary = twin_figures(results)
    plans = int(e.get("verdict_plans", 0))
    if plans:  # check_collision on random candidate plans vs the simulator (both outcomes, unlike the clips)
        summary["plan_verdicts"] = plan_verdict_figures(twin, plans, int(e.get("seed", 0)))
    card_path = twin / BASE_CARD_NAME
    card = json.loads(card_path.read_text())
    card["evaluation"] = summary
    card_path.write_text(json.dumps(card, indent=1, default=str))
    total = sum(p.stat().st_size for p in twin.rglob("*.safetensors"))
    (twin / "README.md").write_text(_model_card(card, total))
    return summary


def plan_verdict_figures(twin: Path, plans: int, seed: int = 0) -> dict[str, Any]:
    """`cosmos_ros.evaluate.plan_verdicts` on ``plans`` random plans in held-out cells; its report goes to
    ``<twin>/eval/plan_verdicts.{json,md}``, the card keeps the agreement figures."""
    import torch

    from cosmos_ros.evaluate.plan_verdicts import VerdictStudy, markdown, run_study

    device = "cuda" if torch.cuda.is_available() else "cpu"
    report = run_study(
        VerdictStudy(model=str(twin), plans=plans, seed=seed, device=device), log=lambda _: None
    )
    (twin / "eval" / "plan_verdicts.json").write_text(json.dumps(report, indent=1))
    (twin / "eval" / "plan_verdicts.md").write_text(markdown(report))
    twin_fig, floor = report["twin_vs_simulator"], report["checker_on_rendered_vs_simulator"]
    return {
        "plans": report["plans"],
        "collisions_in_truth": report["collisions_in_truth"],
        "agreement": round(twin_fig["agreement"], 4),
        "agreement_ci": [round(twin_fig["agreement_ci"]["lo"], 4), round(twin_fig["agreement_ci"]["hi"], 4)],
        "precision": round(twin_fig["precision"], 4) if math.isfinite(twin_fig["precision"]) else None,
        "recall": round(twin_fig["recall"], 4) if math.isfinite(twin_fig["recall"]) else None,
        "checker_floor_agreement": round(floor["agreement"], 4),
    }


def twin_figures(results: dict[str, Any], model: str = "base") -> dict[str, Any]:
    """The figures the issue's targets name for one evaluated ``model`` (the base twin, or an adapter by
    its name in the results), from an evaluation's results (eval.json)."""

    def mean(ci: Any) -> float | None:  # None where nothing was measured (no NaN in the card's JSON)
        value = None if not ci or ci.get("mean") is None else float(ci["mean"])
        return round(value, 4) if value is not None and math.isfinite(value) else None

    figs = results["figures"]
    twin, still = figs[model], figs["nothing_moves"]
    out: dict[str, Any] = {
        "clips": results["clips"]["count"],
        "clips_dir": results["settings"]["clips"],
        "num_steps": results["settings"]["num_steps"],
        "psnr_moving_db": mean(twin["fidelity"]["psnr_moving"]["overall"]),
        "psnr_moving_nothing_moves_db": mean(still["fidelity"]["psnr_moving"]["overall"]),
    }
    pose, pose_still = twin.get("pose"), still.get("pose")
    if pose and pose_still:
        out.update(
            pose_joints=pose.get("overall_joints"),
            pose_error=mean(pose["overall"]),
            pose_error_nothing_moves=mean(pose_still["overall"]),
            pose_per_joint={j: mean(v) for j, v in pose["per_joint"].items()},
            pose_per_joint_nothing_moves={j: mean(v) for j, v in pose_still["per_joint"].items()},
            unreadable_frames=pose["unreadable_frames"],
            frames=pose["frames"],
        )
        if out["pose_error"] is not None and out["pose_error_nothing_moves"]:
            out["pose_error_ratio"] = round(out["pose_error"] / out["pose_error_nothing_moves"], 3)
    shuffled = twin.get("shuffled_actions")
    if shuffled:
        out["shuffled_ratio"] = mean(shuffled["ratio"])
        out["shuffled_x_worse"] = mean(shuffled.get("shuffled_x_worse"))
        pose_ratio = mean(shuffled.get("pose_ratio"))  # pose error with own / with another clip's actions
        if pose_ratio:
            out["shuffled_pose_ratio"] = pose_ratio
            out["shuffled_pose_x_worse"] = round(1.0 / pose_ratio, 3)
    verdicts = (twin.get("verdicts") or {}).get("vs_geometry")
    if verdicts:
        out["verdict_agreement_vs_simulator"] = verdicts.get("agreement")
        out["verdict_collisions_in_truth"] = verdicts.get("collisions_reference")
        out["verdict_clips"] = verdicts.get("n")
    return out


def _num(value: Any) -> str:
    return "n/a (unreadable)" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _model_card(card: dict[str, Any], total: int) -> str:
    t = card.get("training") or {}
    v = card.get("vae") or {}
    p = card.get("pipeline") or {}
    geo = card.get("geometry") or {}
    lines = [
        "---",
        "library_name: diffusers",
        "tags: [cosmos, world-model, robotics, simulation]",
        "---",
        "",
        "# cosmos_ros sim twin",
        "",
        "A small Cosmos Predict 2.5 world model (diffusers `CosmosTransformer3DModel` + cosmos_ros action "
        "conditioning, `AutoencoderKLWan`) of the simulated arm cell, trained from random initialisation "
        "with the cosmos_ros trainer (full training) on ROS-free sim episodes with random scenes, lighting "
        "and camera poses. Load with `WorldModel.from_pretrained(path)` / `Predictor.load(path)`, or "
        "`base_model:=sim_twin` once installed.",
        "",
        f"- Frames: {geo.get('num_frames')} x {geo.get('height')}x{geo.get('width')} "
        f"({geo.get('num_cond_latent_frames')} conditioning latent frame)",
        f"- Transformer: {t.get('total_params')} parameters, {t.get('steps')} steps; "
        f"VAE: {v.get('params')} parameters, held-out PSNR {v.get('val_psnr_db')} dB "
        f"(arm pixels {v.get('val_psnr_arm_db')} dB)",
        f"- Data: {json.dumps(p.get('generate'))}; clips {json.dumps(p.get('clips'))}",
        *(
            [
                f"- VAE reused from `{v['reused_from']}` (`vae.reuse`: not retrained in this run; its "
                "figures are that run's)"
            ]
            if v.get("reused_from")
            else []
        ),
        f"- Stage times [s]: {json.dumps(p.get('seconds'))}",
        f"- Shipped size: {total / 1e6:.1f} MB (safetensors, diffusers layout)",
        "- Loss curves: `loss.png`; `loss_curves.json` (transformer), `vae_losses.json`; recipe and figures: "
        "`cosmos_ros_card.json`.",
        "",
        "Reproduce: `tools/train_sim_twin.sh <out>` (config/sim_twin.yaml) on one GPU.",
        "",
    ]
    if card.get("status"):
        lines += [f"**Status:** {card['status']}", ""]
    ev = {k: round(v, 3) if isinstance(v, float) else v for k, v in (card.get("evaluation") or {}).items()}
    if ev:
        lines += [
            "## Evaluation (cosmos-evaluate, held-out cells)",
            "",
            f"{ev.get('clips')} clips of held-out cells (scenes, lighting and camera poses not trained on), "
            f"12 predicted frames, {ev.get('num_steps')} sampling steps; full report in `eval/report.md`.",
            "",
            "| figure | twin | nothing moves |",
            "|---|---|---|",
            f"| PSNR on moving pixels [dB] | {ev.get('psnr_moving_db')} | "
            f"{ev.get('psnr_moving_nothing_moves_db')} |",
            f"| pose error [rad], {', '.join(ev.get('pose_joints') or [])} | {ev.get('pose_error')} | "
            f"{ev.get('pose_error_nothing_moves')} |",
        ]
        for j, value in (ev.get("pose_per_joint") or {}).items():
            still = (ev.get("pose_per_joint_nothing_moves") or {}).get(j)
            lines.append(f"| pose error {j} | {_num(value)} | {_num(still)} |")
        lines += [
            f"| frames whose pose cannot be read | {ev.get('unreadable_frames')}/{ev.get('frames')} | |",
            f"| shuffled-action ratio, pixels (error with own / another clip's actions) | "
            f"{ev.get('shuffled_ratio')} ({ev.get('shuffled_x_worse')}x worse shuffled) | |",
            f"| shuffled-action ratio, pose (error with own / another clip's actions) | "
            f"{ev.get('shuffled_pose_ratio')} ({ev.get('shuffled_pose_x_worse')}x worse shuffled) | |",
            f"| verdict agreement with the simulator | {ev.get('verdict_agreement_vs_simulator')} "
            f"({ev.get('verdict_collisions_in_truth')} collisions in {ev.get('verdict_clips')} clips) | |",
        ]
        pv = ev.get("plan_verdicts")
        if pv:
            lo, hi = pv["agreement_ci"]
            lines.append(
                f"| check_collision on {pv['plans']} random plans vs the simulator "
                f"({pv['collisions_in_truth']} enter their box) | {pv['agreement']:.3f} [{lo:.3f}, {hi:.3f}] "
                f"(checker on rendered frames: {pv['checker_floor_agreement']:.3f}) | |"
            )
        lines.append("")
    return "\n".join(lines)


def run(
    cfg: dict[str, Any],
    out: str | Path,
    stages: tuple[str, ...] = STAGES,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the stages in order; returns (and writes to <out>/pipeline_report.json) what each did."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"seconds": {}}
    earlier = out / "pipeline_report.json"
    if earlier.is_file():
        # a run in parts (`--stages`, or a stopped run continued): keep what the earlier parts did, so the
        # shipped card has every stage; each stage run again replaces its entry, except that a resumed
        # transformer adds the seconds of the part that was stopped
        report = json.loads(earlier.read_text())
        report.setdefault("seconds", {}).pop("total", None)
        report.pop("stopped", None)
    fns: dict[str, Callable[[], dict[str, Any]]] = {
        "generate": lambda: generate(cfg, out),
        "clips": lambda: build_clips(cfg, out),
        "vae": lambda: train_vae(cfg, out),
        "base": lambda: write_base(cfg, out),
        "latents": lambda: encode_latents(cfg, out),
        "transformer": lambda: train_transformer(cfg, out),
        "export": lambda: export(cfg, out, report),
        "evaluate": lambda: evaluate_twin(cfg, out),
    }
    unknown = [s for s in stages if s not in fns]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; use some of {', '.join(STAGES)}")
    _patch_size(cfg.get("transformer", {}).get("patch_size", (1, 2, 2)))  # before any stage spends time
    for name in STAGES:
        if name not in stages:
            continue
        t0 = time.time()
        log(f"sim_twin: stage {name} ...")
        resumed = (report.get(name) or {}).get("interrupted") and report["seconds"].get(name, 0.0)
        report[name] = fns[name]()
        report["seconds"][name] = round(time.time() - t0 + (resumed or 0.0), 1)  # a resumed stage: both parts
        summary = json.dumps(report[name], default=str)
        log(f"sim_twin: stage {name} done in {report['seconds'][name]} s: {summary}")
        (out / "pipeline_report.json").write_text(json.dumps(report, indent=1, default=str))
        if report[name].get("interrupted"):
            # the later stages need the finished adapter; the checkpoint lets the same command continue
            rest = ",".join(s for s in STAGES[STAGES.index(name) :] if s in stages)
            report["stopped"] = (
                f"stage {name} stopped by {report[name]['interrupted']} (checkpoint saved); continue with "
                f"--stages {rest} and the same --out and overrides"
            )
            log(f"sim_twin: {report['stopped']}")
            break
    report["seconds"]["total"] = round(sum(v for k, v in report["seconds"].items() if k != "total"), 1)
    (out / "pipeline_report.json").write_text(json.dumps(report, indent=1, default=str))
    return report


def main(argv: list[str] | None = None) -> int:
    """CLI; exit 0 on success, 1 on a clear error, 2 when the shipped folder is over the size limits, 3 when
    a signal stopped the transformer (checkpoint saved: the same command continues)."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(
        prog="python -m cosmos_ros.train.sim_twin", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--config", default="config/sim_twin.yaml")
    ap.add_argument("--out", required=True, help="output folder (data, clips, runs and <out>/sim_twin)")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run of every stage (plumbing check)")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma list, in pipeline order")
    ap.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. vae.steps=100")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.smoke, args.overrides)
        if args.smoke:
            import torch

            torch.set_num_threads(1)
        report = run(cfg, args.out, tuple(s for s in args.stages.split(",") if s))
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        print(f"sim_twin: error: {e}", file=sys.stderr)
        return 1
    if report.get("stopped"):
        print(f"sim_twin: {report['stopped']}", file=sys.stderr)
        return 3
    over = (report.get("export") or {}).get("over_limits")
    if over:
        print(f"sim_twin: the shipped folder is over the limits: {'; '.join(over)}", file=sys.stderr)
        return 2
    print(
        f"sim_twin: done in {report['seconds'].get('total')} s -> {Path(args.out) / 'sim_twin'}", flush=True
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
