#!/usr/bin/env bash
# Streams on a GPU machine (the device tool), one command, about 3 minutes: frames/s and CPU % for 1, 4
# and 16 simultaneous 720p sources through rfpipe.streams (benchmarks/streams_bench.py, untrained Nano
# 384 on the torch backend), then OpenCV vs PyAV decoding at 720p with pinned-buffer and NVDEC checks
# (benchmarks/streams_decode.py). Needs beside torch/opencv: rfdetr pyDeprecate defusedxml transformers
# supervision (to build the untrained checkpoint) and av (PyAV, for the H.264 rows) as wheels in $SITE.
# Writes streams_bench.json and streams_decode.json to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
python3 setup.py build_ext --inplace -q >/dev/null 2>&1 || echo "C extension build failed"
export PYTHONPATH="${SITE:-/tmp/site}:$PWD"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc
log() { grep --line-buffered -v -E "UserWarning|FutureWarning|DeprecationWarning|warnings.warn"; }
CAP_S=${CAP_S:-20} timeout 200 python3 benchmarks/streams_bench.py 2>&1 | log
FRAMES=300 REPEATS=2 timeout 120 python3 benchmarks/streams_decode.py 2>&1 | log
