#!/usr/bin/env bash
# Issue 19's GPU figures in one device call of at most ~9 minutes on one H200 (16 CPU cores):
#   1. bench_planner_gpu.py: planning time per replanning step over the 2B config (random weights),
#      3 CEM iterations x 32 candidates x 12-step horizon, 4 sampling steps (cut at BENCH_S seconds);
#   2. the 50-task closed loop with the shipped twin (models/sim_twin) and both references (oracle,
#      straight) on the CPU first, then the twin in MODEL_WORKERS processes sharing the GPU; report.json
#      and report.md are rewritten after every episode, so a run cut by the limit still returns figures
#      (continue it with the same options plus --resume, its report.json in --out).
# Run from the repo root with the offline wheels carried (.whl, .whl_ros; git-ignored):
#   bash benchmarks/run_planner_gpu.sh            # writes at most 7 files under $OUT (default runs/planner_gpu)
# Knobs (environment): BENCH_S (default 200), TOTAL_S (default 560: everything ends before then),
# TASKS (50), WORKERS (12: reference processes), MODEL_WORKERS (12: twin processes), DEVICE (cuda),
# EVAL_ARGS (more plan_evaluate options; e.g. a CPU check of this script: DEVICE=cpu BENCH_S=5 TASKS=1
# EVAL_ARGS="--candidates 4 --iterations 1 --time-limit 0.3"), RESUME_FROM (the report.json of a cut run:
# the benchmark is skipped and the closed loop continues that run's episodes).
set -uo pipefail
OUT=${OUT:-runs/planner_gpu}
mkdir -p "$OUT"
BENCH_S=${BENCH_S:-200}
TOTAL_S=${TOTAL_S:-560}
TASKS=${TASKS:-50}
WORKERS=${WORKERS:-12}
MODEL_WORKERS=${MODEL_WORKERS:-12}
DEVICE=${DEVICE:-cuda}
EVAL_ARGS=${EVAL_ARGS:-}

source benchmarks/device_wheels.sh  # offline wheels + PYTHONPATH
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader 2>/dev/null
nproc
echo "setup done at ${SECONDS}s"

RESUME=""
if [ -n "${RESUME_FROM:-}" ]; then
  mkdir -p "$OUT/plan_eval" && cp "$RESUME_FROM" "$OUT/plan_eval/report.json" && RESUME=--resume && BENCH_S=0
fi
[ "$BENCH_S" -gt 0 ] && timeout -s INT "$BENCH_S" python3 benchmarks/bench_planner_gpu.py --candidates 32 --iterations 3 --horizon 12 \
  --num-steps 4 --repeats 3 --out "$OUT/bench_planner.json" > "$OUT/bench_planner.log" 2>&1
echo "bench rc=$? at ${SECONDS}s"
grep -v -i warn "$OUT/bench_planner.log" 2>/dev/null | tail -4

LEFT=$((TOTAL_S - SECONDS))
echo "closed loop: ${LEFT}s left"
timeout -s INT "$LEFT" python3 -m cosmos_ros.plan.evaluate --tasks "$TASKS" --seed 0 --model models/sim_twin \
  --device "$DEVICE" --workers "$WORKERS" --model-workers "$MODEL_WORKERS" --out "$OUT/plan_eval" \
  $RESUME $EVAL_ARGS > "$OUT/plan_eval.log" 2>&1
echo "closed loop rc=$? at ${SECONDS}s"
grep -E "tasks \(|^\|" "$OUT/plan_eval.log" | tail -8
python3 - "$OUT/plan_eval/report.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print("complete:", r.get("complete"), "tasks_done:", r.get("tasks_done"))
print("targets:", json.dumps(r.get("targets")))
for name, s in r.get("summary", {}).items():
    print(name, {k: s.get(k) for k in ("tasks", "success_rate", "reached_rate", "collisions", "plan_seconds_mean")})
EOF
ls -la "$OUT" "$OUT/plan_eval"
