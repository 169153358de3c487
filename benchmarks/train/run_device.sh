#!/usr/bin/env bash
# The trained RF-DETR Nano on the GPU machine, in two device commands (see README.md beside this file):
#   bash benchmarks/train/run_device.sh train   # dataset + ~6 min training + weight parts, curve, val mAP -> $OUT
#   bash benchmarks/train/run_device.sh check   # parts in .carry/train/parts -> packages -> mAP check -> $OUT
#     (issued within the device's 30 s warm window after `train`, it uses that machine's own checkpoint:
#     the weight parts are only needed on a fresh machine, and they do not outlive a session's checkout)
# Material is read from .carry/train (benchmarks/train/fetch_material.sh), wheels from .carry/train/whl
# or .whl (benchmarks/train/fetch_wheels.sh). Toy-scale knobs: MATERIAL, PARTS, TRAIN_IMAGES, VAL_IMAGES, TEST_IMAGES,
# TRAIN_ARGS, EVAL_ARGS (extra flags of train.py / evaluate.py). TRAIN_SECONDS (default 360) bounds training; it also stops by
# START+STOP_AFTER seconds (default 440) so the command ends inside the device's 10-minute limit.
set -uo pipefail
START=$(date +%s)
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../.."
step=${1:?usage: run_device.sh train|check}
OUT=${OUT:?OUT must be set (the device sets it)}
MAT=${MATERIAL:-.carry/train}
wheels=()
for name in rfdetr pydeprecate supervision defusedxml pydantic pydantic_core annotated_types typing_inspection pycocotools torch_linear_assignment; do
  w=$(ls "$MAT/whl"/* .whl/* 2>/dev/null | grep -i "/${name}-[0-9]" | head -1)
  [ -n "$w" ] && wheels+=("$w") || echo "no wheel for $name in $MAT/whl or .whl (fine if the image has it)"
done
if [ ${#wheels[@]} -gt 0 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${wheels[@]}" || exit 1
fi
export PYTHONPATH="/tmp/site:$PWD"
python3 setup.py build_ext --inplace -q >/dev/null 2>&1 || echo "C extension build failed (the cpu implementation will be missing)"
log() { grep --line-buffered -v -E "UserWarning|FutureWarning|DeprecationWarning|warnings.warn|rf-detr - "; }
case $step in
  train)
    python3 benchmarks/train/dataset.py --material "$MAT" --out /tmp/ds --train "${TRAIN_IMAGES:-8000}" --val "${VAL_IMAGES:-200}" --test "${TEST_IMAGES:-300}" 2>&1 | log
    echo "dataset ready at $(( $(date +%s) - START )) s"
    python3 benchmarks/train/train.py --data /tmp/ds --out /tmp/run --seconds "${TRAIN_SECONDS:-360}" \
      --stop-at $(( START + ${STOP_AFTER:-440} )) ${TRAIN_ARGS:-} 2>&1 | log | tee "$OUT/train.log"
    echo "trained at $(( $(date +%s) - START )) s"
    cp /tmp/run/history.json /tmp/run/curve.png "$OUT/"
    python3 -c "
import sys, torch; sys.path.insert(0, 'benchmarks/train'); import pack
paths = pack.pack(torch.load('/tmp/run/checkpoint.pth', map_location='cpu', weights_only=False), '$OUT')
print('parts:', ', '.join(f'{p.name} {p.stat().st_size}' for p in paths))
pack.write_packages('/tmp/run/checkpoint.pth', '/tmp/pkg', onnx=False)" 2>&1 | log
    echo "done at $(( $(date +%s) - START )) s" ;;
  check)
    if [ -z "${PARTS:-}" ] && [ -f /tmp/run/checkpoint.pth ] && [ ! -d .carry/train/parts ] && [ -d /tmp/pkg ]; then
      # The machine is still warm from the train step: its checkpoint and packages are here, no parts to carry.
      echo "using the train step's checkpoint and packages on this machine (/tmp/run, /tmp/pkg)"
    else
      rm -rf /tmp/pkg
      python3 -c "
import sys, torch; sys.path.insert(0, 'benchmarks/train'); import pack
torch.save(pack.unpack('${PARTS:-.carry/train/parts}'), '/tmp/checkpoint.pth')
pack.write_packages('/tmp/checkpoint.pth', '/tmp/pkg', onnx=False)" 2>&1 | log
      [ -d /tmp/pkg ] || { echo "could not unpack the weight parts into packages"; exit 1; }
    fi
    python3 -c "
import sys; sys.path.insert(0, 'benchmarks/train'); import dataset
dataset.build('$MAT', '/tmp/ds', counts={'test': ${TEST_IMAGES:-300}})" 2>&1 | log
    echo "packages and test split ready at $(( $(date +%s) - START )) s"
    python3 benchmarks/train/evaluate.py --packages /tmp/pkg --data /tmp/ds --out "$OUT" ${EVAL_ARGS:-} 2>&1 | log | tee "$OUT/check.log"
    echo "done at $(( $(date +%s) - START )) s" ;;
  *) echo "unknown step $step"; exit 2 ;;
esac
