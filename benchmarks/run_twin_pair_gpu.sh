#!/usr/bin/env bash
# Two sim-twin variants trained side by side on a 2-GPU host, in two device calls of <= 10 minutes each (how run 6,
# the shipped twin, was made; docs/sim_twin.md "Run 6"). Run from the repo root with $OUT set and the offline
# wheels carried (.whl, .whl_ros):
#   bash benchmarks/run_twin_pair_gpu.sh a           # shared data + VAE, both variants' clips/base/latents,
#                                                    # both transformers until a SIGINT checkpoint near 555 s
#   TRAIN_S=320 bash benchmarks/run_twin_pair_gpu.sh b   # (same warm machine) resume both with the budget set so
#                                                    # the schedule ends TRAIN_S later, export, evaluate both,
#                                                    # pack the better one's weights (held-out pose error)
# Variants: D = patch 1x1x1 + delta actions, S = patch 1x1x1 + absolute joint targets (config/sim_twin.yaml today).
# For the plain one-GPU recipe use tools/train_sim_twin.sh.
set -uo pipefail
PHASE=${1:?usage: run_twin_pair_gpu.sh a|b}
source benchmarks/device_wheels.sh  # offline wheels + PYTHONPATH
T=runs/t6
C="progress=false data.train_episodes=1280 vae.reuse=models/sim_twin transformer.patch_size=[1,1,1]"
declare -A V=([D]="clips.action_mode=delta" [S]="clips.action_mode=absolute")
declare -A G=([D]=0 [S]=1)
twin() { python3 -m cosmos_ros.train.sim_twin "$@"; }

if [ "$PHASE" = a ]; then
  nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
  P=$T/prep; mkdir -p $P $T/D $T/S
  twin --out $P --stages generate $C train.run.max_minutes=12 > $P/gen.log 2>&1
  echo "generate rc=$? at ${SECONDS}s"
  ln -s $PWD/$P/data $T/S/data
  ( twin --out $P --stages clips,vae $C ${V[D]} train.run.max_minutes=12 > $P/prep.log 2>&1
    echo "P clips,vae rc=$? at ${SECONDS}s" ) &
  ( twin --out $T/S --stages clips $C ${V[S]} train.run.max_minutes=12 > $T/S/clips.log 2>&1
    echo "S clips rc=$? at ${SECONDS}s" ) &
  wait
  for x in data clips clips_heldout vae; do ln -s $PWD/$P/$x $T/D/$x; done
  ln -s $PWD/$P/vae $T/S/vae
  for v in D S; do  # one at a time: several latent caches built at once starve the host's CPU
    CUDA_VISIBLE_DEVICES=${G[$v]} twin --out $T/$v --stages base,latents $C ${V[$v]} train.run.max_minutes=12 \
      > $T/$v/bl.log 2>&1
    echo "$v base+latents rc=$? at ${SECONDS}s"
  done
  for v in D S; do
    ( CUDA_VISIBLE_DEVICES=${G[$v]} OMP_NUM_THREADS=8 timeout -s INT $((555 - SECONDS)) \
        python3 -m cosmos_ros.train.sim_twin --out $T/$v --stages transformer $C ${V[$v]} train.run.max_minutes=12 \
        > $T/$v/tr_a.log 2>&1; echo "$v transformer rc=$? at ${SECONDS}s" ) &
  done
  wait
  for v in D S; do
    echo "== $v"; grep "^train: step" $T/$v/tr_a.log | tail -1
    mkdir -p $OUT/$v; cp $T/$v/*.log $OUT/$v/ 2>/dev/null
  done
  cp $P/*.log $OUT/ 2>/dev/null
  exit 0
fi

[ -d $T/D/train/checkpoints ] || { echo "no checkpoints from phase a (the machine was handed back)"; exit 2; }
for v in D S; do
  prior=$(cat $T/$v/train/checkpoints/*/trainer_state.json \
    | python3 -c "import json,sys; print(json.load(sys.stdin)['budget_seconds'])")
  mm=$(python3 -c "print(round(($prior + ${TRAIN_S:-300}) / 60, 3))")
  echo "$v prior ${prior}s -> max_minutes $mm"
  ( CUDA_VISIBLE_DEVICES=${G[$v]} OMP_NUM_THREADS=8 timeout -s INT $((450 - SECONDS)) \
      python3 -m cosmos_ros.train.sim_twin --out $T/$v --stages transformer,export $C ${V[$v]} \
      train.run.max_minutes=$mm > $T/$v/tr_b.log 2>&1; echo "$v transformer,export rc=$? at ${SECONDS}s" ) &
done
wait
for v in D S; do
  ( CUDA_VISIBLE_DEVICES=${G[$v]} OMP_NUM_THREADS=8 timeout -s INT $((570 - SECONDS)) \
      python3 -m cosmos_ros.train.sim_twin --out $T/$v --stages evaluate $C ${V[$v]} > $T/$v/ev.log 2>&1
    echo "$v evaluate rc=$? at ${SECONDS}s" ) &
done
wait
for v in D S; do
  echo "== $v"; grep "stage .* done" $T/$v/tr_b.log $T/$v/ev.log | cut -c1-700
  mkdir -p $OUT/r/$v; cp $T/$v/tr_b.log $T/$v/ev.log $T/$v/pipeline_report.json $OUT/r/$v/ 2>/dev/null
  cp -r $T/$v/sim_twin/eval $T/$v/sim_twin/cosmos_ros_card.json $T/$v/sim_twin/loss_curves.json \
    $T/$v/sim_twin/README.md $OUT/r/$v/ 2>/dev/null
done
( cd $OUT && tar czf r.tgz r && rm -rf r )
best=$(python3 - <<'PY'
import json
e = {}
for v in "DS":
    try:
        e[v] = json.load(open(f"runs/t6/{v}/sim_twin/cosmos_ros_card.json"))["evaluation"]["pose_error"]
    except (OSError, KeyError, ValueError):
        pass
print(min(e, key=e.get) if e else "")
PY
)
echo "best: $best"
# the better twin's weights without its VAE (run 3's, unchanged), in parts the device runner returns
[ -n "$best" ] && tar czf /tmp/w.tgz -C $T/$best --exclude=sim_twin/vae sim_twin && split -b 15M /tmp/w.tgz "$OUT/w_$best.tgz.part-"
ls -la $OUT
