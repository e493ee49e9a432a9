"""LoRA / DoRA adapters (peft) and full fine-tuning for the world model; save/load with a model card.

Training modes:
- `lora` / `dora`: peft low-rank adapters (DoRA: `use_dora=True`) on `target_modules` of the transformer
  (default NVIDIA's: `to_q, to_k, to_v, to_out.0, ff.net.0.proj, ff.net.2`), base weights frozen;
- `full`: every transformer weight trained (the baseline);
- in every mode the action MLPs (if any) are trained in full, like peft's `modules_to_save`.

An adapter directory (the contract in docs/ARCHITECTURE.md):
    adapter_config.json               peft LoraConfig (lora/dora)
    adapter_model.safetensors         peft weights, keys `base_model.model.<module>.lora_A.weight`, ...
    transformer.safetensors           full mode only: every transformer weight
    action_conditioning.safetensors   action MLPs; metadata `config` = ActionEmbedder.config()
    README.md                         the adapter card (huggingface_hub.ModelCard): YAML card data with
                                      a `cosmos_ros` section (base model as a shipped short name such as
                                      `sim_twin`, an absolute path or a hub id,
                                      revision, transformer config, mode, dataset stats, action tokenizer,
                                      clip geometry, preprocessing spec, prompt cache path), then prose
    cosmos_ros_card.json              the same section, in adapters written before the ModelCard: still read
                                      (a base model's cosmos_ros_card.json, format cosmos_ros.base/1, is
                                      not an adapter card: `cosmos_ros.model.base_card` reads it)
Loading reads safetensors, JSON and YAML only: a pickle (`*.bin`, `*.pt`) in its place is refused, and so
are weights that are not finite (a diverged run), so that a broken adapter never serves black frames.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cosmos_ros.model.action_cond import ActionEmbedder
from cosmos_ros.model.safe_files import PickleRefusedError, refuse_pickles
from cosmos_ros.model.world_model import WorldModel

DEFAULT_TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]
MODES = ("lora", "dora", "full")
CARD_NAME = "cosmos_ros_card.json"  # the card of adapters written before the ModelCard (read only)
MODEL_CARD_NAME = "README.md"
CARD_SECTION = "cosmos_ros"  # the machine-readable part of the model card's data
PEFT_PREFIX = "base_model.model."


class AdapterError(ValueError):
    """An adapter directory that cannot be used (missing, corrupt, pickled, or for another base model)."""


@dataclass
class AdapterConfig:
    """How the transformer is fine-tuned (see the module docstring)."""

    mode: str = "lora"
    rank: int = 32
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    train_action_mlps: bool = True  # False: lora/dora leave the base's (trained) action MLPs as they are

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"adapter mode {self.mode!r} unknown; use one of {', '.join(MODES)}")
        if self.mode == "full" and not self.train_action_mlps:
            raise ValueError(
                "adapter.train_action_mlps=false is for lora/dora (full fine-tuning trains every weight)"
            )
        if self.mode != "full" and (self.rank < 1 or not self.target_modules):
            raise ValueError(f"{self.mode}: rank ({self.rank}) must be >= 1 and target_modules non-empty")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"adapter dropout {self.dropout} must be in [0, 1)")

    def lora_config(self) -> Any:
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            use_dora=self.mode == "dora",
            init_lora_weights=True,
        )


def _base(wm: WorldModel) -> nn.Module:
    return wm.transformer.transformer


def apply_adapters(wm: WorldModel, cfg: AdapterConfig) -> list[nn.Parameter]:
    """Set up `wm` for training in `cfg.mode`; return the trainable parameters.

    Base weights are frozen for lora/dora; trainable parameters are kept in float32 even when the base is
    bf16 (optimizer precision), which is what the mixed-precision recipe expects.
    """
    base = _base(wm)
    if cfg.mode in ("lora", "dora"):
        from peft import inject_adapter_in_model

        base.requires_grad_(False)
        inject_adapter_in_model(cfg.lora_config(), base)
        n_lora = sum(1 for n, _ in base.named_parameters() if "lora_" in n)
        if n_lora == 0:
            raise ValueError(f"no module of the transformer matches target_modules={cfg.target_modules}")
    else:
        base.requires_grad_(True)
    if wm.transformer.action_embedder is not None:
        wm.transformer.action_embedder.requires_grad_(cfg.train_action_mlps)
    params = [p for p in wm.transformer.parameters() if p.requires_grad]
    for p in params:
        if p.dtype in (torch.bfloat16, torch.float16) and cfg.mode != "full":
            p.data = p.data.float()
    return params


def skip_adapter_input_casts(module: nn.Module) -> int:
    """Let the plain LoRA layers under `module` take their input in its own dtype; returns how many.

    Why: peft casts an adapted layer's input to the adapter weights' dtype before `lora_A`, and
    `apply_adapters` keeps those weights in float32. Under bf16 autocast `lora_A` casts that float32
    copy straight back to bf16, so the copy changes nothing in the result (bf16 -> float32 -> bf16 is
    exact) but costs memory where it hurts: a float32 copy of the MLP down projection's 4x-wide input in
    the forward (and in every recompute of a checkpointed block), and a float32 gradient of it in the
    backward. Measured on one 2B-size block, 4096 tokens, CPU: peak 2.31 -> 2.14 GiB eager, the gradients
    bit for bit the same (benchmarks/bench_adapter_cast.py); compiled blocks gain little (inductor fuses
    most of the casts: the H200's 704x1280 step peaked at 24.92 GiB either way).
    Only for training under bf16/fp16 autocast (the trainer's every forward): without autocast a bf16
    input into float32 adapter weights is a dtype error. A peft without the switch (before 0.15) keeps
    its casts (returns 0), and so do DoRA layers.
    """
    n = 0
    for m in module.modules():
        # plain LoRA layers only: peft's DoRA forward computes more from the input than lora_A(x), and its
        # results moved by a bf16 ulp without the cast (test); DoRA layers keep peft's casts
        plain = hasattr(m, "lora_A") and not getattr(m, "lora_variant", {})
        if plain and hasattr(m, "cast_input_dtype_enabled"):
            m.cast_input_dtype_enabled = False
            n += 1
    return n


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in module.parameters())
    return sum(p.numel() for p in module.parameters() if p.requires_grad), total


def _safe_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    from cosmos_ros.atomic_io import save_safetensors_atomic

    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    save_safetensors_atomic(cpu, path, metadata)


def adapter_state_dict(wm: WorldModel, cfg: AdapterConfig) -> dict[str, torch.Tensor]:
    """The weights an adapter directory holds for the transformer (peft keys, or every weight for full)."""
    base = _base(wm)
    if cfg.mode == "full":
        return {k: v for k, v in base.state_dict().items()}
    from peft import get_peft_model_state_dict

    return {PEFT_PREFIX + k: v for k, v in get_peft_model_state_dict(base).items()}


def resolvable_base(base: str, name: str | None = None) -> str:
    """What a card stores for a base model: a shipped model's short name (``sim_twin``, when the training
    config named it so: its folder differs from machine to machine, the name resolves on each through
    `cosmos_ros.model.registry.resolve_base`), else the absolute path of a local directory (a relative path
    would resolve against whatever folder the predictor is started from), else the hub id."""
    from cosmos_ros.model.registry import SHIPPED_MODELS

    if name is not None and str(name) in SHIPPED_MODELS and not Path(str(name)).exists():
        return str(name)
    p = Path(base).expanduser()
    return str(p.resolve()) if p.exists() else str(base)


def save_adapter(
    wm: WorldModel,
    out_dir: str | Path,
    cfg: AdapterConfig,
    card: dict[str, Any] | None = None,
    base_name: str | None = None,
) -> Path:
    """Write the adapter directory (module docstring) for `wm` trained with `cfg`; return its path.

    ``base_name``: the base as the training config named it; a shipped model's short name is stored as such
    (`resolvable_base`), so the adapter loads on a machine where the twin lies elsewhere."""
    from cosmos_ros.model.registry import SHIPPED_MODELS

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = resolvable_base(wm.source.base, base_name)
    shipped = base in SHIPPED_MODELS
    sd = adapter_state_dict(wm, cfg)
    if cfg.mode == "full":
        _safe_save(sd, out / "transformer.safetensors", {"format": "pt"})
    else:
        lc = cfg.lora_config()
        lc.base_model_name_or_path = base
        lc.revision = wm.source.revision
        lc.save_pretrained(str(out))
        _safe_save(sd, out / "adapter_model.safetensors", {"format": "pt"})
    emb = wm.transformer.action_embedder
    if emb is not None:
        _safe_save(
            emb.state_dict(),
            out / "action_conditioning.safetensors",
            {"format": "pt", "config": json.dumps(emb.config())},
        )
    full_card = {
        "format": "cosmos_ros.adapter/1",
        "base_model": base,
        "base_model_is_local": Path(base).is_absolute(),
        "base_model_shipped": shipped,  # a short name of cosmos_ros.model.registry (resolved where loaded)
        "revision": wm.source.revision,
        "transformer_config": wm.source.transformer_config,
        "adapter": asdict(cfg),
        "action_conditioning": None if emb is None else emb.config(),
        **(card or {}),
    }
    model_card(full_card).save(out / MODEL_CARD_NAME)
    return out


def model_card(card: dict[str, Any]) -> Any:
    """The adapter's ``huggingface_hub.ModelCard``: card data (``library_name``, ``base_model`` when it is a
    hub id, tags, and the whole cosmos_ros card under ``cosmos_ros``), then a short description."""
    from huggingface_hub import ModelCard, ModelCardData

    plain = json.loads(json.dumps(card, default=str))  # YAML-safe: tuples, paths, numpy scalars -> JSON types
    data = ModelCardData(
        library_name="peft",
        # the hub's base_model field takes hub ids only: not a local path nor one of our short names
        base_model=None
        if card.get("base_model_is_local") or card.get("base_model_shipped")
        else card["base_model"],
        tags=["cosmos", "world-model", "robotics", str(card["adapter"]["mode"])],
        **{CARD_SECTION: plain},
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{_model_card_markdown(card)}")


def _model_card_markdown(card: dict[str, Any]) -> str:
    ad = card["adapter"]
    lines = [
        "# cosmos_ros adapter",
        "",
        f"- Base model: `{card['base_model']}` (revision `{card.get('revision')}`)",
        f"- Mode: {ad['mode']}"
        + (
            ""
            if ad["mode"] == "full"
            else f", rank {ad['rank']}, alpha {ad['alpha']}, targets {ad['target_modules']}"
        ),
        f"- Action conditioning: {card.get('action_conditioning')}",
    ]
    for key in ("dataset", "geometry", "preprocessing", "training", "prompt_cache"):
        if key in card:
            lines.append(f"- {key.capitalize()}: `{json.dumps(card[key], default=str)[:2000]}`")
    lines += [
        "",
        "Load with `cosmos_ros.model.adapters.load_world_model(base, adapter_dir)`; "
        "all weights are safetensors.",
        "",
    ]
    return "\n".join(lines)


def _base_model_card(d: Path) -> bool:
    """Whether ``d/cosmos_ros_card.json`` is a base model's card (the sim twin's), not an older adapter's."""
    from cosmos_ros.model.base_card import is_base_card

    try:
        return is_base_card(json.loads((d / CARD_NAME).read_text()))
    except (OSError, json.JSONDecodeError):
        return False


def is_adapter_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a cosmos_ros adapter card (model card or the older JSON card); a base model
    folder with its own card (the sim twin, `cosmos_ros.model.base_card`) is not an adapter."""
    d = Path(path)
    if _model_card_section(d) is not None:
        return True
    return (d / CARD_NAME).is_file() and not _base_model_card(d)


def _model_card_section(d: Path) -> dict[str, Any] | None:
    """The cosmos_ros section of ``d/README.md``'s card data; None when there is none (an older adapter's
    README, or no README)."""
    readme = d / MODEL_CARD_NAME
    if not readme.is_file():
        return None
    from huggingface_hub import ModelCard

    try:
        section = ModelCard.load(readme).data.to_dict().get(CARD_SECTION)
    except Exception as e:  # YAML errors and the like: the card data cannot be read
        raise AdapterError(f"{readme} has card data that cannot be read ({e}); re-save the adapter") from e
    return section if isinstance(section, dict) else None


def read_card(adapter_dir: str | Path) -> dict[str, Any]:
    """The adapter's card (the model card's cosmos_ros section; for older adapters cosmos_ros_card.json);
    AdapterError when the directory is not a cosmos_ros adapter."""
    d = Path(adapter_dir)
    if d.is_file():  # one of its files (the weights, the card), given for the directory
        raise AdapterError(f"{d} is a file; pass the adapter directory (the folder holding it: {d.parent})")
    if not d.is_dir():
        raise AdapterError(f"adapter directory {d} does not exist")
    try:
        refuse_pickles(d, "adapter directory", depth=1)
    except PickleRefusedError as e:
        raise AdapterError(str(e)) from None
    card = _model_card_section(d)
    source = d / MODEL_CARD_NAME
    if card is None and _base_model_card(d):
        raise AdapterError(
            f"{d} is a base model (its {CARD_NAME} is a base model card), not an adapter: pass it as the "
            "base model (base_model / --base), with no adapter or with an adapter trained on it"
        )
    if card is None:
        source = d / CARD_NAME
        try:
            card = json.loads(source.read_text())
        except FileNotFoundError:
            raise AdapterError(
                f"{d} has no adapter card ({MODEL_CARD_NAME} with a {CARD_SECTION} section, or the older "
                f"{CARD_NAME}): not an adapter written by the cosmos_ros trainer"
            ) from None
        except json.JSONDecodeError as e:
            raise AdapterError(f"{source} is corrupt ({e}); re-save the adapter") from e
    if not isinstance(card, dict) or "adapter" not in card or "transformer_config" not in card:
        raise AdapterError(f"{source} lacks 'adapter'/'transformer_config'; re-save the adapter")
    return card


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    if not path.is_file():
        raise AdapterError(f"adapter file {path} is missing; the adapter directory is incomplete")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is no dict
    except Exception as e:  # SafetensorError and friends for truncated / garbled files
        raise AdapterError(
            f"adapter file {path} is corrupt or not safetensors ({e}); re-save or re-download the adapter"
        ) from e
    _require_finite(tensors, path)
    return tensors, meta


def _require_finite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """AdapterError for NaN/inf weights: such an adapter makes NaN latents, which decode to black frames
    that would be served as success."""
    bad = {}
    for key, t in tensors.items():
        if t.is_floating_point():
            n = int(t.numel() - torch.isfinite(t).sum())
            if n:
                bad[key] = n
    if bad:
        total = sum(bad.values())
        first = ", ".join(f"{k} ({n})" for k, n in list(bad.items())[:3])
        raise AdapterError(
            f"adapter file {path} holds {total} non-finite (NaN/inf) weights in {len(bad)} tensor(s), e.g. "
            f"{first}: the training run diverged. Use an earlier checkpoint or retrain with a lower learning "
            "rate"
        )


def check_base_matches(card: dict[str, Any], wm: WorldModel, adapter_dir: Path) -> None:
    """AdapterError naming the differing config keys when the adapter was trained on another base."""
    want, have = card["transformer_config"], wm.source.transformer_config
    diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
    if diff:
        detail = ", ".join(f"{k}: adapter {want.get(k)!r} vs base {have.get(k)!r}" for k in diff[:6])
        raise AdapterError(
            f"adapter {adapter_dir} was trained on base {card.get('base_model')!r} with another "
            f"transformer config than {wm.source.base!r} ({detail}); load it with its own base"
        )


def load_adapter(wm: WorldModel, adapter_dir: str | Path, merge: bool = False) -> dict[str, Any]:
    """Load an adapter directory into `wm` (built with the same base); optionally merge; returns the card."""
    d = Path(adapter_dir)
    card = read_card(d)
    check_base_matches(card, wm, d)
    cfg = AdapterConfig(**card["adapter"])
    base = _base(wm)
    if cfg.mode == "full":
        sd, _ = _load_safetensors(d / "transformer.safetensors")
        try:
            base.load_state_dict({k: v.to(next(base.parameters()).dtype) for k, v in sd.items()}, strict=True)
        except RuntimeError as e:
            raise AdapterError(
                f"{d / 'transformer.safetensors'} does not fit the base transformer: {e}"
            ) from e
    else:
        from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

        sd, _ = _load_safetensors(d / "adapter_model.safetensors")
        try:
            lc = LoraConfig.from_pretrained(str(d))
        except Exception as e:
            raise AdapterError(f"{d / 'adapter_config.json'} is missing or corrupt ({e})") from e
        inject_adapter_in_model(lc, base)
        sd = {k.removeprefix(PEFT_PREFIX): v for k, v in sd.items()}
        try:
            res = set_peft_model_state_dict(base, sd)
        except RuntimeError as e:
            raise AdapterError(
                f"{d / 'adapter_model.safetensors'} does not fit this base transformer: {e}"
            ) from e
        missing = [k for k in getattr(res, "missing_keys", []) if "lora_" in k]
        unexpected = list(getattr(res, "unexpected_keys", []))
        if missing or unexpected:
            raise AdapterError(
                f"{d / 'adapter_model.safetensors'} does not fit this base transformer "
                f"(missing e.g. {missing[:3]}, unexpected e.g. {unexpected[:3]})"
            )
        if merge:
            merge_adapters(base)
    ac = card.get("action_conditioning")
    if ac:
        sd, meta = _load_safetensors(d / "action_conditioning.safetensors")
        emb = ActionEmbedder(**json.loads(meta.get("config", json.dumps(ac))))
        try:
            emb.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise AdapterError(f"{d / 'action_conditioning.safetensors'} is inconsistent: {e}") from e
        wm.transformer.action_embedder = emb.to(device=wm.device, dtype=wm.transformer.dtype)
    wm.transformer.to(wm.device)
    return card


def card_base_model(card: dict[str, Any], adapter_dir: Path) -> str:
    """The base model an adapter card names, as something that resolves from any working directory.

    Cards store an absolute path (or a hub id); older cards stored the path as typed, relative to the
    trainer's working directory: it is tried as given, then next to the adapter directory."""
    from cosmos_ros.model.registry import SHIPPED_MODELS

    base = str(card.get("base_model") or "")
    if not base or Path(base).is_absolute() or Path(base).exists() or base in SHIPPED_MODELS:
        return base  # a shipped short name (sim_twin) resolves where it is loaded (registry.resolve_base)
    for root in (adapter_dir, adapter_dir.parent, adapter_dir.parent.parent):
        if (root / base).is_dir():
            return str((root / base).resolve())
    if card.get("base_model_is_local"):
        raise OSError(
            f"the adapter card of {adapter_dir} names the local base model {base!r}, which does not exist "
            f"(tried {Path(base).resolve()}); pass base_model explicitly"
        )
    return base


def merge_adapters(module: nn.Module) -> int:
    """Merge every peft layer into its base weight and put the plain layer back; returns how many."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    targets = [(n, m) for n, m in module.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in targets:
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, layer.get_base_layer())
    return len(targets)


def load_world_model(
    base: str | Path | None,
    adapter_dir: str | Path | None = None,
    merge: bool = False,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    load_vae: bool = True,
    revision: str | None = None,
) -> WorldModel:
    """Base model (+ adapter) ready for inference, in eval mode.

    `base=None` takes the base recorded in the adapter card. With an adapter, its revision and action
    conditioning come from the card; `merge=True` folds LoRA/DoRA into the base weights (faster inference,
    no peft layers left), `merge=False` keeps them separate.
    """
    card = read_card(adapter_dir) if adapter_dir is not None else None
    origin = "parameter base_model"
    if base is None:
        if card is None:
            raise ValueError("load_world_model needs a base model or an adapter directory")
        base = card_base_model(card, Path(adapter_dir))  # type: ignore[arg-type]
        origin = f"the adapter card of {adapter_dir}"
    if card is not None and revision is None and card.get("revision") and not Path(str(base)).exists():
        revision = card["revision"]
    try:
        wm = WorldModel.from_pretrained(
            base, revision=revision, action_dim=None, load_vae=load_vae, device=device, dtype=dtype
        )
    except PickleRefusedError:
        raise
    except (OSError, ValueError) as e:
        local = Path(str(base)).expanduser().resolve()
        tried = f"local path {local}" + ("" if Path(str(base)).is_absolute() else f" and hub id {base!r}")
        raise OSError(
            f"base model {base!r} (from {origin}) could not be loaded; tried {tried}: {e}. Pass the base "
            "model directory or hub id explicitly (predictor parameter base_model)"
        ) from e
    if adapter_dir is not None:
        load_adapter(wm, adapter_dir, merge=merge)
    return wm.eval()
