#!/usr/bin/env bash
# VAE probe for the sim twin (issue 15, docs/sim_twin.md session 10): two VAEs trained side by side (one per GPU on
# a 2-GPU host, both on the one GPU otherwise) from the recipe's data, in one device call of <= 10 minutes, then judged by their round trips of held-out, demo
# and study cells (benchmarks/bench_vae_roundtrip.py) next to the shipped twin's VAE. No transformer is trained.
#   bash benchmarks/run_vae_probe_gpu.sh             # $OUT set, wheels carried (.whl, .whl_ros)
#   VAE_MIN=5.5 A="" B="vae.dim_mult=[1,2,4]" bash benchmarks/run_vae_probe_gpu.sh
# A = the recipe's 8x VAE given VAE_MIN minutes (run 3's had 4); B = 4x spatial compression (three levels), the same
# minutes (a twin on B needs transformer.patch_size=[1,2,2] to keep today's tokens). Logs go straight to $OUT, so a
# call cut short still returns them; each trained VAE folder comes back as $OUT/vae_<A|B>.tar.<aa,ab,..> (pieces
# of 15 MB: `cat vae_B.tar.* | tar x -C <dir>` gives <dir>/vae, which `vae.reuse=<dir>/vae` can take). SMOKE=1: the CPU plumbing check (tiny counts, one variant after the other).
set -uo pipefail
CALL_S=${CALL_S:-590}
source benchmarks/device_wheels.sh  # offline wheels + PYTHONPATH (it globs the wheels: before set -f)
set -f  # overrides such as vae.dim_mult=[1,2,4] are not globs
T=${T:-runs/vae_probe}
O=${OUT:-$T/out}
MIN=${VAE_MIN:-5.5}
if [ "${SMOKE:-0}" = 1 ]; then S="--smoke"; else S=""; fi
C="progress=false vae.max_minutes=$MIN"
declare -A V=([A]="${A:-}" [B]="${B:-vae.dim_mult=[1,2,4]}")
left() { echo $((CALL_S - SECONDS - ${1:-0})); }
mkdir -p $T/A $T/B "$O"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
timeout -s INT "$(left $(python3 -c "print(int(60 * $MIN) + 90)"))" python3 -m cosmos_ros.train.sim_twin $S --out $T/A --stages generate,clips $C \
  > "$O/prep.log" 2>&1
echo "generate,clips rc=$? at ${SECONDS}s"
A_ABS=$(cd $T/A && pwd)
for x in data clips clips_heldout; do [ -e $T/B/$x ] || ln -s "$A_ABS/$x" $T/B/$x; done
run_vae() {  # variant gpu: the VAE stage stops itself at vae.max_minutes; the timeout is the call's guard
  CUDA_VISIBLE_DEVICES=$2 OMP_NUM_THREADS=8 timeout -s INT "$(left 45)" \
    python3 -m cosmos_ros.train.sim_twin $S --out $T/$1 --stages vae $C ${V[$1]} > "$O/vae_$1.log" 2>&1
  echo "$1 vae rc=$? at ${SECONDS}s: $(grep -o '"psnr[^,]*,[^,]*' "$O/vae_$1.log" | tail -1)"
}
GPUS=$(nvidia-smi -L 2> /dev/null | grep -c GPU)
if [ "${SMOKE:-0}" = 1 ]; then run_vae A ""; run_vae B ""; else run_vae A 0 & run_vae B $((GPUS > 1 ? 1 : 0)) & wait; fi
timeout "$(left 5)" python3 benchmarks/bench_vae_roundtrip.py --vae models/sim_twin --vae $T/A/vae \
  --vae $T/B/vae --size 64x80 --clips "${CLIPS:-16}" > "$O/roundtrip.txt" 2>&1
echo "roundtrip rc=$? at ${SECONDS}s"; grep "^|" "$O/roundtrip.txt"
for v in A B; do [ -d $T/$v/vae ] && tar cf - -C $T/$v vae | split -b 15000000 - "$O/vae_$v.tar."; done
set +f
ls -la "$O"
