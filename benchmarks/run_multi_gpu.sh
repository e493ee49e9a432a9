#!/usr/bin/env bash
# Issue 20 on a 2-GPU host, one command from the repo root with $OUT set (the device machine, no network):
#   bash benchmarks/run_multi_gpu.sh
# Installs the carried wheels (.whl, .whl_ros) when present, then runs every part of
# benchmarks/bench_multi_gpu.py (~9 min on 2 x H200). Back in $OUT: multi_gpu.jsonl (one JSON line per
# figure), summary.txt (the table), logs.tgz (each part's log). NCCL settings are left as the machine sets
# them (NVLink multicast off: nothing here touches NCCL_NVLS_ENABLE).
set -u
OUT="${OUT:-$PWD/mgpu_out}"
mkdir -p "$OUT"
source benchmarks/device_wheels.sh  # offline wheels + PYTHONPATH
nvidia-smi --query-gpu=index,name,memory.total --format=csv > "$OUT/gpus.csv" 2>&1 || true
python3 benchmarks/bench_multi_gpu.py all --out "$OUT" --deadline "${DEADLINE:-540}" "$@" \
  > >(tee "$OUT/summary.txt") 2>&1
rc=$?
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
exit $rc
