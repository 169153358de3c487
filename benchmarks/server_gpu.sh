#!/usr/bin/env bash
# Server load on a GPU machine (the device tool): single-GPU levels, batching gain, correctness under
# load, 10,000-request soak, then two workers on cuda:0,cuda:1. Writes logs and JSON to $OUT.
# Needs beside torch/triton/opencv: fastapi starlette uvicorn pydantic pydantic_core annotated-types
# typing-inspection python-multipart opentelemetry-api (server) and rfdetr pyDeprecate defusedxml (to
# build the untrained Nano checkpoint), as wheels installed into $SITE (see the device README).
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
python3 setup.py build_ext --inplace -q >/dev/null 2>&1 || echo "C extension build failed"
export PYTHONPATH="${SITE:-/tmp/site}:$PWD"
python3 -c "from rfpipe.untrained import build_checkpoint; build_checkpoint('/tmp/m/checkpoint.pth')"
B="python3 benchmarks/server_load.py --model /tmp/m/checkpoint.pth --image-side 720 --max-batch 16"
$B --device cuda:0 --concurrency 1,8,64 --requests 200 --cap-s 15 --check --soak 10000 --compare-max-batch 1 \
   --json "$OUT/gpu1.json" 2>&1 | grep --line-buffered -v -i warn | tee "$OUT/gpu1.log"
if [ "$(python3 -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  $B --device cuda:0,cuda:1 --concurrency 64 --requests 400 --cap-s 15 --json "$OUT/gpu2.json" 2>&1 \
     | grep --line-buffered -v -i warn | tee "$OUT/gpu2.log"
fi
