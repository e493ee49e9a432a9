"""DoRA for training: the weight norm once per optimizer step, one fused scale per token.

peft's DoRA layer (`use_dora=True`) computes, in *every* forward of every adapted Linear,

    lora_weight = lora_B(lora_A(eye(d_in))).T          # B @ A through an identity matrix (FSDP-safe)
    norm        = ||W + s * lora_weight||_row           # detached: DoRA §4.3 treats it as a constant
    out         = result + (m/norm - 1) * base + (m/norm) * s * lora_B(lora_A(x))

The norm reads every frozen weight (1.8 G elements for the six default targets of the 2B model) and builds
a d_in x d_in identity per layer, per forward and again where the backward recomputes; the output formula
keeps `base` and `lora` apart (two saved activations) and promotes them to float32. Yet the norm only
changes when lora_A/lora_B change, i.e. at optimizer steps, and it receives no gradient. So for training we

- compute the norm once per optimizer step (an optimizer step post-hook, replayed as one CUDA graph on
  GPUs; explicit `refresh()` after loading weights), in float32 as peft's training forward does with the
  float32 adapters the trainer keeps, but without forming W + sBA (`_weight_norm`): within 1e-4 of peft's
  when ||sBA|| is a few % of ||W|| (4e-4 at 60%; a bf16 norm would be off by 3-4e-3);
- compute `out = bias + (m / norm) * (W x + s * B A x)`: peft's function up to rounding, one saved
  activation (under torch.compile), the float32 scale applied to the (bf16 under autocast) sum.

It is installed per layer by replacing the layer's peft *variant* (peft's extension point for LoRA variants;
peft's own merge/unmerge are inherited) and touches nothing saved: the adapter files stay peft's format.
Not for FSDP (the norm needs whole weights; the trainer keeps peft's forward there), nor for layers with
lora dropout > 0 (peft applies the dropout to the base path too: they keep peft's forward), nor for DoRA on
embeddings or convolutions. The base weights must stay frozen (||W||^2 is cached; an in-place change of W
is noticed through its version counter, a change of `scaling` through the capture key).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

_NORM_ATTR = "cosmos_step_norm"


def _variant_base() -> type:
    from peft.tuners.lora.variants import DoraLinearVariant

    return DoraLinearVariant


def _make_variant() -> type:
    base_cls = _variant_base()

    class StepNormDoraLinearVariant(base_cls):  # type: ignore[misc, valid-type]
        """peft's DoRA Linear variant with the norm read from the per-step cache (module docstring)."""

        @staticmethod
        def forward(module: Any, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs: Any):
            # installed only with the cached norm present and no lora dropout (enable_step_norm_dora)
            dora = module.lora_magnitude_vector[active_adapter]
            norm = getattr(dora, _NORM_ATTR)
            lora_a = module.lora_A[active_adapter]
            lora_b = module.lora_B[active_adapter]
            bias = module.get_base_layer().bias
            base = result if bias is None else result - bias
            y = base + lora_b(lora_a(x)) * module.scaling[active_adapter]
            scale = dora.weight / norm  # float32 [d_out]; no gradient into the norm (DoRA §4.3)
            out = (y.float() * scale).to(y.dtype)
            return out if bias is None else out + bias

    return StepNormDoraLinearVariant


_VARIANT: type | None = None


def _variant() -> type:
    global _VARIANT
    if _VARIANT is None:
        _VARIANT = _make_variant()
    return _VARIANT


def _dora_layers(model: nn.Module) -> Iterator[tuple[nn.Module, str]]:
    """(peft LoRA Linear layer, adapter name) for every DoRA adapter in `model`."""
    base_cls = _variant_base()
    for m in model.modules():
        variants = getattr(m, "lora_variant", None)
        if not isinstance(variants, dict):
            continue
        if not isinstance(getattr(m, "get_base_layer", lambda: None)(), nn.Linear):
            continue  # peft's DoRA variants for embeddings/convolutions subclass the Linear one: not ours
        for name, v in variants.items():
            if not (isinstance(v, base_cls) or (isinstance(v, type) and issubclass(v, base_cls))):
                continue
            if not isinstance(m.lora_dropout[name], nn.Identity):
                continue  # dropout: peft's forward (module docstring)
            yield m, name


@torch.no_grad()
def _weight_sq_norm(weight: torch.Tensor) -> torch.Tensor:
    """||W||^2 per output row in float32 (W is frozen: computed once per layer)."""
    return weight.float().pow(2).sum(dim=1)


@torch.no_grad()
def _weight_norm(layer: Any, adapter: str, w_sq: torch.Tensor) -> torch.Tensor:
    """||W + s B A||_row in float32, as peft's training forward computes it, without forming W + s B A.

    peft (adapters in float32, as the trainer keeps them) builds the full d_out x d_in sum in float32 and
    takes its row norms: three passes over a float32 copy of every adapted weight. Expanding the square,
    ||W + sBA||^2 = ||W||^2 + 2s rowsum(B * (W A^T)) + s^2 rowsum((B A A^T) * B): the first term is
    constant (W is frozen), the second reads W once in a d_out x d_in x r matmul, the third is r x r work.
    The matmul runs in W's dtype (float32 accumulation); its bf16 rounding only touches the cross term,
    which is small next to ||W||^2: measured on the tiny model, 4e-5..7e-5 relative to peft's float32 norm
    with ||sBA|| at 5% of ||W||, 4e-4 at 60% (bf16 throughout: 3-4e-3).
    """
    weight = layer.get_base_layer().weight
    if getattr(layer, "fan_in_fan_out", False):
        weight = weight.T
    a = layer.lora_A[adapter].weight.float()
    b = layer.lora_B[adapter].weight.float()
    s = float(layer.scaling[adapter])
    wa = torch.mm(weight, a.to(weight.dtype).t()).float()  # [d_out, r]
    cross = (b * wa).sum(dim=1)
    lora_sq = ((b @ (a @ a.t())) * b).sum(dim=1)
    return (w_sq + 2.0 * s * cross + (s * s) * lora_sq).clamp(min=0.0).sqrt()


class StepNormDoRA:
    """Handle of `enable_step_norm_dora`: `refresh()` recomputes the cached norms, `remove()` undoes it.

    On CUDA the refresh (a few small kernels per adapted layer: 168 layers for the 2B model's six default
    targets) is captured once into a CUDA graph and replayed after each optimizer step: launched one by one
    from Python a DoRA step took 0.441 s against 0.422 s with the graph (H100, LoRA 0.369 / 0.368 s in the
    same runs; benchmarks/NOTES_gpu.md runs 9 and 11). The graph
    reads the parameters in place, so it is captured again whenever one of them was replaced by another
    tensor (e.g. a `load_state_dict` that assigns).
    """

    def __init__(
        self, layers: list[tuple[nn.Module, str]], hook: Any | None, cuda_graph: bool = True
    ) -> None:
        self.layers = layers
        self._hook = hook
        self.refreshes = 0
        self.captures = 0
        self.cuda_graph = cuda_graph
        self._graph: Any = None
        self._graph_key: tuple[Any, ...] | None = None
        self._w_sq: dict[int, tuple[tuple[Any, ...], torch.Tensor]] = {}  # ||W||^2 per layer (W frozen)

    def __len__(self) -> int:
        return len(self.layers)

    def _tensors_key(self) -> tuple[Any, ...]:
        """What the captured graph depends on besides the values it reads: addresses and the scaling."""
        key: list[Any] = []
        for layer, name in self.layers:
            w = layer.get_base_layer().weight
            key += [layer.lora_A[name].weight.data_ptr(), layer.lora_B[name].weight.data_ptr()]
            key += [w.data_ptr(), w._version, float(layer.scaling[name])]
            key.append(getattr(layer.lora_magnitude_vector[name], _NORM_ATTR).data_ptr())
        return tuple(key)

    @torch.no_grad()
    def _refresh_eager(self) -> None:
        for layer, name in self.layers:
            dora = layer.lora_magnitude_vector[name]
            w = layer.get_base_layer().weight
            key = (w.data_ptr(), w._version, w.dtype)
            cached_sq = self._w_sq.get(id(layer))
            if cached_sq is None or cached_sq[0] != key:
                cached_sq = (key, _weight_sq_norm(w.T if getattr(layer, "fan_in_fan_out", False) else w))
                self._w_sq[id(layer)] = cached_sq
            norm = _weight_norm(layer, name, cached_sq[1])
            cached = getattr(dora, _NORM_ATTR, None)
            if cached is None or cached.shape != norm.shape or cached.device != norm.device:
                setattr(dora, _NORM_ATTR, norm)
            else:
                cached.copy_(norm)  # in place: compiled graphs read it as an input, no recompile

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute every cached norm from the current lora_A/lora_B (call after loading weights)."""
        self.refreshes += 1
        if not self.layers:
            return
        first = self.layers[0][0].lora_A[self.layers[0][1]].weight
        if not (self.cuda_graph and first.is_cuda and self._graph_key is not None):
            self._refresh_eager()  # CPU, first call (creates the cached tensors), or graphs off
            if self.cuda_graph and first.is_cuda:
                self._graph_key = ()  # capture on the next call, once the cached tensors exist
            return
        key = self._tensors_key()
        if self._graph is None or key != self._graph_key:
            self._capture(key)
        self._graph.replay()

    def _capture(self, key: tuple[int, ...]) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._refresh_eager()  # warm-up on a side stream, as CUDA graph capture requires
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._refresh_eager()
        self._graph, self._graph_key = graph, key
        self.captures += 1

    def remove(self) -> None:
        """Back to peft's own forward."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._graph = self._graph_key = None
        for layer, name in self.layers:
            layer.lora_variant[name] = _variant_base()()
            if hasattr(layer.lora_magnitude_vector[name], _NORM_ATTR):
                delattr(layer.lora_magnitude_vector[name], _NORM_ATTR)


def enable_step_norm_dora(
    model: nn.Module, optimizer: torch.optim.Optimizer | None = None, cuda_graph: bool = True
) -> StepNormDoRA:
    """Use the per-step DoRA norm in every DoRA layer of `model`; recompute it after each `optimizer` step.

    Call once the model is on its device and the adapter weights are final for step 0 (after loading a
    checkpoint call `refresh()`). Anything that changes lora_A/lora_B outside `optimizer.step()` must call
    `refresh()` too, or the forward uses a stale norm. Returns a handle (empty when the model has no DoRA).
    """
    layers = list(_dora_layers(model))
    if not layers:
        return StepNormDoRA([], None)
    handle = StepNormDoRA(layers, None, cuda_graph)
    handle.refresh()  # the cached norms exist before the variant that reads them is installed
    variant = _variant()
    for layer, name in layers:
        layer.lora_variant[name] = variant()
    if optimizer is not None:
        opt = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps one
        handle._hook = opt.register_step_post_hook(lambda *_: handle.refresh())
    return handle
