#!/usr/bin/env bash
# VAE probe for the sim twin (issue 15, docs/sim_twin.md session 10): two VAEs trained side by side on a 2-GPU host
# from the recipe's data, in one device call of <= 10 minutes, then judged by their round trips of held-out, demo
# and study cells (benchmarks/bench_vae_roundtrip.py) next to the shipped twin's VAE. No transformer is trained.
#   bash benchmarks/run_vae_probe_gpu.sh             # on nvidia-h200-x2, $OUT set, wheels carried (.whl, .whl_ros)
#   VAE_MIN=6 A="vae.max_minutes=6" B="vae.dim_mult=[1,2,4]" bash benchmarks/run_vae_probe_gpu.sh
# A = the recipe's 8x VAE given VAE_MIN minutes (run 3's had 4); B = 4x spatial compression (three levels), the same
# minutes. SMOKE=1: the CPU plumbing check (tiny counts, one variant after the other).
set -uo pipefail
source benchmarks/device_wheels.sh  # offline wheels + PYTHONPATH
T=${T:-runs/vae_probe}
MIN=${VAE_MIN:-6}
if [ "${SMOKE:-0}" = 1 ]; then S="--smoke"; G0=""; G1=""; else S=""; G0=0; G1=1; fi
C="progress=false vae.max_minutes=$MIN"
declare -A V=([A]="${A:-}" [B]="${B:-vae.dim_mult=[1,2,4]}")
twin() { python3 -m cosmos_ros.train.sim_twin $S "$@"; }
mkdir -p $T/A $T/B
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
twin --out $T/A --stages generate,clips $C > $T/prep.log 2>&1
echo "generate,clips rc=$? at ${SECONDS}s"
A_ABS=$(cd $T/A && pwd)
for x in data clips clips_heldout; do [ -e $T/B/$x ] || ln -s $A_ABS/$x $T/B/$x; done
run_vae() {  # variant gpu
  CUDA_VISIBLE_DEVICES=$2 OMP_NUM_THREADS=8 twin --out $T/$1 --stages vae $C ${V[$1]} > $T/$1/vae.log 2>&1
  echo "$1 vae rc=$? at ${SECONDS}s: $(grep -o '"psnr[^,]*,[^,]*' $T/$1/vae.log | tail -1)"
}
if [ "${SMOKE:-0}" = 1 ]; then run_vae A ""; run_vae B ""; else run_vae A $G0 & run_vae B $G1 & wait; fi
python3 benchmarks/bench_vae_roundtrip.py --vae models/sim_twin --vae $T/A/vae --vae $T/B/vae --size 64x80 \
  --clips ${CLIPS:-16} > $T/roundtrip.txt 2> $T/roundtrip.err
echo "roundtrip rc=$? at ${SECONDS}s"; tail -18 $T/roundtrip.txt
mkdir -p "${OUT:-$T/out}"
cp $T/prep.log $T/roundtrip.txt "${OUT:-$T/out}/"; for v in A B; do cp $T/$v/vae.log "${OUT:-$T/out}/vae_$v.log"; done
