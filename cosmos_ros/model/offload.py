"""Activation offloading: tensors saved for the backward pass go to (pinned) CPU memory and come back in time.

Why: at 93 frames 704x1280 (84480 tokens) self-attention is ~85% of the forward FLOPs, so recomputing it
(full checkpointing) costs a third more time, while keeping what the blocks save costs ~48 GiB
(benchmarks/NOTES_gpu.md). Moving the saved tensors to host memory keeps the compute of "save everything"
at the memory of "save almost nothing", as long as the copies overlap the compute: a block's forward at
that length takes ~0.15 s, its saved tensors (~1.5 GiB with the compiled block) take ~0.06 s over PCIe 5.

How: `torch.autograd.graph.saved_tensors_hooks` around each offloaded block's forward (they also see the
tensors a `torch.compile`d block saves). The pack hook starts an asynchronous device-to-host copy on a side
CUDA stream into pinned memory and drops the GPU tensor (`record_stream` keeps its memory reserved until
the copy is done); in the backward pass the first tensor unpacked from block i starts the host-to-device
copies of the previous offloaded block on the side stream (prefetch), so block i-1's tensors arrive while
block i's backward runs. Parameters, buffers and small tensors (< `min_bytes`) stay where they are. On CPU
the same code runs with a plain copy (no streams, no pinning): the test path.

Inputs every block receives alike (the text context, the time embeddings, the rotary tables: all block
arguments after `hidden_states`) are named by the caller (`group(i, shared=...)`) and never copied. At 93
frames 704x1280 diffusers' per-token time embeddings were 1.3 GiB of each block's 2.35: offloaded with
each block they made 27 identical host copies (37 of the 63.4 GiB moved per step; 26.4 GiB now) and two
device copies, the block's and the prefetched previous block's, at the backward's peak (CUDA memory
snapshot, benchmarks/memory_snapshot.py). The checkpointed blocks now get them per frame
(perf._FrameInputs); any other shared input is still kept once rather than copied per block.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["ActivationOffloader", "OffloadStats"]


def _dense(t: torch.Tensor) -> bool:
    """True when `t` covers its memory without gaps or overlaps (a permuted dense tensor is fine)."""
    dims = sorted((st, sz) for st, sz in zip(t.stride(), t.size(), strict=True) if sz != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def _tensors(obj: object) -> Iterator[torch.Tensor]:
    """The tensors in `obj` (a tensor, or tuples / lists / dicts of them, at any depth)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for x in obj:
            yield from _tensors(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _tensors(x)


@dataclass
class OffloadStats:
    """What the offloader moved in the last forward (logged by the benchmark)."""

    tensors: int = 0
    bytes: int = 0
    kept: int = 0  # parameters, buffers and small tensors left in place
    shared: int = 0  # of those, inputs shared by every group (`group(i, shared=...)`)
    on_demand: int = 0  # unpacked before their prefetch was started (a stall on CUDA)


class _Packed:
    """One offloaded tensor: its host copy, and the device copy once fetched back."""

    __slots__ = ("__weakref__", "device", "event", "fetched", "gpu", "group", "host", "size", "stride")

    def __init__(self, host: torch.Tensor, t: torch.Tensor, group: int) -> None:
        self.host: torch.Tensor | None = host
        # the original layout: compiled backward graphs assert the strides of what they saved
        self.size, self.stride = t.size(), t.stride()
        device = t.device
        self.device = device
        self.group = group
        self.event: torch.cuda.Event | None = None  # set when the copy it waits on was queued
        self.gpu: torch.Tensor | None = None
        self.fetched = False


@dataclass
class _Group:
    packed: list[weakref.ref] = field(default_factory=list)
    prefetched: bool = False


class ActivationOffloader:
    """Offloads what the forward of selected modules saves for backward (module docstring).

    Use `with offloader.group(i): out = block(*args)` for each offloaded block in forward order; the
    groups are prefetched in reverse order during the backward pass. One instance per model; it keeps no
    tensor alive beyond the autograd graph that owns the saved tensors.
    """

    def __init__(self, model: nn.Module, min_bytes: int = 1 << 20) -> None:
        self.min_bytes = int(min_bytes)
        self._model = model
        self._keep_ptrs: set[int] | None = None
        self._groups: dict[int, _Group] = {}
        self._order: list[int] = []  # offloaded groups in forward order (the last forward's)
        self._current = -1
        self._seen: dict[int, tuple[weakref.ref, _Packed]] = {}  # id(tensor) -> packed, within a group
        self._stream: torch.cuda.Stream | None = None
        self._shared_ptrs: set[int] = set()
        self.stats = OffloadStats()

    # ------------------------------------------------------------------------------------ forward
    @contextlib.contextmanager
    def group(self, index: int, shared: Iterable[object] = ()) -> Iterator[None]:
        """Offload what runs inside as group `index` (call in forward order; restart at the first).

        `shared`: tensors (or nested tuples / lists / dicts of them) that every group receives, such as a
        block's conditioning arguments; what is saved of them (views included) stays where it is.
        """
        self._shared_ptrs = {
            t.untyped_storage().data_ptr() for t in _tensors(shared) if t.device.type != "meta"
        }
        if not self._order or index <= self._order[-1]:  # a new forward pass
            self._order = []
            self._groups = {}
            self.stats = OffloadStats()
            self._keep_ptrs = None
        self._order.append(index)
        self._groups[index] = _Group()
        self._current = index
        self._seen = {}
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
                yield
        finally:
            self._current = -1
            self._seen = {}
            self._shared_ptrs = set()

    def _keep(self, t: torch.Tensor) -> bool:
        if t.numel() * t.element_size() < self.min_bytes or t.layout != torch.strided:
            return True
        if t.untyped_storage().data_ptr() in self._shared_ptrs:
            self.stats.shared += 1
            return True
        if self._keep_ptrs is None:  # parameters and buffers: resident anyway, never copied
            self._keep_ptrs = {
                p.untyped_storage().data_ptr()
                for p in [*self._model.parameters(), *self._model.buffers()]
                if p.device.type != "meta"
            }
        return t.untyped_storage().data_ptr() in self._keep_ptrs

    def _side_stream(self, device: torch.device) -> torch.cuda.Stream:
        if self._stream is None or self._stream.device != device:
            self._stream = torch.cuda.Stream(device=device)
        return self._stream

    def _pack(self, t: torch.Tensor) -> object:
        with torch.no_grad():  # the copies are data, not part of the graph being recorded
            return self._pack_data(t)

    def _pack_data(self, t: torch.Tensor) -> object:
        if self._current < 0 or self._keep(t):
            self.stats.kept += 1
            return t
        seen = self._seen.get(id(t))
        if seen is not None and seen[0]() is t:  # the same tensor saved by several ops: one copy
            return seen[1]
        src = t if _dense(t) else t.contiguous()  # a view with gaps: copy its values, restore its strides
        if t.device.type == "cuda":
            stream = self._side_stream(t.device)
            stream.wait_stream(torch.cuda.current_stream(t.device))  # t is ready where it was computed
            with torch.cuda.stream(stream):
                host = torch.empty_strided(src.size(), src.stride(), dtype=src.dtype, pin_memory=True)
                host.copy_(src, non_blocking=True)
                event = torch.cuda.Event()
                event.record(stream)
            src.record_stream(stream)  # its memory is not reused before the copy is done
            packed = _Packed(host, t, self._current)
            packed.event = event
        else:  # CPU: the same bookkeeping with a plain copy (what the tests run)
            packed = _Packed(src.detach().clone(), t, self._current)
        self._seen[id(t)] = (weakref.ref(t), packed)
        self._groups[self._current].packed.append(weakref.ref(packed))
        self.stats.tensors += 1
        self.stats.bytes += src.numel() * src.element_size()
        return packed

    # ----------------------------------------------------------------------------------- backward
    def _fetch(self, p: _Packed) -> None:
        if p.fetched:
            return
        p.fetched = True
        if p.device.type != "cuda":
            assert p.host is not None
            p.gpu = torch.empty_strided(p.size, p.stride, dtype=p.host.dtype).copy_(p.host)
            return
        stream = self._side_stream(p.device)
        with torch.cuda.stream(stream):
            host = p.host
            assert host is not None
            gpu = torch.empty_strided(p.size, p.stride, dtype=host.dtype, device=p.device)
            gpu.copy_(host, non_blocking=True)  # dense: one memcpy; a gapped view: a strided scatter
            event = torch.cuda.Event()
            event.record(stream)
        p.gpu, p.event = gpu, event
        p.host = None  # the pinned block returns to torch's host cache once the copy is done

    def _prefetch(self, index: int) -> None:
        g = self._groups.get(index)
        if g is None or g.prefetched:
            return
        g.prefetched = True
        for ref in g.packed:
            p = ref()
            if p is not None:
                self._fetch(p)

    def _unpack(self, packed: object) -> torch.Tensor:
        if isinstance(packed, torch.Tensor):
            return packed
        assert isinstance(packed, _Packed)
        g = self._groups.get(packed.group)
        if g is not None and not g.prefetched:
            if not packed.fetched:
                self.stats.on_demand += 1
            self._prefetch(packed.group)
        if packed.group in self._order:  # start the previous offloaded group while this one computes
            i = self._order.index(packed.group)
            if i > 0:
                self._prefetch(self._order[i - 1])
        self._fetch(packed)
        out = packed.gpu
        assert out is not None
        if packed.device.type == "cuda":
            cur = torch.cuda.current_stream(packed.device)
            assert packed.event is not None
            cur.wait_event(packed.event)
            out.record_stream(cur)  # allocated on the side stream, used (and freed) on this one
        return out
