#!/usr/bin/env bash
# Sim-twin architecture probe (2 GPUs; docs/sim_twin.md "Architecture probe"); run from the repo root with $OUT set.
# Twin architecture probe (2 GPUs): shared data (640 cells, run-4 VAE reused), then 4 variants trained from
# scratch for the same 3.5 minutes, 2 per GPU at once, each evaluated on 48 held-out clips (10 steps).
set -uo pipefail
source benchmarks/device_wheels.sh  # offline wheels + PYTHONPATH
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
P=runs/tx/prep
C="progress=false data.train_episodes=640 vae.reuse=models/sim_twin train.run.max_minutes=3.5 evaluate.max_clips=48 evaluate.verdict_plans=0 evaluate.grid_clips=2"
mkdir -p $P
python3 -m cosmos_ros.train.sim_twin --out $P --stages generate,clips,vae $C > $P/prep.log 2>&1
echo "prep rc=$? at ${SECONDS}s"; grep "sim_twin:" $P/prep.log | tail -4 | cut -c1-300
declare -A V=(
  [A]=""
  [P1]="transformer.patch_size=[1,1,1]"
  [W]="transformer.num_layers=8 transformer.num_attention_heads=6"
  [P1W]="transformer.patch_size=[1,1,1] transformer.num_layers=8 transformer.num_attention_heads=6"
)
declare -A G=([A]=0 [P1]=0 [W]=1 [P1W]=1)
for v in A P1 W P1W; do  # base + latent cache one variant at a time (4 at once starved the CPU last time)
  d=runs/tx/$v; mkdir -p $d
  for x in data clips clips_heldout vae; do [ -e $P/$x ] && ln -s $PWD/$P/$x $d/$x; done
  cp $P/pipeline_report.json $d/ 2>/dev/null
  CUDA_VISIBLE_DEVICES=${G[$v]} python3 -m cosmos_ros.train.sim_twin --out $d --stages base,latents $C ${V[$v]} > $d/prep.log 2>&1
  echo "$v base+latents rc=$? at ${SECONDS}s"
done
for v in A P1 W P1W; do
  d=runs/tx/$v
  ( CUDA_VISIBLE_DEVICES=${G[$v]} OMP_NUM_THREADS=6 timeout -s INT $((575 - SECONDS)) python3 -m cosmos_ros.train.sim_twin --out $d \
      --stages transformer,export,evaluate $C ${V[$v]} > $d/run.log 2>&1; echo "$v rc=$? at ${SECONDS}s" ) &
done
wait
for v in A P1 W P1W; do
  d=runs/tx/$v; echo "== $v"; grep "stage .* done" $d/run.log | cut -c1-400 | tail -4; grep "^train: step" $d/run.log | tail -1
  mkdir -p $OUT/tx/$v; cp $d/prep.log $d/run.log $OUT/tx/$v/ 2>/dev/null
  [ -d $d/sim_twin ] && cp $d/sim_twin/cosmos_ros_card.json $d/sim_twin/loss_curves.json $OUT/tx/$v/ 2>/dev/null
  [ -f $d/sim_twin/eval/report.md ] && cp $d/sim_twin/eval/report.md $OUT/tx/$v/
done
( cd $OUT && tar czf tx.tgz tx && rm -rf tx )
# the variants' weights, for CPU checks (bf16 transformers + card; VAE is run 4's)
tar czf /tmp/w.tgz -C runs/tx --exclude='*/sim_twin/vae' --exclude='*/sim_twin/eval' A/sim_twin P1/sim_twin W/sim_twin P1W/sim_twin 2>/dev/null
split -b 15M /tmp/w.tgz $OUT/w.tgz.part-
ls -la $OUT
