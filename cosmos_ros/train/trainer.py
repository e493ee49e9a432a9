"""Accelerate trainer for the action-conditioned Cosmos Predict 2.5 world model (LoRA / DoRA / full).

Flow: clips -> latents encoded once (VAE then freed) -> prompt embeddings from the cache -> flow-matching
training of the transformer on accelerate (one GPU, many via `accelerate launch` with DDP or FSDP, or CPU).

Loss (as NVIDIA's recipe and the 2.5 pipeline's conventions): sigma ~ logit-normal per sample,
`x_sigma = (1 - sigma) x0 + sigma eps`, conditioning latent frames kept clean (condition mask 1, timestep
1e-4), target velocity `eps - x0`, mean squared error over non-conditioning frames only; the prompt
embedding is zeroed with probability `cfg_dropout` (what guidance's unconditional branch uses).

Determinism (exact resume, and N processes == 1 process with N x batch): every random draw of a sample is a
function of (seed, its global sample position), where position = ((step*accum + micro)*world + rank)*batch
+ i; the data order is a seeded permutation per epoch. A checkpoint therefore only needs the trainable
weights, optimizer, lr-scheduler and step: resuming gives the same next loss as the uninterrupted run.

Several processes: data and model preparation runs in phases whose failure on any rank is made known to
every rank (`Trainer._on_all_ranks`), so all of them raise the same `DataPreparationError` instead of the
healthy ranks waiting in the next collective for a rank that already gave up.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import torch

from cosmos_ros.model.adapters import (
    AdapterConfig,
    apply_adapters,
    count_parameters,
    save_adapter,
    skip_adapter_input_casts,
)
from cosmos_ros.model.dora import StepNormDoRA, enable_step_norm_dora
from cosmos_ros.model.perf import optimize_for_training
from cosmos_ros.model.registry import hub_revision
from cosmos_ros.model.text_cache import PromptCache
from cosmos_ros.model.world_model import ACTION_CONDITIONING_FILE, WorldModel
from cosmos_ros.train.config import TrainConfig
from cosmos_ros.train.latent_cache import (
    LatentSet,
    build_latents,
    cache_identity,
    clip_ids_of,
    data_identity,
    fingerprint,
    load_latents,
    stale_reason,
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_MIX = 0x9E3779B1  # odd constant to spread seeds
_T = TypeVar("_T")
_CKPT_NAME = re.compile(r"step-(\d+)")  # a finished checkpoint folder; `step-N.partial` is a save in progress


def _ckpt_name(step: int) -> str:
    return f"step-{step:07d}"


def _short(exc: BaseException) -> str:
    """The first line of an exception's message, without torch's advice to load with weights_only=False."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "weights_only" in str(exc) or "Unpickl" in type(exc).__name__:
        text = f"{type(exc).__name__}: not plain tensors and numbers (refused: nothing is unpickled)"
    return text[:300]


class TrainingDiverged(RuntimeError):
    """Raised when the loss becomes NaN or inf; names the step; the last good checkpoint is kept."""


class CheckpointError(ValueError):
    """A checkpoint cannot be resumed from: names the damaged file and what to do (a ValueError, so that the
    CLI reports it as a clear error, exit 1)."""


class DataPreparationError(ValueError):
    """Raised on every process of a multi-process run when preparing data or model failed on any of them.

    Names the failing rank(s), the phase and their errors; on the failing rank the original exception is
    its `__cause__`. A ValueError so that the CLI reports it (message, exit 1) on every rank like any other
    data error. One process never raises it: there the original exception propagates unchanged.
    """


def _failure_message(what: str, statuses: list[tuple[int, str | None]], world: int) -> str | None:
    """The shared error text for the gathered `(rank, error or None)` statuses; None when all succeeded.

    Ranks that failed the same way are listed together, so N ranks failing on one bad file give one line.
    """
    by_error: dict[str, list[int]] = {}
    for rank, err in sorted(statuses, key=lambda s: s[0]):
        if err is not None:
            by_error.setdefault(err, []).append(rank)
    if not by_error:
        return None
    n_failed = sum(len(r) for r in by_error.values())
    parts = [
        f"{'rank' if len(r) == 1 else 'ranks'} {', '.join(map(str, r))}: {err}" for err, r in by_error.items()
    ]
    return f"{what} failed on {n_failed} of {world} processes; " + "; ".join(parts)


@dataclass
class TrainResult:
    """What a finished run reports."""

    step: int
    losses: dict[int, float]  # step -> training loss (mean over processes)
    val_losses: dict[int, float]
    adapter_dir: Path | None
    checkpoints: list[Path]
    seconds: float
    interrupted: str = ""  # "SIGINT" / "SIGTERM" when a signal stopped the run (a checkpoint was saved)


class StopSignals:
    """SIGINT and SIGTERM ask the training loop to stop after the current step (and save a checkpoint).

    A context manager around the loop: the first signal is only recorded (the loop checks `requested`
    between steps, where the state is consistent); a second SIGINT stops at once with KeyboardInterrupt, for
    a user who does not want to wait for the step. Signal handlers belong to the main thread: elsewhere (a
    trainer run from a worker thread) nothing is installed and signals keep their default behaviour.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def __enter__(self) -> StopSignals:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now, without a checkpoint
        if self.signum is None:
            self.signum = signum
            print(
                f"train: {signal.Signals(signum).name} received: stopping after this step and saving a "
                "checkpoint (Ctrl-C again stops at once, without one)",
                file=sys.stderr,
                flush=True,
            )


def _fmt(values: torch.Tensor) -> str:
    return "[" + ", ".join(f"{float(v):.4g}" for v in values) + "]"


def _gen(seed: int, *parts: int) -> torch.Generator:
    s = seed
    for p in parts:
        s = (s * _MIX + p + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(s)


# optim.lr_schedule -> diffusers scheduler name: every schedule warms up linearly over optim.warmup_steps
# (from lr 0 at the first step to the full lr at step `warmup_steps`), then stays, decays linearly or follows
# a half cosine to 0 at optim.max_steps.
LR_SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}


def make_lr_scheduler(optimizer: torch.optim.Optimizer, kind: str, warmup: int, total: int) -> Any:
    """The learning-rate schedule of a run, from diffusers (`diffusers.optimization.get_scheduler`).

    A `LambdaLR`, stepped once per optimizer step; its state (the step count) is saved in checkpoints.
    """
    from diffusers.optimization import get_scheduler

    if kind not in LR_SCHEDULES:
        raise ValueError(f"optim.lr_schedule {kind!r} is not known; use one of {', '.join(LR_SCHEDULES)}")
    return get_scheduler(LR_SCHEDULES[kind], optimizer, num_warmup_steps=warmup, num_training_steps=total)


class Trainer:
    """Fine-tunes a WorldModel on clips; see the module docstring. `train()` runs to `optim.max_steps`."""

    def __init__(
        self,
        cfg: TrainConfig,
        train_dataset: Any = None,
        val_dataset: Any = None,
        tokenizer_dict: dict[str, Any] | None = None,
        dataset_stats: dict[str, Any] | None = None,
    ) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.cfg = cfg
        self.out = Path(cfg.run.output_dir)
        alloc_msg = ""
        if not cfg.run.cpu and torch.cuda.is_available():  # before CUDA starts (Accelerator starts it)
            from cosmos_ros.train.memory_plan import allocator_setting

            started = torch.cuda.is_initialized()
            value, alloc_msg = allocator_setting(cfg.model.max_memory, os.environ, started)
            if value is not None:
                os.environ["PYTORCH_CUDA_ALLOC_CONF"] = value
        self.accel = Accelerator(
            mixed_precision=cfg.run.mixed_precision, cpu=cfg.run.cpu, gradient_accumulation_steps=1
        )
        set_seed(cfg.run.seed)
        self.is_main = self.accel.is_main_process
        if alloc_msg and self.is_main:
            print(alloc_msg, flush=True)
        self._emb_cache: dict[str, torch.Tensor] = {}
        self.world = self.accel.num_processes
        self.rank = self.accel.process_index
        self.tokenizer_dict = tokenizer_dict
        self.dataset_stats = dataset_stats or {}
        self._train_ds, self._val_ds = train_dataset, val_dataset
        from cosmos_ros.model.registry import resolve_base

        self.base = resolve_base(cfg.model.base)  # a short name (sim_twin) -> its installed folder
        self.revision = hub_revision(self.base, cfg.model.revision)
        from cosmos_ros.model.base_card import read_base_card

        # a base trained by cosmos_ros (the sim twin) has an action tokenizer its action MLPs were trained
        # with: the clips must match it (checked before any encoding), and its statistics normalise them
        self.base_card = read_base_card(self.base)
        self._check_clips_against_base()
        self.train_set, self.val_set = self._prepare_latents()
        self._use_base_action_stats()
        self.prompts = self._on_all_ranks("loading the prompt embeddings", self._load_prompts)
        self._on_all_ranks("building the model", self._build_model)
        self._prepare_for_training()

    def _on_all_ranks(self, what: str, fn: Callable[[], _T]) -> _T:
        """Run `fn` here and raise `DataPreparationError` on every process if it failed on any of them.

        A failure on one rank only (rank 0 alone builds the latent cache; any rank may fail to read a file)
        would otherwise leave the other ranks waiting in the next collective (a barrier, DDP's parameter
        broadcast) until the process group times out, with the error visible in one rank's log only. The
        status exchange (`gather_object`, one small object per rank) is itself the barrier between phases.
        With one process `fn`'s own exception propagates unchanged and nothing is exchanged.
        """
        if self.world == 1:
            return fn()
        from accelerate.utils import gather_object

        result: Any = None
        error: Exception | None = None
        try:
            result = fn()
        except Exception as e:  # reported to every rank below, re-raised as the cause on this one
            error = e
        status = None if error is None else f"{type(error).__name__}: {error}"
        message = _failure_message(what, gather_object([(self.rank, status)]), self.world)
        if message is not None:
            raise DataPreparationError(message) from error
        return result

    # ------------------------------------------------------------------ data
    def _clips_tokenizer(self) -> dict[str, Any] | None:
        """The clips' action tokenizer dict: given, else the clips folder's tokenizer.json (None: unknown)."""
        if self.tokenizer_dict is not None:
            return self.tokenizer_dict
        tok = getattr(self._train_ds, "tokenizer", None)
        if tok is not None and callable(getattr(tok, "to_dict", None)):
            return tok.to_dict()
        if self.cfg.data.clips_dir and (Path(self.cfg.data.clips_dir) / "tokenizer.json").is_file():
            return json.loads((Path(self.cfg.data.clips_dir) / "tokenizer.json").read_text())
        return None

    def _check_clips_against_base(self) -> None:
        """ValueError naming each difference and the fix when the clips' action tokenizer (mode, joint
        names and order, gripper joints, fps) is not the one the base's action MLPs were trained with."""
        from cosmos_ros.model.base_card import base_tokenizer_differences

        clips_tok = self._clips_tokenizer()
        if self.base_card is None or clips_tok is None or not self.cfg.model.action_conditioning:
            return
        base_tok = self.base_card["tokenizer"]
        diffs = base_tokenizer_differences(base_tok, clips_tok)
        if diffs:
            raise ValueError(
                f"the clips' action tokenizer does not match the one in base model {self.cfg.model.base!r}'s "
                "card, whose trained action MLPs would read these actions as other joints or units:\n  "
                + "\n  ".join(diffs)
                + f"\nRebuild the clips as the base was trained: build_clips ... --joint-names "
                f"{','.join(base_tok.get('joint_names') or [])} --action-mode {base_tok.get('mode')} "
                f"--fps {base_tok.get('fps')}"
                + (
                    f" --gripper-joints {','.join(base_tok['gripper_joints'])}"
                    if base_tok.get("gripper_joints")
                    else ""
                )
                + ", or fine-tune a base trained on this robot's action layout"
            )

    def _use_base_action_stats(self) -> None:
        """Normalise the actions with the base card's statistics when the base has a card.

        The clips' labels are normalised with statistics fitted on the new clips (build_clips); the base's
        trained action MLPs expect the base's normalisation. ``(a_clips * std_c + mean_c - mean_b) / std_b``
        turns one into the other exactly (the latent cache keeps the clips' labels, so it stays valid), and
        the adapter card then carries the base's tokenizer, so serving and evaluation normalise raw actions
        the same way. One log line says which statistics are used."""
        clips_tok = self._clips_tokenizer()
        has_actions = self.train_set.actions is not None and self.cfg.model.action_conditioning
        if self.base_card is None or not has_actions:
            if has_actions and self.is_main:
                print("train: action statistics: the clips' own (fitted on their train split)", flush=True)
            return
        base_tok = self.base_card["tokenizer"]
        base_stats = base_tok.get("stats") or {}
        clips_stats = (clips_tok or {}).get("stats") or {}
        if not base_stats.get("std") or not clips_stats.get("std"):
            if self.is_main:
                print(
                    f"train: action statistics: the clips' as given (base {self.cfg.model.base!r} or the "
                    "clips carry no statistics to convert between)",
                    flush=True,
                )
            return
        mean_c, std_c = (torch.tensor(clips_stats[k], dtype=torch.float32) for k in ("mean", "std"))
        mean_b, std_b = (torch.tensor(base_stats[k], dtype=torch.float32) for k in ("mean", "std"))
        for lset in (self.train_set, self.val_set):
            if lset is not None and lset.actions is not None:
                lset.actions = (lset.actions.float() * std_c + mean_c - mean_b) / std_b
        self.tokenizer_dict = dict(base_tok)
        if self.is_main:
            print(
                f"train: action statistics: from the card of base model {self.cfg.model.base!r} (fitted on "
                f"{base_stats.get('count')} actions; mean {_fmt(mean_b)}, std {_fmt(std_b)}), not the clips' "
                f"own (mean {_fmt(mean_c)}, std {_fmt(std_c)}): its trained action MLPs see the inputs they "
                "were trained on; the adapter card carries the base's tokenizer",
                flush=True,
            )

    def _latent_dir(self) -> Path:
        return (
            Path(self.cfg.data.latent_cache_dir) if self.cfg.data.latent_cache_dir else self.out / "latents"
        )

    def _datasets(self) -> tuple[Any, Any]:
        if self._train_ds is not None or self.cfg.data.clips_dir is None:
            return self._train_ds, self._val_ds
        from cosmos_ros.clips import ClipDataset  # type: ignore[attr-defined]

        root = Path(self.cfg.data.clips_dir)
        if not (root / "clips.json").is_file():
            raise FileNotFoundError(
                f"{root}/clips.json not found: run build_clips first or fix data.clips_dir"
            )
        train = ClipDataset(root, split=self.cfg.data.train_split)
        try:
            val = ClipDataset(root, split=self.cfg.data.val_split)
        except (FileNotFoundError, ValueError, KeyError):
            val = None
        if val is not None and len(val) == 0:
            val = None  # no val episodes (one episode, val_fraction 0): train without validation
        tok = root / "tokenizer.json"
        if self.tokenizer_dict is None and tok.is_file():
            self.tokenizer_dict = json.loads(tok.read_text())
        return train, val

    def _prepare_latents(self) -> tuple[LatentSet, LatentSet | None]:
        """Encode clips once (main process; others wait) and load the cached latents everywhere.

        Two phases, each ending in a status exchange between the ranks (`_on_all_ranks`): a data error while
        rank 0 builds the cache, or while any rank reads it, stops every rank with the same message.
        """
        ldir = self._latent_dir()
        train_ds, val_ds = self._on_all_ranks(
            "building the latent cache", lambda: self._build_latent_cache(ldir)
        )
        return self._on_all_ranks(
            "loading the latent cache", lambda: self._load_latent_cache(ldir, train_ds, val_ds)
        )

    def _plan_memory(self, compile_blocks: bool) -> str:
        """The fastest memory policy whose estimated peak fits model.max_memory (memory_plan); logged.

        Tokens per sample come from the latent cache's clip shape and the transformer's patch size.
        """
        import os

        from cosmos_ros.model.perf import find_cosmos_transformer
        from cosmos_ros.train.memory_plan import REF_LAYERS, REF_WIDTH, choose_policy

        cfg = self.cfg
        tr = find_cosmos_transformer(self.wm.transformer)
        c = tr.config
        p_t, p_h, p_w = c.patch_size
        _, _, t, h, w = self.train_set.latents.shape
        tokens = (int(t) // p_t) * (int(h) // p_h) * (int(w) // p_w)
        width, layers = int(c.num_attention_heads * c.attention_head_dim), int(c.num_layers)
        dev = self.accel.device
        budget = cfg.model.max_memory
        if budget == "auto":
            if dev.type != "cuda":
                raise ValueError(
                    f"model.max_memory=auto reads the GPU's memory, but this run is on {dev}: give GiB "
                    "(e.g. model.max_memory=24) or leave it unset"
                )
            total = torch.cuda.get_device_properties(dev).total_memory / 2**30
            budget = round(0.92 * total, 1)  # CUDA context, cuBLAS/cuDNN workspaces, fragmentation
        static = None
        if (width, layers) != (REF_WIDTH, REF_LAYERS):  # not the calibrated 2B: this model's own state
            static = sum(p.numel() * p.element_size() for p in self.wm.transformer.parameters()) / 2**30
            static += 12 * self._trainable_numel() / 2**30
        try:
            host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        except (ValueError, OSError, AttributeError):
            host = None
        choice, table = choose_policy(
            float(budget),
            tokens,
            batch=cfg.optim.batch_size,
            width=width,
            layers=layers,
            static_gib=static,
            fp8=cfg.model.fp8,
            compile_=compile_blocks,
            host_gib=host,
            # full fine-tuning has no adapters: the default calibration (its static state is counted above)
            mlp_adapters=cfg.adapter.mode == "full"
            or any(t.startswith("ff.") for t in cfg.adapter.target_modules),
        )
        self.memory_plan = (choice, table)
        if self.is_main:
            faster = [r.line() for r in table if r.step_s < choice.step_s]
            print(
                f"train: max_memory {float(budget):g} GiB, {cfg.optim.batch_size} x {tokens} tokens per "
                f"step: memory policy {choice.policy} ({choice.line()})"
                + (f"; faster but over budget: {'; '.join(faster)}" if faster else "; the fastest of all"),
                flush=True,
            )
        return choice.policy

    def _trainable_numel(self) -> int:
        """Trainable parameters now (adapters injected): their grads and AdamW states cost 12 B each."""
        return sum(p.numel() for p in self.wm.transformer.parameters() if p.requires_grad)

    def _build_latent_cache(self, ldir: Path) -> tuple[Any, Any]:
        """Rank 0: (re)build each split's cache that is missing or stale; returns the datasets (every rank).

        A cache is stale when its fingerprint differs: base model, VAE config, clip ids, or (clips rebuilt
        under the same ids) the clip build config, the content of the source bags, action tokenizer or
        prompts; the log line names which. Where the bags lie is not part of it (`data_identity`).
        """
        from diffusers import AutoencoderKLWan

        vae_cfg = {
            k: v
            for k, v in AutoencoderKLWan.load_config(
                self.base, subfolder="vae", revision=self.revision
            ).items()
            if not k.startswith("_")
        }
        train_ds, val_ds = self._datasets()
        if not self.is_main:
            return train_ds, val_ds
        wm = None
        for name, ds in (("train", train_ds), ("val", val_ds)):
            path = ldir / f"{name}.safetensors"
            if ds is None:
                if name == "train" and load_latents(path) is None:
                    raise ValueError(
                        "no training data: set data.clips_dir (or pass a dataset) or point "
                        "data.latent_cache_dir at an existing latent cache"
                    )
                continue
            ids = clip_ids_of(ds)
            data = data_identity(ds, self.tokenizer_dict)
            fp = fingerprint(self.base, vae_cfg, ids, data)
            identity = cache_identity(self.base, vae_cfg, ids, data)
            why = stale_reason(path, fp, identity)
            if why is None:
                continue
            print(f"train: building latent cache {path}: {why}", flush=True)
            if wm is None:  # VAE only for encoding; freed before training
                wm = WorldModel.from_pretrained(
                    self.base, self.revision, load_vae=True, device=self.accel.device
                )
            build_latents(wm, ds, path, fp, progress=self.cfg.run.progress, identity=identity)
        del wm
        return train_ds, val_ds

    def _load_latent_cache(
        self, ldir: Path, train_ds: Any, val_ds: Any
    ) -> tuple[LatentSet, LatentSet | None]:
        """Every rank: read the caches rank 0 left (after the exchange that ends its build phase)."""
        sets: dict[str, LatentSet | None] = {}
        for name, ds in (("train", train_ds), ("val", val_ds)):
            if name == "val" and ds is None and train_ds is not None:
                sets[name] = None  # the data has no val split: a val cache left by another run is stale
                continue
            sets[name] = load_latents(ldir / f"{name}.safetensors")
        if sets["train"] is None:
            raise RuntimeError(f"latent cache {ldir / 'train.safetensors'} could not be read")
        return sets["train"], sets["val"]  # type: ignore[return-value]

    def _load_prompts(self) -> PromptCache:
        # explicit file, else the clips' own cache (their prompts), else the one shipped with the base model
        cand = [self.cfg.data.prompt_cache] if self.cfg.data.prompt_cache else []
        if not cand and self.cfg.data.clips_dir:
            cand.append(str(Path(self.cfg.data.clips_dir) / "prompt_cache.safetensors"))
        if not self.cfg.data.prompt_cache:
            cand.append(str(Path(self.base) / "prompt_cache.safetensors"))
        for c in cand:
            if c and Path(c).is_file():
                cache = PromptCache.load(c)
                break
        else:
            raise FileNotFoundError(
                f"no prompt-embedding cache (tried {cand}); run `embed_prompts --base "
                f"{self.base} --clips <clips_dir> --out <file>` and set data.prompt_cache"
            )
        for p in set(self.train_set.prompts) | set(self.val_set.prompts if self.val_set else []):
            cache.get(p)  # KeyError naming the fix
        return cache

    # ------------------------------------------------------------------ model
    def _build_model(self) -> None:
        cfg = self.cfg
        acts = self.train_set.actions
        action_dim = int(acts.shape[-1]) if (acts is not None and cfg.model.action_conditioning) else None
        if cfg.model.action_conditioning and acts is None:
            raise ValueError(
                "model.action_conditioning is on but the clips carry no actions; "
                "set model.action_conditioning=false for action-free training"
            )
        dtype = _DTYPES[cfg.model.dtype]
        if self.accel.device.type == "cpu" and dtype != torch.float32:
            dtype = torch.float32  # bf16 storage is a GPU memory saver; CPU matmuls want float32
        self.wm = WorldModel.from_pretrained(
            self.base,
            self.revision,
            action_dim=action_dim,
            load_vae=False,
            device=self.accel.device,
            dtype=dtype,
            action_hidden_dim=cfg.model.action_hidden_dim,
        )
        if self.prompts.embed_dim != self.wm.text_embed_channels:
            raise ValueError(
                f"prompt cache embeddings have {self.prompts.embed_dim} channels but the model "
                f"takes {self.wm.text_embed_channels}: the cache was built with another text "
                f"encoder; rebuild it with embed_prompts --base {self.base}"
            )
        self.adapter_cfg = AdapterConfig(**vars(cfg.adapter))
        has_mlps = self.wm.transformer.action_embedder is not None
        frozen_mlps = has_mlps and not self.adapter_cfg.train_action_mlps
        if frozen_mlps and not Path(self.base, ACTION_CONDITIONING_FILE).is_file():
            raise ValueError(
                f"adapter.train_action_mlps=false keeps the base's trained action MLPs, but {self.base} has "
                f"none ({ACTION_CONDITIONING_FILE}): its MLPs start at zero and would stay there; train "
                "them (adapter.train_action_mlps=true) or use a base trained with actions (sim_twin)"
            )
        params = apply_adapters(self.wm, self.adapter_cfg)
        if self._fsdp():
            # FSDP flattens each wrapped block into one tensor: one dtype per block (adapters in the base
            # dtype; accelerate's mixed precision still computes in bf16 and reduces in float32).
            self.wm.transformer.to(dtype)
        elif self.adapter_cfg.mode != "full" and cfg.run.mixed_precision in ("bf16", "fp16"):
            # every forward of the trainer runs under autocast: peft's float32 copies of the adapters'
            # inputs only cost memory (skip_adapter_input_casts says how much)
            n_uncast = skip_adapter_input_casts(self.wm.transformer)
            if self.is_main and n_uncast:
                mp = cfg.run.mixed_precision
                print(f"train: {n_uncast} adapted layers take their {mp} input uncast", flush=True)
        # Speed and memory (benchmarks/NOTES_gpu.md): per-frame AdaLN, per-block compile and an activation
        # memory policy instead of all-or-nothing checkpointing. Adapters must already be injected.
        cuda = self.accel.device.type == "cuda"
        compile_blocks = cfg.model.compile if cfg.model.compile is not None else (cuda and not self._fsdp())
        if cfg.model.fp8:
            if self._fsdp():
                raise ValueError(
                    "model.fp8 with FSDP is not supported (FSDP flattens the blocks' weights, the FP8 "
                    "layers hold theirs as buffers): train on one GPU or with DDP, or set model.fp8=false"
                )
            from cosmos_ros.model.fp8_train import convert_frozen_linears_to_fp8

            n_fp8 = convert_frozen_linears_to_fp8(self.wm.transformer)
            if self.is_main:
                print(f"train: fp8: {n_fp8} frozen block linears compute in float8_e4m3fn", flush=True)
        policy = cfg.model.memory_policy if cfg.model.gradient_checkpointing else "none"
        if cfg.model.max_memory is not None and cfg.model.gradient_checkpointing:
            policy = self._plan_memory(compile_blocks)
        elif policy == "auto" and cuda and not compile_blocks:
            policy = "selective"
        attention = cfg.model.attention
        if attention == "auto":  # cuDNN's fused attention takes bf16/fp16 only: float32 keeps SDPA's choice
            half = cfg.run.mixed_precision in ("bf16", "fp16") or cfg.model.dtype != "float32"
            attention = "cudnn" if cuda and half else "default"
        self.perf_report = optimize_for_training(
            self.wm.transformer, policy=policy, compile=compile_blocks, attention=attention
        )
        if self.is_main:
            print(f"train: {self.perf_report.summary()}", flush=True)
        self.n_trainable, self.n_total = count_parameters(self.wm.transformer)
        self.optimizer = torch.optim.AdamW(
            params,
            lr=cfg.optim.lr,
            betas=tuple(cfg.optim.betas),
            weight_decay=cfg.optim.weight_decay,
            fused=cuda,
        )
        self.lr_scheduler = make_lr_scheduler(
            self.optimizer, cfg.optim.lr_schedule, cfg.optim.warmup_steps, cfg.optim.max_steps
        )
        self._budget_start: float | None = None  # set when training starts (run.max_minutes)
        self._budget_prior = 0.0  # training seconds of the run before this process (from its checkpoint)
        self._budget_synced = 0.0  # the budget share used, the same on every rank (set once per step)
        if cfg.run.max_minutes > 0:
            by_steps, warm = self.lr_scheduler.lr_lambdas[0], cfg.optim.warmup_steps

            def by_steps_or_time(s: int) -> float:
                # warm-up by real steps (compiling can take a budget's first seconds: the warm-up must not be
                # skipped); after it, the schedule's decay at whichever of steps or time is further along
                if s < warm:
                    return by_steps(s)
                span = cfg.optim.max_steps - warm
                return by_steps(max(s, warm + int(min(1.0, self._budget_synced) * span)))

            self.lr_scheduler.lr_lambdas = [by_steps_or_time]

    def _budget_used(self) -> float:
        """Training seconds of the run so far, earlier processes included: a resumed run (a preempted job,
        a limited session) continues its time budget and its schedule instead of starting them again."""
        now = 0.0 if self._budget_start is None else time.time() - self._budget_start
        return self._budget_prior + now

    def _sync_budget(self) -> None:
        """The share of run.max_minutes used, taken as the largest over the ranks, once per step: every rank
        then steps the same learning rate and leaves the loop at the same step (their clocks differ)."""
        if self.cfg.run.max_minutes <= 0:
            return
        used = self._budget_used() / (60.0 * self.cfg.run.max_minutes)
        if self.world > 1:
            t = torch.tensor([used], device=self.accel.device, dtype=torch.float64)
            used = float(self.accel.gather(t).max())
        self._budget_synced = used

    def _out_of_time(self) -> bool:
        """True (on every rank alike) once the run's time budget is spent."""
        return self.cfg.run.max_minutes > 0 and self._budget_synced >= 1.0

    def _prepare_for_training(self) -> None:
        """Wrap model and optimizer for the run: the first collective after building (DDP broadcasts the
        parameters), hence only once every rank has built its model (`_on_all_ranks`)."""
        # The scheduler is stepped once per optimizer step by us (accelerate's wrapper would step it once per
        # process); it is registered so that save_state/load_state carry it.
        self.model, self.optimizer = self.accel.prepare(self.wm.transformer, self.optimizer)
        self.accel.register_for_checkpointing(self.lr_scheduler)
        self.step = 0
        # DoRA: the weight norm once per optimizer step instead of in every forward (same function;
        # cosmos_ros/model/dora.py). FSDP shards the weights the norm reads: peft's own forward there.
        self.dora = StepNormDoRA([], None)
        if self.adapter_cfg.mode == "dora" and not self._fsdp():
            self.dora = enable_step_norm_dora(self.accel.unwrap_model(self.model), self.optimizer)

    # ------------------------------------------------------------------ batches
    def _indices(self, positions: list[int]) -> list[int]:
        n = len(self.train_set)
        out = []
        perms: dict[int, torch.Tensor] = {}
        for p in positions:
            epoch = p // n
            if epoch not in perms:
                perms[epoch] = torch.randperm(n, generator=_gen(self.cfg.run.seed, 1, epoch))
            out.append(int(perms[epoch][p % n]))
        return out

    def _batch(
        self,
        lset: LatentSet,
        idx: list[int],
        positions: list[int],
        train: bool,
    ) -> dict[str, torch.Tensor]:
        o = self.cfg.optim
        dev = self.accel.device
        x0 = lset.latents[idx].float()
        noises, sigmas, drops = [], [], []
        for p in positions:
            g = _gen(self.cfg.run.seed, 2 if train else 3, p)
            noises.append(torch.randn(x0.shape[1:], generator=g))
            u = torch.randn((), generator=g) * o.sigma_logit_std + o.sigma_logit_mean
            sigmas.append(torch.sigmoid(u))
            drops.append(bool(torch.rand((), generator=g) < o.cfg_dropout) if train else False)
        emb = torch.stack([self._prompt_on_device(lset.prompts[i]) for i in idx])
        keep = torch.tensor([0.0 if d else 1.0 for d in drops], device=dev).view(-1, 1, 1)
        batch = {"x0": x0, "noise": torch.stack(noises), "sigma": torch.stack(sigmas)}
        if lset.actions is not None and self.wm.action_dim is not None:
            batch["actions"] = lset.actions[idx].float()
        out = {k: v.to(dev) for k, v in batch.items()}
        out["emb"] = emb * keep
        return out

    def _prompt_on_device(self, prompt: str) -> torch.Tensor:
        """A prompt's embedding, moved to the device once: the real one is 512 x 100352 floats (205 MB),
        too much to rebuild and copy every step; a robot cell has only a handful of prompts."""
        if prompt not in self._emb_cache:
            self._emb_cache[prompt] = self.prompts.get(prompt).float().to(self.accel.device)
        return self._emb_cache[prompt]

    def _loss(self, batch: dict[str, torch.Tensor], module: Any) -> torch.Tensor:
        x0, eps, sigma = batch["x0"], batch["noise"], batch["sigma"]
        s = sigma.view(-1, 1, 1, 1, 1)
        xt = (1 - s) * x0 + s * eps
        ncond = self.cfg.data.num_cond_latent_frames
        with self.accel.autocast():
            v = self.wm.denoise_velocity(
                xt,
                sigma,
                batch["emb"],
                batch.get("actions"),
                cond_latents=x0,
                num_cond_latent_frames=ncond,
                module=module,
            )
        err = (v.float() - (eps - x0)) ** 2
        return err[:, :, ncond:].mean()

    # ------------------------------------------------------------------ checkpoints
    def _ckpt_root(self) -> Path:
        return self.out / "checkpoints"

    def checkpoints(self) -> list[Path]:
        """The run's checkpoint folders (`step-NNNNNNN`), oldest first.

        Anything else under `checkpoints/` is left alone: a `step-N.partial` folder is a save that was
        interrupted before its final rename (a crash; the checkpoint before it is intact), never resumed from.
        A `step-N` folder is listed even if it is damaged: resuming from it then fails with an error that
        names the broken file, rather than silently starting from an older checkpoint.
        """
        root = self._ckpt_root()
        if not root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _CKPT_NAME.fullmatch(p.name))]
        return [p for _, p in sorted(found)]

    def _warn_leftovers(self) -> None:
        """Say which folders under `checkpoints/` are not checkpoints (interrupted saves): skipped."""
        root = self._ckpt_root()
        if not self.is_main or not root.is_dir():
            return
        for p in sorted(root.iterdir()):
            if not _CKPT_NAME.fullmatch(p.name):
                what = "an interrupted save" if p.name.endswith(".partial") else "not a checkpoint"
                print(
                    f"train: warning: skipped {p} ({what}; not resumed from); delete it to silence this",
                    file=sys.stderr,
                    flush=True,
                )

    def _fsdp(self) -> bool:
        return str(self.accel.distributed_type).endswith("FSDP")

    def save_checkpoint(self) -> Path:
        """Save the training state at `self.step`; the oldest checkpoints beyond `keep_checkpoints` go.

        Single process / DDP: rank 0 alone writes the trainable weights (`trainable.safetensors`: the
        adapters and action MLPs, not the frozen base), optimizer and lr-scheduler state (`optimizer.pt`,
        tensors and numbers only, read back with `weights_only=True`) and `trainer_state.json`. FSDP: the
        sharded state needs every rank, so accelerate's `save_state` writes it. A checkpoint directory is
        complete or absent (written as `.partial`, then renamed).
        """
        from safetensors.torch import save_file

        path = self._ckpt_root() / _ckpt_name(self.step)
        tmp = path.with_name(path.name + ".partial")
        if self.is_main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        self.accel.wait_for_everyone()
        if self._fsdp():
            self.accel.save_state(str(tmp), safe_serialization=True)
        elif self.is_main:
            net = self.accel.unwrap_model(self.model)
            save_file(
                {n: p.detach().cpu().contiguous() for n, p in net.named_parameters() if p.requires_grad},
                str(tmp / "trainable.safetensors"),
            )
            torch.save(
                {"optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict()},
                tmp / "optimizer.pt",
            )
        self.accel.wait_for_everyone()
        if self.is_main:
            (tmp / "trainer_state.json").write_text(
                json.dumps(
                    {
                        "step": self.step,
                        "budget_seconds": round(self._budget_used(), 3),
                        "world_size": self.world,
                        "fsdp": self._fsdp(),
                        "config": self.cfg.to_dict(),
                    },
                    indent=1,
                    default=list,
                )
            )
            if path.exists():
                shutil.rmtree(path)
            tmp.rename(path)
            for old in self.checkpoints()[: -self.cfg.run.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.accel.wait_for_everyone()
        return path

    def _checkpoint_fix(self, path: Path) -> str:
        """What to do about a broken checkpoint: move it away and resume from the one before, or restart."""
        m = _CKPT_NAME.fullmatch(path.name)
        older = [p for p in self.checkpoints() if m and int(p.name.split("-")[1]) < int(m.group(1))]
        before = f"resume from {older[-1].name}" if older else "start from step 0"
        return (
            f"delete or move away {path} to {before}, or set run.resume=never (or another run.output_dir) "
            "to start a new run"
        )

    def _read_trainer_state(self, path: Path) -> dict[str, Any]:
        """`trainer_state.json` of a checkpoint, checked: CheckpointError naming the file and the fix."""
        file = path / "trainer_state.json"
        try:
            state = json.loads(file.read_text())
        except FileNotFoundError:
            raise CheckpointError(
                f"{file} is missing: checkpoint {path.name} is incomplete or damaged (a finished save "
                f"always writes it); {self._checkpoint_fix(path)}"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{file} is unreadable ({e}); {self._checkpoint_fix(path)}") from None
        step = state.get("step") if isinstance(state, dict) else None
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise CheckpointError(
                f"{file}: 'step' must be a whole number >= 0, got {step!r}; the file is damaged; "
                f"{self._checkpoint_fix(path)}"
            )
        m = _CKPT_NAME.fullmatch(path.name)
        if m and int(m.group(1)) != step:
            raise CheckpointError(
                f"{file}: 'step' is {step} but the folder is {path.name}; the checkpoint was renamed or "
                f"damaged; {self._checkpoint_fix(path)}"
            )
        return state

    def load_checkpoint(self, path: Path) -> None:
        """Restore a checkpoint written by `save_checkpoint` (any world size for non-FSDP checkpoints).

        Every file is checked as it is read; a damaged one raises `CheckpointError` naming it and the fix.
        Nothing is unpickled: weights are safetensors, the optimizer state is read with `weights_only=True`
        (tensors, numbers and containers only).
        """
        from safetensors.torch import load_file

        state = self._read_trainer_state(path)
        if state.get("fsdp"):
            try:
                self.accel.load_state(str(path))
            except Exception as e:
                raise CheckpointError(
                    f"sharded checkpoint {path} cannot be loaded ({type(e).__name__}: "
                    f"{_short(e)}); {self._checkpoint_fix(path)}"
                ) from None
        else:
            net = self.accel.unwrap_model(self.model)
            params = dict(net.named_parameters())
            weights = path / "trainable.safetensors"
            try:
                saved = load_file(str(weights))
            except Exception as e:
                raise CheckpointError(
                    f"{weights} is missing or corrupt ({_short(e)}); {self._checkpoint_fix(path)}"
                ) from None
            want = {n for n, p in params.items() if p.requires_grad}
            if set(saved) != want:
                raise CheckpointError(
                    f"checkpoint {path} was written for another model/adapter setup "
                    f"({len(set(saved) ^ want)} parameter names differ); use run.resume=never "
                    f"or another output_dir"
                )
            opt_file = path / "optimizer.pt"
            try:
                # read to the CPU: load_state_dict moves each state tensor to its parameter's device (a
                # CPU process of a multi-process run has device "cpu:0", which torch.load cannot map to)
                opt = torch.load(opt_file, map_location="cpu", weights_only=True)
                self.optimizer.load_state_dict(opt["optimizer"])
                self.lr_scheduler.load_state_dict(opt["lr_scheduler"])
            except Exception as e:
                # torch's own message for a file that does not unpickle under weights_only suggests
                # weights_only=False, i.e. running whatever the file contains: never repeated here.
                raise CheckpointError(
                    f"{opt_file} is missing or corrupt ({_short(e)}); {self._checkpoint_fix(path)}"
                ) from None
            with torch.no_grad():
                for n, t in saved.items():
                    params[n].copy_(t.to(params[n].device, params[n].dtype))
        self.step = int(state["step"])
        self._budget_prior = float(state.get("budget_seconds") or 0.0)
        self._sync_budget()
        self.dora.refresh()  # lora_A/lora_B were just replaced: the cached DoRA norms follow
        if self.is_main:
            print(f"train: resumed from {path} (step {self.step})", flush=True)

    def _maybe_resume(self) -> None:
        r = self.cfg.run.resume
        if r == "never":
            return
        if r == "auto":
            self._warn_leftovers()
            ck = self.checkpoints()
            if ck:
                self.load_checkpoint(ck[-1])
            return
        p = Path(r)
        if not p.is_dir():
            raise CheckpointError(
                f"run.resume={r}: no such checkpoint directory; use auto, never or a step-N folder"
            )
        self.load_checkpoint(p)

    # ------------------------------------------------------------------ validation / preview
    @torch.no_grad()
    def validate(self) -> float | None:
        """Mean loss over the val split (fixed noise and sigmas per clip: comparable across steps)."""
        if self.val_set is None or len(self.val_set) == 0:
            return None
        self.model.eval()
        n = min(len(self.val_set), self.cfg.run.val_batches * self.cfg.optim.batch_size)
        bs = self.cfg.optim.batch_size
        total, count = 0.0, 0
        for start in range(0, n, bs):
            idx = list(range(start, min(n, start + bs)))
            loss = self._loss(self._batch(self.val_set, idx, idx, train=False), self.model)
            total += float(loss) * len(idx)
            count += len(idx)
        self.model.train()
        return total / count

    @torch.no_grad()
    def preview(self) -> Path | None:
        """Context | predicted | ground truth side by side for the first val (else train) clip."""
        lset = self.val_set if self.val_set is not None and len(self.val_set) else self.train_set
        ncond = self.cfg.data.num_cond_latent_frames
        x0 = lset.latents[:1].float().to(self.accel.device)
        emb = self.prompts.get(lset.prompts[0]).float()[None].to(self.accel.device)
        actions = (
            lset.actions[:1].float().to(self.accel.device)
            if lset.actions is not None and self.wm.action_dim is not None
            else None
        )
        self.model.eval()
        with self.accel.autocast():
            pred = self.wm.sample_latents(
                x0,
                x0.shape[2],
                emb,
                actions,
                num_steps=self.cfg.run.preview_steps,
                guidance=0.0,
                seed=self.cfg.run.seed,
                num_cond_latent_frames=ncond,
                module=self.model,
            )
        self.model.train()
        if not self.is_main:
            return None
        from diffusers import AutoencoderKLWan

        vae = AutoencoderKLWan.from_pretrained(
            self.base, subfolder="vae", revision=self.revision, torch_dtype=torch.float32
        ).to(self.accel.device)
        self.wm.vae = vae
        try:
            frames = self.wm.decode_latents(torch.cat([pred.float(), x0]))
        finally:
            self.wm.vae = None  # not resident while training
            del vae
        from cosmos_ros.train.preview import write_preview

        n_ctx = 4 * (ncond - 1) + 1
        path = self.out / "previews" / f"step-{self.step:07d}.{self.cfg.run.preview_format}"
        write_preview(path, ground_truth=frames[1], predicted=frames[0], num_context=n_ctx)
        return path

    def _trace(self, idx: list[int]) -> None:
        path = self.out / "data_trace" / f"rank-{self.rank}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(
                json.dumps({"step": self.step, "clips": [self.train_set.clip_ids[i] for i in idx]}) + "\n"
            )

    # ------------------------------------------------------------------ main loop
    def _stop_requested(self, stop: StopSignals) -> bool:
        """Whether a signal asked to stop, on any process: every rank must stop at the same step, or the
        ranks that go on would wait forever in the next step's collectives for the ones saving and leaving."""
        asked = stop.signum is not None
        if self.world == 1:
            return asked
        flag = torch.tensor(float(asked), device=self.accel.device)
        return bool(self.accel.reduce(flag, reduction="sum") > 0)

    def train(self, stop_at: int | None = None) -> TrainResult:
        """Train to `optim.max_steps` (or stop early after step `stop_at`, as an interruption would).

        SIGINT or SIGTERM (Ctrl-C, a job scheduler's preemption) end the run cleanly after the current step:
        a checkpoint of that step is saved and the result says `interrupted`; starting the same run again
        (run.resume=auto) continues from it, as from any checkpoint.
        """
        with StopSignals() as stop:
            return self._train(stop, stop_at)

    def _train(self, stop: StopSignals, stop_at: int | None) -> TrainResult:
        cfg, o = self.cfg, self.cfg.optim
        self._maybe_resume()
        saved_step = self.step  # the step of the last checkpoint written or resumed from
        writer = None
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=1, default=list))
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.out / "tb"))
        bar = None
        if self.is_main and cfg.run.progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=o.max_steps,
                initial=self.step,
                desc=f"train {cfg.adapter.mode}",
                unit="step",
                dynamic_ncols=True,
            )
        losses: dict[int, float] = {}
        val_losses: dict[int, float] = {}
        t0 = time.time()
        self._budget_start = t0
        self.model.train()
        b, k = o.batch_size, o.grad_accum
        from cosmos_ros.train.profiling import StepProfiler

        r = cfg.run
        profiler = StepProfiler(
            r.output_dir, self.rank, self.step + r.profile_skip, r.profile_steps, self.accel.device
        )
        try:
            while self.step < min(o.max_steps, stop_at or o.max_steps):
                if self._stop_requested(stop) or self._out_of_time():  # a resumed run may have spent it
                    break
                profiler.before_step(self.step)
                step_loss = torch.zeros((), device=self.accel.device)
                for m in range(k):
                    positions = [((self.step * k + m) * self.world + self.rank) * b + i for i in range(b)]
                    idx = self._indices(positions)
                    batch = self._batch(self.train_set, idx, positions, train=True)
                    if cfg.run.trace_data:
                        self._trace(idx)
                    ctx = self.accel.no_sync(self.model) if m < k - 1 else contextlib.nullcontext()
                    with ctx:
                        loss = self._loss(batch, self.model)
                        self.accel.backward(loss / k)
                    step_loss += loss.detach() / k
                mean_loss = float(self.accel.reduce(step_loss, reduction="mean"))
                if not math.isfinite(mean_loss):
                    last = self.checkpoints()
                    raise TrainingDiverged(
                        f"loss is {mean_loss} at step {self.step + 1}; stopped before the optimizer step. "
                        f"Last good checkpoint: {last[-1] if last else 'none'} (kept). Lower optim.lr, check "
                        f"the clips for NaN/inf, or use model.dtype=float32"
                    )
                grad_norm = None
                if o.grad_clip > 0:
                    grad_norm = self.accel.clip_grad_norm_(self.model.parameters(), o.grad_clip)
                self.optimizer.step()
                self._sync_budget()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                profiler.after_step(self.step)
                losses[self.step] = mean_loss
                if writer is not None and (self.step % cfg.run.log_every == 0 or self.step == 1):
                    writer.add_scalar("train/loss", mean_loss, self.step)
                    writer.add_scalar("train/lr", self.lr_scheduler.get_last_lr()[0], self.step)
                    if grad_norm is not None:
                        writer.add_scalar("train/grad_norm", float(grad_norm), self.step)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{self.lr_scheduler.get_last_lr()[0]:.2e}")
                if cfg.run.val_every and self.step % cfg.run.val_every == 0:
                    v = self.validate()
                    if v is not None:
                        val_losses[self.step] = v
                        if writer is not None:
                            writer.add_scalar("val/loss", v, self.step)
                    # the evaluation's figures on a few val clips (cosmos_ros.evaluate.training)
                    from cosmos_ros.evaluate.training import validation_figures

                    for name, value in validation_figures(self, cfg.run.val_twin_clips).items():
                        if writer is not None:
                            writer.add_scalar(f"val/{name}", value, self.step)
                if cfg.run.preview_every and self.step % cfg.run.preview_every == 0:
                    self.preview()
                if cfg.run.checkpoint_every and self.step % cfg.run.checkpoint_every == 0:
                    self.save_checkpoint()
                    saved_step = self.step
                if self._out_of_time():
                    if self.is_main:
                        print(
                            f"train: run.max_minutes={cfg.run.max_minutes} spent at step {self.step} of "
                            f"{o.max_steps}; the schedule ended with it, saving the result",
                            flush=True,
                        )
                    if cfg.run.checkpoint_every and saved_step != self.step:
                        # the run's last checkpoint holds its spent budget: running it again resumes there
                        # and finishes at once instead of training another budget from an older step
                        self.save_checkpoint()
                        saved_step = self.step
                    break
        finally:
            profiler.close()
            if bar is not None:
                bar.close()
            if writer is not None:
                writer.flush()
                writer.close()
        if stop.signum is not None and self.step < min(o.max_steps, stop_at or o.max_steps):
            if self.step != saved_step:
                where = f"checkpoint {self.save_checkpoint()}; run the same command again to continue from it"
            elif self.step:
                where = f"checkpoint {self._ckpt_root() / _ckpt_name(self.step)} holds this step"
            else:
                where = "nothing was trained yet, so no checkpoint"
            if self.is_main:
                print(
                    f"train: stopped on {stop.name} after step {self.step}; {where}",
                    file=sys.stderr,
                    flush=True,
                )
            return TrainResult(
                self.step, losses, val_losses, None, self.checkpoints(), time.time() - t0, stop.name
            )
        adapter_dir = self.save_final()
        return TrainResult(self.step, losses, val_losses, adapter_dir, self.checkpoints(), time.time() - t0)

    def save_final(self) -> Path | None:
        """Write the adapter directory (rank 0) with its model card; returns it on rank 0."""
        self.accel.wait_for_everyone()
        if self._fsdp():
            # Sharded parameters: gather a full state dict (every rank takes part), then rebuild the model
            # on rank 0's CPU and load it there, so that peft's adapter export sees ordinary tensors.
            full = self.accel.get_state_dict(self.model)
            if not self.is_main:
                return None
            wm = WorldModel.from_pretrained(
                self.base,
                self.revision,
                action_dim=self.wm.action_dim,
                load_vae=False,
                dtype=_DTYPES[self.cfg.model.dtype],
                action_hidden_dim=self.cfg.model.action_hidden_dim,
            )
            apply_adapters(wm, self.adapter_cfg)
            res = wm.transformer.load_state_dict(full, strict=False)
            if res.unexpected_keys:
                raise RuntimeError(f"FSDP state dict has unexpected keys {res.unexpected_keys[:3]}")
        else:
            if not self.is_main:
                return None
            wm = self.wm
            wm.transformer = self.accel.unwrap_model(self.model)
        card = {
            "dataset": {
                "num_train_clips": len(self.train_set),
                "num_val_clips": 0 if self.val_set is None else len(self.val_set),
                "prompts": sorted(set(self.train_set.prompts)),
                **self.dataset_stats,
            },
            "tokenizer": self.tokenizer_dict,
            "geometry": {
                "latent_shape": list(self.train_set.latents.shape[1:]),
                "num_frames": 4 * (int(self.train_set.latents.shape[2]) - 1) + 1,
                "height": int(self.train_set.latents.shape[3]) * self.wm.spatial_factor,
                "width": int(self.train_set.latents.shape[4]) * self.wm.spatial_factor,
                "num_cond_latent_frames": self.cfg.data.num_cond_latent_frames,
            },
            "training": {
                "steps": self.step,
                "world_size": self.world,
                "trainable_params": self.n_trainable,
                "total_params": self.n_total,
                "optim": vars(self.cfg.optim),
            },
            "prompt_cache": str(self.prompts.path) if self.prompts.path else None,
            "preprocessing": self._preprocessing_spec(),
        }
        # a shipped short name (sim_twin) is stored as such: the adapter loads where the twin lies elsewhere
        return save_adapter(
            wm, self.out / "adapter", self.adapter_cfg, card, base_name=str(self.cfg.model.base)
        )

    def _preprocessing_spec(self) -> dict[str, Any]:
        """The clips' preprocessing spec (cosmos_ros.preprocessing) for the adapter card, so the predictor
        serves frames as the clips were made: from clips.json when training on built clips, else (a dataset
        in memory) the latents' size and the tokenizer, with the default fit and the cameras unknown."""
        from cosmos_ros.preprocessing import PreprocessSpec

        index = getattr(self._train_ds, "meta", None)
        if (
            index is None
            and self.cfg.data.clips_dir
            and (Path(self.cfg.data.clips_dir) / "clips.json").is_file()
        ):
            index = json.loads((Path(self.cfg.data.clips_dir) / "clips.json").read_text())
        if isinstance(index, dict) and "height" in index:
            spec = PreprocessSpec.from_clips_index(index, self.tokenizer_dict)
            # the tokenizer the model was trained with (the base's statistics on a carded base), not the
            # one the clip builder fitted
            return replace(spec, tokenizer=self.tokenizer_dict or spec.tokenizer).to_dict()
        tok = self.tokenizer_dict or {}
        return PreprocessSpec(
            height=int(self.train_set.latents.shape[3]) * self.wm.spatial_factor,
            width=int(self.train_set.latents.shape[4]) * self.wm.spatial_factor,
            fps=float(tok.get("fps") or 10.0),
            action_mode=str(tok.get("mode") or "delta"),
            tokenizer=self.tokenizer_dict,
        ).to_dict()
