"""Faster decoding (and encoding) with the diffusers Wan VAE (`AutoencoderKLWan`) for serving, same function.

Decoding 32 candidates of 13 frames at 256x320 took 27% of a collision check on an H100 (about 62 ms per
candidate, benchmarks/NOTES_gpu.md). The decoder's residual blocks run, per 3-D convolution, an RMS norm that
upcasts the whole activation to float32 (`F.normalize(x.float())`), a scale, a bias, a SiLU, a pad and a
cat, each a full pass over activations of up to 2 GB (batch 32, 96 channels, 256x320): memory traffic the
convolutions then wait for. Three switches, each keeping the computed function (up to float rounding);
they patch the residual blocks and convolutions of the encoder too (the predictor encodes context frames):

- `fuse_norms`: every `WanResidualBlock`'s norm + SiLU pair becomes one function (compiled with
  `torch.compile` on CUDA into one kernel: one read, one write, float32 kept in registers only); the block's
  SiLU module, used only right after its norms, becomes an identity.
- `channels_last`: the VAE's weights in `channels_last_3d`, so cuDNN runs its 3-D convolutions on NDHWC
  tensors (its tensor-core kernels' native layout) instead of transposing around each call.
- `conv_padding`: `WanCausalConv3d` pads height and width with an explicit `F.pad` copy of its whole input
  before each convolution; the convolution's own zero padding computes the same without that copy (only
  the causal time padding, which the frame cache fills, stays explicit).

`optimize_vae(vae, ...)` applies them in place and returns what it did; idempotent (a second call returns
the first call's report and changes nothing, whatever its switches).

`decode_shared_prefix(vae, z, n)` decodes latents whose first `n` frames are equal in every row (a batch of
candidates predicted from one context) with those frames run once at batch 1: the decoder is causal, frame
by frame, so what it carries forward from them (its frame cache) is the same for every row and is expanded
to the batch instead of recomputed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _norm_act(
    x: torch.Tensor, gamma: torch.Tensor, bias: torch.Tensor | float, scale: float, dim: int, act: bool
) -> torch.Tensor:
    """diffusers' `WanRMS_norm.forward` (float32 normalise, back to x's dtype, affine), then SiLU if `act`."""
    y = F.normalize(x.float(), dim=dim).to(x.dtype) * scale * gamma + bias
    return F.silu(y) if act else y


@functools.cache
def _compiled_norm_act() -> Callable[..., torch.Tensor]:
    # dynamic shapes: one kernel per (channel count, layout) instead of one compile per level and chunk
    # length (static shapes hit dynamo's recompile limit of 8 in the decoder and fell back to eager)
    return torch.compile(_norm_act, dynamic=True)


@functools.cache
def _fused_norm_class(base: type) -> type:
    class FusedRMSNormAct(base):  # type: ignore[misc, valid-type]
        """`WanRMS_norm` + the SiLU after it in one function; same parameters and state-dict keys."""

        _cosmos_compiled: bool = False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            fn = _compiled_norm_act() if self._cosmos_compiled and x.is_cuda else _norm_act
            return fn(x, self.gamma, self.bias, self.scale, 1 if self.channel_first else -1, True)

    return FusedRMSNormAct


@functools.cache
def _padded_conv_class(base: type) -> type:
    class ConvPaddedCausalConv3d(base):  # type: ignore[misc, valid-type]
        """`WanCausalConv3d` with the spatial zero padding done by the convolution itself."""

        def forward(self, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
            pw, _, ph, _, pt, _ = self._padding  # (w, w, h, h, 2*t_pad, 0) as diffusers stores it
            if cache_x is not None and pt > 0:
                x = torch.cat([cache_x.to(x.device), x], dim=2)
                pt -= cache_x.shape[2]
            if pt > 0:
                x = F.pad(x, (0, 0, 0, 0, pt, 0))
            return F.conv3d(x, self.weight, self.bias, self.stride, (0, ph, pw), self.dilation, self.groups)

    return ConvPaddedCausalConv3d


def optimize_vae(
    vae: nn.Module,
    fuse_norms: bool = True,
    channels_last: bool = True,
    conv_padding: bool = True,
    compile: bool | None = None,
) -> dict[str, Any]:
    """Apply the switches of the module docstring to `vae` in place; return what was done.

    `compile=None` compiles the fused norms on CUDA only (on CPU the fused function runs eagerly: same
    structure, checkable in tests).
    """
    done: dict[str, Any] = {"fused_blocks": 0, "channels_last": False, "padded_convs": 0}
    if getattr(vae, "_cosmos_vae_perf", None) is not None:
        return vae._cosmos_vae_perf
    cuda = next(vae.parameters()).is_cuda
    do_compile = cuda if compile is None else bool(compile)
    if fuse_norms:
        for m in vae.modules():
            if type(m).__name__ != "WanResidualBlock":
                continue
            if not isinstance(getattr(m, "nonlinearity", None), nn.SiLU):
                continue  # another activation: leave the block as it is
            for norm in (m.norm1, m.norm2):
                norm.__class__ = _fused_norm_class(type(norm))
                norm._cosmos_compiled = do_compile
            m.nonlinearity = nn.Identity()
            done["fused_blocks"] += 1
    if conv_padding:
        for m in vae.modules():
            if type(m).__name__ != "WanCausalConv3d" or len(getattr(m, "_padding", ())) != 6:
                continue
            if m._padding[0] != m._padding[1] or m._padding[2] != m._padding[3] or m._padding[5] != 0:
                continue  # not the symmetric spatial / causal time padding this forward assumes
            m.__class__ = _padded_conv_class(type(m))
            done["padded_convs"] += 1
    if channels_last:
        for m in vae.modules():
            if isinstance(m, nn.Conv3d):
                m.to(memory_format=torch.channels_last_3d)
        done["channels_last"] = True
    vae._cosmos_vae_perf = done
    return done


def decode_shared_prefix(vae: nn.Module, z: torch.Tensor, n_shared: int) -> torch.Tensor | None:
    """`vae.decode(z)` for z [B, C, T, h, w] whose first `n_shared` latent frames are equal in every row.

    Runs the decoder's frame loop (diffusers `AutoencoderKLWan._decode`) itself: the shared frames at
    batch 1, then the frame cache expanded to B rows, then the other frames at batch B. Returns the video
    [B, 3, T', H, W] clamped to [-1, 1] as `decode` does, or None where this VAE does not have the layout
    this relies on (patchified latents, no frame cache) or decodes in tiles or slices to save memory: the
    caller then decodes normally.
    """
    needed = ("decoder", "post_quant_conv", "clear_cache")
    if not all(hasattr(vae, n) for n in needed):
        return None
    if getattr(vae, "use_tiling", False) or getattr(vae, "use_slicing", False):
        return None  # the user asked for the memory-saving decode: keep it
    if getattr(vae.config, "patch_size", None) is not None:
        return None
    b, _, t = z.shape[:3]
    if not 0 < n_shared < t:
        return None
    vae.clear_cache()
    if not isinstance(getattr(vae, "_feat_map", None), list):  # another diffusers layout
        return None
    try:
        x = vae.post_quant_conv(z[:1, :, :n_shared])
        outs = []
        for i in range(n_shared):
            vae._conv_idx = [0]
            outs.append(
                vae.decoder(
                    x[:, :, i : i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=i == 0
                )
            )
        head = torch.cat(outs, 2)
        # the frame cache, now the same for every row: one copy per row, in each entry's memory layout
        vae._feat_map = [_expand_rows(c, b) if isinstance(c, torch.Tensor) else c for c in vae._feat_map]
        x = vae.post_quant_conv(z[:, :, n_shared:])
        outs = [head.expand(b, *head.shape[1:])]
        for i in range(t - n_shared):
            vae._conv_idx = [0]
            outs.append(vae.decoder(x[:, :, i : i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx))
        return torch.clamp(torch.cat(outs, 2), min=-1.0, max=1.0)
    finally:
        vae.clear_cache()


def _expand_rows(c: torch.Tensor, rows: int) -> torch.Tensor:
    fmt = (
        torch.channels_last_3d
        if c.dim() == 5 and c.is_contiguous(memory_format=torch.channels_last_3d) and not c.is_contiguous()
        else torch.contiguous_format
    )
    return c.expand(rows, *c.shape[1:]).contiguous(memory_format=fmt)
