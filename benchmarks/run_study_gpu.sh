#!/usr/bin/env bash
# Adaptation study rows (issue 18, docs/adaptation.md) in one device call of <= 10 minutes, on every GPU of the
# machine, several rows sharing each GPU (the twin is small: one row alone leaves an H200 mostly idle). Run from
# the repo root with $OUT set and the offline wheels carried (.whl, .whl_ros):
#   bash benchmarks/run_study_gpu.sh                       # rows in plan order, skipping docs/adaptation/results
#   PER_GPU=5 BUDGET_MIN=9.2 ROWS="--rows a,b" bash benchmarks/run_study_gpu.sh
# The rows' JSON and logs come back as $OUT/rows.tgz: unpack into docs/adaptation/results (logs stay out of git)
# and commit, so the next call skips them. A row still running at the call's end is lost, not half-written: the
# batch starts no row whose expected end (the median of its method's rows finished in this call) passes
# BUDGET_MIN minutes from its start.
set -uo pipefail
source benchmarks/device_wheels.sh  # offline wheels + PYTHONPATH
NG=$(nvidia-smi -L | wc -l)
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}  # per row process: several rows share the host's cores
R=runs/adaptation_study/results_call
rm -rf $R
timeout -s INT "${CALL_S:-585}" python3 -m cosmos_ros.study.batch ${ROWS:---all} --gpus "$NG" --per-gpu "${PER_GPU:-5}" \
  --work runs/adaptation_study --results $R --skip-done docs/adaptation/results \
  --budget-minutes "${BUDGET_MIN:-9.2}" "$@"
echo "batch rc=$? at ${SECONDS}s"
nvidia-smi --query-gpu=memory.used --format=csv,noheader
tar czf "$OUT/rows.tgz" -C $R . && ls -la "$OUT"
