#!/usr/bin/env bash
# Streams on a GPU machine (the device tool), one command, about 3 minutes: frames/s and CPU % for 1, 4
# and 16 simultaneous 720p sources through rfpipe.streams (benchmarks/streams_bench.py, untrained Nano
# 384 on the torch backend, beside a one-frame-at-a-time baseline and a 16 x 30 fps real-time run), then
# OpenCV vs PyAV decoding at 720p with pinned-buffer and NVDEC checks (benchmarks/streams_decode.py).
# Needs the carried wheels of benchmarks/device_env.sh (rfdetr and its needs, supervision) and av
# (PyAV, for the H.264 and NVDEC rows; without it those rows are left out).
# Writes streams_bench.json and streams_decode.json to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/device_env.sh
log() { grep --line-buffered -v -E "UserWarning|FutureWarning|DeprecationWarning|warnings.warn"; }
CAP_S=${CAP_S:-20} timeout 200 python3 benchmarks/streams_bench.py 2>&1 | log
FRAMES=300 REPEATS=2 timeout 120 python3 benchmarks/streams_decode.py 2>&1 | log
