"""Latents computed once per clip and cached, so the VAE is not resident (nor rerun) while training.

One safetensors file per split: `latents` [N, 16, t, h, w] (normalised, float32), `actions` [N, A, D] when
the clips carry actions, metadata `clip_ids`, `prompts` (JSON lists) and `fingerprint` (base model, VAE
config, clip ids): a cache built for other clips or another VAE is rebuilt, not silently reused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class LatentSet:
    """The cached latents of one split."""

    latents: torch.Tensor  # [N, C, t, h, w]
    actions: torch.Tensor | None  # [N, A, D]
    prompts: list[str]
    clip_ids: list[str]

    def __len__(self) -> int:
        return int(self.latents.shape[0])


def fingerprint(base: str, vae_config: dict[str, Any], clip_ids: list[str]) -> str:
    """Identity of a cache: same base/VAE and the same clips in the same order."""
    blob = json.dumps({"base": base, "vae": vae_config, "clips": clip_ids}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def load_latents(path: str | Path, expect_fingerprint: str | None = None) -> LatentSet | None:
    """The cached set, or None when missing or built from something else."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if expect_fingerprint is not None and meta.get("fingerprint") != expect_fingerprint:
                return None
            keys = set(f.keys())
            latents = f.get_tensor("latents")
            actions = f.get_tensor("actions") if "actions" in keys else None
    except Exception:  # a truncated cache (killed mid-write is prevented by the atomic rename) is rebuilt
        return None
    return LatentSet(latents, actions, json.loads(meta["prompts"]), json.loads(meta["clip_ids"]))


def clip_ids_of(dataset: Any) -> list[str]:
    """Clip ids of a dataset without decoding frames when it offers them (ClipDataset.clip_ids)."""
    ids = getattr(dataset, "clip_ids", None)
    if ids is not None:
        return list(ids() if callable(ids) else ids)
    return [str(dataset[i]["clip_id"]) for i in range(len(dataset))]


@torch.no_grad()
def build_latents(
    wm: Any, dataset: Any, path: str | Path, fingerprint_: str, batch_size: int = 4, progress: bool = False
) -> LatentSet:
    """Encode every clip of `dataset` with `wm`'s VAE and write the cache atomically."""
    from safetensors.torch import save_file

    if len(dataset) == 0:
        raise ValueError("the dataset has no clips; record episodes and run build_clips first")
    lat: list[torch.Tensor] = []
    acts: list[torch.Tensor] = []
    prompts: list[str] = []
    ids: list[str] = []
    it = range(0, len(dataset), batch_size)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="encoding clips", unit="batch")
    for start in it:
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        frames = torch.stack([torch.as_tensor(x["frames"]) for x in items])
        lat.append(wm.encode_frames(frames).cpu())
        if all(x.get("actions") is not None for x in items):
            acts.append(torch.stack([torch.as_tensor(x["actions"], dtype=torch.float32) for x in items]))
        prompts += [str(x.get("prompt", "")) for x in items]
        ids += [str(x.get("clip_id", start + j)) for j, x in enumerate(items)]
    latents = torch.cat(lat)
    actions = torch.cat(acts) if len(acts) == len(lat) else None
    fp = fingerprint_
    tensors = {"latents": latents.contiguous()}
    if actions is not None:
        tensors["actions"] = actions.contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(
        tensors,
        str(tmp),
        metadata={"fingerprint": fp, "prompts": json.dumps(prompts), "clip_ids": json.dumps(ids)},
    )
    tmp.replace(path)
    return LatentSet(latents, actions, prompts, ids)
