"""Latents computed once per clip and cached, so the VAE is not resident (nor rerun) while training.

One safetensors file per split: `latents` [N, 16, t, h, w] (normalised, float32), `actions` [N, A, D] when
the clips carry actions, metadata `clip_ids`, `prompts` (JSON lists), `fingerprint` and `identity` (what the
fingerprint hashes, see `cache_identity`): a cache built for other clips, another VAE, or clips rebuilt
under the same ids with another clip configuration, action tokenizer or other recordings is rebuilt, not
silently reused, and `stale_reason` says which of these changed.

The identity holds no path of the data: the source bags enter by content (the digest the clip builder
records per episode, `cosmos_ros.clips.bags.content_digest`), so bags moved or copied elsewhere and clips
rebuilt from there reuse the cache, while a bag replaced by another recording under the same path and
episode id does not.
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


# Keys of a clips index (clips.json) that list the whole build (every split, per-episode sources and counts)
# rather than how the clips were made; the clip ids and prompts of the split stand for them.
_INDEX_LISTINGS = frozenset({"counts", "episodes", "shards"})
# build_clips options that change where and how the files are written, never a frame or an action.
_CLIP_OPTIONS_WITHOUT_CONTENT = frozenset({"output", "overwrite", "progress", "shard_mb"})
# Where the bags were read from: stands for their content only in an index without content digests.
_CLIP_INPUT_PATHS = "inputs"


def _source_contents(dataset: Any, meta: dict[str, Any]) -> dict[str, str] | None:
    """Episode id -> content digest of its bag, for the episodes of `dataset`'s split; None when the clip
    index predates the digests (then the input paths stay in the identity, as they were)."""
    episodes = meta.get("episodes")
    if not isinstance(episodes, dict):
        return None
    digests = {str(k): v.get("content") for k, v in episodes.items() if isinstance(v, dict)}
    if not digests or not all(isinstance(d, str) and d for d in digests.values()):
        return None
    ids = getattr(dataset, "episodes", None)  # ClipDataset: the episodes of its split
    ids = sorted(digests) if ids is None else [str(i) for i in (ids() if callable(ids) else ids)]
    return {i: digests.get(i, "") for i in ids}


def data_identity(dataset: Any, tokenizer: dict[str, Any] | None = None) -> dict[str, Any]:
    """What besides the clip ids decides the cached latents, actions and prompts of `dataset`.

    Clip ids name a clip by episode and start frame only, so clips rebuilt with another action mode,
    tokenizer (statistics, bins), frame size or fps, or from another recording of an episode, keep their
    ids while their frames and actions change. From a `ClipDataset` this takes the clip index's build
    description (`meta`: fps, size, action mode, the build_clips config without paths, ...), the content
    digest of each source bag of the split (`sources`), its action tokenizer (`tokenizer.to_dict()`) and
    the prompts; for other datasets whatever of these they expose, and `tokenizer` (the trainer's tokenizer
    dict) when the dataset carries none. Reads no frames and no bag.

    The bags' paths (`config.inputs`) are left out when the index records content digests: the digests
    say which data the clips came from, wherever it lies, so moving the bags and rebuilding the clips
    from the new place keeps the cache. An index written before the digests keeps the paths (and the
    identity, hence caches, it had).
    """
    ident: dict[str, Any] = {}
    meta = getattr(dataset, "meta", None)
    if isinstance(meta, dict):
        sources = _source_contents(dataset, meta)
        skip = _CLIP_OPTIONS_WITHOUT_CONTENT | ({_CLIP_INPUT_PATHS} if sources is not None else set())
        build = {k: v for k, v in meta.items() if k not in _INDEX_LISTINGS}
        if isinstance(build.get("config"), dict):
            build["config"] = {k: v for k, v in build["config"].items() if k not in skip}
        ident["clip_build"] = build
        if sources is not None:
            ident["sources"] = sources
    tok = getattr(dataset, "tokenizer", None)
    if tok is not None and callable(getattr(tok, "to_dict", None)):
        ident["tokenizer"] = tok.to_dict()
    elif isinstance(tok, dict):
        ident["tokenizer"] = tok
    elif tokenizer is not None:
        ident["tokenizer"] = tokenizer
    prompts = getattr(dataset, "prompts", None)
    if prompts is not None:
        ident["prompts"] = [str(p) for p in (prompts() if callable(prompts) else prompts)]
    return json.loads(json.dumps(ident, default=str))  # plain JSON values: compared after a round trip


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_identity(
    base: str, vae_config: dict[str, Any], clip_ids: list[str], data: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The parts a cache's fingerprint covers, as stored in its metadata so that a mismatch can be named.

    Small parts (base, clip build description, tokenizer) and the source digests per episode (so that a
    rebuild can name the episodes whose recording changed) are kept whole; the VAE config, clip ids and
    prompts, which can be long, by digest.
    """
    data = data or {}
    ident: dict[str, Any] = {
        "base": base,
        "vae": _digest(vae_config),
        "clip_ids": {"count": len(clip_ids), "digest": _digest(clip_ids)},
    }
    if "prompts" in data:
        ident["prompts"] = _digest(data["prompts"])
    for key in ("clip_build", "sources", "tokenizer"):
        if key in data:
            ident[key] = data[key]
    return ident


def fingerprint(
    base: str, vae_config: dict[str, Any], clip_ids: list[str], data: dict[str, Any] | None = None
) -> str:
    """Identity of a cache: same base/VAE, the same clips in the same order, built the same way.

    `data` is `data_identity(dataset)`: the clip build config, source bag digests, action tokenizer and
    prompts. Without it (a dataset exposing none of these) the fingerprint is the one caches had before
    `data` existed, so they stay valid.
    """
    parts: dict[str, Any] = {"base": base, "vae": vae_config, "clips": clip_ids}
    if data:
        parts["data"] = data
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """`key: old -> new` for the differing leaves of two JSON dicts (long values shown as 'changed')."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        a, b = json.dumps(old, default=str), json.dumps(new, default=str)
        name = prefix or "value"
        return [f"{name}: {a} -> {b}" if len(a) + len(b) <= 80 else f"{name} changed"]
    out: list[str] = []
    for k in sorted(set(old) | set(new), key=str):
        if old.get(k) != new.get(k):
            out += _changed_keys(old.get(k), new.get(k), f"{prefix}{k}" if not prefix else f"{prefix}.{k}")
    return out


def _changed_sources(old: Any, new: Any) -> list[str]:
    """The episodes whose recording differs between two `sources` dicts (episode id -> content digest)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return ["not recorded before" if new else "not recorded now"]
    out = [f"{e}: other recording" for e in sorted(set(old) & set(new), key=str) if old[e] != new[e]]
    out += [f"{e}: new" for e in sorted(set(new) - set(old), key=str)]
    return out + [f"{e}: gone" for e in sorted(set(old) - set(new), key=str)]


def stale_reason(
    path: str | Path, expect_fingerprint: str, identity: dict[str, Any] | None = None
) -> str | None:
    """None when the cache at `path` is readable and has `expect_fingerprint`, else why it must be built.

    `identity` (from `cache_identity`) lets the reason name what changed, e.g. `clip build config differs
    (action_mode: "delta" -> "absolute"; ...)`, instead of only that the fingerprint differs.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        return "no cache yet"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # any unreadable file is rebuilt
        return f"the cache file is unreadable ({e})"
    if meta.get("fingerprint") == expect_fingerprint:
        return None if load_latents(path, expect_fingerprint) is not None else "the cache file is unreadable"
    try:
        old = json.loads(meta["identity"])
    except (KeyError, ValueError):
        old = None
    if identity is None or not isinstance(old, dict):
        return "its fingerprint differs (it was built from other clips, model or clip configuration)"
    names = {
        "base": "base model",
        "vae": "VAE config",
        "clip_ids": "clip ids",
        "prompts": "prompts",
        "clip_build": "clip build config",
        "sources": "source bag content",
        "tokenizer": "action tokenizer",
    }
    reasons = []
    for key, name in names.items():
        if old.get(key) == identity.get(key):
            continue
        detail = []
        if key in ("clip_build", "tokenizer"):  # small dicts kept whole: name the keys that changed
            detail = _changed_keys(old.get(key), identity.get(key))
        elif key == "sources":
            detail = _changed_sources(old.get(key), identity.get(key))
        shown = "; ".join(detail[:6]) + ("; ..." if len(detail) > 6 else "")
        reasons.append(f"{name} differs" + (f" ({shown})" if shown else ""))
    return ", ".join(reasons) if reasons else "its fingerprint differs"


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
    wm: Any,
    dataset: Any,
    path: str | Path,
    fingerprint_: str,
    batch_size: int = 4,
    progress: bool = False,
    identity: dict[str, Any] | None = None,
) -> LatentSet:
    """Encode every clip of `dataset` with `wm`'s VAE and write the cache atomically.

    `identity` (`cache_identity`) is stored next to the fingerprint so that a later mismatch can be named.
    """
    from cosmos_ros.atomic_io import save_safetensors_atomic

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
    save_safetensors_atomic(
        tensors,
        path,
        {
            "fingerprint": fp,
            "prompts": json.dumps(prompts),
            "clip_ids": json.dumps(ids),
            "identity": json.dumps(identity or {}, default=str),
        },
    )
    return LatentSet(latents, actions, prompts, ids)
