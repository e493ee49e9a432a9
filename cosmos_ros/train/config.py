"""Training configuration: nested dataclasses loaded from YAML (config/train.yaml) + `a.b=value` overrides.

Also where `model.base` is resolved before anything loads (:func:`prepare_base_model`): `tiny` makes a tiny
random model for a CPU trial on one's own clips, and a hub id that is neither in the local cache nor
reachable fails at once, saying what to pass instead (rather than retrying the hub for most of a minute and
then reporting a missing config.json).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from cosmos_ros.model.adapters import DEFAULT_TARGET_MODULES
from cosmos_ros.model.perf import ATTENTION_BACKENDS

# `model.base: tiny`: a tiny random model of the same classes, made under run.output_dir (CPU trial)
TINY_BASE = "tiny"


@dataclass
class ModelSection:
    base: str = "nvidia/Cosmos-Predict2.5-2B"  # hub id, local diffusers-layout dir, or "tiny" (CPU trial)
    revision: str | None = None  # None: NVIDIA's diffusers branch for the hub id
    dtype: str = "bfloat16"  # storage dtype of the frozen base weights
    action_conditioning: bool = True  # False: action-free (text/video only) training
    action_hidden_dim: int | None = None  # default 4 x model width (NVIDIA's)
    gradient_checkpointing: bool = True  # False: keep every activation (policy "none")
    # Activation memory policy (cosmos_ros.model.perf): auto | none | full | selective | attention |
    # blocks:K | budget:F | offload[:F][+P]. auto = budget:0.5 with compile on CUDA (LoRA r32, 480x640:
    # 23 GiB), none on CPU.
    memory_policy: str = "auto"
    compile: bool | None = None  # torch.compile each transformer block; None = on CUDA without FSDP
    # Self-attention kernel (cosmos_ros.model.perf): auto | default | cudnn | flash | efficient | cudnn_eager.
    # auto = cudnn on CUDA in bf16/fp16 (float32: default). Left to SDPA's choice, compiled blocks got
    # cuDNN in some compiles and FlashAttention-2 in others (0.37 vs 0.50 s per LoRA step on an H100,
    # benchmarks/NOTES_gpu.md).
    attention: str = "auto"
    # GPU memory budget in GiB, or "auto" (this GPU's memory): the trainer then picks the fastest memory
    # policy whose peak fits (cosmos_ros.train.memory_plan; docs/training.md has the table) and logs
    # why, instead of memory_policy. None: memory_policy decides.
    max_memory: float | str | None = None
    # FP8 GEMMs for the frozen base linears (forward and input gradient; LoRA only; CUDA compute capability
    # >= 8.9). An error elsewhere, not a silent bf16 fallback: the speed and memory you chose it for would
    # not be what you get.
    fp8: bool = False


def parse_max_memory(value: float | str | None) -> float | str | None:
    """`model.max_memory` as None, "auto" or GiB > 0; raises ValueError naming the accepted forms."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        gib = float(str(value).strip().lower().removesuffix("gib").removesuffix("g"))
    except ValueError:
        gib = -1.0
    if not gib > 0 or gib != gib or gib == float("inf"):
        raise ValueError(
            f"invalid training config: model.max_memory={value!r}: give GiB > 0 (e.g. 24), auto (this "
            "GPU's memory) or null (use model.memory_policy)"
        )
    return gib


@dataclass
class AdapterSection:
    mode: str = "lora"  # lora | dora | full
    rank: int = 32
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    # lora/dora: also train the action MLPs (the default: a base without trained ones has zero MLPs to
    # learn). False keeps a base's trained MLPs (the sim twin's) as they are: only the adapter learns.
    train_action_mlps: bool = True


@dataclass
class DataSection:
    clips_dir: str | None = None  # written by build_clips; None: use an existing latent cache only
    train_split: str = "train"
    val_split: str = "val"
    prompt_cache: str | None = None  # default: <clips_dir>/prompt_cache.safetensors, else <base>/...
    latent_cache_dir: str | None = None  # default: <output_dir>/latents
    num_cond_latent_frames: int = 1


@dataclass
class OptimSection:
    lr: float = 2**-14.5  # NVIDIA's LoRA recipe
    weight_decay: float = 0.001
    betas: tuple[float, float] = (0.9, 0.999)
    lr_schedule: str = "cosine"  # constant | linear | cosine (after warm-up)
    warmup_steps: int = 100
    max_steps: int = 2000
    batch_size: int = 8  # per process, per micro-step
    grad_accum: int = 1
    grad_clip: float = 1.0
    cfg_dropout: float = 0.2  # probability of training a sample with the empty (zero) prompt embedding
    sigma_logit_mean: float = 0.0  # logit-normal noise-level sampling
    sigma_logit_std: float = 1.0


@dataclass
class RunSection:
    output_dir: str = "runs/cosmos_ros"
    seed: int = 0
    mixed_precision: str = "bf16"  # no | bf16 | fp16
    cpu: bool = False
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    val_every: int = 250
    # Training-time budget of the run in minutes (0: none), counted across resumes (checkpoints keep the
    # time used). The LR schedule runs on whichever of optim.max_steps or max_minutes binds first, so a run
    # stopped by its budget still ends annealed, and the adapter is saved as at max_steps. For fixed-budget
    # runs (the sim twin's 25-minute recipe, sessions with a time limit).
    max_minutes: float = 0.0
    val_batches: int = 8
    val_twin_clips: int = 4  # val clips sampled for the twin figures (evaluate.training); 0: off
    preview_every: int = 500  # 0: never
    preview_steps: int = 10  # sampling steps of the preview
    preview_format: str = "gif"  # gif | mp4
    resume: str = "auto"  # auto (latest checkpoint if any) | never | <checkpoint dir>
    progress: bool = True
    trace_data: bool = False  # each process appends the clip ids of its batches to data_trace/rank-<r>.jsonl
    # torch.profiler over profile_steps steps after profile_skip steps: <output_dir>/profile/rank-<r>.txt per
    # process (wall vs device time, NCCL share, top operators; cosmos_ros.train.profiling). 0: off
    profile_steps: int = 0
    profile_skip: int = 3


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    adapter: AdapterSection = field(default_factory=AdapterSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from nested dicts; unknown sections or keys are an error naming the valid ones."""
        kwargs: dict[str, Any] = {}
        sections = {f.name: f for f in dataclasses.fields(cls)}
        for name, value in (data or {}).items():
            if name not in sections:
                raise ValueError(f"unknown config section {name!r}; valid: {', '.join(sections)}")
            sec_cls = sections[name].default_factory  # type: ignore[misc]
            valid = {f.name: f for f in dataclasses.fields(sec_cls)}  # type: ignore[arg-type]
            for key in value or {}:
                if key not in valid:
                    raise ValueError(f"unknown key {name}.{key}; valid: {', '.join(valid)}")
            sec = sec_cls(**{k: _coerce(valid[k], v) for k, v in (value or {}).items()})  # type: ignore[operator]
            if isinstance(getattr(sec, "betas", None), list):
                sec.betas = tuple(sec.betas)  # type: ignore[attr-defined]
            kwargs[name] = sec
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        o, r = self.optim, self.run
        checks = [
            (o.max_steps >= 1, "optim.max_steps must be >= 1"),
            (o.batch_size >= 1 and o.grad_accum >= 1, "optim.batch_size and optim.grad_accum must be >= 1"),
            (o.lr > 0, "optim.lr must be > 0"),
            (0.0 <= o.cfg_dropout <= 1.0, "optim.cfg_dropout must be in [0, 1]"),
            (
                o.lr_schedule in ("constant", "linear", "cosine"),
                "optim.lr_schedule: constant | linear | cosine",
            ),
            (r.mixed_precision in ("no", "bf16", "fp16"), "run.mixed_precision: no | bf16 | fp16"),
            (r.preview_format in ("gif", "mp4"), "run.preview_format: gif | mp4"),
            (r.keep_checkpoints >= 1, "run.keep_checkpoints must be >= 1"),
            (r.val_twin_clips >= 0, "run.val_twin_clips must be >= 0"),
            (
                r.profile_steps >= 0 and r.profile_skip >= 0,
                "run.profile_steps and run.profile_skip must be >= 0",
            ),
            (r.max_minutes >= 0, "run.max_minutes must be >= 0 (0: no time budget)"),
            (
                self.model.dtype in ("float32", "bfloat16", "float16"),
                "model.dtype: float32 | bfloat16 | float16",
            ),
            (
                self.model.attention in ("auto", *ATTENTION_BACKENDS),
                f"model.attention: auto | {' | '.join(ATTENTION_BACKENDS)}",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"invalid training config: {msg}")
        self.model.max_memory = parse_max_memory(self.model.max_memory)
        if self.model.max_memory is not None and self.model.memory_policy != "auto":
            raise ValueError(
                f"invalid training config: model.max_memory={self.model.max_memory} picks the memory "
                f"policy, but model.memory_policy={self.model.memory_policy!r} sets one too; keep one "
                "(memory_policy=auto lets max_memory choose)"
            )
        if self.model.fp8 and self.adapter.mode != "lora":
            raise ValueError(
                f"invalid training config: model.fp8 runs the frozen base weights in FP8, which "
                f"adapter.mode={self.adapter.mode} does not have (full trains them, DoRA's norm reads "
                "them in bf16); use adapter.mode=lora or model.fp8=false"
            )


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """YAML reads `1e-4` as a string (YAML 1.1 floats need a dot): convert by the field's type."""
    t = str(f.type)
    if value is False and f.name == "mixed_precision":
        return "no"  # YAML 1.1 reads an unquoted `no` as false
    if isinstance(value, str) and t.startswith("float") and "str" not in t:  # max_memory: GiB or auto
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{f.name}={value!r} is not a number") from None
    if isinstance(value, int) and not isinstance(value, bool) and t.startswith("float"):
        return float(value)
    if isinstance(value, str) and t.startswith("int"):
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{f.name}={value!r} is not an integer") from None
    return value


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` overrides (value parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"override {item!r} must look like section.key=value (e.g. optim.lr=1e-4)")
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        data.setdefault(section, {})
        if data[section] is None:
            data[section] = {}
        data[section][name] = _parse_value(value)
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (None: defaults) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"training config {p} not found (see config/train.yaml for an example)")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"training config {p} must be a mapping of sections")
    apply_overrides(data, overrides or [])
    return TrainConfig.from_dict(data)


# ---------------------------------------------------------------------------- resolving model.base
HUB_CHECK_TIMEOUT_S = 3.0


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_unreachable(timeout: float = HUB_CHECK_TIMEOUT_S) -> str | None:
    """Why the Hugging Face hub cannot be reached (None when a TCP connection to it opens in time).

    A TCP connect rather than an HTTP request: cheap, no credentials, and enough to tell "no network"
    from "reachable". Run on a thread with a deadline, because name resolution has no timeout of its own.
    """
    if _truthy(os.environ.get("HF_HUB_OFFLINE")):
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    url = urlparse(endpoint)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as err:
            outcome.append(f"{endpoint}: {err.strerror or err}")

    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"{endpoint}: no answer within {timeout:g} s"


def _in_hub_cache(repo_id: str, revision: str | None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(
            repo_id, "transformer/config.json", cache_dir=os.environ.get("HF_HUB_CACHE"), revision=revision
        )
    except Exception:  # a malformed id or cache: from_pretrained gives the precise error later
        return False
    return isinstance(found, str)


def _clips_prompts(clips_dir: str | None) -> list[str]:
    if not clips_dir:
        return []
    try:
        index = json.loads((Path(clips_dir) / "clips.json").read_text())
    except (OSError, ValueError):
        return []  # the trainer reports a missing or broken clips dir itself
    return sorted({c["prompt"] for shard in index.get("shards", []) for c in shard.get("clips", [])})


def prepare_base_model(cfg: TrainConfig) -> None:
    """Resolve ``cfg.model.base`` before the trainer loads it (in place); ValueError with the fix if hopeless.

    - ``tiny``: a tiny random model (same classes) under ``<run.output_dir>/tiny_base``, its prompt cache
      holding the prompts of ``data.clips_dir``: a CPU trial of the whole pipeline on one's own clips in
      minutes. It learns nothing useful; it shows that the clips, the trainer and the adapter work.
    - an existing local folder: used as is.
    - a shipped short name (``sim_twin``): found where `cosmos_ros.model.registry` looks (no network).
    - a hub id: fine when cached locally or when the hub answers; otherwise an error at once.
    """
    base = cfg.model.base
    if base == TINY_BASE:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("model.base=tiny is for a single-process CPU trial; start it without accelerate")
        from cosmos_ros.model.text_cache import build_prompt_cache
        from cosmos_ros.model.tiny import make_tiny_world_model

        path = Path(cfg.run.output_dir) / "tiny_base"
        prompts = _clips_prompts(cfg.data.clips_dir)
        if not (path / "transformer" / "config.json").is_file():
            make_tiny_world_model(path, seed=cfg.run.seed, prompts=prompts or None)
        elif prompts:  # clips rebuilt with new prompts: embed those with the tiny text encoder too
            build_prompt_cache(path, prompts, path / "prompt_cache.safetensors")
        cfg.model.base = str(path)
        return
    if Path(base).expanduser().exists():
        return
    from cosmos_ros.model.registry import SHIPPED_MODELS, hub_revision, resolve_base

    if base in SHIPPED_MODELS:  # a short name (sim_twin): its folder, or an error saying how to make it
        try:
            resolve_base(base)
        except FileNotFoundError as e:
            raise ValueError(f"model.base={base}: {e}") from None
        return

    revision = hub_revision(base, cfg.model.revision)
    if _in_hub_cache(base, revision):
        return
    why = hub_unreachable()
    if why is None:
        return
    rev = f" --revision {revision}" if revision else ""
    raise ValueError(
        f"model.base={base}: not a local folder, not in the Hugging Face cache, and the hub cannot be "
        f"reached ({why}). Pass model.base=<a local diffusers-layout folder> (fetch it on a machine with "
        f"network: `huggingface-cli download {base}{rev} --local-dir DIR`, then copy DIR here), or try the "
        "pipeline on CPU with a tiny random model: model.base=tiny (docs/CLIPS.md, 'A CPU trial on your "
        "own clips')"
    )
