"""CPU cost of candidate sim-twin sizes: one `check_collision` of 8 candidates on this machine.

What a check costs with the predictor's path: encode the context (1 frame), `steps` transformer forwards of a
batch of 8 clips (13 frames -> 4 latent frames, guidance 0), decode 8 clips with the shared context frame
decoded once. Random weights (speed does not depend on them); float32, 2 threads. Prints one line per
candidate with parameter counts, shipped size in bf16 and the seconds per part.

    nice -n 10 python benchmarks/bench_sim_twin_cpu.py [--steps 10] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from cosmos_ros.model.action_cond import ActionConditionedTransformer, ActionEmbedder
from cosmos_ros.model.vae_perf import decode_shared_prefix

TRANSFORMERS = {  # name: (layers, heads, head_dim, spatial patch)
    "L8-h8x64": (8, 8, 64, 2),
    "L6-h6x64": (6, 6, 64, 2),
    "L8-h4x64": (8, 4, 64, 2),
    "L6-h4x64": (6, 4, 64, 2),
    "L4-h4x64": (4, 4, 64, 2),
    # one token per latent pixel (patch 1x1x1): 4x the tokens, finer arm placement
    "L6-h4x64-p1": (6, 4, 64, 1),
    "L4-h4x64-p1": (4, 4, 64, 1),
}
VAES = {"vae32": 32, "vae24": 24, "vae16": 16, "vae12": 12}


def transformer(layers: int, heads: int, head_dim: int, patch: int = 2) -> ActionConditionedTransformer:
    from diffusers import CosmosTransformer3DModel

    dim = heads * head_dim
    from cosmos_ros.model.tiny import small_transformer_config

    net = CosmosTransformer3DModel(
        **small_transformer_config(
            num_attention_heads=heads,
            attention_head_dim=head_dim,
            num_layers=layers,
            mlp_ratio=4.0,
            text_embed_dim=dim,
            adaln_lora_dim=64,
            crossattn_proj_in_channels=64,
            patch_size=(1, patch, patch),
        )
    )
    return ActionConditionedTransformer(net, ActionEmbedder(3, dim, hidden_dim=dim)).eval()


def vae(base_dim: int):
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=base_dim,
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=1,
        attn_scales=[],
        temperal_downsample=[False, True, True],
        dropout=0.0,
    ).eval()


def timed(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def nparams(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    # One thread: with other jobs on the 2 cores, two OpenMP threads spin-wait on each other (10x slower).
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sizes", default="64x80,128x160", help="HxW list")
    ap.add_argument("--vaes", default=",".join(VAES), help=f"subset of {','.join(VAES)}")
    ap.add_argument("--transformers", default=",".join(TRANSFORMERS), help="subset of the names")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    b = args.batch
    sizes = [tuple(int(v) for v in hw.split("x")) for hw in args.sizes.split(",")]
    for h, w in sizes:
        lh, lw = h // 8, w // 8
        for name in filter(None, args.vaes.split(",")):
            base_dim = VAES[name]
            v = vae(base_dim)
            z = torch.randn(b, 16, 4, lh, lw)
            z[:, :, :1] = z[:1, :, :1]
            dec = timed(lambda v=v, z=z: decode_shared_prefix(v, z, 1), args.repeats)
            enc = timed(
                lambda v=v, h=h, w=w: v.encode(torch.randn(1, 3, 1, h, w)).latent_dist.mode(), args.repeats
            )
            n = nparams(v)
            print(
                f"{h}x{w} {name}: {n / 1e6:.2f}M params ({2 * n / 1e6:.1f} MB bf16), decode {b} clips "
                f"{dec:.3f} s, encode context {enc:.3f} s",
                flush=True,
            )
        for name in filter(None, args.transformers.split(",")):
            layers, heads, hd, patch = TRANSFORMERS[name]
            net = transformer(layers, heads, hd, patch)
            x = torch.randn(b, 16, 4, lh, lw)
            t = torch.rand(b, 1, 4, 1, 1)
            emb = torch.randn(b, 8, 64)
            cm = torch.zeros(b, 1, 4, lh, lw)
            pm = torch.zeros(1, 1, h, w)
            acts = torch.randn(b, 12, 3)

            def fwd(net=net, x=x, t=t, emb=emb, cm=cm, pm=pm, acts=acts) -> None:
                net(
                    hidden_states=x,
                    timestep=t,
                    encoder_hidden_states=emb,
                    condition_mask=cm,
                    padding_mask=pm,
                    actions=acts,
                )

            f = timed(fwd, args.repeats)
            n = nparams(net)
            print(
                f"{h}x{w} {name}: {n / 1e6:.2f}M params ({2 * n / 1e6:.1f} MB bf16), forward batch {b} "
                f"{f:.3f} s, x{args.steps} steps {f * args.steps:.2f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
