#!/usr/bin/env bash
# The sim twin's one-command recipe (tools/train_sim_twin.sh = every stage of config/sim_twin.yaml) run on one H200
# through a device runner that allows 10 minutes a command: three calls on the same warm machine (its disk survives
# from one call to the next), each part of the same pipeline folder $T, nothing changed but where it is cut.
#   bash benchmarks/run_sim_twin_gpu.sh 1   # generate, clips, vae (the VAE's budget shrinks if the call would overrun)
#   bash benchmarks/run_sim_twin_gpu.sh 2   # base, latents, transformer until a SIGINT checkpoint at the call's end
#   bash benchmarks/run_sim_twin_gpu.sh 3   # transformer (resumed: the same budget continues), export, evaluate
# $OUT set, wheels carried (.whl). Logs go straight to $OUT (a call cut short still returns them); call 1 returns the
# VAE folder (`cat vae.tar.* | tar x -C <dir>`: `vae.reuse=<dir>/vae` can take it on a fresh machine), call 3 the
# shipped folder as sim_twin.tar.* (pieces of 15 MB) and pipeline_report.json. Extra arguments are overrides for every
# call (`section.key=value`). SMOKE=1: the CPU plumbing check (tiny counts).
set -uo pipefail
PHASE=${1:?usage: run_sim_twin_gpu.sh 1|2|3 [section.key=value ...]}
shift
CALL_S=${CALL_S:-585}  # the runner allows 600 s
source benchmarks/device_wheels.sh  # offline wheels + PYTHONPATH (it globs the wheels: before set -f)
set -f  # overrides such as vae.dim_mult=[1,2,4] are not globs
T=${T:-runs/twin}
O=${OUT:-$T/out}
S=""
[ "${SMOKE:-0}" = 1 ] && S="--smoke"
left() { echo $((CALL_S - SECONDS - ${1:-0})); }
EXTRA=("$@")
# `timeout -s INT` signals the pipeline itself: the trainer saves a checkpoint and the pipeline exits 3
twin() {  # seconds, stages, overrides...
  local s=$1 st=$2
  shift 2
  OMP_NUM_THREADS=8 timeout -s INT "$s" python3 -m cosmos_ros.train.sim_twin $S --out "$T" --stages "$st" \
    progress=false "${EXTRA[@]}" "$@"
}
mkdir -p "$T" "$O"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
case $PHASE in
  1)
    twin "$(left 120)" generate,clips > "$O/p1_prep.log" 2>&1
    echo "generate,clips rc=$? at ${SECONDS}s"
    # the config's VAE minutes, or what the call has left after 45 s for its statistics, evaluation and saving
    # (about 30 s on an H200 with the recipe's data)
    want=$(python3 -c "from cosmos_ros.train.sim_twin import load_config as l; \
print(l('config/sim_twin.yaml', '$S' != '', '${EXTRA[*]}'.split())['vae']['max_minutes'])")
    m=$(python3 -c "print(round(min($want, ($(left 45)) / 60), 2))")
    echo "vae.max_minutes $m (config $want)"
    twin "$(left 5)" vae vae.max_minutes=$m \
      > "$O/p1_vae.log" 2>&1
    echo "vae rc=$? at ${SECONDS}s: $(grep -o '"psnr[^}]*' "$O/p1_vae.log" | tail -1)"
    [ -d "$T/vae" ] && tar cf - -C "$T" vae | split -b 15000000 - "$O/vae.tar."
    ;;
  2)
    [ -d "$T/vae" ] || { echo "no VAE from call 1 (the machine was handed back?)"; exit 2; }
    twin "$(left 0)" base,latents,transformer \
      > "$O/p2.log" 2>&1
    echo "base,latents,transformer rc=$? (3: stopped with a checkpoint) at ${SECONDS}s"
    grep "^train: step" "$O/p2.log" | tail -1
    ;;
  3)
    [ -d "$T/train" ] || { echo "no training run from call 2"; exit 2; }
    twin "$(left 0)" transformer,export,evaluate \
      > "$O/p3.log" 2>&1
    echo "transformer,export,evaluate rc=$? at ${SECONDS}s"
    grep "stage .* done" "$O/p3.log" | cut -c1-600
    cp "$T/pipeline_report.json" "$O/" 2>/dev/null
    [ -d "$T/sim_twin" ] && tar cf - -C "$T" sim_twin | split -b 15000000 - "$O/sim_twin.tar."
    ;;
  *) echo "phase 1, 2 or 3" >&2; exit 1 ;;
esac
set +f
ls -la "$O"
