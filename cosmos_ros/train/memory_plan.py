"""Pick the fastest activation-memory policy that fits a GPU memory budget (`model.max_memory`).

Why: which policy is fastest within a given memory depends on the clip size (tokens per sample): at 9600
tokens (29 frames 480x640) the compiler's `budget:0.5` costs ~1% over saving everything, at 84480 tokens
(93 frames 704x1280) only recompute-free offloading or checkpointing fit 24 GiB. Users know their GPU, not
these figures: they set `--max-memory 24` (or `auto`: this GPU's memory) and the trainer logs the choice.

The table: every policy's peak memory and step time for the Cosmos-Predict2.5-2B transformer with LoRA r32
on the DESIGN targets, batch 1, as a function of tokens per sample. Figures measured on one H100/H200
(benchmarks/NOTES_gpu.md, marked `measured`) calibrate a simple model (static memory + activations per
token; step time = linear-layer FLOPs at their measured rate + attention FLOPs at cuDNN's measured rate +
each policy's recompute); everything else is `estimated`. Other model sizes scale by width x depth. The
estimates rank policies; they are not promises: `benchmarks/run_memory_gpu.sh` measures them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

# -------------------------------------------------------------------- calibration (2B, LoRA r32, batch 1)
REF_WIDTH, REF_LAYERS = 2048, 28
STATIC_GIB = 5.6  # estimated: bf16 weights (~3.9 GiB) + 113 M trainable fp32 with grads and AdamW states
LIN_FLOP_PER_TOKEN = 6.6e9  # forward + input-gradient GEMMs of the block linears (NOTES_gpu.md, issue 5)
LIN_TFLOPS = 279.0  # their effective rate, from `none` at 9600 tokens (0.3615 s) minus the attention time
ATT_TFLOPS = 590.0  # cuDNN fused attention forward+backward, measured at 9600 and 84480 tokens (H200 probe)
FP8_LINEAR_TIME = 0.70  # estimated: GEMMs ~60% of the linear time, at twice the rate in FP8
HOST_FRACTION = 0.7  # offload may use at most this much of the host's RAM (pinned)
# estimated host<->GPU copy rate per direction (PCIe 5 x16 is 64 GB/s on paper): an offloading step takes
# at least its copies out (forward) and back (backward), however well they overlap the compute
PCIE_GIBPS = 25.0

# measured (tokens, step s, peak GiB) per policy, compile on, cuDNN attention, H100 unless noted
MEASURED: dict[str, tuple[int, float, float]] = {
    "none": (9600, 0.3615, 35.53),
    "budget:0.5": (9600, 0.3655, 23.26),
    "selective": (9600, 0.3864, 24.92),
    "attention": (84480, 12.26, 48.15),
    # H200 (issue 21): shared block inputs resident and per-frame time embeddings (session 14), run
    # under a 23.5 GiB cap with expandable segments (benchmarks/results_gpu/memory_run10_cap23.5_expandable
    # .jsonl; before those changes 12.26 s at 24.92 GiB uncapped, memory_run1.jsonl)
    "offload+attention": (84480, 12.99, 20.89),
}
# measured GiB per token that a policy copies to the host in one step (what the offloader moved)
MEASURED_HOST: dict[str, tuple[int, float]] = {"offload+attention": (84480, 26.38)}
# The same with LoRA on q/k/v/out only (`adapter.target_modules` without the MLP layers, the baseline's
# targets; 95 M trainable instead of 113 M): the MLP adapters' backward holds 4x-wide tensors, so without
# them every policy keeps less. 9600 tokens: H100, benchmarks/results_gpu/train_robot_run4_qkvo.jsonl;
# 84480: H200, memory_run9_per_frame_cap23.5.jsonl. Other policies: the default targets' estimate x the
# factors below.
MEASURED_NO_MLP: dict[str, tuple[int, float, float]] = {
    "none": (9600, 0.3463, 30.03),
    "budget:0.5": (9600, 0.3942, 18.47),
    "offload+attention": (84480, 12.138, 16.18),  # memory_run9_per_frame_cap23.5.jsonl (23.5 GiB cap)
}
STATIC_NO_MLP_GIB = STATIC_GIB - 18.4e6 * 16 / 2**30  # 18.4 M fewer trainable: weights, grads, AdamW states
NO_MLP_ACT = (30.03 - STATIC_NO_MLP_GIB) / (MEASURED["none"][2] - STATIC_GIB)  # 0.83 at `none`
NO_MLP_TIME = 0.3463 / MEASURED["none"][1]  # 0.96 at `none`
POLICIES = (
    "none",
    "budget:0.5",
    "selective",
    "attention",
    "offload+attention",
    "offload",
    "offload:0.5",
    "offload:0.25",
    "blocks:14",
    "full",
)


def _act_per_token_gib(policy: str) -> float:
    """Activation GiB per token the policy keeps on the GPU (2B model, batch 1)."""
    none = (MEASURED["none"][2] - STATIC_GIB) / MEASURED["none"][0]
    block = none / REF_LAYERS  # what one block saves without recompute
    block_input = REF_WIDTH * 2 / 2**30  # bf16 hidden state kept per checkpointed block
    if policy in MEASURED:
        n, _, peak = MEASURED[policy]
        return (peak - STATIC_GIB) / n
    if policy == "offload+attention":  # 3 blocks' attention saves in flight + one block's recompute
        att_block = _act_per_token_gib("attention") / REF_LAYERS
        return 3 * att_block + block
    if policy == "full":  # block inputs + one block recomputed at a time (and its gradients)
        return REF_LAYERS * block_input + 2 * block
    if policy.startswith("blocks:"):
        k = int(policy.split(":")[1])
        return k * block_input + (REF_LAYERS - k) * block + 2 * block
    if policy.startswith("offload"):
        f = float(policy.split(":")[1]) if ":" in policy else 1.0
        kept = REF_LAYERS - (REF_LAYERS - 1 if f >= 1.0 else max(1, round(f * REF_LAYERS)))
        if f >= 1.0:  # the last block saved, plus two offloaded blocks in flight (copy out / prefetch)
            return 3 * block + block
        return kept * block_input + 2 * block + 2 * block
    raise ValueError(f"no memory estimate for policy {policy!r}")


def _host_per_token_gib(policy: str) -> float:
    if not policy.startswith("offload"):
        return 0.0
    if policy in MEASURED_HOST:
        n, gib = MEASURED_HOST[policy]
        return gib / n
    f = float(policy.split(":")[1]) if ":" in policy else 1.0
    k = REF_LAYERS - 1 if f >= 1.0 else max(1, round(f * REF_LAYERS))
    return k * (MEASURED["none"][2] - STATIC_GIB) / MEASURED["none"][0] / REF_LAYERS


def _times(tokens: int, fp8: bool) -> tuple[float, float]:
    """(linear s, attention s) of a step without recompute at `tokens` (2B model)."""
    lin = LIN_FLOP_PER_TOKEN * tokens / (LIN_TFLOPS * 1e12) * (FP8_LINEAR_TIME if fp8 else 1.0)
    att = 3.5 * 4 * tokens**2 * REF_WIDTH * REF_LAYERS / (ATT_TFLOPS * 1e12)
    return lin, att


def _step_s(policy: str, tokens: int, fp8: bool) -> float:
    lin, att = _times(tokens, fp8)
    att_fwd = att / 3.5
    if policy == "none":
        extra = 0.0
    elif policy.startswith("budget"):
        extra = 0.02 * lin  # measured +1% at 9600 tokens
    elif policy == "selective":
        extra = 0.11 * lin
    elif policy == "attention":
        extra = 0.5 * lin  # the forward of everything but attention, again
    elif policy == "offload+attention":
        extra = 0.5 * lin + 0.03 * (lin + att)
    elif policy == "full":
        extra = 0.5 * lin + att_fwd
    elif policy.startswith("blocks:"):
        extra = int(policy.split(":")[1]) / REF_LAYERS * (0.5 * lin + att_fwd)
    elif policy.startswith("offload"):
        f = float(policy.split(":")[1]) if ":" in policy else 1.0
        k = REF_LAYERS - 1 if f >= 1.0 else max(1, round(f * REF_LAYERS))
        extra = 0.03 * (lin + att) + (REF_LAYERS - k) / REF_LAYERS * (0.5 * lin + att_fwd)
    else:
        raise ValueError(f"no time estimate for policy {policy!r}")
    return lin + att + extra


@dataclass(frozen=True)
class PolicyFigure:
    """One row of the table: a policy's peak GPU memory and step time at some tokens per sample."""

    policy: str
    tokens: int
    peak_gib: float
    step_s: float
    host_gib: float
    measured: bool
    needs_compile: bool

    def line(self) -> str:
        host = f", {self.host_gib:.0f} GiB host" if self.host_gib else ""
        return f"{self.policy}: {self.peak_gib:.1f} GiB, {self.step_s:.3f} s/step{host} ({self.source})"

    @property
    def source(self) -> str:
        """Where the figures come from: a benchmark run (NOTES_gpu.md) or the scaling estimate."""
        return "measured" if self.measured else "estimated"


def policy_table(
    tokens: int,
    batch: int = 1,
    width: int = REF_WIDTH,
    layers: int = REF_LAYERS,
    static_gib: float | None = None,
    fp8: bool = False,
    mlp_adapters: bool = True,
) -> list[PolicyFigure]:
    """Every policy's figures for `batch` samples of `tokens` tokens, fastest first.

    `static_gib`: the model's own weights + trainable state (default: the 2B calibration's). Rows are
    `measured` only where NOTES_gpu.md has that exact case (2B, batch 1, same tokens, bf16).
    `mlp_adapters`: whether LoRA/DoRA targets include the MLP layers (`ff.*`, the default); without them
    the activations are smaller (MEASURED_NO_MLP, NO_MLP_ACT).
    """
    scale = width * layers / (REF_WIDTH * REF_LAYERS)
    flop_scale = (width / REF_WIDTH) * scale  # linears ~ width^2 x depth (attention less; an estimate)
    act_scale, time_scale = (1.0, 1.0) if mlp_adapters else (NO_MLP_ACT, NO_MLP_TIME)
    default_static = STATIC_GIB if mlp_adapters else STATIC_NO_MLP_GIB
    static = default_static if static_gib is None else static_gib
    ref = (width, layers, batch) == (REF_WIDTH, REF_LAYERS, 1) and static_gib is None and not fp8
    table = MEASURED if mlp_adapters else MEASURED_NO_MLP
    rows = []
    for p in POLICIES:
        m = table.get(p)
        measured = bool(ref and m is not None and m[0] == tokens)
        act = _act_per_token_gib(p) * act_scale * scale * tokens * batch
        peak = m[2] if measured and m else static + act
        step = m[1] if measured and m else _step_s(p, tokens, fp8) * time_scale * flop_scale * batch
        host = _host_per_token_gib(p) * scale * tokens * batch
        step = max(step, 2 * host / PCIE_GIBPS)
        # budget:F is the compiler's; offload+attention offloads the block inputs only when compiled
        compiled_only = p.startswith("budget") or "+" in p
        rows.append(PolicyFigure(p, tokens, peak, step, host, measured, compiled_only))
    return sorted(rows, key=lambda r: r.step_s)


def format_table(rows: list[PolicyFigure]) -> str:
    """The table as markdown (docs/training.md is written from this for the two benchmark cases)."""
    out = ["| policy | peak GiB | step s | host GiB | source |", "|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| `{r.policy}` | {r.peak_gib:.1f} | {r.step_s:.3f} | {r.host_gib:.0f} | {r.source} |")
    return "\n".join(out)


def choose_policy(
    max_memory_gib: float,
    tokens: int,
    batch: int = 1,
    width: int = REF_WIDTH,
    layers: int = REF_LAYERS,
    static_gib: float | None = None,
    fp8: bool = False,
    compile_: bool = True,
    host_gib: float | None = None,
    mlp_adapters: bool = True,
) -> tuple[PolicyFigure, list[PolicyFigure]]:
    """The fastest policy whose peak fits `max_memory_gib` (and whose host copies fit `host_gib`).

    Returns (choice, the table it was chosen from). Raises ValueError when none fits, naming the smallest
    need and what to change.
    """
    if not (max_memory_gib > 0 and math.isfinite(max_memory_gib)):
        raise ValueError(f"model.max_memory={max_memory_gib!r}: give GiB > 0 or auto")
    table = policy_table(tokens, batch, width, layers, static_gib, fp8, mlp_adapters)
    usable = [r for r in table if compile_ or not r.needs_compile]
    fits = [
        r
        for r in usable
        if r.peak_gib <= max_memory_gib and (host_gib is None or r.host_gib <= HOST_FRACTION * host_gib)
    ]
    if not fits:
        least = min(usable, key=lambda r: r.peak_gib)
        raise ValueError(
            f"model.max_memory={max_memory_gib:g} GiB is below what any memory policy needs for "
            f"{batch} x {tokens} tokens per step: the smallest is {least.line()}. Lower optim.batch_size "
            f"or the clip size (frames, resolution), train fewer LoRA targets (adapter.target_modules: "
            f"the MLP layers' adapters hold the most activation memory), or raise model.max_memory"
        )
    return fits[0], table


#: what a run with a memory budget asks of PyTorch's CUDA caching allocator (unless the user set it)
ALLOC_CONF = "expandable_segments:True"
_ALLOC_VARS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")


def allocator_setting(
    max_memory: float | str | None, env: Mapping[str, str], cuda_initialized: bool
) -> tuple[str | None, str]:
    """(the value to give PYTORCH_CUDA_ALLOC_CONF, or None; the line to log) for a training run.

    Why: the budget is on allocated memory, but a GPU runs out when *reserved* memory (the allocator's
    fixed-size segments, with the gaps between tensors) reaches its size. With every block's 4x-wide MLP
    tensors coming and going, the 93-frame 704x1280 LoRA step peaked at 20.9 GiB allocated and still ran
    out of memory under a 23.5 GiB cap with the default allocator; with expandable segments (segments
    that grow in place) it ran, reserving 23.5 GiB (benchmarks/NOTES_gpu.md, issue 21). The variable is
    read when CUDA starts, so it is set before then, and only where the user has not set it.
    """
    if max_memory is None:
        return None, ""
    for var in _ALLOC_VARS:
        if var in env:
            return None, f"train: {var}={env[var]} as set (max_memory's figures: measured with {ALLOC_CONF})"
    if cuda_initialized:
        return None, (
            f"train: CUDA already started in this process, so the allocator keeps its settings; for "
            f"max_memory's figures start it with PYTORCH_CUDA_ALLOC_CONF={ALLOC_CONF}"
        )
    return ALLOC_CONF, (
        f"train: PYTORCH_CUDA_ALLOC_CONF={ALLOC_CONF} (max_memory is set: segments grow in place instead "
        "of fragmenting; set the variable yourself to choose otherwise)"
    )
