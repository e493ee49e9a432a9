"""Prompt-embedding cache: each distinct task prompt embedded once with the real text-encoder path.

Cosmos Predict 2.5 conditions on Cosmos-Reason1-7B (a Qwen2.5-VL model): the prompt is wrapped in the
pipeline's chat template, padded to 512 tokens, and every hidden layer after the embeddings is normalised
(zero mean, unit std per token) and concatenated (28 x 3584 = 100352 channels). A robot cell has a handful of
prompts, so we compute each once (`embed_prompts`) and store them in one safetensors file; training and
serving read the cache and never hold the 7B encoder. Loading the cache never unpickles.

File format: tensors `p<sha1[:16]>` [L, C] plus safetensors metadata `prompts` (JSON: key -> prompt text),
`base`, `revision`, `max_sequence_length`.

CLI (`ros2 run cosmos_ros embed_prompts` / `cosmos-embed-prompts`):
    embed_prompts --base nvidia/Cosmos-Predict2.5-2B --prompts "pick up the cube" "open the drawer" \
        --out prompt_cache.safetensors [--clips clips_dir] [--device cuda] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterable
from pathlib import Path

import torch

SYSTEM_PROMPT = "You are a helpful assistant who will provide prompts to an image generator."
MAX_SEQUENCE_LENGTH = 512


def prompt_key(prompt: str) -> str:
    """Stable tensor name of a prompt in the cache."""
    return "p" + hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:16]


class PromptCache:
    """Prompt -> embedding [L, C], read from a safetensors cache file."""

    def __init__(
        self,
        embeddings: dict[str, torch.Tensor],
        meta: dict[str, str] | None = None,
        path: Path | None = None,
    ) -> None:
        self._emb = embeddings  # prompt -> tensor
        self.meta = dict(meta or {})
        self.path = path

    @classmethod
    def load(cls, path: str | Path) -> PromptCache:
        """Load a cache written by `build_prompt_cache`; clear error for a missing or corrupt file."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"prompt cache {path} not found; create it with "
                f"`embed_prompts --base <model> --prompts ... --out {path}`"
            )
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                names = json.loads(meta.get("prompts", "{}"))
                emb = {names[k]: f.get_tensor(k) for k in f.keys() if k in names}  # noqa: SIM118 - safe_open is no dict
        except Exception as e:  # safetensors raises its own error types for truncated/garbled files
            raise ValueError(
                f"prompt cache {path} is not a valid cosmos_ros safetensors cache ({e}); "
                f"recreate it with embed_prompts"
            ) from e
        if not emb:
            raise ValueError(f"prompt cache {path} holds no prompts; recreate it with embed_prompts")
        return cls(emb, meta, path)

    @property
    def prompts(self) -> list[str]:
        return sorted(self._emb)

    @property
    def embed_dim(self) -> int:
        return int(next(iter(self._emb.values())).shape[-1])

    @property
    def seq_len(self) -> int:
        return int(next(iter(self._emb.values())).shape[0])

    def __contains__(self, prompt: str) -> bool:
        return prompt in self._emb

    def get(self, prompt: str) -> torch.Tensor:
        """Embedding [L, C] of `prompt`; KeyError naming the fix when it was never embedded."""
        try:
            return self._emb[prompt]
        except KeyError:
            known = ", ".join(repr(p) for p in self.prompts[:5])
            raise KeyError(
                f"prompt {prompt!r} is not in the prompt cache {self.path or ''} (has {known}"
                f"{', ...' if len(self._emb) > 5 else ''}); add it with "
                f"`embed_prompts --base <model> --prompts {prompt!r} --out <cache>`"
            ) from None

    def batch(self, prompts: Iterable[str]) -> torch.Tensor:
        """Stacked embeddings [B, L, C]."""
        return torch.stack([self.get(p) for p in prompts])


def _tokenize(tokenizer: object, prompt: str, max_len: int) -> torch.Tensor:
    conversation = [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
        {"role": "user", "content": [{"type": "text", "text": prompt}]},
    ]
    ids = tokenizer.apply_chat_template(
        conversation,
        tokenize=True,
        add_generation_prompt=False,  # type: ignore[attr-defined]
        add_vision_id=False,
        max_length=max_len,
        truncation=True,
        padding="max_length",
    )
    if not isinstance(ids, list) and "input_ids" in ids:
        ids = ids["input_ids"]
    return torch.as_tensor(ids, dtype=torch.long).reshape(-1)


@torch.no_grad()
def embed_prompts(
    base: str | Path,
    prompts: list[str],
    revision: str | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    max_sequence_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Embed prompts as the 2.5 pipeline does (normalised, concatenated hidden layers); prompt -> [L, C]."""
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    from cosmos_ros.model.registry import hub_revision, resolve_base

    base = resolve_base(base)  # a shipped model's short name (sim_twin) -> its folder

    base = str(base)
    rev = hub_revision(base, revision)
    tokenizer = AutoTokenizer.from_pretrained(base, subfolder="tokenizer", revision=rev)
    encoder = (
        Qwen2_5_VLForConditionalGeneration.from_pretrained(
            base, subfolder="text_encoder", revision=rev, dtype=dtype
        )
        .to(device)
        .eval()
    )
    if max_sequence_length is None:
        max_sequence_length = min(MAX_SEQUENCE_LENGTH, int(getattr(tokenizer, "model_max_length", 512)))
    out: dict[str, torch.Tensor] = {}
    for prompt in dict.fromkeys(prompts):
        ids = _tokenize(tokenizer, prompt, max_sequence_length).unsqueeze(0).to(device)
        hidden = encoder(ids, output_hidden_states=True).hidden_states
        normed = [
            (h - h.mean(dim=-1, keepdim=True)) / (h.std(dim=-1, keepdim=True) + 1e-8) for h in hidden[1:]
        ]
        out[prompt] = torch.cat(normed, dim=-1)[0].to("cpu", dtype).contiguous()
    return out


def build_prompt_cache(
    base: str | Path,
    prompts: list[str],
    out: str | Path,
    revision: str | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    merge: bool = True,
) -> Path:
    """Embed the prompts not yet in `out` and (re)write the cache file atomically; return its path."""
    from cosmos_ros.atomic_io import save_safetensors_atomic

    out = Path(out)
    existing: dict[str, torch.Tensor] = {}
    if merge and out.exists():
        existing = dict(PromptCache.load(out)._emb)
    todo = [p for p in dict.fromkeys(prompts) if p not in existing]
    if not prompts:
        raise ValueError("no prompts to embed; pass --prompts or --clips")
    new = embed_prompts(base, todo, revision, device, dtype) if todo else {}
    allp = {**existing, **new}
    shapes = {tuple(t.shape) for t in allp.values()}
    if len(shapes) != 1:
        raise ValueError(
            f"prompt cache {out} would mix embedding shapes {shapes}: it was built with another "
            f"text encoder; write to a new file"
        )
    tensors = {prompt_key(p): t.contiguous() for p, t in allp.items()}
    meta = {
        "prompts": json.dumps({prompt_key(p): p for p in allp}),
        "base": str(base),
        "revision": str(revision or ""),
        "max_sequence_length": str(next(iter(shapes))[0]),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors_atomic(tensors, out, meta)
    return out


def _clip_prompts(clips_dir: Path) -> list[str]:
    index = json.loads((clips_dir / "clips.json").read_text())
    return sorted({c["prompt"] for shard in index.get("shards", []) for c in shard.get("clips", [])})


def main(argv: list[str] | None = None) -> int:
    """Compute and store prompt embeddings (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="embed_prompts", description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="hub id or local dir with text_encoder/ and tokenizer/")
    ap.add_argument("--revision", default=None)
    ap.add_argument("--prompts", nargs="*", default=[], help="prompt texts to embed")
    ap.add_argument("--clips", type=Path, default=None, help="also embed every prompt of this clips dir")
    ap.add_argument("--out", type=Path, required=True, help="cache file (.safetensors); merged if it exists")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = ap.parse_args(argv)
    prompts = list(args.prompts)
    try:
        if args.clips is not None:
            prompts += _clip_prompts(args.clips)
        path = build_prompt_cache(
            args.base, prompts, args.out, args.revision, args.device, getattr(torch, args.dtype)
        )
        cache = PromptCache.load(path)
    except (OSError, ValueError, KeyError) as e:
        print(f"embed_prompts: error: {e}", file=sys.stderr)
        return 1
    print(f"embed_prompts: {len(cache.prompts)} prompt(s), {cache.seq_len}x{cache.embed_dim} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
