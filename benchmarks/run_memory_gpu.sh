#!/usr/bin/env bash
# Issue 21 (training memory) on one H200, one command from the repo root with $OUT set (device machine,
# no network):
#   bash benchmarks/run_memory_gpu.sh
# Installs the carried wheels (.whl, .whl_ros) when present, then runs, each part in its own process with
# its own time limit (about 9 min in all), the baseline (`.bench_shared/cosmos_peft_baseline.py`, the copy
# of ../shared/bench) and ours side by side in the same process:
#   1. full  (93 frames 704x1280): baseline LoRA with full checkpointing vs LoRA `offload+attention` and
#      `offload:0.5+attention` (targets: <= 24 GiB, >= 1.3x the baseline);
#   2. robot (29 frames 480x640): baseline LoRA (no checkpointing) vs LoRA, LoRA with FP8 base linears and
#      DoRA, all `budget:0.5` + compile + cuDNN (targets: fp8 >= 2.0x at <= 24 GiB; DoRA/LoRA <= 1.10);
#   3. loss curve: 30 steps on one fixed batch (13 frames 256x320), LoRA bf16 vs LoRA fp8, side by side.
# Back in $OUT: summary.txt (every part's output with its tables), results.jsonl (one JSON line per
# figure), gpus.csv, logs.tgz (each part's full log).
set -u
OUT="${OUT:-$PWD/mem_out}"
mkdir -p "$OUT/logs"
START=$(date +%s)
DEADLINE="${DEADLINE:-530}"  # seconds for everything after the install
EXTRA="${EXTRA:-}"  # e.g. EXTRA=--smoke: a CPU dry run of this script (tiny model, no baseline)
source benchmarks/device_wheels.sh  # offline wheels + PYTHONPATH
nvidia-smi --query-gpu=index,name,memory.total --format=csv > "$OUT/gpus.csv" 2>&1 || true
free -g >> "$OUT/gpus.csv" 2>&1 || true
BASE="${BASE:-.bench_shared/cosmos_peft_baseline.py}"  # the carried copy of ../shared/bench
[ -f "$BASE" ] || BASE=../shared/bench/cosmos_peft_baseline.py
T0=$(date +%s)

# part NAME RESERVE_S MAX_S ARGS...: run bench_train_gpu.py for at most MAX_S seconds, leaving RESERVE_S
# of the deadline to the parts after it.
part() {
  local name=$1 reserve=$2 max=$3
  shift 3
  local left=$((DEADLINE - ($(date +%s) - T0) - reserve))
  local lim=$((left < max ? left : max))
  if [ "$lim" -lt 30 ]; then
    echo "== $name: skipped (${lim}s left)" | tee -a "$OUT/summary.txt"
    return
  fi
  echo "== $name (limit ${lim}s): bench_train_gpu.py $*" | tee -a "$OUT/summary.txt"
  mkdir -p "$OUT/parts/$name"
  timeout --signal=TERM --kill-after=10 "$lim" python3 benchmarks/bench_train_gpu.py --baseline "$BASE" \
    --out "$OUT/parts/$name" "$@" $EXTRA > "$OUT/logs/$name.log" 2>&1
  local rc=$?
  # the tables (and any error) into the summary; every JSON line into results.jsonl
  grep -v '^{' "$OUT/logs/$name.log" | grep -v -i 'warn\|learnable_pos_embed\|^ *$' | tail -40 \
    >> "$OUT/summary.txt"
  [ -f "$OUT/parts/$name/train_results.jsonl" ] && \
    sed "s/^{/{\"part\": \"$name\", /" "$OUT/parts/$name/train_results.jsonl" >> "$OUT/results.jsonl"
  echo "== $name: rc=$rc after $(($(date +%s) - T0))s" | tee -a "$OUT/summary.txt"
}

part full 300 250 --case full --baseline-modes lora \
  --ours "lora:offload+attention:1:cudnn,lora:offload=0.5+attention:1:cudnn"
part robot 70 230 --case robot --baseline-modes lora --steps 5 --warm 2 \
  --ours "lora:budget:0.5:1:cudnn,lorafp8:budget:0.5:1:cudnn,dora:budget:0.5:1:cudnn"
part curve 0 80 --loss-curve 30 --curve-latent 4,32,40 --curve-lr 1e-3

rm -rf "$OUT/parts"
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
echo "total $(($(date +%s) - START))s" >> "$OUT/summary.txt"
cat "$OUT/summary.txt"
