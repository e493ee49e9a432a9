"""Action conditioning for the unmodified diffusers `CosmosTransformer3DModel`.

NVIDIA's action-conditioned Cosmos Predict variant (DESIGN §4) groups the per-pixel-frame actions into one
vector per latent frame (the Wan VAE packs 4 pixel frames into one latent frame) and feeds it through two
MLPs (Linear -> GELU(tanh) -> Linear): one output of width `hidden` is added to the timestep embedding,
one of width `3 * hidden` to the AdaLN modulation of every block. Conditioning latent frames get a zero
action. The output layers start at zero, so at step 0 the base model is bit-for-bit unchanged.

In diffusers' `CosmosTransformer3DModel.forward`, `self.time_embed(hidden_states, timestep)` returns
`(temb, embedded_timestep)`: `embedded_timestep` [N, hidden] is the timestep embedding that every AdaLN
layer turns into its modulation via its own low-rank MLP (`linear_1`, `linear_2`), and `temb` [N, 3*hidden]
is added to that modulation directly (NVIDIA's `adaln_lora`). With a 5-D timestep `[B, 1, T, 1, 1]`,
N = B*T, one row per latent frame. We register a forward hook on `time_embed` that adds the two action
embeddings to those rows, so the diffusers class stays untouched (no fork, no monkey-patching of methods)
and gradient checkpointing of the blocks is unaffected (the hook runs outside the blocks).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

ACTIONS_PER_LATENT = 4  # the Wan VAE's temporal factor: 4 pixel frames (transitions) -> 1 latent frame


class ActionMLP(nn.Module):
    """Linear -> GELU(tanh) -> Linear with a zero-initialised output layer (no-op at init)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ActionEmbedder(nn.Module):
    """The two action MLPs: per-latent-frame action vector -> (timestep-embedding add, AdaLN add)."""

    def __init__(
        self,
        action_dim: int,
        model_dim: int,
        actions_per_latent: int = ACTIONS_PER_LATENT,
        hidden_dim: int | None = None,
    ) -> None:
        super().__init__()
        if action_dim < 1 or model_dim < 1 or actions_per_latent < 1:
            raise ValueError(
                f"ActionEmbedder: action_dim={action_dim}, model_dim={model_dim} and "
                f"actions_per_latent={actions_per_latent} must all be >= 1"
            )
        self.action_dim = action_dim
        self.model_dim = model_dim
        self.actions_per_latent = actions_per_latent
        self.hidden_dim = hidden_dim or 4 * model_dim
        in_dim = action_dim * actions_per_latent
        self.to_timestep = ActionMLP(in_dim, self.hidden_dim, model_dim)
        self.to_adaln = ActionMLP(in_dim, self.hidden_dim, 3 * model_dim)

    def config(self) -> dict[str, int]:
        """What is needed to rebuild this module (stored next to its weights)."""
        return {
            "action_dim": self.action_dim,
            "model_dim": self.model_dim,
            "actions_per_latent": self.actions_per_latent,
            "hidden_dim": self.hidden_dim,
        }

    def forward(self, latent_actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """latent_actions [B, T, action_dim*actions_per_latent] -> ([B, T, D], [B, T, 3D])."""
        return self.to_timestep(latent_actions), self.to_adaln(latent_actions)


def group_actions(
    actions: torch.Tensor,
    num_latent_frames: int,
    actions_per_latent: int = ACTIONS_PER_LATENT,
) -> torch.Tensor:
    """Per-transition actions [B, A, D] -> per-latent-frame vectors [B, T_lat, actions_per_latent*D].

    Latent frame 0 covers pixel frame 0 alone (causal VAE: 1 + 4k frames), so it has no action; latent frame
    j >= 1 covers pixel frames 4j-3..4j, moved there by actions 4(j-1)..4j-1. A = 4*(T_lat-1) is required:
    a clip of 13 frames has 12 actions and 4 latent frames.
    """
    if actions.ndim != 3:
        raise ValueError(
            f"actions must be [batch, num_actions, action_dim], got shape {tuple(actions.shape)}"
        )
    b, a, d = actions.shape
    expected = actions_per_latent * (num_latent_frames - 1)
    if a != expected:
        raise ValueError(
            f"got {a} actions for {num_latent_frames} latent frames; expected {expected} "
            f"({actions_per_latent} per latent frame after the first, i.e. one per pixel-frame transition)"
        )
    grouped = actions.reshape(b, num_latent_frames - 1, actions_per_latent * d)
    first = grouped.new_zeros(b, 1, actions_per_latent * d)
    return torch.cat([first, grouped], dim=1)


class ActionConditionedTransformer(nn.Module):
    """Wraps an unmodified `CosmosTransformer3DModel` and injects action embeddings through a hook.

    `forward(..., actions=None)` takes the transformer's own arguments plus `actions` [B, A, D] per pixel
    frame transition (see `group_actions`); the per-latent-frame embedding is zeroed wherever the condition
    mask marks a conditioning frame. `action_embedder` is None for action-free (text/video only) models.
    Not re-entrant across threads: the actions of the current call live on the module for the hook to read.
    """

    def __init__(self, transformer: nn.Module, action_embedder: ActionEmbedder | None = None) -> None:
        super().__init__()
        self.transformer = transformer
        self.action_embedder = action_embedder
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self._hook = transformer.time_embed.register_forward_hook(self._add_action_embedding)

    @property
    def config(self) -> Any:
        """The wrapped transformer's diffusers config."""
        return self.transformer.config

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    def _add_action_embedding(self, module: nn.Module, args: Any, output: Any) -> Any:
        if self._pending is None:
            return output
        add_t, add_adaln = self._pending
        temb, embedded_timestep = output
        n = embedded_timestep.shape[0]
        if add_t.shape[0] != n:
            raise RuntimeError(
                f"action conditioning needs one timestep per latent frame (a 5-D timestep [B, 1, T, 1, 1]); "
                f"time embedding has {n} rows but actions give {add_t.shape[0]}"
            )
        return temb + add_adaln.to(temb.dtype), embedded_timestep + add_t.to(embedded_timestep.dtype)

    @contextmanager
    def _actions_set(self, value: tuple[torch.Tensor, torch.Tensor] | None) -> Iterator[None]:
        self._pending = value
        try:
            yield
        finally:
            self._pending = None

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        condition_mask: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        actions: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """One transformer forward; returns the velocity prediction [B, C, T, H, W]."""
        pending = None
        if actions is not None:
            if self.action_embedder is None:
                raise ValueError(
                    "this model has no action conditioning (action_dim was not set); "
                    "pass actions=None or build it with an action_dim"
                )
            b, _, t = hidden_states.shape[:3]
            if timestep.ndim != 5:
                timestep = timestep.reshape(b, 1, 1, 1, 1).expand(b, 1, t, 1, 1)
            lat = group_actions(actions, t, self.action_embedder.actions_per_latent)
            lat = lat.to(next(self.action_embedder.parameters()).dtype)
            add_t, add_adaln = self.action_embedder(lat)
            if condition_mask is not None:
                keep = (1.0 - condition_mask[:, 0, :, 0, 0]).to(add_t.dtype).unsqueeze(-1)  # [B, T, 1]
                add_t, add_adaln = add_t * keep, add_adaln * keep
            pending = (add_t.reshape(b * t, -1), add_adaln.reshape(b * t, -1))
        with self._actions_set(pending):
            return self.transformer(
                hidden_states=hidden_states,
                timestep=timestep,
                encoder_hidden_states=encoder_hidden_states,
                condition_mask=condition_mask,
                padding_mask=padding_mask,
                return_dict=False,
                **kwargs,
            )[0]
