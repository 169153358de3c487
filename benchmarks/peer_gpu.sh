#!/usr/bin/env bash
# The peer on a GPU: the Roboflow inference server (PyPI `inference` 1.8.3, RF-DETR through
# inference-models' torch backend) serving the untrained Nano 384 stretch package, fully offline,
# driven by benchmarks/server_load.py like server_gpu.sh's engine4 rows (720 px images, 4 client
# processes, 6 s a level). About 2-4 min. On the device, after the lead's environment:
#
#     source benchmarks/device_env.sh && bash benchmarks/peer_gpu.sh        (carry: [".whl", ".peer"])
#
# .peer/ holds the wheels the device lacks beyond .whl/ (inference, roboflow-workflows, streamvision,
# inference-sdk and their start-up imports; 35 wheels, 18.0 MB; list in benchmarks/peer_wheels.txt);
# they go into their own folder, /tmp/peersite (pip --target --upgrade into /tmp/site would replace
# its bin/, py-spy included), on the server's PYTHONPATH ahead of /tmp/site. To fetch them (uncommitted, .gitignore'd):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     --platform manylinux1_x86_64 --platform any -d .peer -r benchmarks/peer_wheels.txt The app is
# benchmarks/inference_peer_app.py: inference_server_app.py's app with placeholder modules for the
# WebRTC stack (PyAV, aiortc, aioice: 46 MB of wheels) and boto3/botocore (the Workflows S3 sink),
# which the app imports at start-up but no /infer request touches (benchmarks/peer_stubs.py).
# Environment: PEER_DEVICE (cuda:0; cpu for a dry run), PEER_PORT (9702), PEER_CONCURRENCY (1,8,64),
# PEER_REQUESTS (2000), PEER_CAP_S (6), PEER_CLIENT_PROCESSES (4), PEER_ACCESS_LOG (0: uvicorn's access
# log off, as rfpipe's server runs at --log-level warning; 1: on, as inference's docker image runs).
# Output: stdout, and $OUT/peer_gpu.json (server_load.py's rows) and $OUT/peer_server.log.
set -uo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-/tmp/peer_out}; mkdir -p "$OUT"
SITE=${SITE:-/tmp/site}
PEERSITE=${PEERSITE:-/tmp/peersite}
DEV=${PEER_DEVICE:-cuda:0}
PORT=${PEER_PORT:-9702}
case ":${PYTHONPATH:-}:" in *":$SITE:"*) ;; *) export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}" ;; esac
T="timeout -k 10"
log() { grep --line-buffered -v -E "UserWarning|FutureWarning|DeprecationWarning|warnings.warn"; }
started=$(date +%s)

# 1. the peer's wheels, once per machine
if [ ! -f "$PEERSITE/.installed" ]; then
  ls .peer/*.whl >/dev/null 2>&1 || { echo "peer_gpu: no .peer/*.whl (carry .peer)"; exit 2; }
  $T 180 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$PEERSITE" --upgrade .peer/*.whl \
    && touch "$PEERSITE/.installed" || { echo "peer_gpu: installing .peer wheels failed"; exit 2; }
fi
PEERPATH="$PEERSITE:$PYTHONPATH"
PYTHONPATH=$PEERPATH python3 -c "import importlib.metadata as m; print('peer:', *(f'{d} {m.version(d)}' for d in ('inference', 'inference-models', 'roboflow-workflows', 'fastapi', 'pydantic', 'torch')))"

# 2. the package: the untrained Nano 384 stretch package with a model_config.json for the torch backend
[ -d /tmp/pkg384/stretch ] || $T 240 python3 -c "from rfpipe.testing.untrained import build_packages; build_packages('/tmp/pkg384', resolution=384, onnx=False)" 2>&1 | log
[ -f /tmp/pkg384/stretch/weights.pth ] || { echo "peer_gpu: /tmp/pkg384/stretch/weights.pth missing"; exit 2; }
rm -rf /tmp/peerpkg && cp -r /tmp/pkg384/stretch /tmp/peerpkg
echo '{"model_architecture": "rfdetr", "task_type": "object-detection", "backend_type": "torch"}' > /tmp/peerpkg/model_config.json
# the app mounts its landing page from these, relative to its working directory
mkdir -p /tmp/peerrun/inference/landing/out/static /tmp/peerrun/inference/landing/out/_next/static

# 3. the server (its own process; stopped on exit, whatever happens)
ACCESS=--no-access-log; [ "${PEER_ACCESS_LOG:-0}" = 1 ] && ACCESS=
( cd /tmp/peerrun && exec env ALLOW_INFERENCE_MODELS_DIRECTLY_ACCESS_LOCAL_PACKAGES=True OFFLINE_MODE=True \
    DISABLE_VERSION_CHECK=True DEFAULT_DEVICE="$DEV" MODEL_CACHE_DIR=/tmp/peer-cache PYTHONPATH="$PEERPATH" \
    python3 -m uvicorn --app-dir "$REPO/benchmarks" inference_peer_app:app --host 127.0.0.1 --port "$PORT" $ACCESS \
    > "$OUT/peer_server.log" 2>&1 ) &
PID=$!
stop() {
  if kill -0 "$PID" 2>/dev/null; then
    kill -INT "$PID"; for _ in $(seq 1 20); do kill -0 "$PID" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$PID" 2>/dev/null && kill -KILL "$PID"
  fi
  echo "--- server log (warnings filtered, last 25 lines)"; log < "$OUT/peer_server.log" | tail -25
}
trap stop EXIT
URL=http://127.0.0.1:$PORT
ready=
for i in $(seq 1 240); do
  kill -0 "$PID" 2>/dev/null || { echo "peer_gpu: the server exited during start-up"; exit 1; }
  if python3 -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('$URL/info', timeout=2).status != 200)" 2>/dev/null; then
    ready=$i; break
  fi
  sleep 1
done
[ -n "$ready" ] || { echo "peer_gpu: no answer from $URL/info in 240 s"; exit 1; }
echo "{\"peer_ready_s\": $ready, \"pid\": $PID}"

# 4. one request loads the model (timed on its own), then where it runs
$T 240 python3 - "$URL" <<'PY' 2>&1 | log
import json, sys, time
sys.path.insert(0, "benchmarks")
import server_load
server_load.MODEL_ID = "/tmp/peerpkg"
image = server_load.encoded_samples(720)[0]
for what in ("first (loads the model)", "second"):
    t = time.perf_counter()
    status, body = server_load.request(sys.argv[1], "POST", "/infer/object_detection", server_load.infer_body(image))
    ms = 1000 * (time.perf_counter() - t)
    answer = json.loads(body)
    print(json.dumps({"request": what, "status": status, "ms": round(ms, 1),
                      "predictions": len(answer.get("predictions", [])) if status == 200 else answer}))
    if status != 200:
        sys.exit(1)
PY
[ "${PIPESTATUS[0]}" = 0 ] || { echo "peer_gpu: the warm-up request failed"; exit 1; }
nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader 2>/dev/null | sed 's/^/gpu process (pid, memory): /'

# 5. the load, as server_gpu.sh's engine4 rows drive rfpipe
$T 200 python3 benchmarks/server_load.py --url "$URL" --model-id /tmp/peerpkg --pid "$PID" --image-side 720 \
  --client-processes "${PEER_CLIENT_PROCESSES:-4}" --concurrency "${PEER_CONCURRENCY:-1,8,64}" \
  --requests "${PEER_REQUESTS:-2000}" --cap-s "${PEER_CAP_S:-6}" --json "$OUT/peer_gpu.json" 2>&1 | log
echo "server_load exit: ${PIPESTATUS[0]}"
nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader 2>/dev/null | sed 's/^/gpu process after the load (pid, memory): /'
echo "peer_gpu: $(( $(date +%s) - started )) s"
