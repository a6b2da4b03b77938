#!/usr/bin/env bash
# Time to quality over training seeds on one lent GPU (issue 17 item 2): every recipe from SEEDS training seeds, each
# generator trained and judged by its own bench.time_to_quality process, PARALLEL (default 12) at a time on the one
# GPU (the tiny stages are launch-bound: one process leaves it mostly idle), each stopped DEADLINE_S (default 540 s)
# after the start and none started with less than MIN_LEFT_S (default 240 s) left; the parts merged into one --out
# (their judges must be identical).
#   bash bench/time_to_quality_gpu.sh RUN_FILES OUT_DIR SEEDS RECIPE [RECIPE ...] -- BENCH_ARGS ...
# RUN_FILES: a run's config.yaml, vae.safetensors and cache/ (its latents-*.safetensors; a real cohort's
# slices-*.npz); the phantom cohort is redrawn here from its seeds. Seed 0 keeps the recipe's plain name (`current`
# is the reference); seed K > 0 is RECIPE-seedK. BENCH_ARGS go to every process (steps, --n, device=cuda, ...).
# OUT_DIR gets ttq.json / ttq.png (merged), parts.tgz (each process's --out), metrics.tgz (each generator's
# training metrics), logs.txt, gpu.csv (utilisation every 5 s).
# Wheels for packages the machine lacks: WHEELS (default .whl).
set -uo pipefail
files=$1; out=$2; seeds=$3; shift 3
recipes=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do recipes+=("$1"); shift; done
[ $# -gt 0 ] && shift
start=$(date +%s)
deadline=$(( start + ${DEADLINE_S:-540} ))
mkdir -p "$out"
log="$out/logs.txt"
wheels=${WHEELS:-.whl}
if [ -d "$wheels" ]; then  # the GPU image lacks nibabel and fairlearn: local wheels, no index
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$wheels"/*.whl >>"$log" 2>&1 && export PYTHONPATH=/tmp/site
fi
# one thread per process in every pool: --threads caps torch's, BLAS / OpenMP would start one per core in each
# process (session 19: 12 processes' judges without this reached a load of 39 on 16 cores and none finished)
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc; cat /proc/loadavg
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"; } 2>&1 | tee -a "$log"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 >"$out/gpu.csv" 2>/dev/null &
smi=$!

run=/tmp/ttq-run parts=/tmp/ttq-parts work=/tmp/ttq-work
rm -rf "$run" "$parts" "$work" /tmp/ttq-preflight* /tmp/ttq-logs && mkdir -p "$parts" /tmp/ttq-logs && cp -r "$files" "$run"
python3 - "$run" >>"$log" 2>&1 <<'EOF' || { echo "preparing the cohort failed (see $log)"; tail -20 "$log"; exit 1; }
import sys
from pathlib import Path
from run.config import load_run_config
from run.prepare_data import prepare_data
run = Path(sys.argv[1])  # the cohort folders the bench copies (bench.run_data), drawn once for every process
prepare_data(load_run_config(run / "config.yaml", []).data, run, progress=False)
EOF
echo "cohort ready at ${SECONDS}s" | tee -a "$log"

jobs=()
for ((s = 0; s < seeds; s++)); do  # seed-major: a run cut short keeps the same seeds of every recipe
  for r in "${recipes[@]}"; do jobs+=("$r$([ "$s" -gt 0 ] && echo "-seed$s")"); done
done
one() {  # one generator: train, judge, write its part; not started past the deadline
  local left=$(( deadline - $(date +%s) ))
  [ "$left" -gt "${MIN_LEFT_S:-240}" ] || { echo "$1: not started ($left s left)"; return 0; }
  timeout "$left" python3 -m bench.time_to_quality --run "$run" --work "$work" --recipes "$1" \
    --out "$parts/$1.json" "${@:2}" >"/tmp/ttq-logs/$1.log" 2>&1
  echo "$1: exit $? at $(( $(date +%s) - start ))s, load $(cut -d' ' -f1-3 /proc/loadavg)"
}
export -f one
export start deadline run work parts
printf '%s\n' "${jobs[@]}" | xargs -P "${PARALLEL:-12}" -I{} bash -c 'one "$@"' _ {} "$@" >>"$log" 2>&1 &
queue=$!
# beside them, the whole bench in a few steps on this machine (training, sampling, judging on its device): a failure
# stops everything at once rather than after the training
if ! python3 -m bench.time_to_quality "$@" --run "$run" --work /tmp/ttq-preflight --recipes current --ldm-steps 2 \
    --controlnet-steps 2 --every 2 --n 8 --segmenter-steps 2 --classifier-epochs 1 --fid-repeats 2 \
    --out /tmp/ttq-preflight.json >/tmp/ttq-logs/preflight.txt 2>&1; then
  kill "$queue" "$smi" 2>/dev/null; pkill -f "bench.time_to_quality --run"
  echo "preflight failed at ${SECONDS}s:"; grep -v 'it/s\]' /tmp/ttq-logs/preflight.txt | tail -20; exit 1
fi
echo "preflight passed at ${SECONDS}s" | tee -a "$log"
wait "$queue"
kill "$smi" 2>/dev/null

for f in /tmp/ttq-logs/*.log; do { echo "== $f"; tr '\r' '\n' <"$f" | grep -v 'it/s\]$' | tail -15; } >>"$log"; done
# each generator's training clock (the trainers' metrics logs) comes back too, judged or not
(cd "$work" && find . -name '*-train-metrics.jsonl' | tar -czf "$out/metrics.tgz" -T -)
tar -czf "$out/parts.tgz" -C "$parts" .
ls "$parts"/*.json >/dev/null 2>&1 || { echo "no generator finished"; tail -30 "$log"; exit 1; }
python3 -m bench.time_to_quality --merge "$parts"/*.json --out "$out/ttq.json" --plot "$out/ttq.png" 2>&1 | tee -a "$log"
