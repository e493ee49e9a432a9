"""``ClipDataset``: a PyTorch Dataset over a clips directory, reading one clip at a time.

Lazy: ``clips.json`` and ``tokenizer.json`` are read at construction; frames come from the shards through
safetensors' memory map, sliced per item, so memory stays at one clip per item whatever the dataset size.
Shard handles are opened on first use in each process (DataLoader workers open their own after fork).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from cosmos_ros.tokens import ActionTokenizer

SPLITS = ("train", "val", "all")

try:  # a real torch Dataset when torch is installed; the same class works without it (as_numpy=True)
    from torch.utils.data import Dataset as _Base
except ImportError:  # pragma: no cover - torch is in the [train] extra
    _Base = object  # type: ignore[assignment,misc]


class ClipDataset(_Base):  # type: ignore[misc,valid-type]
    """Clips of one split (``"train"``, ``"val"`` or ``"all"``) of a clips directory.

    Items (see docs/ARCHITECTURE.md): ``frames`` uint8 ``[T, H, W, 3]``, ``actions`` float32 ``[T-1, D]``
    (normalized), ``tokens`` int64 ``[T-1, D]`` (when quantized), ``raw_actions`` float32 ``[T-1, D]``,
    ``positions`` float64 ``[T, J]`` (joint state as of each frame), ``timestamps`` float64 ``[T]``
    (seconds), ``stamps_ns`` int64 ``[T]`` (the same stamps, exact),
    ``episode_id``, ``prompt``, ``clip_id``, ``camera``. Tensors are torch tensors (numpy with
    ``as_numpy=True``, for users without torch).
    """

    def __init__(
        self, root: str | Path, split: str = "train", camera: str | None = None, as_numpy: bool = False
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split {split!r}: use one of {', '.join(SPLITS)}")
        self.root = Path(root)
        index_path = self.root / "clips.json"
        if not index_path.exists():
            raise FileNotFoundError(
                f"{index_path} not found: build clips first (build_clips ... -o {self.root})"
            )
        self.meta: dict[str, Any] = json.loads(index_path.read_text())
        self.tokenizer = ActionTokenizer.load(self.root / "tokenizer.json")
        self.split = split
        self.as_numpy = as_numpy
        self.num_frames = int(self.meta["num_frames"])
        self._items: list[tuple[int, dict[str, Any]]] = []
        self._shards: list[dict[str, Any]] = []
        for shard in self.meta["shards"]:
            if split != "all" and shard["split"] != split:
                continue
            if camera is not None and shard["camera"] != camera:
                continue
            si = len(self._shards)
            self._shards.append(shard)
            self._items.extend((si, clip) for clip in shard["clips"])
        self._handles: dict[tuple[int, str], Any] = {}
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def clip_ids(self) -> list[str]:
        """Clip ids in item order, without reading any frame (the trainer keys its latent cache on them)."""
        return [clip["clip_id"] for _, clip in self._items]

    @property
    def prompts(self) -> list[str]:
        """Prompt of each clip in item order."""
        return [clip["prompt"] for _, clip in self._items]

    @property
    def episodes(self) -> list[str]:
        """Episode ids present in this split."""
        return sorted({clip["episode_id"] for _, clip in self._items})

    def _handle(self, si: int, key: str) -> Any:
        import os

        if self._pid != os.getpid():  # forked into a DataLoader worker: do not share mmaps
            self._handles = {}
            self._pid = os.getpid()
        h = self._handles.get((si, key))
        if h is None:
            h = safe_open(str(self.root / self._shards[si][key]), framework="numpy")
            self._handles[(si, key)] = h
        return h

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"clip index {i} out of range for {len(self)} clips")
        si, clip = self._items[i]
        a, b = clip["start"], clip["start"] + self.num_frames
        data = self._handle(si, "file")
        labels = self._handle(si, "labels")
        item: dict[str, Any] = {
            "frames": data.get_slice("frames")[a:b],
            "timestamps": data.get_slice("timestamps")[a:b],
            "stamps_ns": data.get_slice("stamps_ns")[a:b],
            "positions": data.get_slice("positions")[a:b],
            "raw_actions": data.get_slice("raw_actions")[a : b - 1],
            "actions": labels.get_slice("actions")[a : b - 1],
        }
        if "tokens" in labels.keys():  # noqa: SIM118 - safe_open is not a dict
            item["tokens"] = labels.get_slice("tokens")[a : b - 1]
        if item["frames"].shape[0] != self.num_frames or not np.isfinite(item["actions"]).all():
            raise RuntimeError(
                f"{self.root}: clip {clip['clip_id']} is damaged in {self._shards[si]['file']}"
            )
        if not self.as_numpy:
            import torch

            item = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in item.items()}
        item.update(
            episode_id=clip["episode_id"],
            prompt=clip["prompt"],
            clip_id=clip["clip_id"],
            camera=clip["camera"],
        )
        return item
