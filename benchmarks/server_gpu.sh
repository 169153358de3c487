#!/usr/bin/env bash
# Server load on a GPU machine (the device tool). Steps, in the order given (default: engine):
#   engine   one GPU (about 8 min cold): concurrency 1/8/64/256 on the eager path (no --compile) against
#            the engine's compiled bfloat16 forward (--compile auto, --max-batch 64, --buckets 1,8,64), then
#            --batch-policy fixed --max-batch 64 --check (64 concurrent clients' answers against each image
#            alone: bit-identical expected). JSON per row in $OUT.
#   engine2  one GPU, the same machine right after `engine` (about 8 min): compiled float32 at 1/8/64/256,
#            and compiled bfloat16 with --processes 4 and 8 at concurrency 64/256
#   engine3  one GPU, right after benchmarks/engine_device.py on the same machine with PACKAGE=/tmp/pkg384/stretch
#            BUCKETS=8,32 (its compile cache holds bfloat16 buckets 8 and 32 and float32 bucket 32 of that
#            package, so every server here starts warm; about 5 min): eager at concurrency 64 (the baseline),
#            compiled bfloat16 at 1/8/64/256, --processes 8 at 64/256, --processes 8 --gpu-decode at 64,
#            --processes 4 at 64, compiled float32 at 64; clients spread over 4 processes
#   engine4  issue 11's table, call 1 (about 8.5 min cold): eager and compiled bfloat16 (buckets 1,8,32) at
#            1/8/64/256, --max-wait-ms 0 at 1/8/64, nvJPEG at 1, --processes 8 at 64/256, --processes 4 and 8 with --max-wait-ms 0;
#            engine4b, call 2 on the same machine (about 8 min): the fixed policy's identity with 1 and 4 processes,
#            the peer (peer_gpu.sh), compiled float32 at 1/8/64/256, then as time allows 4 processes under
#            TORCHINDUCTOR_DETERMINISTIC=1 and --processes 8 --gpu-decode
#   engine5  the compact set run on 2026-12-06 (compiled bfloat16, --processes 8, fixed --processes 4 --check)
#   levels   one GPU: concurrency 1/8/64, correctness under load (--check), batching gain vs --max-batch 1
#   fp32     one GPU, TF32 off (NVIDIA_TF32_OVERRIDE=0): correctness under load and its batching gain
#   soak     one GPU: 10,000 requests, resident memory after each 1000
#   workers  one GPU, --workers-per-device 2, concurrency 64
#   multi    --device cuda:0,cuda:1 at concurrency 64, beside cuda:0 alone in the same call (needs 2 GPUs)
#   replicas two servers, one per GPU, loaded at the same time (the load-balancer layout; needs 2 GPUs)
#   processes  --processes 1 and 2 on one GPU, 2 and 4 on two GPUs (concurrency 64), and --check across
#            two processes with --max-batch 1
#   decode   one GPU, --gpu-decode, concurrency 64, beside the CPU decode in the same call
# Writes logs and JSON to $OUT. Needs beside torch/triton/opencv: fastapi starlette uvicorn pydantic
# pydantic_core annotated-types typing-inspection python-multipart opentelemetry-api (server) and rfdetr
# pyDeprecate defusedxml transformers tokenizers huggingface_hub supervision (to build the untrained Nano
# checkpoint), as wheels installed into $SITE (see the device README).
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
python3 setup.py build_ext --inplace -q >/dev/null 2>&1 || echo "C extension build failed"
export PYTHONPATH="${SITE:-/tmp/site}:$PWD"
steps=${*:-engine}
# The untrained Nano 320 checkpoint, for the steps that serve it (engine3 and later serve $PACKAGE)
if [ -n "$(echo " $steps " | tr ' ' '\n' | grep -v -E '^(engine3|engine4|engine4b|engine5|)$')" ]; then
  [ -f /tmp/m/checkpoint.pth ] || python3 -c "from rfpipe.testing.untrained import build_checkpoint; build_checkpoint('/tmp/m/checkpoint.pth')"
fi
B="python3 benchmarks/server_load.py --model /tmp/m/checkpoint.pth --image-side 720 --max-batch 16"
# Output lines go to stdout only (the device returns at most 8 files); each step writes its JSON to $OUT.
# SIGINT (KeyboardInterrupt) lets server_load.py stop the server it started; SIGTERM would orphan it.
T="timeout --signal=INT -k 30"
log() { grep --line-buffered -v -E "UserWarning|FutureWarning|DeprecationWarning|warnings.warn"; }
gpus=$(python3 -c 'import torch; print(torch.cuda.device_count())')
# engine3 and later serve an untrained Nano 384 package ($PACKAGE), clients spread over 4 processes
P=${PACKAGE:-/tmp/pkg384/stretch}
PL="python3 benchmarks/server_load.py --model $P --image-side 720 --device cuda:0 --client-processes 4"
E="python3 benchmarks/server_load.py --model /tmp/m/checkpoint.pth --image-side 720 --concurrency 1,8,64,256 --requests 3000 --cap-s 8"
for step in $steps; do
  case $step in
    engine) $T 100 $E --device cuda:0 --max-batch 16 --json "$OUT/engine_eager.json" 2>&1 | log
            # Compiled: three buckets, the largest the max batch (cold, each compile is 25-40 s on an H200;
            # with the compile cache of an earlier start 4-6 s). 200 s was too short cold (2026-12-01).
            $T 300 $E --device cuda:0 --max-batch 64 --server-arg=--compile=auto --server-arg=--dtype=bfloat16 \
              --server-arg=--buckets=1,8,64 --json "$OUT/engine_compiled_bf16.json" 2>&1 | log
            # fixed pads every batch to 64 rows: one bucket (in the cache from the row above)
            $T 120 python3 benchmarks/server_load.py --model /tmp/m/checkpoint.pth --image-side 720 --device cuda:0 \
              --max-batch 64 --server-arg=--batch-policy=fixed --server-arg=--compile=auto --server-arg=--buckets=64 \
              --server-arg=--dtype=bfloat16 --concurrency 64 \
              --requests 1000 --cap-s 8 --check --json "$OUT/engine_fixed_check.json" 2>&1 | log ;;
    engine2) # the rest of the table: compiled float32, and several processes on the one GPU (each its own
             # event loop, GIL and engine; they share the compile cache)
            $T 300 $E --device cuda:0 --max-batch 64 --server-arg=--compile=auto --server-arg=--dtype=float32 \
              --server-arg=--buckets=1,8,64 --json "$OUT/engine_compiled_fp32.json" 2>&1 | log
            for n in 4 8; do
              $T 120 python3 benchmarks/server_load.py --model /tmp/m/checkpoint.pth --image-side 720 --device cuda:0 \
                --max-batch 64 --server-arg=--compile=auto --server-arg=--dtype=bfloat16 --server-arg=--buckets=1,8,64 \
                --server-arg=--processes=$n --concurrency 64,256 --requests 4000 --cap-s 8 \
                --json "$OUT/engine_processes$n.json" 2>&1 | log
            done ;;
    engine3) L="$PL --cap-s 6"
            C="--server-arg=--compile=auto --max-batch 32 --server-arg=--dtype=bfloat16 --server-arg=--buckets=8,32"
            $T 45 $L --max-batch 32 --concurrency 64 --requests 3000 --json "$OUT/e3_eager.json" 2>&1 | log
            $T 80 $L $C --concurrency 1,8,64,256 --requests 6000 --json "$OUT/e3_bf16.json" 2>&1 | log
            $T 75 $L $C --server-arg=--processes=8 --concurrency 64,256 --requests 8000 \
              --json "$OUT/e3_processes8.json" 2>&1 | log
            $T 60 $L $C --server-arg=--processes=8 --server-arg=--gpu-decode --concurrency 64 --requests 8000 \
              --json "$OUT/e3_processes8_nvjpeg.json" 2>&1 | log
            $T 60 $L $C --server-arg=--processes=4 --concurrency 64 --requests 8000 --json "$OUT/e3_processes4.json" 2>&1 | log
            $T 45 $L --server-arg=--compile=auto --max-batch 32 --server-arg=--dtype=float32 --server-arg=--buckets=32 \
              --concurrency 64 --requests 3000 --json "$OUT/e3_fp32.json" 2>&1 | log ;;
    engine4) # issue 11's table, call 1 of 2 (over 10 min on a fresh H100 on 2026-12-06, so one call's limit stopped its
            # last rows: the bfloat16 row compiles buckets 1, 8 and 32 cold, about 120 s; split it where calls are short): every row prints server_ready_s. Today's path (eager) and compiled bfloat16
            # (one process) at 1/8/64/256; --max-wait-ms 0 at 1/8/64 (no wait for company); --max-wait-ms 0 with
            # --gpu-decode at 1 (nvJPEG, not exact); --processes 8 at 64/256, --processes 4 --max-wait-ms 0 at 64/256 and
            # --processes 8 --max-wait-ms 0 at 64 (buckets 8 and 32, from the cache the one-process row filled; fewer
            # processes share the GPU by fewer time slices).
            L="$PL --cap-s 6"
            C="--server-arg=--compile=auto --max-batch 32 --server-arg=--dtype=bfloat16"
            B1="--server-arg=--buckets=${BUCKETS:-1,8,32}"
            B8="--server-arg=--buckets=8,32"
            $T 75 $L --max-batch 32 --concurrency 1,8,64,256 --requests 3000 --json "$OUT/e4_eager.json" 2>&1 | log
            $T 210 $L $C $B1 --concurrency 1,8,64,256 --requests 6000 --json "$OUT/e4_bf16.json" 2>&1 | log
            $T 60 $L $C $B1 --max-wait-ms 0 --concurrency 1,8,64 --requests 4000 --json "$OUT/e4_bf16_nowait.json" 2>&1 | log
            $T 75 $L $C $B1 --max-wait-ms 0 --server-arg=--gpu-decode --concurrency 1 --requests 2000 \
              --json "$OUT/e4_bf16_nowait_nvjpeg.json" 2>&1 | log
            $T 120 $L $C $B8 --server-arg=--processes=8 --concurrency 64,256 --requests 8000 \
              --json "$OUT/e4_processes8.json" 2>&1 | log
            $T 90 $L $C $B8 --server-arg=--processes=4 --max-wait-ms 0 --concurrency 64,256 --requests 8000 \
              --json "$OUT/e4_processes4_nowait.json" 2>&1 | log
            $T 80 $L $C $B8 --server-arg=--processes=8 --max-wait-ms 0 --concurrency 64 --requests 8000 \
              --json "$OUT/e4_processes8_nowait.json" 2>&1 | log ;;
    engine4b) # call 2 of 2, on the machine of call 1 (about 8 min; on a fresh one the first row compiles bucket 32):
            # the fixed policy's identity under load with one process and with four that load one compile from the
            # cache; the peer (benchmarks/peer_gpu.sh, carry .peer too); compiled float32 (buckets 8 and 32, cold) at
            # 1/8/64/256; then, while the call has time: four processes under inductor's deterministic mode (when four
            # were not all identical), --processes 8 --gpu-decode at 64/256
            L="$PL --cap-s 6"
            F="--max-batch 32 --server-arg=--batch-policy=fixed --server-arg=--compile=auto --server-arg=--buckets=32 --server-arg=--dtype=bfloat16"
            $T 90 $L $F --concurrency 64 --requests 3000 --check --json "$OUT/e4_fixed_check_1.json" 2>&1 | log
            $T 80 $L $F --server-arg=--processes=4 --concurrency 64 --requests 3000 --check \
              --json "$OUT/e4_fixed_check_4.json" 2>&1 | log
            [ -d .peer ] && $T 200 bash benchmarks/peer_gpu.sh 2>&1 | log
            $T 160 $L --server-arg=--compile=auto --max-batch 32 --server-arg=--dtype=float32 --server-arg=--buckets=8,32 \
              --concurrency 1,8,64,256 --requests 4000 --json "$OUT/e4_fp32.json" 2>&1 | log
            identical=$(python3 -c "import json; print(json.load(open('$OUT/e4_fixed_check_4.json'))['check']['identical'])" 2>/dev/null)
            if [ "${identical:-0}" != 64 ] && [ $SECONDS -lt $((${CALL_S:-560} - 120)) ]; then
              TORCHINDUCTOR_DETERMINISTIC=1 $T 120 $L $F --server-arg=--processes=4 --concurrency 64 --requests 3000 --check \
                --json "$OUT/e4_fixed_check_4_deterministic.json" 2>&1 | log
            fi
            if [ $SECONDS -lt $((${CALL_S:-560} - 90)) ]; then
              $T 90 $L --server-arg=--compile=auto --max-batch 32 --server-arg=--dtype=bfloat16 --server-arg=--buckets=8,32 \
                --server-arg=--processes=8 --server-arg=--gpu-decode --concurrency 64,256 --requests 8000 \
                --json "$OUT/e4_processes8_nvjpeg.json" 2>&1 | log
            fi ;;
    engine5) # the compact set for a short lease, right after engine_device.py with the same BUCKETS (default 8,32;
            # warm cache): compiled bfloat16 at 1/8/64/256, --processes 8 at 64/256, fixed policy --processes 4 --check
            # (about 4.5 min)
            L="$PL --cap-s 5"
            C="--server-arg=--compile=auto --max-batch 32 --server-arg=--dtype=bfloat16 --server-arg=--buckets=${BUCKETS:-8,32}"
            $T 95 $L $C --concurrency 1,8,64,256 --requests 6000 --json "$OUT/e5_bf16.json" 2>&1 | log
            $T 100 $L $C --server-arg=--processes=8 --concurrency 64,256 --requests 8000 --json "$OUT/e5_processes8.json" 2>&1 | log
            $T 80 $L --max-batch 32 --server-arg=--batch-policy=fixed --server-arg=--compile=auto --server-arg=--buckets=32 \
              --server-arg=--dtype=bfloat16 --server-arg=--processes=4 --concurrency 64 --requests 4000 --check \
              --json "$OUT/e5_fixed_check.json" 2>&1 | log ;;
    levels) $T 300 $B --device cuda:0 --concurrency 1,8,64 --requests 400 --cap-s 15 --check \
              --compare-max-batch 1 --json "$OUT/levels.json" 2>&1 | log ;;
    fp32) NVIDIA_TF32_OVERRIDE=0 $T 200 $B --device cuda:0 --concurrency 64 --requests 400 --cap-s 15 --check \
            --compare-max-batch 1 --json "$OUT/fp32.json" 2>&1 | log ;;
    soak) $T 300 $B --device cuda:0 --concurrency 64 --requests 200 --cap-s 10 --soak 10000 \
            --json "$OUT/soak.json" 2>&1 | log ;;
    workers) $T 120 $B --device cuda:0 --server-arg=--workers-per-device=2 --concurrency 64 --requests 800 \
               --cap-s 15 --json "$OUT/workers.json" 2>&1 | log ;;
    multi) if [ "$gpus" -ge 2 ]; then
             $T 120 $B --device cuda:0 --concurrency 64 --requests 800 --cap-s 15 --json "$OUT/multi_one.json" 2>&1 | log
             $T 120 $B --device cuda:0,cuda:1 --concurrency 64 --requests 800 --cap-s 15 --json "$OUT/multi_two.json" 2>&1 | log
           else echo "multi: needs 2 GPUs, this machine has $gpus" ; fi ;;
    replicas) if [ "$gpus" -ge 2 ]; then
                for g in 0 1; do $T 120 $B --device cuda:$g --concurrency 64 --requests 1600 --cap-s 15 \
                  --json "$OUT/replica$g.json" 2>&1 | log & done; wait
              else echo "replicas: needs 2 GPUs, this machine has $gpus"; fi ;;
    processes) $T 120 $B --device cuda:0 --concurrency 64 --requests 1600 --cap-s 15 --json "$OUT/proc1.json" 2>&1 | log
               $T 150 $B --device cuda:0 --server-arg=--processes=2 --concurrency 64 --requests 1600 --cap-s 15 \
                 --json "$OUT/proc2_one_gpu.json" 2>&1 | log
               if [ "$gpus" -ge 2 ]; then
                 for n in 2 4; do $T 150 $B --device cuda:0,cuda:1 --server-arg=--processes=$n --concurrency 64 \
                   --requests 2400 --cap-s 15 --json "$OUT/proc${n}_two_gpus.json" 2>&1 | log; done
                 $T 150 $B --device cuda:0,cuda:1 --server-arg=--processes=2 --max-batch 1 --concurrency 64 \
                   --requests 400 --cap-s 10 --check --json "$OUT/proc2_check.json" 2>&1 | log
               fi ;;
    decode) $T 120 $B --device cuda:0 --concurrency 64 --requests 800 --cap-s 15 --json "$OUT/decode_cpu.json" 2>&1 | log
            $T 120 $B --device cuda:0 --server-arg=--gpu-decode --concurrency 64 --requests 800 --cap-s 15 \
              --json "$OUT/decode_gpu.json" 2>&1 | log ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
done
