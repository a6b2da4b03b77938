#!/usr/bin/env bash
# configs/acdc-long.yaml on one lent GPU inside a fixed wall budget, then everything small back to OUT_DIR.
#   bash bench/acdc_long_gpu.sh SLICE_CACHE.npz OUT_DIR [TRAIN_BUDGET_S] [CALIBRATION_STEPS]
# 1. calibrate: CALIBRATION_STEPS (default 150) steps of each trained stage in a scratch run;
# 2. size each stage's steps to its share of TRAIN_BUDGET_S (bench/budget_steps.py; capped at the preset's);
# 3. the whole main job with those steps (VAE -> ... -> held-out evaluation -> arms -> report), stopped before
#    the command's own limit (DEADLINE_S, default 560 s after start) so the results still come back;
# 4. OUT_DIR gets the run folder without checkpoints (run.tgz), the log, and the three checkpoints in fp16,
#    split into 15 MiB parts (ckpt.tgz.part-*) so each file stays under the device tool's size limit.
# Wheels for packages the machine lacks: WHEELS (default .whl). Extra arguments after the fourth are passed to train.py as overrides (e.g. device=cpu for a dry run).
set -uo pipefail
npz=$1; out=$2; budget=${3:-300}; cal_steps=${4:-150}; shift $(( $# < 4 ? $# : 4 ))
deadline=${DEADLINE_S:-560}
cfg=configs/acdc-long.yaml
mkdir -p "$out"
log="$out/acdc-long.log"
wheels=${WHEELS:-.whl}
if [ -d "$wheels" ]; then  # the GPU image lacks nibabel and fairlearn (+ narwhals): local wheels, no index
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$wheels"/nibabel-*.whl "$wheels"/fairlearn-*.whl "$wheels"/narwhals-*.whl >>"$log" 2>&1 && export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"; } | tee -a "$log"

cal=/tmp/acdc-long-calibration
rm -rf "$cal"
python3 train.py --config $cfg --data "$npz" --runs "$cal" --name cal --stage controlnet \
  vae_train.steps=$cal_steps ldm_train.steps=$cal_steps controlnet_train.steps=$cal_steps \
  vae_train.log_every=25 ldm_train.log_every=25 controlnet_train.log_every=25 "$@" >>"$log" 2>&1 \
  || { echo "calibration failed (see $log)"; tail -20 "$log"; exit 1; }
steps=$(python3 -m bench.budget_steps "$cal/cal" "$budget" --cap $cfg 2>>"$log") || { tail -5 "$log"; exit 1; }
echo "calibrated at ${SECONDS}s: $steps" | tee -a "$log"

left=$(( deadline - SECONDS ))
timeout "$left" python3 train.py --config $cfg --data "$npz" --runs /tmp/runs $steps "$@" >>"$log" 2>&1
echo "train.py exit $? at ${SECONDS}s" | tee -a "$log"
tail -40 "$log"

run=/tmp/runs/acdc-long
tar -czf "$out/run.tgz" -C /tmp/runs --exclude='*.safetensors' --exclude='samples' --exclude='mirror' --exclude='cache' acdc-long
python3 - "$run" <<'EOF'
import sys
from pathlib import Path
from safetensors.torch import load_file, save_file
run = Path(sys.argv[1])
for name in ("vae", "ldm", "controlnet"):
    path = run / f"{name}.safetensors"
    if path.exists():  # fp16 halves the bytes; the weights are for evaluation here, not for further training
        tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(path).items()}
        save_file(tensors, f"/tmp/{name}-fp16.safetensors")
EOF
(cd /tmp && tar -cf - *-fp16.safetensors 2>/dev/null | split -b 15M - "$out/ckpt.tar.part-")
ls -la "$out"
