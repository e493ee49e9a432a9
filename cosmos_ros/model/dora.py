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
  GPUs; explicit `refresh()` after loading weights), in the base weight's dtype exactly as peft does (so
  m / norm == 1 at initialisation, and a trained adapter merges to the same function with peft's own merge
  code);
- compute `out = bias + (m / norm) * (W x + s * B A x)`: the same function, one saved activation, the scale
  applied in float32 and rounded once.

It is installed per layer by replacing the layer's peft *variant* (peft's extension point for LoRA variants;
peft's own merge/unmerge are inherited) and touches nothing saved: the adapter files stay peft's format.
Not for FSDP (the norm needs whole weights; the trainer keeps peft's forward there) nor lora dropout > 0 in
training (falls back to peft's forward, which applies the dropout to the base path too).
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
            dora = module.lora_magnitude_vector[active_adapter]
            norm = getattr(dora, _NORM_ATTR, None)
            dropout = module.lora_dropout[active_adapter]
            if norm is None or (module.training and not isinstance(dropout, nn.Identity)):
                return base_cls.forward(module, active_adapter, x, result, **kwargs)
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
        for name, v in variants.items():
            if isinstance(v, base_cls) or (isinstance(v, type) and issubclass(v, base_cls)):
                yield m, name


@torch.no_grad()
def _weight_norm(layer: Any, adapter: str) -> torch.Tensor:
    """||W + s B A||_row in the base weight's dtype, as peft's `DoraLinearLayer.get_weight_norm` does."""
    from peft.utils.integrations import dequantize_module_weight

    base = layer.get_base_layer()
    weight = dequantize_module_weight(base)
    a = layer.lora_A[adapter].weight
    b = layer.lora_B[adapter].weight
    lora_weight = (b.to(weight.dtype) @ a.to(weight.dtype)).to(weight.dtype)
    if getattr(layer, "fan_in_fan_out", False):
        weight = weight.T
    w = weight + layer.scaling[adapter] * lora_weight
    return torch.linalg.norm(w, dim=1).to(weight.dtype)


class StepNormDoRA:
    """Handle of `enable_step_norm_dora`: `refresh()` recomputes the cached norms, `remove()` undoes it.

    On CUDA the refresh (a few small kernels per adapted layer: 168 layers for the 2B model's six default
    targets) is captured once into a CUDA graph and replayed after each optimizer step: launched one by one
    from Python it left the GPU idle for about 40 ms per step on an H100 (benchmarks/NOTES_gpu.md). The graph
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
        self._graph_key: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.layers)

    def _tensors_key(self) -> tuple[int, ...]:
        key = []
        for layer, name in self.layers:
            for t in (layer.lora_A[name].weight, layer.lora_B[name].weight, layer.get_base_layer().weight):
                key.append(t.data_ptr())
            key.append(getattr(layer.lora_magnitude_vector[name], _NORM_ATTR).data_ptr())
        return tuple(key)

    @torch.no_grad()
    def _refresh_eager(self) -> None:
        for layer, name in self.layers:
            dora = layer.lora_magnitude_vector[name]
            norm = _weight_norm(layer, name)
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
    variant = _variant()
    for layer, name in layers:
        layer.lora_variant[name] = variant()
    handle = StepNormDoRA(layers, None, cuda_graph)
    handle.refresh()
    if optimizer is not None:
        opt = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps one
        handle._hook = opt.register_step_post_hook(lambda *_: handle.refresh())
    return handle
