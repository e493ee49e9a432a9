#!/usr/bin/env bash
# Adaptation study rows (issue 18, docs/adaptation.md) in one device call of <= 10 minutes, on every GPU of the
# machine, several rows sharing each GPU (the twin is small: one row alone leaves an H200 mostly idle). Run from
# the repo root with $OUT set and the offline wheels carried (.whl, .whl_ros):
#   bash benchmarks/run_study_gpu.sh                       # rows in plan order, skipping docs/adaptation/results
#   PER_GPU=5 CALL_S=585 ROWS="--rows a,b" bash benchmarks/run_study_gpu.sh
# The rows' JSON and logs come back as $OUT/rows.tgz (packed every 20 s and at the end, so a call cut short
# still returns the rows it finished): unpack into docs/adaptation/results (logs stay out of git) and commit, so
# the next call skips them. A row still running at the end is lost, not half-written: the batch starts no row
# whose expected end (the longest of its method's rows finished in this call) passes the call's budget,
# CALL_S seconds from this script's start less 35 s for packing.
set -uo pipefail
CALL_S=${CALL_S:-585}
source benchmarks/device_wheels.sh  # offline wheels + PYTHONPATH
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}  # per row process: several rows share the host's cores
R=runs/adaptation_study/results_call
rm -rf $R; mkdir -p $R
pack() { tar czf "$OUT/rows.tgz.part" -C $R . && mv "$OUT/rows.tgz.part" "$OUT/rows.tgz"; }
( while sleep 20; do pack; done ) & PACKER=$!
LEFT=$((CALL_S - 35 - SECONDS))
BUDGET=$(python3 -c "print(round($LEFT / 60, 2))")
timeout -s INT $((CALL_S - 10 - SECONDS)) python3 -m cosmos_ros.study.batch ${ROWS:---all} \
  --per-gpu "${PER_GPU:-5}" --work runs/adaptation_study --results $R --skip-done docs/adaptation/results \
  --budget-minutes "$BUDGET" "$@"
echo "batch rc=$? at ${SECONDS}s (budget ${BUDGET} min from the batch's start)"
kill $PACKER 2> /dev/null
pack; ls -la "$OUT"
