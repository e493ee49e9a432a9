"""Tiny random models of the real classes, for tests, the demo and CPU trials: not part of the model itself.

`make_tiny_world_model` saves a Cosmos Predict 2.5 model (CosmosTransformer3DModel, AutoencoderKLWan,
UniPC scheduler) with a tiny random Qwen2.5-VL text encoder in the diffusers layout, so every loading path
(`WorldModel.from_pretrained`, `Predictor.load`, the trainer, `embed_prompts`) runs on it as on the real
weights. Kept apart from `world_model` and `text_cache` so that those modules do not import each other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from cosmos_ros.model.world_model import SCHEDULER_CONFIG


def small_transformer_config(
    *,
    num_attention_heads: int,
    attention_head_dim: int,
    num_layers: int,
    mlp_ratio: float,
    text_embed_dim: int,
    adaln_lora_dim: int,
    crossattn_proj_in_channels: int,
    latent_channels: int = 16,
    patch_size: tuple[int, int, int] = (1, 2, 2),
) -> dict[str, Any]:
    """`CosmosTransformer3DModel` kwargs of a small model in the Cosmos Predict 2.5 layout (condition-mask
    channel, padding mask, no extra position embedding, text projection from the cached embeddings): the
    tiny test model, the sim twin and its CPU sizing benchmark differ only in these sizes."""
    return dict(
        in_channels=latent_channels + 1,
        out_channels=latent_channels,
        num_attention_heads=num_attention_heads,
        attention_head_dim=attention_head_dim,
        num_layers=num_layers,
        mlp_ratio=mlp_ratio,
        text_embed_dim=text_embed_dim,
        adaln_lora_dim=adaln_lora_dim,
        max_size=(32, 64, 64),
        patch_size=tuple(int(v) for v in patch_size),
        rope_scale=(1.0, 3.0, 3.0),
        concat_padding_mask=True,
        extra_pos_embed_type=None,
        use_crossattn_projection=True,
        crossattn_proj_in_channels=crossattn_proj_in_channels,
        encoder_hidden_states_channels=text_embed_dim,
    )


#: Tiny random config of the same transformer class: fast on CPU (a train step well under a second).
TINY_TRANSFORMER_CONFIG: dict[str, Any] = small_transformer_config(
    num_attention_heads=2,
    attention_head_dim=16,
    num_layers=2,
    mlp_ratio=2.0,
    text_embed_dim=32,
    adaln_lora_dim=8,
    crossattn_proj_in_channels=64,
)

#: Tiny Wan VAE: same class, 8x spatial (3 downsamples), 4x temporal, 16 latent channels.
TINY_VAE_CONFIG: dict[str, Any] = dict(
    base_dim=8,
    z_dim=16,
    dim_mult=[1, 2, 2, 2],
    num_res_blocks=1,
    attn_scales=[],
    temperal_downsample=[False, True, True],
    dropout=0.0,
)

#: Resolution the tiny model is meant for (tests, demo): 13 frames of 64x80 -> 4 x 8 x 10 latents.
TINY_FRAME_SIZE = (64, 80)


TINY_MAX_SEQUENCE_LENGTH = 256
_TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tiny_text_encoder(path: str | Path, seed: int = 0) -> Path:
    """Save a tiny random Qwen2.5-VL text encoder + byte-level tokenizer (text_encoder/, tokenizer/).

    Same classes and the same chat-template call as the real Cosmos-Reason1 path; 2 layers of 32 channels,
    so the concatenated embedding has 64 channels (the tiny transformer's `crossattn_proj_in_channels`).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    path = Path(path)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for s in specials:
        vocab[s] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        additional_special_tokens=specials[1:],
        model_max_length=TINY_MAX_SEQUENCE_LENGTH,
    )
    fast.chat_template = _TINY_CHAT_TEMPLATE
    fast.save_pretrained(path / "tokenizer")
    torch.manual_seed(seed)
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=64,
            vocab_size=len(vocab),
            max_position_embeddings=1024,
            bos_token_id=vocab["<|im_start|>"],
            eos_token_id=vocab["<|im_end|>"],
            pad_token_id=vocab["<|endoftext|>"],
            rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
        ),
        vision_config=dict(
            depth=1,
            hidden_size=16,
            out_hidden_size=32,
            num_heads=2,
            intermediate_size=32,
            fullatt_block_indexes=[0],
        ),
        bos_token_id=vocab["<|im_start|>"],
        eos_token_id=vocab["<|im_end|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    Qwen2_5_VLForConditionalGeneration(cfg).save_pretrained(path / "text_encoder", safe_serialization=True)
    return path


def make_tiny_world_model(
    path: str | Path,
    seed: int = 0,
    prompts: list[str] | None = None,
    with_text_encoder: bool = True,
    transformer_overrides: dict[str, Any] | None = None,
) -> Path:
    """Save a tiny random Cosmos 2.5 model (same classes) to `path` in the diffusers layout; return `path`.

    Writes `transformer/`, `vae/`, `scheduler/` and, with `with_text_encoder`, a tiny random Qwen2.5-VL
    `text_encoder/` + `tokenizer/` plus `prompt_cache.safetensors` holding the embeddings of `prompts`
    (default: one generic prompt) computed through the real text-encoder path. Sized for CPU: 13 frames of
    64x80 give 4x8x10 latents, 80 tokens. `transformer_overrides` changes keys of the tiny transformer config.
    """
    from diffusers import AutoencoderKLWan, CosmosTransformer3DModel, UniPCMultistepScheduler

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    transformer = CosmosTransformer3DModel(**{**TINY_TRANSFORMER_CONFIG, **(transformer_overrides or {})})
    # diffusers' init leaves some layers at zero/identity-like scales; random weights everywhere make the
    # tiny model's output depend on its inputs, which the tests rely on.
    with torch.no_grad():
        for p in transformer.parameters():
            if p.ndim >= 2 and float(p.abs().sum()) == 0.0:
                p.normal_(0.0, 0.02)
    transformer.save_pretrained(path / "transformer", safe_serialization=True)
    AutoencoderKLWan(**TINY_VAE_CONFIG).save_pretrained(path / "vae", safe_serialization=True)
    UniPCMultistepScheduler(**SCHEDULER_CONFIG).save_pretrained(path / "scheduler")
    (path / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "Cosmos2_5_PredictBasePipeline",
                "cosmos_ros_tiny": True,
                "transformer": ["diffusers", "CosmosTransformer3DModel"],
                "vae": ["diffusers", "AutoencoderKLWan"],
                "scheduler": ["diffusers", "UniPCMultistepScheduler"],
            },
            indent=1,
        )
    )
    if with_text_encoder:
        from cosmos_ros.model import text_cache

        make_tiny_text_encoder(path, seed=seed)
        text_cache.build_prompt_cache(
            path, prompts or ["move the arm"], path / "prompt_cache.safetensors", device="cpu"
        )
    return path
