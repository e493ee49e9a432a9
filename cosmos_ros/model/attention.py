"""Attention processors for the diffusers `CosmosTransformer3DModel` (set with `Attention.set_processor`).

diffusers extends a model's attention by swapping the processor of an `Attention` module; the block's forward
stays diffusers' own. Both processors here compute what diffusers' `CosmosAttnProcessor2_0` computes (same
projections, q/k RMS norms, rotary embedding, SDPA, output projection); they differ in what they can skip:

- `CosmosSelfAttnProcessor` (attn1): q/k/v from one fused GEMM when the module holds a fused projection
  (`attn.to_qkv`, set by `fuse_qkv_projections`, diffusers' own attribute name and flag), and a
  pluggable SDPA call (`sdpa`: e.g. cuDNN called eagerly from a compiled block, `eager_cudnn_sdpa`).
- `GroupedPromptCrossAttnProcessor` (attn2): the text may hold fewer rows than the batch (P prompts for
  B = P*G rows, row r uses prompt r // G: CFG's conditional and unconditional rows without copying 512 x
  100352 embeddings per candidate); the keys/values of the text can be precomputed once per request and
  left on the module (`attn.text_k`, `attn.text_v`: non-persistent buffers, so a compiled block reads them
  as inputs and never recompiles for a new prompt); and trailing *constant* prompts (all tokens equal after
  the projection, such as CFG's all-zero unconditional prompt) skip query, attention and output
  projection: every key and value of such a prompt is the same vector, the softmax is uniform, and the
  output of any query is `to_out(v)`, precomputed in `attn.const_out` [n_const, D].

Why our own copy of the math instead of diffusers' processor: diffusers' passes transposed views through
`dispatch_attention_fn` and a `repeat_interleave` for grouped-query heads (a copy of K and V per call when
the factor is 1); these processors call SDPA on [B, heads, S, Dh] as the tuned path did.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

SDPA = Callable[..., torch.Tensor]


@torch.compiler.disable  # run eagerly even inside a compiled block: the kernel choice is then PyTorch's own
def eager_cudnn_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SDPA on cuDNN's fused attention (FlashAttention next), called outside any compiled graph."""
    if not q.is_cuda:
        return F.scaled_dot_product_attention(q, k, v)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION], set_priority=True):
        return F.scaled_dot_product_attention(q, k, v)


def _heads(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[B, S, heads*Dh] -> [B, heads, S, Dh] (a view)."""
    return x.unflatten(2, (attn.heads, -1)).transpose(1, 2)


def _merge_heads(o: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B, heads, S, Dh] -> [B, S, heads*Dh] in the dtype of `like`."""
    return o.transpose(1, 2).flatten(2, 3).type_as(like)


class CosmosSelfAttnProcessor:
    """Self-attention (attn1) with optional fused q/k/v and a chosen SDPA function (see module docstring)."""

    def __init__(self, sdpa: SDPA = F.scaled_dot_product_attention) -> None:
        self.sdpa = sdpa

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: Any = None,
    ) -> torch.Tensor:
        from diffusers.models.embeddings import apply_rotary_emb

        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError(f"{type(self).__name__} is for unmasked self-attention (attn1) only")
        if getattr(attn, "fused_projections", False) and getattr(attn, "to_qkv", None) is not None:
            q, k, v = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        q, k, v = attn.norm_q(_heads(attn, q)), attn.norm_k(_heads(attn, k)), _heads(attn, v)
        if image_rotary_emb is not None:
            q = apply_rotary_emb(q, image_rotary_emb, use_real=True, use_real_unbind_dim=-2)
            k = apply_rotary_emb(k, image_rotary_emb, use_real=True, use_real_unbind_dim=-2)
        o = _merge_heads(self.sdpa(q, k, v), q)
        return attn.to_out[1](attn.to_out[0](o))


def fuse_qkv_projections(attn: nn.Module) -> bool:
    """Give a self-attention module one q/k/v layer (`attn.to_qkv`, diffusers' name; the parts keep views).

    False (nothing changed) where the three layers cannot be fused (peft adapters left unmerged, mixed
    kinds). The fused layer is a submodule, so it moves with `.to()`; the parts share its storage.
    """
    from cosmos_ros.model.fp8 import fuse_linears

    if getattr(attn, "fused_projections", False):
        return True
    fused = fuse_linears([attn.to_q, attn.to_k, attn.to_v])
    if fused is None:
        return False
    attn.to_qkv = fused
    attn.fused_projections = True
    return True


class GroupedPromptCrossAttnProcessor:
    """Cross-attention (attn2) over P prompts for B = P*G rows, with precomputed text K/V (module docstring).

    State read from the attention module (set by `prepare_text_state`, once per prompt tensor):
    `text_k`/`text_v` [P - n_const, heads, L, Dh] or None (then computed here from the text),
    `const_prompts` n_const (trailing prompts of constant tokens) and `const_out` [n_const, D].
    """

    def __init__(self, sdpa: SDPA = F.scaled_dot_product_attention) -> None:
        self.sdpa = sdpa

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: Any = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is None or attention_mask is not None or image_rotary_emb is not None:
            raise ValueError(f"{type(self).__name__} is for unmasked text cross-attention (attn2) only")
        b, s, d = hidden_states.shape
        p = encoder_hidden_states.shape[0]
        if b % p:
            raise ValueError(f"{b} rows cannot be split evenly over {p} prompts")
        g = b // p
        n_const = int(getattr(attn, "const_prompts", 0))
        ba = (p - n_const) * g  # rows that attend to a prompt; the last n_const * g rows take const_out
        k, v = getattr(attn, "text_k", None), getattr(attn, "text_v", None)
        if k is None or v is None:
            text = encoder_hidden_states[: p - n_const]
            k, v = attn.norm_k(_heads(attn, attn.to_k(text))), _heads(attn, attn.to_v(text))
        parts = []
        if ba:
            q = attn.norm_q(_heads(attn, attn.to_q(hidden_states[:ba])))
            pa = p - n_const
            if pa == ba:
                o = self.sdpa(q, k, v)
            else:
                # fold each prompt's G rows into the query sequence - attention is per query row, so this
                # is exact - and the prompt's K/V are never copied per row
                hd, sq, dh = q.shape[1:]
                qf = q.view(pa, g, hd, sq, dh).transpose(1, 2).reshape(pa, hd, g * sq, dh)
                o = self.sdpa(qf, k, v).view(pa, hd, g, sq, dh).transpose(1, 2).reshape(ba, hd, sq, dh)
            parts.append(attn.to_out[1](attn.to_out[0](_merge_heads(o, q))))
        if n_const:
            # one output row per constant prompt, broadcast over its rows and tokens by an expand: a
            # reshape of the expand would be a copy of [n_const * G, S, D] (measured: +30 ms per CFG
            # prediction of 32 on an H200, benchmarks/NOTES_gpu.md run 24)
            const = attn.const_out.to(hidden_states.dtype)  # [n_const, D]
            rows = const if n_const == 1 else const.repeat_interleave(g, dim=0)
            parts.append(rows[:, None, :].expand(n_const * g, s, d))
        return parts[0] if len(parts) == 1 else torch.cat(parts)


@torch.no_grad()
def prepare_text_state(attn: nn.Module, text: torch.Tensor, constant_prompt_shortcut: bool) -> None:
    """Precompute what `GroupedPromptCrossAttnProcessor` needs of projected prompts `text` [P, L, D].

    Trailing prompts whose tokens are all equal become constant prompts (when the shortcut is on): their
    output `to_out(v)` is computed from 16 equal rows, row 0 kept - the per-token FP8 path then quantises
    each row as the attention path does, and GEMM kernels want M >= 16.
    """
    p = text.shape[0]
    n_const = 0
    if constant_prompt_shortcut:
        while n_const < p and torch.equal(
            text[p - 1 - n_const], text[p - 1 - n_const, :1].expand_as(text[0])
        ):
            n_const += 1
    attend = text[: p - n_const]
    k = attn.norm_k(_heads(attn, attn.to_k(attend))).contiguous()
    v = _heads(attn, attn.to_v(attend)).contiguous()
    attn.register_buffer("text_k", k, persistent=False)
    attn.register_buffer("text_v", v, persistent=False)
    attn.const_prompts = n_const
    const_out = None
    if n_const:
        v0 = attn.to_v(text[p - n_const :, 0])  # [n_const, heads*Dh]
        rows = v0.repeat_interleave(16, dim=0)
        const_out = attn.to_out[0](rows).view(n_const, 16, -1)[:, 0].contiguous()
    attn.register_buffer("const_out", const_out, persistent=False)


def clear_text_state(attn: nn.Module) -> None:
    """Drop the precomputed text state: the processor then computes K/V from the text it is given."""
    for name in ("text_k", "text_v", "const_out"):
        if name in attn._buffers:
            del attn._buffers[name]
    attn.const_prompts = 0
